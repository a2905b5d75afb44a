"""pentachora.nn — layers shared by the model families.

* :func:`patchify`, :func:`unpatchify`, :func:`check_image_batch` — images ↔ patch tokens
  ``(B, C, H, W) ↔ (B, N, C·p·p)`` and input validation with readable errors.
* :class:`ResidualMLP` — ``Linear → GELU → depth × pre-norm residual block → Linear``.
* :class:`SpectralCrossAttention` — attention across the patches of an image with a bounded
  multiplicative update ``S ⊙ (1 + α ⊙ tanh(attn))``, α ∈ [0, max_alpha] per mode.
* :class:`BoundarySmooth` — zero-initialised residual conv over the stitched image.
"""

from pentachora.nn.attention import SpectralCrossAttention
from pentachora.nn.mlp import ResidualBlock, ResidualMLP
from pentachora.nn.patch import check_image_batch, patchify, unpatchify
from pentachora.nn.smooth import BoundarySmooth

__all__ = [
    "BoundarySmooth",
    "ResidualBlock",
    "ResidualMLP",
    "SpectralCrossAttention",
    "check_image_batch",
    "patchify",
    "unpatchify",
]
