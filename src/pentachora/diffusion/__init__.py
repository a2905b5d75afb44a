"""pentachora.diffusion: long prompts for diffusers pipelines through a trained geometric memory.

See :mod:`pentachora.diffusion.conditioning`. Needs ``diffusers`` only to run a pipeline; building
the embeddings needs just the memory model (``pip install 'pentachora[memory]'``).
"""

from pentachora.diffusion.conditioning import (
    LongPromptEmbeds,
    long_prompt_embeds,
    sdxl_long_prompt_embeds,
)

__all__ = ["LongPromptEmbeds", "long_prompt_embeds", "sdxl_long_prompt_embeds"]
