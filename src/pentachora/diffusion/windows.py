"""Weighted prompt text → token windows of the encoder, split at word and punctuation boundaries.

**The split policy** (:func:`split_windows`): a window holds at most ``C = W − specials`` content
tokens (75 for CLIP). When the text does not fit, the window ends

1. after the last punctuation token (``, . ; : ! ?``) among its last ``lookback`` tokens (20, as
   AUTOMATIC1111 looks back for a comma), else
2. after the last token that ends a word (never inside a word's pieces), else
3. at ``C`` tokens (one "word" longer than a whole window: nothing better exists).

``BREAK`` (see :mod:`pentachora.diffusion.weighting`) always ends a window. A prompt of exactly C
tokens is one window; C + 1 tokens make two. Word ends are read from the tokenizer's own pieces:
CLIP's ``</w>`` suffix, WordPiece's ``##`` continuation prefix, SentencePiece's ``▁`` word prefix;
an unknown tokenizer treats every token as a word end (plain fixed splits).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pentachora.diffusion.weighting import Fragment
from pentachora.nn.text_encoder import FrozenTextEncoder

__all__ = [
    "PUNCTUATION",
    "SPLIT_LOOKBACK",
    "SPLIT_POLICIES",
    "PromptWindows",
    "prompt_windows",
    "split_windows",
    "word_ends",
]

logger = logging.getLogger(__name__)

SPLIT_LOOKBACK = 20
"""Tokens before a window's edge searched for punctuation to split after."""

PUNCTUATION = frozenset(",.;:!?")

SPLIT_POLICIES = ("boundary", "fixed")
"""``boundary``: the policy above; ``fixed``: every C tokens (compel's and the memory's training cut)."""


@dataclass
class PromptWindows:
    """One prompt cut into windows of content tokens (no special tokens).

    Attributes:
        ids: Content ids per window.
        weights: The weight of every content id, per window.
        n_tokens: Content tokens kept.
        dropped: Content tokens cut by ``max_windows``.
    """

    ids: list[list[int]]
    weights: list[list[float]]
    n_tokens: int
    dropped: int = 0

    @property
    def weighted(self) -> bool:
        return any(w != 1.0 for ws in self.weights for w in ws)


def _pieces(encoder: FrozenTextEncoder, ids: Sequence[int]) -> list[str]:
    return [str(t) for t in encoder.tokenizer.convert_ids_to_tokens(list(ids))]


def word_ends(encoder: FrozenTextEncoder, ids: Sequence[int]) -> tuple[list[bool], list[bool]]:
    """``(ends_word, is_punctuation)`` per token of ``ids`` (content ids, one text).

    A window may end after token i when ``ends_word[i]`` (see the module docstring).
    """
    pieces = _pieces(encoder, ids)
    n = len(pieces)
    if any(p.endswith("</w>") for p in pieces):  # CLIP BPE
        ends = [p.endswith("</w>") for p in pieces]
        bare = [p[:-4] if p.endswith("</w>") else p for p in pieces]
    elif any(p.startswith("##") for p in pieces) or _is_wordpiece(encoder):
        ends = [i == n - 1 or not pieces[i + 1].startswith("##") for i in range(n)]
        bare = [p[2:] if p.startswith("##") else p for p in pieces]
    elif any(p.startswith("▁") for p in pieces):  # SentencePiece
        ends = [i == n - 1 or pieces[i + 1].startswith("▁") for i in range(n)]
        bare = [p.lstrip("▁") for p in pieces]
    else:
        ends, bare = [True] * n, pieces
    if n:
        ends[-1] = True
    return ends, [b in PUNCTUATION for b in bare]


def _is_wordpiece(encoder: FrozenTextEncoder) -> bool:
    return type(encoder.tokenizer).__name__.startswith(("Bert", "DistilBert", "Electra", "MPNet"))


def split_windows(
    n: int, ends: Sequence[bool], punct: Sequence[bool], content: int, lookback: int = SPLIT_LOOKBACK
) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` windows over ``n`` tokens by the module's split policy.

    Args:
        n: Tokens in the span (between two ``BREAK``\\ s).
        ends: Per token: a window may end after it.
        punct: Per token: it is punctuation.
        content: Content tokens per window (C).
        lookback: Tokens before the edge searched for punctuation.
    """
    if content < 1:
        raise ValueError(f"content must be >= 1, got {content}")
    out: list[tuple[int, int]] = []
    start = 0
    while start < n:
        if n - start <= content:
            out.append((start, n))
            break
        edge = start + content  # the window may hold tokens start .. edge-1
        stop = next(
            (j + 1 for j in range(edge - 1, max(start, edge - lookback) - 1, -1) if punct[j] and ends[j]),
            None,
        )
        if stop is None:
            stop = next((j + 1 for j in range(edge - 1, start - 1, -1) if ends[j]), edge)
        out.append((start, stop))
        start = stop
    return out


def prompt_windows(
    encoder: FrozenTextEncoder,
    windows: Sequence[Sequence[Fragment]],
    max_windows: int,
    lookback: int = SPLIT_LOOKBACK,
    policy: str = "boundary",
) -> PromptWindows:
    """Tokenise parsed fragments (one list per ``BREAK`` span) and cut them into windows.

    Each fragment is tokenised alone (as compel and A1111 do); for one unweighted fragment this is
    exactly the pipeline's tokenisation. Windows past ``max_windows`` are dropped with a warning.
    ``policy="fixed"`` cuts every C tokens instead (``BREAK`` still ends a window).
    """
    if policy not in SPLIT_POLICIES:
        raise ValueError(f"policy must be one of {SPLIT_POLICIES}, got {policy!r}")
    ids: list[list[int]] = []
    weights: list[list[float]] = []
    for span in windows:
        texts = [f.text for f in span]
        toks = encoder.tokenize(texts) if texts else []
        flat = [t for ts in toks for t in ts]
        flat_w = [f.weight for f, ts in zip(span, toks, strict=True) for _ in ts]
        if not flat:
            continue
        if policy == "fixed":
            ends, punct = [True] * len(flat), [False] * len(flat)
        else:
            ends, punct = word_ends(encoder, flat)
        for a, b in split_windows(len(flat), ends, punct, encoder.content_window, lookback):
            ids.append(flat[a:b])
            weights.append(flat_w[a:b])
    if not ids:  # the empty prompt: one window of specials only (the pipeline's "")
        ids, weights = [[]], [[]]
    total = sum(len(w) for w in ids)
    dropped = 0
    if len(ids) > max_windows:
        dropped = sum(len(w) for w in ids[max_windows:])
        logger.warning(
            "a prompt needs %d windows, more than max_windows=%d: its last %d tokens are dropped "
            "(raise max_windows to read them)",
            len(ids),
            max_windows,
            dropped,
        )
        ids, weights = ids[:max_windows], weights[:max_windows]
    return PromptWindows(ids=ids, weights=weights, n_tokens=total - dropped, dropped=dropped)
