"""Long text → consecutive fixed-size windows with the encoder's special tokens, batched with masks.

A text is tokenised without special tokens, cut to at most ``max_tokens`` content tokens, then split
into segments of ``C = W - n_special`` content tokens (75 for CLIP's W = 77) advancing by
``C - overlap``; each segment gets the encoder's own special tokens (``[CLS] … [SEP]`` or
``<BOS> … <EOS>``) and is padded to W. With the defaults (W = 77, 576 tokens, no overlap) a text
yields at most 8 segments.

**Over-long text is truncated with a warning** (``on_overflow="truncate"``, the default; the
documents that were cut are flagged in :attr:`SegmentBatch.truncated`), or refused with a
``ValueError`` (``on_overflow="error"``). **Empty text** (nothing left after tokenisation, e.g. ``""``
or only whitespace) is always a ``ValueError`` naming the offending index.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pentachora.nn.text_encoder import FrozenTextEncoder

__all__ = ["ON_OVERFLOW", "SegmentBatch", "Segmenter"]

logger = logging.getLogger(__name__)

ON_OVERFLOW = ("truncate", "error")


@dataclass
class SegmentBatch:
    """Windows of a batch of texts.

    Attributes:
        input_ids: ``(B, S, W)`` token ids (padding id in padded positions and absent segments).
        attention_mask: ``(B, S, W)`` 1 for real tokens (specials included), 0 for padding.
        segment_mask: ``(B, S)`` bool, True where the text has that segment.
        n_tokens: ``(B,)`` content tokens kept per text (after truncation).
        truncated: ``(B,)`` bool, True where the text was longer than ``max_tokens``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    segment_mask: torch.Tensor
    n_tokens: torch.Tensor
    truncated: torch.Tensor

    @property
    def n_segments(self) -> torch.Tensor:
        """``(B,)`` segments per text."""
        return self.segment_mask.sum(-1)

    def flat_windows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The real windows only: ``(ids (N, W), mask (N, W), index (N, 2))`` with (text, segment)."""
        index = self.segment_mask.nonzero()
        return self.input_ids[index[:, 0], index[:, 1]], self.attention_mask[index[:, 0], index[:, 1]], index


class Segmenter:
    """Cut long texts into the windows a frozen encoder can read.

    Args:
        encoder: The frozen encoder (its tokenizer, window and special tokens are used).
        max_tokens: Content tokens kept per text (default 576).
        overlap: Content tokens shared by consecutive segments (``0 <= overlap < C``).
        on_overflow: ``"truncate"`` (warn and keep the first ``max_tokens``) or ``"error"``.

    Raises:
        ValueError: Bad ``max_tokens``, ``overlap`` or ``on_overflow``.
    """

    def __init__(
        self,
        encoder: FrozenTextEncoder,
        max_tokens: int = 576,
        overlap: int = 0,
        on_overflow: str = "truncate",
    ) -> None:
        self.encoder = encoder
        self.window = encoder.window
        self.content = encoder.content_window
        if self.content < 1:
            raise ValueError(f"window {self.window} leaves no room for content after the special tokens")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if not 0 <= overlap < self.content:
            raise ValueError(f"overlap must be in [0, {self.content}), got {overlap}")
        if on_overflow not in ON_OVERFLOW:
            raise ValueError(f"on_overflow must be one of {ON_OVERFLOW}, got {on_overflow!r}")
        self.max_tokens = int(max_tokens)
        self.overlap = int(overlap)
        self.stride = self.content - self.overlap
        self.on_overflow = on_overflow

    @property
    def max_segments(self) -> int:
        """Segments of a text of ``max_tokens`` tokens (8 for the defaults)."""
        return self.segments_for(self.max_tokens)

    def segments_for(self, n_tokens: int) -> int:
        """Number of segments of a text with ``n_tokens`` content tokens (>= 1)."""
        if n_tokens <= self.content:
            return 1
        return 1 + math.ceil((n_tokens - self.content) / self.stride)

    def split_ids(self, ids: Sequence[int]) -> list[list[int]]:
        """Content ids (already truncated) → windows with special tokens (each <= W tokens)."""
        ids = list(ids)
        return [
            self.encoder.with_specials(ids[k * self.stride : k * self.stride + self.content])
            for k in range(self.segments_for(len(ids)))
        ]

    def prepare_ids(self, texts: Sequence[str]) -> tuple[list[list[int]], list[bool]]:
        """Tokenise, check for empty texts, truncate (or refuse) over-long ones.

        Returns:
            ``(content ids per text, truncated flags)``.

        Raises:
            ValueError: An empty text, or an over-long one with ``on_overflow="error"``.
        """
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            raise ValueError("no texts given")
        all_ids = self.encoder.tokenize(texts)
        flags = []
        for i, ids in enumerate(all_ids):
            if not ids:
                raise ValueError(
                    f"text {i} is empty (no tokens after tokenisation: {texts[i][:40]!r}); "
                    "give at least one word"
                )
            flags.append(len(ids) > self.max_tokens)
        long = [i for i, f in enumerate(flags) if f]
        if long:
            lengths = ", ".join(f"#{i}: {len(all_ids[i])}" for i in long[:5])
            if self.on_overflow == "error":
                raise ValueError(
                    f"{len(long)} text(s) exceed max_tokens={self.max_tokens} ({lengths}); shorten them, "
                    "raise max_tokens, or use on_overflow='truncate'"
                )
            dropped = sum(len(all_ids[i]) - self.max_tokens for i in long)
            logger.warning(
                "%d text(s) exceed max_tokens=%d tokens (%s%s); keeping the first %d tokens of each, "
                "%d token(s) dropped in all (raise max_tokens to read them)",
                len(long),
                self.max_tokens,
                lengths,
                ", …" if len(long) > 5 else "",
                self.max_tokens,
                dropped,
            )
        return [ids[: self.max_tokens] for ids in all_ids], flags

    def __call__(self, texts: str | Sequence[str], n_segments: int | None = None) -> SegmentBatch:
        """Segment a batch of texts.

        Args:
            texts: One text or a list.
            n_segments: Pad the segment axis to this many (default: the batch's maximum).

        Returns:
            A :class:`SegmentBatch`.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids, flags = self.prepare_ids(texts)
        return self.from_ids(ids, flags, n_segments=n_segments)

    def from_ids(
        self,
        ids: Sequence[Sequence[int]],
        truncated: Sequence[bool] | None = None,
        n_segments: int | None = None,
    ) -> SegmentBatch:
        """Segment already tokenised (and truncated) content ids; see :meth:`__call__`."""
        return self.from_windows(
            [self.split_ids(t) for t in ids],
            n_tokens=[len(t) for t in ids],
            truncated=truncated,
            n_segments=n_segments,
        )

    def from_windows(
        self,
        windows: Sequence[Sequence[Sequence[int]]],
        n_tokens: Sequence[int] | None = None,
        truncated: Sequence[bool] | None = None,
        n_segments: int | None = None,
    ) -> SegmentBatch:
        """Batch windows cut elsewhere (e.g. at word boundaries): ``windows[i][k]`` holds the ids of
        window k of text i *with* the special tokens (each at most W ids; every text at least one window).

        Raises:
            ValueError: A text without windows, a window longer than W, or ``n_segments`` too small.
        """
        if not windows or any(len(w) == 0 for w in windows):
            raise ValueError("every text needs at least one window")
        s_max = max(len(w) for w in windows)
        s = s_max if n_segments is None else int(n_segments)
        if s < s_max:
            raise ValueError(f"n_segments={s} is smaller than the longest text's {s_max} segments")
        b, w = len(windows), self.window
        input_ids = torch.full((b, s, w), self.encoder.pad_token_id, dtype=torch.long)
        attention = torch.zeros(b, s, w, dtype=torch.long)
        seg_mask = torch.zeros(b, s, dtype=torch.bool)
        for i, wins in enumerate(windows):
            for k, win in enumerate(wins):
                if len(win) > w:
                    raise ValueError(f"window {k} of text {i} has {len(win)} ids > W={w}")
                input_ids[i, k, : len(win)] = torch.tensor(list(win), dtype=torch.long)
                attention[i, k, : len(win)] = 1
                seg_mask[i, k] = True
        if n_tokens is None:
            n_tokens = [sum(len(win) - self.encoder.n_special for win in wins) for wins in windows]
        return SegmentBatch(
            input_ids=input_ids,
            attention_mask=attention,
            segment_mask=seg_mask,
            n_tokens=torch.tensor(list(n_tokens), dtype=torch.long),
            truncated=torch.tensor(
                list(truncated) if truncated is not None else [False] * b, dtype=torch.bool
            ),
        )
