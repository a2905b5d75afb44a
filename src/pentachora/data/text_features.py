"""The long-text feature store (the memory family's training data): run the frozen encoder and the
teacher once, train for many epochs from disk.

The frozen student's per-segment states (the extraction layers), the teacher embedding of each
document, the first-window sequence target and — for evaluation splits — the teacher embedding of
each document's *tail* (its text beyond the first window) are computed once and stored as
safetensors shards. Epochs never rerun the encoder.

**Keying.** A cache folder is ``ROOT/<split>-<key[:16]>`` where ``key`` is the SHA-256 of every
input that changes the features: the student's fingerprint (class, config, a sample of every weight,
vocabulary), window, extraction layers, target layer, pooling, ``max_tokens``, overlap, the teacher's
fingerprint, context and pooling, whether tails are stored, the format version and the SHA-256 of the
texts. The full key is stored in ``manifest.json`` and in every shard's metadata and is checked on
load, so a stale cache is never read: change any of them and a new folder is built.

**Layout**::

    ROOT/<split>-<key16>/manifest.json            written last (atomically): the build is complete
    ROOT/<split>-<key16>/shard-00000.safetensors  documents [0, docs_per_shard)
    ...

Each shard holds, for its documents (``n`` of them, ``m`` segments in total)::

    states            (m, n_layers, W, H) float16   extraction-layer states of every segment
    attention_mask    (m, W)              uint8      real tokens of every segment
    window_pooled     (m, P_s)            float32    the encoder's pooled output of every window
    window_target_sum (m, H)              float32    sum over real tokens of the target layer
    window_tokens     (m,)                int32      real tokens (specials included) per window
    seg_counts        (n,)                int32      segments per document
    n_tokens          (n,)                int32      content tokens read per document
    truncated         (n,)                uint8      document longer than max_tokens
    teacher           (n, P)              float32    teacher embedding of the text the student read
    seq_target        (n, W, H)           float16    target-layer output on the first window
    seq_mask          (n, W)              uint8      positions of seq_target that count
    tail, has_tail    (n, P), (n,)                   teacher embedding of the tail (if stored)

An interrupted build keeps its finished shards (their metadata carries the key) and resumes.
float16 storage halves the disk and memory of the states; they are converted to float32 when
batched. The default corpus (2,227 documents, ≈7,900 segments) takes ≈1.4 GB.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pentachora.data.segmenter import SegmentBatch, Segmenter
from pentachora.data.text import corpus_fingerprint
from pentachora.io import CheckpointError, atomic_save_tensors, atomic_write_json, load_tensors, read_json
from pentachora.nn.text_encoder import FrozenTextEncoder

__all__ = [
    "CACHE_FORMAT",
    "CachedDocumentSource",
    "FeatureCache",
    "build_feature_cache",
    "cache_key",
    "default_cache_root",
    "segment_features",
]

logger = logging.getLogger(__name__)

CACHE_FORMAT = "pentachora-memory-features-v1"
MANIFEST = "manifest.json"


def default_cache_root() -> Path:
    """``$PENTACHORA_CACHE/memory-features`` or ``~/.cache/pentachora/memory-features``."""
    base = os.environ.get("PENTACHORA_CACHE") or Path.home() / ".cache" / "pentachora"
    return Path(base) / "memory-features"


def cache_key(
    texts: Sequence[str],
    encoder: FrozenTextEncoder,
    teacher: FrozenTextEncoder,
    segmenter: Segmenter,
    **extra: Any,
) -> tuple[str, dict[str, Any]]:
    """The cache key (hex SHA-256) and the JSON spec it hashes.

    Args:
        texts: The documents.
        encoder: Frozen student.
        teacher: Teacher.
        segmenter: Segmenter (``max_tokens``, ``overlap``).
        **extra: Other settings that change the features (e.g. ``tails=True``, ``teacher_max_length``).
    """
    spec = {
        "format": CACHE_FORMAT,
        "encoder": encoder.describe(),
        "teacher": teacher.describe(),
        "max_tokens": segmenter.max_tokens,
        "overlap": segmenter.overlap,
        "n_texts": len(texts),
        "texts_sha256": corpus_fingerprint(texts),
        **extra,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest(), spec


@torch.no_grad()
def segment_features(
    encoder: FrozenTextEncoder, batch: SegmentBatch, window_batch: int = 32
) -> dict[str, torch.Tensor]:
    """Run the frozen encoder on every real window of a :class:`SegmentBatch`.

    Windows are sorted by length and trimmed to the longest real window of each forward pass (exact
    for masked encoders and for causal CLIP; padded positions are returned as zeros).

    Args:
        encoder: The frozen student.
        batch: Segmented texts ``(B, S, W)``.
        window_batch: Windows per forward pass.

    Returns:
        ``states (B, S, n_layers, W, H)``, ``target (B, S, W, H)``, ``pooled (B, S, P)`` float32 on CPU
        (zeros for absent segments and padded positions).
    """
    ids, mask, index = batch.flat_windows()
    b, s, w = batch.input_ids.shape
    n_layers, h, p = len(encoder.layers), encoder.hidden_size, encoder.pooled_dim
    states = torch.zeros(b, s, n_layers, w, h)
    target = torch.zeros(b, s, w, h)
    pooled = torch.zeros(b, s, p)
    lengths = mask.sum(-1)
    order = torch.argsort(lengths, stable=True)
    for start in range(0, order.numel(), window_batch):
        sel = order[start : start + window_batch]
        width = int(lengths[sel].max())
        out = encoder.encode_windows(ids[sel, :width], mask[sel, :width])
        keep = mask[sel, :width].bool().cpu()
        rows, segs = index[sel, 0], index[sel, 1]
        lay = out.layers.cpu() * keep[:, None, :, None]
        tgt = out.target.cpu() * keep[:, :, None]
        states[rows, segs, :, :width] = lay
        target[rows, segs, :width] = tgt
        pooled[rows, segs] = out.pooled.cpu()
    return {"states": states, "target": target, "pooled": pooled}


@dataclass
class FeatureCache:
    """A loaded feature cache (see the module docstring for the tensors).

    Attributes:
        path: The cache folder.
        key: Its full key.
        spec: The JSON spec that was hashed.
        tensors: Name → tensor (documents and segments concatenated over shards).
        seg_offsets: ``(n_docs + 1,)`` first segment of each document (prefix sums).
    """

    path: Path
    key: str
    spec: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    seg_offsets: torch.Tensor

    @property
    def n_docs(self) -> int:
        return int(self.tensors["seg_counts"].numel())

    @property
    def has_tails(self) -> bool:
        return "tail" in self.tensors

    def __len__(self) -> int:
        return self.n_docs

    @classmethod
    def load(cls, path: str | os.PathLike, expected_key: str | None = None) -> FeatureCache:
        """Load a complete cache folder.

        Raises:
            CheckpointError: no manifest (incomplete build), a key mismatch, or a corrupt shard.
        """
        path = Path(path)
        manifest = read_json(path / MANIFEST)
        key = manifest.get("key")
        if manifest.get("format") != CACHE_FORMAT:
            raise CheckpointError(f"{path} is not a {CACHE_FORMAT} cache")
        if expected_key is not None and key != expected_key:
            raise CheckpointError(
                f"{path} holds features for another key ({key[:16]}… != {expected_key[:16]}…)"
            )
        parts: dict[str, list[torch.Tensor]] = {}
        for shard in manifest["shards"]:
            tensors = load_tensors(path / shard["file"])
            for name, t in tensors.items():
                parts.setdefault(name, []).append(t)
        tensors = {name: torch.cat(ts) for name, ts in parts.items()}
        counts = tensors["seg_counts"].long()
        offsets = torch.zeros(counts.numel() + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(counts, 0)
        if int(offsets[-1]) != tensors["states"].shape[0]:
            raise CheckpointError(f"{path}: segment counts do not match the stored states")
        return cls(path=path, key=key, spec=manifest["spec"], tensors=tensors, seg_offsets=offsets)

    def batch(
        self, doc_idx: torch.Tensor | Sequence[int], with_targets: bool = True
    ) -> dict[str, torch.Tensor]:
        """A training batch for the given documents, padded to the batch's longest document.

        Returns:
            ``states (B, S, n_layers, W, H)`` float32, ``attention_mask (B, S, W)`` long,
            ``segment_mask (B, S)`` bool, and with targets ``teacher (B, P)``, ``seq_target (B, W, H)``,
            ``seq_mask (B, W)``.
        """
        idx = torch.as_tensor(doc_idx, dtype=torch.long)
        t = self.tensors
        counts = t["seg_counts"][idx].long()
        s = int(counts.max())
        states_all, mask_all = t["states"], t["attention_mask"]
        b = idx.numel()
        _, n_layers, w, h = states_all.shape
        states = torch.zeros(b, s, n_layers, w, h)
        attention = torch.zeros(b, s, w, dtype=torch.long)
        seg_mask = torch.zeros(b, s, dtype=torch.bool)
        for r, i in enumerate(idx.tolist()):
            a, e = int(self.seg_offsets[i]), int(self.seg_offsets[i + 1])
            states[r, : e - a] = states_all[a:e].float()
            attention[r, : e - a] = mask_all[a:e].long()
            seg_mask[r, : e - a] = True
        out = {"states": states, "attention_mask": attention, "segment_mask": seg_mask}
        if with_targets:
            out["teacher"] = t["teacher"][idx].float()
            out["seq_target"] = t["seq_target"][idx].float()
            out["seq_mask"] = t["seq_mask"][idx].long()
        return out

    def per_document(self, name: str) -> list[torch.Tensor]:
        """A per-segment tensor split into one tensor per document."""
        return list(torch.split(self.tensors[name], self.tensors["seg_counts"].long().tolist()))


def _teacher_inputs(
    texts: Sequence[str], ids: list[list[int]], truncated: list[bool], encoder: FrozenTextEncoder
) -> list[str]:
    """The text the student read: the original, or the decoded kept tokens when truncated."""
    return [
        encoder.tokenizer.decode(t) if cut else text
        for text, t, cut in zip(texts, ids, truncated, strict=True)
    ]


def build_feature_cache(
    texts: Sequence[str],
    encoder: FrozenTextEncoder,
    teacher: FrozenTextEncoder,
    segmenter: Segmenter,
    root: str | os.PathLike | None = None,
    split: str = "train",
    tails: bool = False,
    teacher_max_length: int | None = None,
    docs_per_shard: int = 256,
    window_batch: int = 32,
    teacher_batch: int = 8,
    progress: bool = True,
) -> FeatureCache:
    """Load the cache for these texts and models, building (or finishing) it first if needed.

    Args:
        texts: Documents (non-empty).
        encoder: Frozen student (window W, extraction layers, target layer).
        teacher: Teacher (its :meth:`~FrozenTextEncoder.embed` over ``teacher_max_length``).
        segmenter: Cuts texts into windows (``max_tokens``, ``overlap``, overflow policy).
        root: Cache root (default :func:`default_cache_root`).
        split: Name prefix of the folder (``train``, ``heldout`` ...).
        tails: Also store the teacher embedding of each document's tail (evaluation splits).
        teacher_max_length: Teacher context (default: the teacher's positions).
        docs_per_shard: Documents per shard file.
        window_batch: Windows per student forward pass.
        teacher_batch: Documents per teacher forward pass.
        progress: Show a tqdm progress bar.

    Returns:
        The loaded :class:`FeatureCache`.
    """
    from tqdm.auto import tqdm

    texts = list(texts)
    if not texts:
        raise ValueError("no texts to cache")
    root = Path(root) if root is not None else default_cache_root()
    t_len = teacher_max_length or teacher.max_positions
    key, spec = cache_key(texts, encoder, teacher, segmenter, tails=tails, teacher_max_length=t_len)
    folder = root / f"{split}-{key[:16]}"
    if (folder / MANIFEST).is_file():
        try:
            cache = FeatureCache.load(folder, expected_key=key)
            logger.info("feature cache hit: %s (%d documents)", folder, cache.n_docs)
            return cache
        except CheckpointError as exc:
            logger.warning("ignoring unreadable cache %s (%s); rebuilding", folder, exc)
    folder.mkdir(parents=True, exist_ok=True)
    n_shards = math.ceil(len(texts) / docs_per_shard)
    shards = []
    bar = tqdm(total=len(texts), desc=f"caching {split} features", unit="doc", disable=not progress)
    for k in range(n_shards):
        a, e = k * docs_per_shard, min(len(texts), (k + 1) * docs_per_shard)
        name = f"shard-{k:05d}.safetensors"
        shard_path = folder / name
        shards.append({"file": name, "start": a, "end": e})
        if shard_path.is_file():
            from pentachora.io import read_tensor_metadata

            try:
                meta = read_tensor_metadata(shard_path)
                if meta.get("key") == key and meta.get("range") == f"{a}:{e}":
                    bar.update(e - a)
                    continue
            except CheckpointError:
                pass
        tensors = _compute_shard(
            texts[a:e], encoder, teacher, segmenter, tails, t_len, window_batch, teacher_batch, bar
        )
        atomic_save_tensors(shard_path, tensors, metadata={"key": key, "range": f"{a}:{e}"})
    bar.close()
    atomic_write_json(
        folder / MANIFEST,
        {"format": CACHE_FORMAT, "key": key, "spec": spec, "n_docs": len(texts), "shards": shards},
    )
    logger.info("feature cache built: %s (%d documents)", folder, len(texts))
    return FeatureCache.load(folder, expected_key=key)


def _compute_shard(
    texts: list[str],
    encoder: FrozenTextEncoder,
    teacher: FrozenTextEncoder,
    segmenter: Segmenter,
    tails: bool,
    teacher_max_length: int,
    window_batch: int,
    teacher_batch: int,
    bar: Any,
) -> dict[str, torch.Tensor]:
    ids, truncated = segmenter.prepare_ids(texts)
    states, masks, pooled, tsum, ntok, seg_counts = [], [], [], [], [], []
    seq_target, seq_mask = [], []
    step = max(1, window_batch // 2)
    for start in range(0, len(texts), step):
        chunk = segmenter.from_ids(ids[start : start + step], truncated[start : start + step])
        feats = segment_features(encoder, chunk, window_batch=window_batch)
        sm = chunk.segment_mask
        am = chunk.attention_mask
        states.append(feats["states"][sm].half())
        masks.append(am[sm].to(torch.uint8))
        pooled.append(feats["pooled"][sm])
        tsum.append(feats["target"][sm].sum(1))
        ntok.append(am[sm].sum(-1).int())
        seg_counts.append(sm.sum(-1).int())
        if encoder.is_clip:
            first = [encoder.tokenizer.decode(t[: encoder.content_window]) for t in ids[start : start + step]]
            seq, smask = encoder.native_sequence(first)
        else:
            seq, smask = feats["target"][:, 0], am[:, 0]
        seq_target.append(seq.half())
        seq_mask.append(smask.to(torch.uint8))
        bar.update(len(chunk.n_tokens) * 0.5)
    teacher_texts = _teacher_inputs(texts, ids, truncated, encoder)
    teacher_emb = teacher.embed(teacher_texts, max_length=teacher_max_length, batch_size=teacher_batch)
    out = {
        "states": torch.cat(states),
        "attention_mask": torch.cat(masks),
        "window_pooled": torch.cat(pooled),
        "window_target_sum": torch.cat(tsum),
        "window_tokens": torch.cat(ntok),
        "seg_counts": torch.cat(seg_counts),
        "n_tokens": torch.tensor([len(t) for t in ids], dtype=torch.int32),
        "truncated": torch.tensor(truncated, dtype=torch.uint8),
        "teacher": teacher_emb,
        "seq_target": torch.cat(seq_target),
        "seq_mask": torch.cat(seq_mask),
    }
    if tails:
        c = encoder.content_window
        has_tail = torch.tensor([len(t) > c for t in ids], dtype=torch.uint8)
        tail_texts = [encoder.tokenizer.decode(t[c:]) if len(t) > c else "" for t in ids]
        emb = torch.zeros(len(texts), teacher.pooled_dim)
        keep = [i for i, f in enumerate(has_tail.tolist()) if f]
        if keep:
            emb[keep] = teacher.embed(
                [tail_texts[i] for i in keep], max_length=teacher_max_length, batch_size=teacher_batch
            )
        out["tail"] = emb
        out["has_tail"] = has_tail
    bar.update(len(texts) * 0.5)
    return out


class CachedDocumentSource:
    """Training batches from a :class:`FeatureCache`: a pure function of (seed, step).

    Documents are drawn epoch by epoch without replacement: step ``k`` (1-based) takes rows
    ``[(k−1)·B, k·B)`` of the concatenation of seeded per-epoch permutations.

    Args:
        cache: The training cache.
        batch_size: Documents per batch (≥ 2 for the contrastive loss).
        seed: Permutation seed.
    """

    def __init__(self, cache: FeatureCache, batch_size: int, seed: int = 0) -> None:
        if batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (InfoNCE needs negatives), got {batch_size}")
        if batch_size > cache.n_docs:
            raise ValueError(f"batch_size {batch_size} > {cache.n_docs} cached documents")
        self.cache = cache
        self.batch_size = batch_size
        self.seed = seed

    def _perm(self, epoch: int) -> torch.Tensor:
        from pentachora.data.seeding import step_generator

        return torch.randperm(self.cache.n_docs, generator=step_generator(self.seed, -1 - epoch))

    def indices(self, step: int) -> torch.Tensor:
        """Document indices of batch ``step`` (1-based)."""
        n, b = self.cache.n_docs, self.batch_size
        start = (step - 1) * b
        out = []
        while len(out) < b:
            epoch, pos = divmod(start + len(out), n)
            perm = self._perm(epoch)
            take = min(b - len(out), n - pos)
            out.extend(perm[pos : pos + take].tolist())
        return torch.tensor(out, dtype=torch.long)

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """The batch of ``step`` (see :meth:`FeatureCache.batch`)."""
        return self.cache.batch(self.indices(step))
