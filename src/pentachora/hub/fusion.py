"""The FusionLayer: transformer layer(s) over the concatenated expert tokens, read at identity tokens.

Each expert contributes ``K + 1`` tokens (identity token first, see
:class:`~pentachora.hub.expert.ExpertModule`). The layer concatenates them, runs standard pre-norm
transformer attention and reads every expert's contribution at its identity position.

``cross_expert=False`` (what training and retrieval use) applies a **block-diagonal attention mask**:
each expert's tokens attend only to themselves, through the *same* weights, so an expert's read-out
depends on its own input alone and can be compared with another expert's read-out for an unpaired
query. With ``cross_expert=True`` all tokens attend to each other and every read-out is a fused view
of all inputs (a joint representation of a complete item; it cannot be used for retrieval from one
expert, and a contrastive loss on it would be trivial, which is why the loss never uses it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["FusionLayer", "block_mask"]


def block_mask(sizes: Sequence[int], device: torch.device | None = None) -> torch.Tensor:
    """``(L, L)`` bool attention mask, True where attention is **not** allowed (across blocks)."""
    ids = torch.cat([torch.full((n,), i, dtype=torch.long) for i, n in enumerate(sizes)])
    ids = ids.to(device) if device is not None else ids
    return ids[:, None] != ids[None, :]


class FusionLayer(nn.Module):
    """Pre-norm transformer layers over concatenated expert tokens.

    Args:
        d_hub: Token width.
        n_heads: Attention heads.
        n_layers: Transformer layers (the seed used 1).
        ff_mult: Feed-forward width as a multiple of ``d_hub``.
        dropout: Dropout inside the layers.
    """

    def __init__(
        self, d_hub: int, n_heads: int = 4, n_layers: int = 1, ff_mult: int = 2, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_hub,
                n_heads,
                dim_feedforward=ff_mult * d_hub,
                dropout=dropout,
                batch_first=True,
                norm_first=True,
                activation="gelu",
            )
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_hub)

    def forward(self, tokens: Sequence[torch.Tensor], cross_expert: bool = False) -> list[torch.Tensor]:
        """Fuse ``[(B, n_i, d), ...]`` and return each expert's read-out ``(B, d)`` at its position 0.

        Args:
            tokens: One ``(B, n_i, d)`` tensor per expert, identity token first.
            cross_expert: Let experts attend to each other (see the module docstring).
        """
        sizes = [t.shape[1] for t in tokens]
        x = torch.cat(list(tokens), dim=1)
        mask = None if cross_expert or len(tokens) == 1 else block_mask(sizes, x.device)
        for layer in self.layers:
            x = layer(x, src_mask=mask)
        x = self.norm(x)
        starts = torch.tensor([0, *sizes[:-1]]).cumsum(0).tolist()
        return [x[:, s] for s in starts]
