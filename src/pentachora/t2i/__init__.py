"""pentachora.t2i: the miniature text-to-image model of the scene world and its reader (models only).

* :class:`MiniT2I` — diffusers' ``UNet2DConditionModel`` + DDPM/DDIM/Euler schedulers, conditioned on
  the frozen 77-token window encoder's last hidden state, classifier-free guidance against the empty
  prompt; ``generate(prompt_embeds, negative_prompt_embeds, ...)`` as a diffusers pipeline takes them.
* :class:`SceneReader` — the instrument: image → layout (per cell: empty, or colour + shape).

The pipeline that adds the text encoder is :class:`pentachora.diffusion.MiniT2IPipeline`; training
and evaluation are in :mod:`pentachora.recipes.t2i`. Needs ``diffusers`` (the ``diffusion`` extra).
"""

from pentachora.t2i.model import PREDICTION_TYPES, SAMPLERS, MiniT2I, MiniT2IConfig, T2IOutput
from pentachora.t2i.reader import ReaderOutput, SceneReader, SceneReaderConfig, SceneReading

__all__ = [
    "PREDICTION_TYPES",
    "SAMPLERS",
    "MiniT2I",
    "MiniT2IConfig",
    "ReaderOutput",
    "SceneReader",
    "SceneReaderConfig",
    "SceneReading",
    "T2IOutput",
]
