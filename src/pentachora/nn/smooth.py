"""Boundary smoothing: a zero-initialised residual conv that softens patch seams."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BoundarySmooth"]


class BoundarySmooth(nn.Module):
    """``x + Conv(GELU(Conv(x)))`` over the stitched image, exactly the identity at init.

    The last convolution is zero-initialised (weights and bias), as in the reference, so the
    module starts as the identity and learns residual corrections at patch seams. Note that at
    init only the last conv receives a gradient (the first one is reached through the zero
    weights); it starts moving after the first update.

    Args:
        channels: image channels C.
        kernel: odd kernel size ("same" padding; the reference uses 3).
        mid: hidden channels (reference: 16 for patch ≥ 16, else 8).

    Shapes:
        ``(B, C, H, W) → (B, C, H, W)``.
    """

    def __init__(self, channels: int, kernel: int = 3, mid: int = 16) -> None:
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be a positive odd number, got {kernel}")
        if channels < 1 or mid < 1:
            raise ValueError(f"channels and mid must be ≥ 1, got channels={channels}, mid={mid}")
        pad = kernel // 2
        self.conv1 = nn.Conv2d(channels, mid, kernel, padding=pad)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(mid, channels, kernel, padding=pad)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) → (B, C, H, W)``."""
        return x + self.conv2(self.act(self.conv1(x)))
