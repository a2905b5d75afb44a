"""pentachora.diffusion: long prompts for diffusers pipelines through a trained geometric memory.

The one call: :func:`long_prompt_embeds` (SD 1.5) or :func:`sdxl_long_prompt_embeds` (SDXL), then
``pipe(**embeds.pipeline_kwargs())``; ``chunks=True`` gives contextual chunks ``(B, 77·k, H)``.
Prompt-weighting syntax is not supported (read as text, with a warning). See
:mod:`pentachora.diffusion.conditioning`. :class:`MiniT2IPipeline` (:mod:`pentachora.diffusion.mini`)
is the scene world's miniature text-to-image model called like a diffusers pipeline. Needs ``diffusers`` only to run a pipeline; building
the embeddings needs just the memory model (``pip install 'pentachora[memory]'``).
"""

from pentachora.diffusion.conditioning import (
    POOLED_MODES,
    LongPromptEmbeds,
    long_prompt_embeds,
    sdxl_long_prompt_embeds,
)

__all__ = [
    "POOLED_MODES",
    "LongPromptEmbeds",
    "MiniT2IPipeline",
    "long_prompt_embeds",
    "sdxl_long_prompt_embeds",
]


def __getattr__(name: str):  # the miniature T2I pipeline needs diffusers: imported on first use
    if name == "MiniT2IPipeline":
        from pentachora.diffusion.mini import MiniT2IPipeline

        return MiniT2IPipeline
    raise AttributeError(f"module 'pentachora.diffusion' has no attribute {name!r}")
