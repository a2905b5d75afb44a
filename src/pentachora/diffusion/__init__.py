"""pentachora.diffusion: long, weighted prompts for diffusers pipelines, with an optional geometric memory.

The one object: :class:`LongPrompt` — ``LongPrompt.from_pipeline(pipe, memory=None)`` reads the
pipeline's own tokenizer(s) and text encoder(s) (SD 1.5, SDXL, :class:`MiniT2IPipeline`), parses
A1111 or compel weighting and ``BREAK`` (:mod:`pentachora.diffusion.weighting`), splits windows at
word and punctuation boundaries (:mod:`pentachora.diffusion.windows`) and returns embeddings for
``pipe(**embeds.pipeline_kwargs())``. :func:`long_prompt_embeds` / :func:`sdxl_long_prompt_embeds`
are the lower-level calls over a memory model and separately loaded encoders (no weighting).
:class:`MiniT2IPipeline` (:mod:`pentachora.diffusion.mini`) is the scene world's miniature
text-to-image model called like a diffusers pipeline. Needs ``diffusers`` only to run a pipeline.
"""

from pentachora.diffusion.conditioning import LongPromptEmbeds, long_prompt_embeds, sdxl_long_prompt_embeds
from pentachora.diffusion.long_prompt import LongPrompt
from pentachora.diffusion.weighting import DIALECTS, Fragment, PromptSyntaxError, parse_prompt
from pentachora.memory.modes import POOLED_MODES  # the modes' one home (pentachora.memory.modes)

__all__ = [
    "DIALECTS",
    "POOLED_MODES",
    "Fragment",
    "LongPrompt",
    "LongPromptEmbeds",
    "MiniT2IPipeline",
    "PromptSyntaxError",
    "long_prompt_embeds",
    "parse_prompt",
    "sdxl_long_prompt_embeds",
]


def __getattr__(name: str):  # the miniature T2I pipeline needs diffusers: imported on first use
    if name == "MiniT2IPipeline":
        from pentachora.diffusion.mini import MiniT2IPipeline

        return MiniT2IPipeline
    raise AttributeError(f"module 'pentachora.diffusion' has no attribute {name!r}")
