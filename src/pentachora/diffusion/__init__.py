"""pentachora.diffusion: long prompts for diffusers pipelines through a trained geometric memory.

The one call: :func:`long_prompt_embeds` (SD 1.5) or :func:`sdxl_long_prompt_embeds` (SDXL), then
``pipe(**embeds.pipeline_kwargs())``; ``chunks=True`` gives contextual chunks ``(B, 77·k, H)``.
Prompt-weighting syntax is not supported (read as text, with a warning). See
:mod:`pentachora.diffusion.conditioning`. Needs ``diffusers`` only to run a pipeline; building
the embeddings needs just the memory model (``pip install 'pentachora[memory]'``).
"""

from pentachora.diffusion.conditioning import (
    POOLED_MODES,
    LongPromptEmbeds,
    long_prompt_embeds,
    sdxl_long_prompt_embeds,
)

__all__ = ["POOLED_MODES", "LongPromptEmbeds", "long_prompt_embeds", "sdxl_long_prompt_embeds"]
