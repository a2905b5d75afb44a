"""Native-format outputs that see the whole prompt: the residual 77-position sequence and contextual chunks.

Both start from what the frozen encoder itself says about a window — its *native* sequence — and add a
learned residual read from the memory of the whole prompt::

    native_i     (W, H)   the encoder's target layer on window i (what compel / lpw pipelines use)
    ramp         (B,)     clamp(tokens after the first window / content window, 0, 1)
    chunk_i    = native_i + ramp · Out(CrossAttn(In(LN(native_i)) + PE + e_seg[i], context))

With ``mean_shift > 0`` (:class:`MeanShift`) the output also carries a *shift toward the whole
prompt*, ``λ · s ⊙ (m_all − m_i)`` at every position of window i. Here m_all − m_i is the token mean of
every window's native sequence minus window i's own. The gate λ is learned, initialised to
``mean_shift``; the per-channel scale ``s`` is learned, initialised to 1.

The shift is not ramped. A token-weighted mean is already 0 for one window and grows continuously
with the tail. Ramping it as well cost tail R@1 0.93 → 0.83 at the same s_cos (measured), because
short tails were then counted down twice.

With λ = 1 the window's token mean *is* the concatenation's token mean. A constant shift leaves each
cross-attention's weights unchanged, since it adds the same logit to every position. It adds
``W_v·shift`` to the attention's output: the whole prompt arrives as a bias that every query reads.

``context`` is the memory the bank built from every window (memory tokens, bank entries, anchors and
all content tokens), so window i's chunk can carry the other windows' content; ``Out`` starts at
zero, so an untrained model *is* compel-style concatenation.

**Short prompts are exact by construction.** ``ramp`` is 0 when the prompt fits one window, so the
output is the native sequence bit for bit, whatever the weights. It grows linearly with the tokens
beyond the first window, so the output is continuous in the prompt length: a 76-token prompt (one
token in a second window) moves 1/75 of the way to the full residual, and a prompt whose tail fills a
whole window gets all of it — there is no seam at the 75/76-token boundary, and a nearly-empty second
window (whose memory the seed found weak) cannot override the first.

:func:`tail_ramp` computes the ramp; :class:`ContextualChunks` is the per-window residual.
"""

from __future__ import annotations

import torch
from torch import nn

from pentachora.memory.reconstructor import _CrossBlock, sinusoidal_positions

__all__ = ["ContextualChunks", "MeanShift", "tail_ramp", "window_mean_shift"]

SPECIALS_PER_WINDOW = 2  # BOS/EOS (CLIP) or CLS/SEP (BERT): the same assumption as MemoryConfig.max_segments


def tail_ramp(attention_mask: torch.Tensor, segment_mask: torch.Tensor, window: int) -> torch.Tensor:
    """``(B,)`` in [0, 1]: content tokens in the windows after the first, over one window's content.

    Args:
        attention_mask: ``(B, S, W)`` real tokens (specials included).
        segment_mask: ``(B, S)`` real segments.
        window: W (tokens per window including specials).

    Returns:
        0 for single-window prompts (exact native output), 1 once the tail fills a whole window.
    """
    if attention_mask.shape[1] < 2:
        return attention_mask.new_zeros(attention_mask.shape[0], dtype=torch.float32)
    seg = segment_mask[:, 1:].bool()
    tokens = (attention_mask[:, 1:].bool() & seg.unsqueeze(-1)).sum((1, 2))
    content = (tokens - SPECIALS_PER_WINDOW * seg.sum(1)).clamp_min(0).float()
    return (content / float(window - SPECIALS_PER_WINDOW)).clamp(0.0, 1.0)


def window_mean_shift(
    native: torch.Tensor, attention_mask: torch.Tensor, segment_mask: torch.Tensor
) -> torch.Tensor:
    """``(B, S, H)``: the token mean of every real window minus each window's own token mean.

    Means are over real tokens (specials included, as the feature cache's ``window_target_sum``), so
    row 0 is ``concat_mean − first_mean`` of the benchmark's training-free mean-shift contender.
    Single-window prompts and absent windows get 0.

    Args:
        native: ``(B, S, W, H)`` native window sequences.
        attention_mask: ``(B, S, W)`` real tokens.
        segment_mask: ``(B, S)`` real windows.
    """
    tokens = (attention_mask.bool() & segment_mask.bool().unsqueeze(-1)).to(native.dtype)  # (B, S, W)
    sums = (native * tokens.unsqueeze(-1)).sum(2)  # (B, S, H)
    counts = tokens.sum(2)  # (B, S)
    own = sums / counts.clamp_min(1.0).unsqueeze(-1)
    whole = sums.sum(1) / counts.sum(1).clamp_min(1.0).unsqueeze(-1)  # (B, H)
    keep = segment_mask.to(native.dtype).unsqueeze(-1)
    return (whole.unsqueeze(1) - own) * keep


class MeanShift(nn.Module):
    """``λ · s ⊙ shift``: the learned gate λ (a scalar, initialised to ``init``) and per-channel scale
    ``s`` (``(H,)``, initialised to 1) of :func:`window_mean_shift`.

    Args:
        hidden: Encoder width H.
        init: Initial λ (0.75 keeps the first window's s_cos ≈ 0.95 on MiniLM with tail R@1 ≈ 0.93 —
            ``benchmarks/results/memory_long.md``).
    """

    def __init__(self, hidden: int, init: float) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.tensor(float(init)))
        self.scale = nn.Parameter(torch.ones(hidden))

    def forward(self, shift: torch.Tensor) -> torch.Tensor:
        """``shift (..., H)`` → the gated, scaled shift of the same shape."""
        return self.gate * self.scale * shift


class ContextualChunks(nn.Module):
    """One native-format sequence per window, each with a residual read from the whole prompt's memory.

    Args:
        dim: Memory width d.
        hidden: Encoder width H.
        max_segments: Windows the model accepts.
        window: W.
        n_heads: Attention heads.
        layers: Cross-attention layers.
        ffn_mult: FFN expansion.
        dropout: Dropout.
    """

    def __init__(
        self,
        dim: int,
        hidden: int,
        max_segments: int,
        window: int = 77,
        n_heads: int = 8,
        layers: int = 1,
        ffn_mult: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_norm = nn.LayerNorm(hidden)
        self.in_proj = nn.Linear(hidden, dim)
        self.register_buffer("positions", sinusoidal_positions(window, dim), persistent=False)
        self.segment_embed = nn.Parameter(torch.randn(max_segments, dim) * 0.02)
        self.blocks = nn.ModuleList([_CrossBlock(dim, n_heads, ffn_mult, dropout) for _ in range(layers)])
        self.out_norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, hidden)
        nn.init.zeros_(self.out.weight)  # an untrained model is plain concatenation
        nn.init.zeros_(self.out.bias)

    def forward(
        self,
        native: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor,
        ramp: torch.Tensor,
        segment_mask: torch.Tensor,
        shift: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-window chunks.

        Args:
            native: ``(B, S, W, H)`` native window sequences.
            context: ``(B, T, d)`` the memory (as the reconstructor reads it).
            context_mask: ``(B, T)`` bool, True for real entries.
            ramp: ``(B,)`` residual scale (:func:`tail_ramp`).
            segment_mask: ``(B, S)`` real windows (absent ones come out as zeros).
            shift: ``(B, S, H)`` optional per-window shift added to every position of the residual
                (:class:`MeanShift` of :func:`window_mean_shift`).

        Returns:
            ``(B, S, W, H)``: ``native + ramp · residual (+ shift)`` on real windows, 0 elsewhere.
        """
        b, s, w, h = native.shape
        x = self.in_proj(self.in_norm(native)) + self.positions[:w] + self.segment_embed[:s].unsqueeze(1)
        x = x.reshape(b, s * w, -1)
        pad = ~context_mask
        for blk in self.blocks:
            x = blk(x, context, pad)
        delta = ramp.to(native.dtype).view(b, 1, 1, 1) * self.out(self.out_norm(x)).view(b, s, w, h)
        if shift is not None:  # token-weighted, so already 0 for one window and continuous: no ramp
            delta = delta + shift.to(delta.dtype).unsqueeze(2)
        keep = segment_mask.to(native.dtype).view(b, s, 1, 1)
        return (native + delta) * keep
