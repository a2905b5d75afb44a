"""SequenceReconstructor: L learned queries that read the whole memory and speak the encoder's format.

Perceiver / Q-Former style::

    x = Q + PE                                   (L, d) learned queries + sinusoidal positions
    2 × [ x += CrossAttn(LN(x), context) ; x += FFN(LN(x)) ]     context = [memory ; bank ; content]
    2 × [ x += SelfAttn(LN(x))           ; x += FFN(LN(x)) ]
    y = Linear(LN(x))                            (B, L, H) in the frozen encoder's space

``context`` is the concatenation of the memory tokens ``(B, M, d)``, the per-segment bank entries
``(B, S, d)``, the bank anchors ``(K, d)`` and every segment's content tokens ``(B, S·W, d)``; the
padding of the last two is masked. The output count L (77 by default, a CLIP sequence) does not
depend on the input length.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["SequenceReconstructor", "sinusoidal_positions"]


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """``(length, dim)`` fixed sinusoidal position encoding (Vaswani et al.)."""
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10_000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return pe


class _FeedForward(nn.Sequential):
    def __init__(self, dim: int, mult: int, dropout: float) -> None:
        super().__init__(
            nn.LayerNorm(dim),
            nn.Linear(dim, dim * mult),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(dim * mult, dim),
        )


class _CrossBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ff = _FeedForward(dim, mult, dropout)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm(x), ctx, ctx, key_padding_mask=pad, need_weights=False)[0]
        return x + self.ff(x)


class _SelfBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ff = _FeedForward(dim, mult, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.ff(x)


class SequenceReconstructor(nn.Module):
    """Turn the memory into a fixed-length ``(B, L, H)`` sequence.

    Args:
        dim: Memory width d.
        out_dim: Encoder width H of the output sequence.
        seq_len: Output positions L (77 for CLIP).
        n_heads: Attention heads.
        cross_layers: Cross-attention layers (2 in the seed).
        self_layers: Self-attention layers (2 in the seed).
        ffn_mult: FFN expansion.
        dropout: Dropout in attention and FFN.
    """

    def __init__(
        self,
        dim: int,
        out_dim: int,
        seq_len: int = 77,
        n_heads: int = 8,
        cross_layers: int = 2,
        self_layers: int = 2,
        ffn_mult: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.queries = nn.Parameter(torch.randn(seq_len, dim) * 0.02)
        self.register_buffer("positions", sinusoidal_positions(seq_len, dim), persistent=False)
        self.cross_blocks = nn.ModuleList(
            [_CrossBlock(dim, n_heads, ffn_mult, dropout) for _ in range(cross_layers)]
        )
        self.self_blocks = nn.ModuleList(
            [_SelfBlock(dim, n_heads, ffn_mult, dropout) for _ in range(self_layers)]
        )
        self.out_norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, out_dim)

    def forward(self, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        """Reconstruct.

        Args:
            context: ``(B, T, d)`` memory, bank entries, anchors and content tokens.
            context_mask: ``(B, T)`` bool, True for real entries (at least one per row).

        Returns:
            ``(B, L, H)`` the sequence.
        """
        b = context.shape[0]
        x = (self.queries + self.positions).unsqueeze(0).expand(b, -1, -1)
        pad = ~context_mask
        for blk in self.cross_blocks:
            x = blk(x, context, pad)
        for blk in self.self_blocks:
            x = blk(x)
        return self.out(self.out_norm(x))
