"""The memory system: depth-profile fusion, memory tokens, bank anchors on the sphere, GRU-gated
updates and the segment firebreak.

For a text cut into segments ``s = 1..S`` (each a window of W tokens read by the frozen encoder)::

    c_s  = LN(Linear(concat_l LN(h_s^l))) + e_seg[s] + PE     depth profile → content tokens (W, d)
    r    = CrossAttn(q = LN(M), kv = [c_s ; A])              memory reads the segment (and the anchors)
    M'   = GRUCell(r, M)                                      gated state update, per memory token
    M    = LN_firebreak(M')      (only where segment s exists; absent segments leave M unchanged)
    b_s  = LN(mean(c_s) + softmax(mean(c_s) Âᵀ / τ_route) A)   the segment's bank entry

``e_seg`` is a learned segment-index embedding and ``PE`` the same sinusoidal position encoding the
reconstructor's queries carry, so every content token is addressed by (segment, position in window).
``M`` starts from ``n_memory`` learned memory tokens and ``A`` are ``n_anchors`` learned bank anchors;
both live on the sphere of radius √d (the scale LayerNorm produces), and the pentachoron CV loss
acts on the anchor directions. The firebreak — a LayerNorm between segments — keeps the sequential
state from compounding round-off over many updates (the seed's fix for 27 segments at 1280-d).

Padding is inert by construction: padded tokens are dropped before the fusion, masked out of the
cross-attention and the summaries, and absent segments do not touch the state — a batch padded to
more segments or mixed with longer texts gives every text exactly the output it gets alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from pentachora.memory.reconstructor import sinusoidal_positions

__all__ = ["BankState", "DepthProfileFusion", "MemoryBank"]


class DepthProfileFusion(nn.Module):
    """Fuse the extraction layers' states of every real token into one ``d``-dim content token.

    Args:
        n_layers: Extraction layers.
        hidden: Encoder width H.
        dim: Memory width d.
    """

    def __init__(self, n_layers: int, hidden: int, dim: int) -> None:
        super().__init__()
        self.n_layers = n_layers
        self.layer_norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.proj = nn.Linear(n_layers * hidden, dim)
        self.out_norm = nn.LayerNorm(dim)

    def forward(self, states: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """Fuse.

        Args:
            states: ``(B, S, n_layers, W, H)`` extraction-layer states.
            token_mask: ``(B, S, W)`` bool, True for real tokens.

        Returns:
            ``(B, S, W, d)`` content tokens; exactly zero at padded positions.
        """
        b, s, n, w, h = states.shape
        if n != self.n_layers:
            raise ValueError(f"expected {self.n_layers} extraction layers, got {n}")
        flat = rearrange(states, "b s n w h -> b s w n h")[token_mask]  # (T_real, n, H)
        fused = self.out_norm(self.proj(self.layer_norm(flat).reshape(flat.shape[0], n * h)))
        out = fused.new_zeros(b, s, w, fused.shape[-1])
        out[token_mask] = fused
        return out


@dataclass
class BankState:
    """The memory after reading every segment.

    Attributes:
        memory: ``(B, M, d)`` memory tokens.
        entries: ``(B, S, d)`` per-segment bank entries (zero for absent segments).
        entry_mask: ``(B, S)`` bool, True for real segments.
        anchors: ``(K, d)`` bank anchors on the sphere of radius √d.
        content: ``(B, S·W, d)`` content tokens (with segment embeddings) of every segment.
        content_mask: ``(B, S·W)`` bool, True for real tokens.
    """

    memory: torch.Tensor
    entries: torch.Tensor
    entry_mask: torch.Tensor
    anchors: torch.Tensor
    content: torch.Tensor
    content_mask: torch.Tensor


class MemoryBank(nn.Module):
    """Memory tokens + bank anchors updated segment by segment (see the module docstring).

    Args:
        dim: Memory width d.
        n_memory: Memory tokens M (default 8 in the seed).
        n_anchors: Bank anchors K (default 64).
        n_heads: Heads of the memory → segment cross-attention.
        max_segments: Size of the segment-index embedding.
        window: Window W (length of the within-window position encoding).
        dropout: Attention dropout.
    """

    def __init__(
        self,
        dim: int,
        n_memory: int,
        n_anchors: int,
        n_heads: int,
        max_segments: int,
        window: int = 77,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("positions", sinusoidal_positions(window, dim), persistent=False)
        self.memory_tokens = nn.Parameter(torch.randn(n_memory, dim))
        self.anchors = nn.Parameter(torch.randn(n_anchors, dim))
        self.segment_embed = nn.Parameter(torch.randn(max_segments, dim) * 0.02)
        self.read_norm = nn.LayerNorm(dim)
        self.cross = nn.MultiheadAttention(dim, n_heads, dropout=dropout, batch_first=True)
        self.gru = nn.GRUCell(dim, dim)
        self.firebreak = nn.LayerNorm(dim)
        self.entry_norm = nn.LayerNorm(dim)
        self.route_logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    @property
    def max_segments(self) -> int:
        return self.segment_embed.shape[0]

    def anchor_directions(self) -> torch.Tensor:
        """``(K, d)`` unit anchor directions (what the CV loss regularises)."""
        return F.normalize(self.anchors, dim=-1)

    def sphere_anchors(self) -> torch.Tensor:
        """``(K, d)`` anchors on the sphere of radius √d."""
        return self.anchor_directions() * math.sqrt(self.dim)

    def initial_memory(self, batch: int) -> torch.Tensor:
        """``(B, M, d)`` the memory tokens on the sphere of radius √d."""
        m = F.normalize(self.memory_tokens, dim=-1) * math.sqrt(self.dim)
        return m.unsqueeze(0).expand(batch, -1, -1)

    def forward(
        self, content: torch.Tensor, token_mask: torch.Tensor, segment_mask: torch.Tensor
    ) -> BankState:
        """Read the segments in order.

        Args:
            content: ``(B, S, W, d)`` fused content tokens (zero at padding).
            token_mask: ``(B, S, W)`` bool, True for real tokens.
            segment_mask: ``(B, S)`` bool, True for real segments.

        Returns:
            The :class:`BankState`.
        """
        b, s, w, d = content.shape
        if s > self.max_segments:
            raise ValueError(f"{s} segments > max_segments={self.max_segments} of this model")
        anchors = self.sphere_anchors()
        unit = self.anchor_directions()
        k = anchors.shape[0]
        kv_anchors = anchors.unsqueeze(0).expand(b, -1, -1)
        anchor_pad = torch.zeros(b, k, dtype=torch.bool, device=content.device)
        if w > self.positions.shape[0]:
            raise ValueError(f"windows of {w} tokens > the model's window {self.positions.shape[0]}")
        address = self.segment_embed[:s].view(1, s, 1, d) + self.positions[:w].view(1, 1, w, d)
        content = content + address * token_mask.unsqueeze(-1)
        memory = self.initial_memory(b)
        n_mem = memory.shape[1]
        entries = []
        route_scale = self.route_logit_scale.exp().clamp(max=100.0)
        # unbind once: indexing content[:, i] in the loop would make autograd build a full-size zero
        # tensor per segment in the backward pass
        for i, (c, m_tok) in enumerate(zip(content.unbind(1), token_mask.unbind(1), strict=True)):
            kv = torch.cat([c, kv_anchors], dim=1)
            pad = torch.cat([~m_tok, anchor_pad], dim=1)
            read, _ = self.cross(self.read_norm(memory), kv, kv, key_padding_mask=pad, need_weights=False)
            updated = self.gru(read.reshape(b * n_mem, d), memory.reshape(b * n_mem, d)).view(b, n_mem, d)
            updated = self.firebreak(updated)
            valid = segment_mask[:, i].view(b, 1, 1)
            memory = torch.where(valid, updated, memory)
            count = m_tok.sum(-1, keepdim=True).clamp_min(1).to(c.dtype)
            summary = c.sum(1) / count  # padded positions are zero
            weights = torch.softmax(F.normalize(summary, dim=-1) @ unit.T * route_scale, dim=-1)
            entry = self.entry_norm(summary + weights @ anchors)
            entries.append(entry * segment_mask[:, i].unsqueeze(-1).to(entry.dtype))
        return BankState(
            memory=memory,
            entries=torch.stack(entries, dim=1),
            entry_mask=segment_mask.bool(),
            anchors=anchors,
            content=content.reshape(b, s * w, d),
            content_mask=token_mask.reshape(b, s * w).bool(),
        )
