"""Metrics of the long-prompt memory.

* :func:`in_batch_accuracy` — **m_acc**: pooled → teacher retrieval accuracy inside fixed batches.
* :func:`recall_at_1` — R@1 of retrieving the paired row among *all* candidates (teacher R@1 and the
  **tail R@1**: each held-out document's *tail* — its text beyond the first window, embedded by the
  teacher — retrieved from a model's output among every held-out document).
* :func:`masked_sequence_cosine` — **s_cos**: mean per-position cosine to the native sequence.
* :func:`paired_cosine` — mean cosine of paired rows (pooled ↔ teacher).

All functions are pure torch; none imports the trainer. The convergence-order analysis lives in
:mod:`pentachora.diagnostics.convergence` (it is not specific to this model).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "attention_probe_recall",
    "in_batch_accuracy",
    "masked_sequence_cosine",
    "paired_cosine",
    "recall_at_1",
]


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


def recall_at_1(queries: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor | None = None) -> float:
    """Fraction of rows i whose most cosine-similar key is key i.

    Args:
        queries: ``(N, D)``.
        keys: ``(N, D)`` paired with ``queries``.
        valid: optional ``(N,)`` bool; only these rows are queries *and* candidates.

    Returns:
        R@1 in [0, 1] (``nan`` when fewer than 2 rows are valid).
    """
    if valid is not None:
        queries, keys = queries[valid], keys[valid]
    if queries.shape[0] < 2:
        return math.nan
    sims = _unit(queries) @ _unit(keys).T
    hits = sims.argmax(dim=1) == torch.arange(sims.shape[0], device=sims.device)
    return float(hits.float().mean())


def attention_probe_recall(
    sequences: torch.Tensor,
    mask: torch.Tensor,
    queries: torch.Tensor,
    valid: torch.Tensor | None = None,
    temperature: float = 0.05,
    block: int = 16,
) -> float:
    """R@1 of a cross-attention-like read: can query j *find* its content among sequence i's positions?

    For every pair (i, j): weights ``a = softmax_p(cos(x_ip, q_j) / τ)`` over sequence i's real
    positions, read ``r_ij = Σ_p a_p x_ip``, score ``cos(r_ij, q_j)``; a hit when sequence i scores
    its own query highest. Unlike the cosine of the sequence *mean*, a sharp read (small τ) rewards
    positions that carry the query's content — what a UNet's cross-attention query can attend to. A
    shift shared by every position leaves the weights unchanged and moves every read by itself, as it
    moves a cross-attention output by ``W_v·shift``; the metric sees it, as the UNet does.

    Args:
        sequences: ``(N, L, H)`` (zero-padded to a common L).
        mask: ``(N, L)`` bool, real positions.
        queries: ``(N, H)`` paired with ``sequences`` (e.g. the teacher embedding of each tail).
        valid: optional ``(N,)`` bool; only these rows are sequences *and* candidates.
        temperature: τ of the read (0.05: sharp).
        block: Sequences per block (memory: ``block·N·L`` weights at a time).

    Returns:
        R@1 in [0, 1] (``nan`` when fewer than 2 rows are valid).
    """
    if sequences.ndim != 3 or mask.shape != sequences.shape[:2] or queries.shape[0] != sequences.shape[0]:
        raise ValueError(
            f"need sequences (N, L, H), mask (N, L), queries (N, H); got {tuple(sequences.shape)}, "
            f"{tuple(mask.shape)}, {tuple(queries.shape)}"
        )
    if valid is not None:
        sequences, mask, queries = sequences[valid], mask[valid], queries[valid]
    n = sequences.shape[0]
    if n < 2:
        return math.nan
    q = _unit(queries)  # (N, H)
    hits = 0
    for start in range(0, n, block):
        x = sequences[start : start + block].float()  # (b, L, H)
        m = mask[start : start + block].bool()
        logits = torch.einsum("blh,jh->bjl", _unit(x), q) / temperature
        logits = logits.masked_fill(~m.unsqueeze(1), float("-inf"))
        reads = torch.einsum("bjl,blh->bjh", logits.softmax(-1), x)  # (b, N, H)
        scores = (_unit(reads) * q.unsqueeze(0)).sum(-1)  # (b, N)
        own = torch.arange(start, start + x.shape[0], device=scores.device)
        hits += int((scores.argmax(1) == own).sum())
    return hits / n


def in_batch_accuracy(queries: torch.Tensor, keys: torch.Tensor, batch_size: int = 32) -> float:
    """m_acc: R@1 inside consecutive batches of ``batch_size`` rows (the training view), averaged
    over rows. A trailing batch smaller than 2 rows is ignored."""
    hits, total = 0.0, 0
    for start in range(0, queries.shape[0], batch_size):
        q, k = queries[start : start + batch_size], keys[start : start + batch_size]
        if q.shape[0] < 2:
            continue
        hits += recall_at_1(q, k) * q.shape[0]
        total += q.shape[0]
    return hits / total if total else math.nan


def paired_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine similarity of paired rows of ``(N, D)`` tensors."""
    return float((_unit(a) * _unit(b)).sum(-1).mean())


def masked_sequence_cosine(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-position cosine averaged over the valid positions of each sequence, then over the batch.

    Args:
        pred: ``(B, L, H)``.
        target: ``(B, L, H)``.
        mask: ``(B, L)`` (bool or 0/1), True for positions that count.

    Returns:
        0-d tensor (differentiable).
    """
    cos = F.cosine_similarity(pred.float(), target.float(), dim=-1, eps=1e-8)
    m = mask.to(cos.dtype)
    per_seq = (cos * m).sum(-1) / m.sum(-1).clamp_min(1.0)
    return per_seq.mean()
