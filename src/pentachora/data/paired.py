"""Paired expert features: items seen by several frozen experts, stored once, batched by step.

A :class:`PairedFeatures` holds, for one split, every expert's **token features** of the same N items
(row i of every expert is the same item) as a flat ``(ΣT_i, d)`` float16 tensor plus ``(N + 1)``
offsets, the item titles (source documents) and a content hash per item. It saves to one safetensors
file (names, titles and hashes in the metadata) and reloads exactly, so a benchmark extracts features
once and every contender reuses them.

Splits are by **source document**: the embedded corpus holds whole Wikipedia articles out
(:func:`pentachora.data.text.wikipedia_corpus`); :func:`leakage_check` verifies that no title and no
item text is on both sides.

:class:`PairedBatchSource` is the trainer's :class:`~pentachora.data.seeding.BatchSource`: ``batch(step)``
draws B distinct items with a generator seeded by ``(seed, step)`` and returns
``{expert: {"features": (B, T, d) float32, "mask": (B, T) bool}, "index": (B,)}``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pentachora.data.seeding import step_generator
from pentachora.errors import DataError
from pentachora.io import loads_json

__all__ = [
    "PairedBatchSource",
    "PairedFeatures",
    "extract_paired_features",
    "leakage_check",
    "text_hash",
]

logger = logging.getLogger(__name__)

KIND = "pentachora.PairedFeatures"


def text_hash(text: str) -> str:
    """Short SHA-256 of an item's text (for the leakage check)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class PairedFeatures:
    """Token features of N items under several experts (one split).

    Attributes:
        tokens: ``{expert: (ΣT_i, d)}`` concatenated token features (float16 on disk).
        offsets: ``{expert: (N + 1,)}`` int64 start offsets (item i is ``tokens[o[i]:o[i+1]]``).
        titles: Source document of each item.
        hashes: Content hash of each item.
        meta: Free-form description (expert descriptions, corpus, split).
    """

    tokens: dict[str, torch.Tensor]
    offsets: dict[str, torch.Tensor]
    titles: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    _pooled: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    @property
    def experts(self) -> list[str]:
        return list(self.tokens)

    @property
    def n(self) -> int:
        return int(next(iter(self.offsets.values())).numel() - 1)

    def dim(self, name: str) -> int:
        return int(self.tokens[name].shape[1])

    @property
    def dims(self) -> dict[str, int]:
        return {n: self.dim(n) for n in self.experts}

    def validate(self) -> None:
        """Raise :class:`DataError` on unequal item counts, bad offsets or NaN/inf features."""
        if not self.tokens or set(self.tokens) != set(self.offsets):
            raise DataError("paired features need the same experts in tokens and offsets (and at least one)")
        counts = {n: int(o.numel() - 1) for n, o in self.offsets.items()}
        if len(set(counts.values())) != 1:
            raise DataError(
                f"experts must see the same items, but their item counts differ: {counts}; extract every "
                "expert on the same list of items"
            )
        n = next(iter(counts.values()))
        for name, t in self.tokens.items():
            o = self.offsets[name]
            if t.dim() != 2 or int(o[0]) != 0 or int(o[-1]) != t.shape[0] or bool((o[1:] <= o[:-1]).any()):
                raise DataError(
                    f"expert {name!r}: offsets do not index its token rows (every item needs ≥ 1 token)"
                )
            if not torch.isfinite(t).all():
                raise DataError(
                    f"expert {name!r}: features contain {int((~torch.isfinite(t)).sum())} NaN/inf values; "
                    "fix the encoder output or drop those items"
                )
        for label, values in (("titles", self.titles), ("hashes", self.hashes)):
            if values and len(values) != n:
                raise DataError(f"{len(values)} {label} for {n} items")

    # ------------------------------------------------------------------ access
    def item(self, name: str, i: int) -> torch.Tensor:
        o = self.offsets[name]
        return self.tokens[name][int(o[i]) : int(o[i + 1])]

    def pooled(self, name: str) -> torch.Tensor:
        """``(N, d)`` float32 mean of each item's token features."""
        if name not in self._pooled:
            t, o = self.tokens[name].float(), self.offsets[name]
            lengths = (o[1:] - o[:-1]).float()
            ids = torch.repeat_interleave(torch.arange(self.n), (o[1:] - o[:-1]))
            sums = torch.zeros(self.n, t.shape[1]).index_add_(0, ids, t)
            self._pooled[name] = sums / lengths[:, None]
        return self._pooled[name]

    def padded(
        self, name: str, index: torch.Tensor | Sequence[int], max_tokens: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, T, d)`` float32 zero-padded features and the ``(B, T)`` bool mask of items ``index``."""
        idx = [int(i) for i in index]
        items = [self.item(name, i) for i in idx]
        if max_tokens:
            items = [x[:max_tokens] for x in items]
        t = max(x.shape[0] for x in items)
        feats = torch.zeros(len(items), t, self.dim(name))
        mask = torch.zeros(len(items), t, dtype=torch.bool)
        for j, x in enumerate(items):
            feats[j, : x.shape[0]] = x.float()
            mask[j, : x.shape[0]] = True
        return feats, mask

    def batch(
        self, index: torch.Tensor | Sequence[int], experts: Sequence[str] | None = None, max_tokens: int = 0
    ) -> dict:
        """The batch dict of items ``index`` for ``experts`` (default all)."""
        out: dict = {}
        for name in experts or self.experts:
            f, m = self.padded(name, index, max_tokens)
            out[name] = {"features": f, "mask": m}
        out["index"] = torch.as_tensor([int(i) for i in index], dtype=torch.long)
        return out

    def subset(self, index: Sequence[int]) -> PairedFeatures:
        """A new :class:`PairedFeatures` of the items ``index`` (in that order)."""
        idx = [int(i) for i in index]
        tokens, offsets = {}, {}
        for name in self.experts:
            items = [self.item(name, i) for i in idx]
            tokens[name] = torch.cat(items) if items else self.tokens[name][:0]
            lens = torch.tensor([x.shape[0] for x in items], dtype=torch.long)
            offsets[name] = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
        return PairedFeatures(
            tokens,
            offsets,
            [self.titles[i] for i in idx] if self.titles else [],
            [self.hashes[i] for i in idx] if self.hashes else [],
            dict(self.meta),
        )

    def compressed(self, max_tokens: int, experts: Sequence[str] | None = None) -> PairedFeatures:
        """A copy where every item of more than ``max_tokens`` tokens becomes ``max_tokens`` means of
        contiguous, near-equal chunks of its tokens (order kept; shorter items unchanged).

        Cheap training inputs for variable-length experts on a CPU: the set of chunk means keeps the
        item's content (their mean is the item mean up to the chunks' unequal sizes).
        """
        if max_tokens < 1:
            raise DataError(f"max_tokens must be >= 1, got {max_tokens}")
        tokens, offsets = dict(self.tokens), dict(self.offsets)
        for name in experts or self.experts:
            items = []
            for i in range(self.n):
                x = self.item(name, i)
                if x.shape[0] > max_tokens:
                    x = torch.stack([c.float().mean(0) for c in torch.tensor_split(x, max_tokens)]).to(
                        x.dtype
                    )
                items.append(x)
            tokens[name] = torch.cat(items)
            lens = torch.tensor([x.shape[0] for x in items], dtype=torch.long)
            offsets[name] = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
        return PairedFeatures(tokens, offsets, list(self.titles), list(self.hashes), dict(self.meta))

    def pooled_only(self, experts: Sequence[str] | None = None) -> PairedFeatures:
        """A copy holding one token per item per expert: its mean (what pooled-feature models read)."""
        names = list(experts or self.experts)
        tokens = {n: self.pooled(n).to(self.tokens[n].dtype) for n in names}
        offsets = {n: torch.arange(self.n + 1) for n in names}
        return PairedFeatures(tokens, offsets, list(self.titles), list(self.hashes), dict(self.meta))

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        from pentachora.io import atomic_save_tensors

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for name in self.experts:
            tensors[f"{name}.tokens"] = self.tokens[name].to(torch.float16)
            tensors[f"{name}.offsets"] = self.offsets[name]
        meta = {
            "kind": KIND,
            "experts": json.dumps(self.experts),
            "titles": json.dumps(self.titles),
            "hashes": json.dumps(self.hashes),
            "meta": json.dumps(self.meta),
        }
        atomic_save_tensors(path, tensors, metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> PairedFeatures:
        """Load a file written by :meth:`save` (``CheckpointError`` for foreign files)."""
        from pentachora.io import CheckpointError, load_tensors, read_tensor_metadata

        meta = read_tensor_metadata(path)
        if meta.get("kind") != KIND:
            raise CheckpointError(f"{path} is not a saved PairedFeatures file")
        tensors = load_tensors(path)
        experts = loads_json(meta["experts"])
        return cls(
            {n: tensors[f"{n}.tokens"] for n in experts},
            {n: tensors[f"{n}.offsets"] for n in experts},
            loads_json(meta["titles"]),
            loads_json(meta["hashes"]),
            loads_json(meta["meta"]),
        )


def extract_paired_features(
    texts: Sequence[str],
    experts: Mapping[str, Callable[[Sequence[str]], list[torch.Tensor]]],
    titles: Sequence[str] = (),
    meta: dict | None = None,
    chunk: int = 512,
) -> PairedFeatures:
    """Run every expert over the same items and pack the result.

    Args:
        texts: The N items.
        experts: ``{name: fn(texts) -> [(T_i, d)]}`` (e.g. ``TextExpert.token_features``).
        titles: Source document of each item.
        meta: Recorded description.
        chunk: Items per call of each expert.

    Raises:
        DataError: An expert returns the wrong number of items, inconsistent widths, or NaN/inf.
    """
    if not texts:
        raise DataError("no items to extract features from")
    tokens, offsets = {}, {}
    for name, fn in experts.items():
        items: list[torch.Tensor] = []
        for start in range(0, len(texts), chunk):
            part = fn(list(texts[start : start + chunk]))
            if len(part) != len(texts[start : start + chunk]):
                raise DataError(
                    f"expert {name!r} returned {len(part)} items for {len(texts[start : start + chunk])}"
                )
            items.extend(part)
        widths = {int(x.shape[-1]) for x in items}
        if len(widths) != 1 or any(x.dim() != 2 or x.shape[0] < 1 for x in items):
            raise DataError(
                f"expert {name!r} must return (T_i ≥ 1, d) tensors of one width, got widths {widths}"
            )
        tokens[name] = torch.cat(items).to(torch.float16)
        lens = torch.tensor([x.shape[0] for x in items], dtype=torch.long)
        offsets[name] = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
        logger.info(
            "extracted %s: %d items, %d tokens, width %d", name, len(items), int(lens.sum()), widths.pop()
        )
    return PairedFeatures(tokens, offsets, list(titles), [text_hash(t) for t in texts], dict(meta or {}))


def leakage_check(train: PairedFeatures, heldout: PairedFeatures) -> dict[str, int]:
    """Count source documents (titles) and item texts (hashes) present on both sides (both must be 0)."""
    shared_titles = set(train.titles) & set(heldout.titles) - {""}
    shared_items = set(train.hashes) & set(heldout.hashes)
    return {
        "shared_titles": len(shared_titles),
        "shared_items": len(shared_items),
        "train_titles": len(set(train.titles)),
        "heldout_titles": len(set(heldout.titles)),
    }


class PairedBatchSource:
    """Seeded random batches of paired items (a ``BatchSource``: ``batch(step)`` is pure in (seed, step)).

    Args:
        features: The training split.
        batch_size: Items per batch (distinct within a batch).
        seed: Base seed.
        experts: Experts to include (default all).
        max_tokens: Token cap per item (0 = none).
    """

    def __init__(
        self,
        features: PairedFeatures,
        batch_size: int = 128,
        seed: int = 0,
        experts: Sequence[str] | None = None,
        max_tokens: int = 0,
    ) -> None:
        if not 2 <= batch_size <= features.n:
            raise DataError(
                f"batch_size must be in [2, {features.n}] (the number of items), got {batch_size}"
            )
        unknown = sorted(set(experts or []) - set(features.experts))
        if unknown:
            raise DataError(f"unknown experts {unknown}; the features hold {features.experts}")
        self.features, self.batch_size, self.seed = features, int(batch_size), int(seed)
        self.experts = list(experts or features.experts)
        self.max_tokens = int(max_tokens)

    def batch(self, step: int) -> dict:
        g = step_generator(self.seed, step)
        idx = torch.randperm(self.features.n, generator=g)[: self.batch_size]
        return self.features.batch(idx, self.experts, self.max_tokens)
