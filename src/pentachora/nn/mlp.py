"""Residual MLP: the encoder/decoder trunk of the patch autoencoders."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ResidualBlock", "ResidualMLP"]


class ResidualBlock(nn.Module):
    """Pre-norm residual block ``x + Linear(Dropout(GELU(Linear(LayerNorm(x)))))``.

    Args:
        dim: feature width (input = output).
        dropout: dropout after the activation (0 disables it; it adds no parameters).
    """

    def __init__(self, dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., dim) → (..., dim)``."""
        return x + self.fc2(self.drop(self.act(self.fc1(self.norm(x)))))


class ResidualMLP(nn.Module):
    """``Linear → GELU → depth × ResidualBlock → Linear``, the reference PatchSVAE trunk.

    The structure matches the reference encoder/decoder exactly: an input projection followed by
    a GELU, ``depth`` pre-norm residual blocks (LayerNorm → Linear → GELU → Linear, added to the
    stream), and a plain output projection (no final norm or activation). With ``in_dim =
    hidden = 768``, ``depth = 4`` this is 5,321,472 parameters before the output projection.

    Args:
        in_dim: input feature width.
        hidden: width of the residual stream.
        out_dim: output feature width.
        depth: number of residual blocks (0 allowed).
        dropout: dropout inside each residual block.

    Shapes:
        ``(..., in_dim) → (..., out_dim)``.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, depth: int, dropout: float = 0.0) -> None:
        super().__init__()
        if min(in_dim, hidden, out_dim) < 1 or depth < 0:
            raise ValueError(
                f"ResidualMLP needs positive widths and depth ≥ 0; got in_dim={in_dim}, hidden={hidden}, "
                f"out_dim={out_dim}, depth={depth}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_proj = nn.Linear(in_dim, hidden)
        self.act = nn.GELU()
        self.blocks = nn.ModuleList([ResidualBlock(hidden, dropout) for _ in range(depth)])
        self.out_proj = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_dim) → (..., out_dim)``."""
        h = self.act(self.in_proj(x))
        for block in self.blocks:
            h = block(h)
        return self.out_proj(h)
