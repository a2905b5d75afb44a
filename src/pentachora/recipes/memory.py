"""Training and evaluation glue for the geometric memory: corpus → feature cache → Trainer → metrics.

Models do not import training; this is where :class:`~pentachora.memory.model.GeometricMemory`, the
feature cache and the shared :class:`~pentachora.training.Trainer` meet. The CLI
(``pentachora train memory``, ``pentachora eval-memory``) and ``benchmarks/memory.py`` all go
through these functions.

Run folder written by :func:`train_memory`::

    OUT/train_config.json  model_config.json  data.json     resolved configuration (data.json: corpus,
                                                            encoders, mode; a resume must match it)
    OUT/caches.json        where the feature caches were
    OUT/metrics.jsonl      OUT/tensorboard/                 training + evaluation records
    OUT/checkpoints/step-XXXXXXX/                           resumable checkpoints
    OUT/final/             config.json + model.safetensors  the trained model
    OUT/eval.json          final held-out evaluation
    OUT/convergence.json   when CV locked and m_acc / s_cos climbed
    OUT/curves.png         training curves

Training modes:

* ``joint`` (default) — every loss and every parameter from the first step (the seed's rule for
  per-position consumers: "train the per-position consumer from the start").
* ``two-phase`` — (A) pooled-only: the bank learns with InfoNCE + CV + Procrustes while the
  reconstructor is frozen (skipped when starting from ``init_from``, a trained bank); (B) the bank is
  frozen and only the reconstructor trains; (C) everything trains, the bank side at
  ``lr · bank_lr_scale`` (differential learning rates).
* ``pooled`` — Part I only: stage (A) for the whole run.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pentachora.data.segmenter import Segmenter
from pentachora.data.text import TextCorpus, parse_text_spec
from pentachora.data.text_features import CachedDocumentSource, FeatureCache, build_feature_cache
from pentachora.diagnostics.convergence import ConvergenceMonitor
from pentachora.errors import ConfigError, PentachoraError
from pentachora.geometry import ProcrustesMap, cv_metric, orthogonal_procrustes
from pentachora.io import atomic_write_json
from pentachora.memory.metrics import (
    in_batch_accuracy,
    paired_cosine,
    recall_at_1,
)
from pentachora.memory.model import GeometricMemory, MemoryConfig
from pentachora.memory.modes import check_training_mode
from pentachora.nn.text_encoder import FrozenTextEncoder
from pentachora.recipes.loading import FINAL_DIR, load_latest
from pentachora.training import Callback, PhaseCallback, TrainConfig, Trainer, TrainResult, read_metrics
from pentachora.training.state import is_main_process, run_folder_lock

__all__ = [
    "ConvergenceMonitor",
    "LRScaleCallback",
    "MemoryData",
    "MemoryRun",
    "MemorySetup",
    "build_memory_model",
    "concat_chunk_metrics",
    "encode_to_file",
    "evaluate_chunks",
    "evaluate_memory",
    "evaluate_memory_with_baselines",
    "fit_student_to_teacher",
    "load_encoders",
    "load_memory_model",
    "loss_gradient_norms",
    "memory_convergence_monitor",
    "mode_callbacks",
    "prepare_memory_data",
    "save_memory_curves",
    "train_memory",
]

logger = logging.getLogger(__name__)

EVAL_BATCH = 32


# ----------------------------------------------------------------------------- frozen models
def load_encoders(
    config: MemoryConfig, local_files_only: bool = True, check: bool = True
) -> tuple[FrozenTextEncoder, FrozenTextEncoder]:
    """The frozen student and the teacher named in ``config`` (one shared model when they coincide).

    Args:
        config: The memory config (encoder/teacher names, window, layers, pooling).
        local_files_only: Never download (default).
        check: Verify the widths against ``config.hidden_size`` / ``config.teacher_dim``.

    Raises:
        ConfigError: With ``check``, a width that does not match the config.
        CheckpointError: An encoder that cannot be loaded (see ``FrozenTextEncoder.from_pretrained``).
    """
    student = FrozenTextEncoder.from_pretrained(
        config.encoder,
        window=config.window,
        layers=config.extraction_layers,
        target_layer=config.target_layer,
        subfolder=config.encoder_subfolder,
        model_class=config.encoder_class,
        local_files_only=local_files_only,
    )
    same = (config.teacher, config.teacher_subfolder, config.teacher_class) == (
        config.encoder,
        config.encoder_subfolder,
        config.encoder_class,
    )
    if same:
        teacher = FrozenTextEncoder(
            student.model, student.tokenizer, pooling=config.teacher_pooling, name=config.teacher
        )
    else:
        teacher = FrozenTextEncoder.from_pretrained(
            config.teacher,
            subfolder=config.teacher_subfolder,
            model_class=config.teacher_class,
            pooling=config.teacher_pooling,
            local_files_only=local_files_only,
        )
    if check and student.hidden_size != config.hidden_size:
        raise ConfigError(
            f"encoder {config.encoder!r} has width {student.hidden_size}, the config says hidden_size="
            f"{config.hidden_size}"
        )
    if check and teacher.pooled_dim != config.teacher_dim:
        raise ConfigError(
            f"teacher {config.teacher!r} embeds in {teacher.pooled_dim} dims, the config says teacher_dim="
            f"{config.teacher_dim}"
        )
    return student, teacher


def resolve_config(
    config: MemoryConfig, local_files_only: bool = True
) -> tuple[MemoryConfig, FrozenTextEncoder, FrozenTextEncoder]:
    """Read ``hidden_size``, ``teacher_dim`` and ``max_segments`` off the actual frozen models.

    Returns:
        ``(resolved config, student, teacher)``.
    """
    student, teacher = load_encoders(config, local_files_only, check=False)
    seg = Segmenter(student, config.max_tokens, config.overlap)
    resolved = dataclasses.replace(
        config,
        hidden_size=student.hidden_size,
        teacher_dim=teacher.pooled_dim,
        max_segments=seg.max_segments,
    )
    return resolved, student, teacher


@dataclass
class MemorySetup:
    """A memory model ready to train: :func:`build_memory_model`'s result."""

    model: GeometricMemory
    encoders: tuple[FrozenTextEncoder, FrozenTextEncoder]  # (student, teacher), frozen
    pretrained: bool  # the weights came from a trained model (two-phase skips its pooled-only stage)


def build_memory_model(
    config: MemoryConfig,
    init: GeometricMemory | None = None,
    local_files_only: bool = True,
    seed: int = 0,
) -> MemorySetup:
    """A seeded :class:`GeometricMemory` for ``config``, its sizes read off the frozen models, its
    weights copied from ``init`` when given.

    Raises:
        ConfigError: the config is invalid once resolved.
        CheckpointError: ``init``'s weights do not fit the resolved model.
        OSError: the frozen encoder/teacher cannot be loaded (offline and not cached, say).
    """
    try:
        resolved, student, teacher = resolve_config(config, local_files_only=local_files_only)
        torch.manual_seed(seed)
        model = GeometricMemory(resolved)
    except PentachoraError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"MemoryConfig: {exc}") from exc
    if init is not None:
        model.load_state_dict_checked(init.state_dict(), source="the initial model")
    return MemorySetup(model, (student, teacher), pretrained=init is not None)


def save_memory_curves(run: MemoryRun, path: str | os.PathLike) -> Path | None:
    """The training and held-out curves of ``run`` (loss, m_acc, cosines, tail R@1, CV) as a PNG."""
    from pentachora.diagnostics.plots import save_training_curves

    if not run.metrics:
        return None
    split = {
        "train": [r for r in run.metrics if r.get("split") == "train"],
        "held-out": [r for r in run.metrics if r.get("split") == "eval"],
    }
    return save_training_curves(split, path, keys=("loss", "m_acc", "pooled_cos", "s_cos", "tail_r1", "cv"))


def load_memory_model(path: str | os.PathLike, map_location: str = "cpu") -> GeometricMemory:
    """Load a :class:`GeometricMemory` from a checkpoint folder or a run folder (``final/`` or the
    latest checkpoint)."""
    return load_latest(
        path, lambda folder: GeometricMemory.from_pretrained(folder, map_location=map_location)
    )


# ----------------------------------------------------------------------------- data
@dataclass
class MemoryData:
    """A corpus with its training and held-out feature caches.

    Attributes:
        corpus: The corpus.
        train: Feature cache of the training documents (None when not loaded).
        heldout: Feature cache of the held-out documents (with tails).
        encoder: The frozen student.
        teacher: The teacher.
    """

    corpus: TextCorpus
    train: FeatureCache | None
    heldout: FeatureCache
    encoder: FrozenTextEncoder
    teacher: FrozenTextEncoder

    def describe(self) -> dict[str, Any]:
        return {
            "corpus": self.corpus.name,
            "licence": self.corpus.licence,
            "description": self.corpus.description,
            "train_documents": self.train.n_docs if self.train is not None else None,
            "heldout_documents": self.heldout.n_docs,
            "train_cache": str(self.train.path) if self.train is not None else None,
            "heldout_cache": str(self.heldout.path),
            "encoder": self.encoder.describe(),
            "teacher": self.teacher.describe(),
        }


def prepare_memory_data(
    config: MemoryConfig,
    corpus: TextCorpus | str = "wiki",
    cache_root: str | os.PathLike | None = None,
    max_train_docs: int | None = None,
    max_heldout_docs: int | None = None,
    encoders: tuple[FrozenTextEncoder, FrozenTextEncoder] | None = None,
    local_files_only: bool = True,
    progress: bool = True,
    include_train: bool = True,
) -> MemoryData:
    """Load the corpus and build (or reuse) its feature caches.

    Args:
        config: The memory config (which encoder, teacher, window, layers).
        corpus: A :class:`TextCorpus` or a text spec (``wiki``, ``text:PATH``, ``jsonl:PATH``, ``hf:NAME``).
        cache_root: Cache root (default ``~/.cache/pentachora/memory-features``).
        max_train_docs: Use only the first N training documents.
        max_heldout_docs: Use only the first N held-out documents.
        encoders: Already loaded ``(student, teacher)``.
        local_files_only: Never download models.
        progress: Progress bars while caching.
        include_train: Also build/load the training cache (evaluation alone does not need it when
            the student and teacher share a space).
    """
    corpus = parse_text_spec(corpus) if isinstance(corpus, str) else corpus
    student, teacher = encoders or load_encoders(config, local_files_only)
    seg = Segmenter(student, config.max_tokens, config.overlap)
    train_docs = corpus.train[:max_train_docs] if max_train_docs else corpus.train
    held_docs = corpus.heldout[:max_heldout_docs] if max_heldout_docs else corpus.heldout
    common = {"root": cache_root, "teacher_max_length": config.teacher_max_length, "progress": progress}
    held = build_feature_cache(held_docs, student, teacher, seg, split="heldout", tails=True, **common)
    train = (
        build_feature_cache(train_docs, student, teacher, seg, split="train", tails=False, **common)
        if include_train
        else None
    )
    return MemoryData(corpus=corpus, train=train, heldout=held, encoder=student, teacher=teacher)


# ----------------------------------------------------------------------------- alignment + baselines
def same_space(encoder: FrozenTextEncoder, teacher: FrozenTextEncoder) -> bool:
    """Whether the student's target layer and the teacher's embedding share one space (same model,
    mean pooling, last layer)."""
    return (
        encoder.fingerprint() == teacher.fingerprint()
        and teacher.pooling == "mean"
        and encoder.target_layer == "last"
    )


def window_target_means(cache: FeatureCache) -> tuple[torch.Tensor, torch.Tensor]:
    """Per document: the token mean of the first window's target layer, and of the concatenation of
    every window's target layer (compel-style sequence). Both ``(N, H)``."""
    sums = cache.per_document("window_target_sum")
    toks = cache.per_document("window_tokens")
    first = torch.stack([s[0] / t[0].clamp_min(1) for s, t in zip(sums, toks, strict=True)])
    concat = torch.stack([s.sum(0) / t.sum().clamp_min(1) for s, t in zip(sums, toks, strict=True)])
    return first, concat


def fit_student_to_teacher(train: FeatureCache | None, identity: bool) -> ProcrustesMap | None:
    """Map from the student's (pooled / sequence-mean) space into the teacher's, fitted on training
    documents by orthogonal Procrustes (cross-dimensional); ``None`` (identity) when they share a space.
    """
    if identity:
        return None
    if train is None:
        raise ValueError("the student and teacher spaces differ: fitting the map needs the training cache")
    _, concat = window_target_means(train)
    return orthogonal_procrustes(concat, train.tensors["teacher"].float(), center=True)


def _apply(mapping: ProcrustesMap | None, x: torch.Tensor) -> torch.Tensor:
    return x if mapping is None else mapping.apply(x)


def baseline_outputs(cache: FeatureCache, mapping: ProcrustesMap | None = None) -> dict[str, dict[str, Any]]:
    """What the three frozen-encoder baselines produce for every cached document.

    * ``truncate`` (a): the pooled output and the sequence of the first window only.
    * ``window_mean`` (b): the mean of the per-window pooled outputs.
    * ``concat`` (c): compel / AUTOMATIC1111 concatenation of per-window sequences, (W·k, H); its
      vector is the token mean over the concatenation; its first W positions are the native sequence.

    Returns:
        ``{name: {"pooled": (N, P), "seq_mean": (N, P), "seq_len": float}}`` in the teacher's space
        (through ``mapping`` when the spaces differ).
    """
    pooled = cache.per_document("window_pooled")
    first, concat = window_target_means(cache)
    counts = cache.tensors["seg_counts"].float()
    w = cache.tensors["seq_target"].shape[1]
    first_pooled = torch.stack([p[0] for p in pooled])
    mean_pooled = torch.stack([p.mean(0) for p in pooled])
    return {
        "truncate": {
            "pooled": _apply(mapping, first_pooled),
            "seq_mean": _apply(mapping, first),
            "seq_len": float(w),
        },
        "window_mean": {"pooled": _apply(mapping, mean_pooled), "seq_mean": None, "seq_len": math.nan},
        "concat": {
            "pooled": _apply(mapping, concat),
            "seq_mean": _apply(mapping, concat),
            "seq_len": float(w) * float(counts.mean()),
        },
    }


def retrieval_metrics(
    pooled: torch.Tensor, cache: FeatureCache, seq_mean: torch.Tensor | None = None
) -> dict[str, float]:
    """m_acc, teacher R@1, pooled cosine and tail R@1 of pooled vectors (and of sequence means)."""
    teacher = cache.tensors["teacher"].float()
    out = {
        "m_acc": in_batch_accuracy(pooled, teacher, EVAL_BATCH),
        "teacher_r1": recall_at_1(pooled, teacher),
        "pooled_cos": paired_cosine(pooled, teacher),
    }
    if cache.has_tails:
        valid = cache.tensors["has_tail"].bool()
        tail = cache.tensors["tail"].float()
        out["tail_r1"] = recall_at_1(pooled, tail, valid)
        if seq_mean is not None:
            out["seq_tail_r1"] = recall_at_1(seq_mean, tail, valid)
    if seq_mean is not None:
        out["seq_teacher_cos"] = paired_cosine(seq_mean, teacher)
    return out


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def memory_outputs(
    model: GeometricMemory,
    cache: FeatureCache,
    max_docs: int | None = None,
    batch_size: int = EVAL_BATCH,
    keep_sequences: bool = False,
) -> dict[str, torch.Tensor]:
    """Run the model on cached documents in order: ``pooled (N, P)``, ``sequence_mean (N, H)``, the
    per-document ``s_cos (N,)`` and, with ``keep_sequences``, ``sequence (N, L, H)``."""
    from pentachora.memory.metrics import masked_sequence_cosine

    n = cache.n_docs if max_docs is None else min(max_docs, cache.n_docs)
    device = next(model.parameters()).device
    pooled, seq_mean, s_cos, seqs = [], [], [], []
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(n, start + batch_size))
        batch = {k: v.to(device) for k, v in cache.batch(idx).items()}
        state, p = model.read(batch["states"], batch["attention_mask"], batch["segment_mask"])
        seq = model.output_sequence(state, *model.native_inputs(batch))  # residual: native + ramped residual
        pooled.append(p.float().cpu())
        seq_mean.append(seq.float().mean(1).cpu())
        if keep_sequences:
            seqs.append(seq.float().cpu())
        for r in range(seq.shape[0]):
            s_cos.append(
                float(
                    masked_sequence_cosine(
                        seq[r : r + 1], batch["seq_target"][r : r + 1], batch["seq_mask"][r : r + 1]
                    )
                )
            )
    out = {"pooled": torch.cat(pooled), "sequence_mean": torch.cat(seq_mean), "s_cos": torch.tensor(s_cos)}
    if keep_sequences:
        out["sequence"] = torch.cat(seqs)
    return out


@torch.no_grad()
def evaluate_memory(
    model: GeometricMemory,
    cache: FeatureCache,
    max_docs: int | None = None,
    seq_map: ProcrustesMap | None = None,
) -> dict[str, float]:
    """Every metric of the issue on held-out documents.

    ``m_acc`` (pooled → teacher R@1 inside batches of 32), ``teacher_r1`` (among all documents),
    ``pooled_cos``, ``s_cos`` (per-position cosine to the native first-window sequence), ``cv``
    (bank anchors), ``tail_r1`` (pooled → teacher embedding of the text beyond the first window, among
    all documents with a tail), ``seq_tail_r1`` (the same from the mean of the output sequence, mapped
    into the teacher space by ``seq_map`` when the spaces differ) and ``seq_teacher_cos``.

    Args:
        model: The memory model.
        cache: Held-out feature cache (with tails).
        max_docs: Evaluate on the first N documents only.
        seq_map: Student → teacher map for the sequence mean (``None``: same space).
    """
    outs = memory_outputs(model, cache, max_docs)
    n = outs["pooled"].shape[0]
    sub = cache if n == cache.n_docs else _subset(cache, n)
    metrics = retrieval_metrics(outs["pooled"], sub, _apply(seq_map, outs["sequence_mean"]))
    metrics["s_cos"] = float(outs["s_cos"].mean())
    gen = torch.Generator().manual_seed(0)  # the same pentachora every evaluation: a reproducible readout
    metrics["cv"] = cv_metric(model.bank.anchor_directions().detach().cpu(), n_samples=1000, generator=gen)
    metrics["cv_target"] = model.cv_target
    metrics["temperature"] = float(model.temperature)
    return metrics


def evaluate_memory_with_baselines(
    model: GeometricMemory,
    data: str = "wiki",
    cache_root: str | os.PathLike | None = None,
    max_heldout_docs: int | None = None,
    baselines: bool = True,
    local_files_only: bool = True,
) -> tuple[dict[str, dict[str, float]], MemoryData]:
    """``pentachora eval-memory``: the memory model on the held-out documents of ``data``, beside the
    frozen encoder's own long-prompt baselines (truncation, window mean, concatenation) when
    ``baselines``.

    Returns:
        ``(results, data)``: results maps ``truncate`` / ``mean`` / ``concat`` / ``memory`` to their
        metrics (:func:`retrieval_metrics`, :func:`evaluate_memory`).
    """
    encoders = load_encoders(model.config, local_files_only=local_files_only)
    identity = same_space(*encoders)
    mdata = prepare_memory_data(
        model.config, data, cache_root=cache_root, max_heldout_docs=max_heldout_docs, encoders=encoders,
        include_train=not identity, local_files_only=local_files_only,
    )  # fmt: skip
    seq_map = fit_student_to_teacher(mdata.train, identity)
    results: dict[str, dict[str, float]] = {}
    if baselines:
        for name, outs in baseline_outputs(mdata.heldout, seq_map).items():
            results[name] = retrieval_metrics(outs["pooled"], mdata.heldout, outs["seq_mean"])
            if name in ("truncate", "concat"):
                results[name]["s_cos"] = 1.0  # their first W positions ARE the native sequence
    results["memory"] = evaluate_memory(model, mdata.heldout, seq_map=seq_map)
    return results, mdata


def encode_to_file(
    model: GeometricMemory,
    texts: Sequence[str],
    path: str | os.PathLike,
    on_overflow: str = "truncate",
    metadata: dict[str, str] | None = None,
):
    """``pentachora encode``: encode ``texts`` and write pooled ``(B, P)``, sequence ``(B, L, H)``,
    ``n_segments``, ``n_tokens``, ``truncated`` (and, with contextual chunks, ``chunks`` ``(B, 77·k, H)``
    and ``chunk_mask``) to one safetensors file, atomically.

    Returns:
        The model's encoding (:meth:`GeometricMemory.encode`).

    Raises:
        DataError: a text the model cannot encode (over ``max_tokens`` with ``on_overflow="error"``).
    """
    from pentachora.errors import DataError
    from pentachora.io import atomic_save_tensors

    try:
        enc = model.encode(list(texts), on_overflow=on_overflow)
    except PentachoraError:
        raise
    except ValueError as exc:
        raise DataError(str(exc)) from exc
    tensors = {
        "pooled": enc.pooled,
        "sequence": enc.sequence,
        "n_segments": enc.n_segments,
        "n_tokens": enc.n_tokens,
        "truncated": enc.truncated.to(dtype=enc.n_tokens.dtype),
    }
    if enc.chunks is not None:
        tensors["chunks"] = enc.chunks
        tensors["chunk_mask"] = enc.chunk_mask.to(torch.uint8)
    info = {"encoder": model.config.encoder, "texts": str(len(texts)), **(metadata or {})}
    atomic_save_tensors(path, tensors, metadata=info)
    return enc


def _subset(cache: FeatureCache, n: int) -> FeatureCache:
    t = cache.tensors
    per_doc = {k: v[:n] for k, v in t.items() if v.shape[0] == t["seg_counts"].shape[0]}
    return FeatureCache(
        path=cache.path,
        key=cache.key,
        spec=cache.spec,
        tensors=per_doc,
        seg_offsets=cache.seg_offsets[: n + 1],
    )


# ----------------------------------------------------------------------------- callbacks
def memory_convergence_monitor() -> ConvergenceMonitor:
    """The generic :class:`~pentachora.diagnostics.ConvergenceMonitor` set up for the memory model:
    anchors' CV (structure) → m_acc (alignment) → s_cos (reconstruction), over the evaluations,
    with the generic report (``cv_lock_step``, ``m_acc_climb_step``, ``s_cos_climb_step``, ``order``,
    ``order_holds``) and the seed's warnings; written to ``OUT/convergence.json``."""
    return ConvergenceMonitor(
        tags={"structure": ["cv"], "alignment": ["m_acc"], "reconstruction": ["s_cos"]},
        source="eval",
        write="convergence.json",
    )


class LRScaleCallback(Callback):
    """Scale the peak learning rate of the bank-side parameter groups from given steps on.

    ``phases`` is a list of ``(start_step, scale)``; the groups marked ``"bank": True`` train at
    ``initial_lr · scale`` from ``start_step`` on (the schedule multiplies it as usual). Replayed on
    resume like :class:`~pentachora.training.PhaseCallback`.
    """

    def __init__(self, phases: Sequence[tuple[int, float]]) -> None:
        self.phases = sorted((int(s), float(v)) for s, v in phases)

    def _apply(self, trainer: Trainer, scale: float) -> None:
        sched = trainer.scheduler
        sched = getattr(sched, "scheduler", sched)  # accelerate wraps it
        for i, group in enumerate(trainer.optimizer.param_groups):
            base = group.get("initial_lr", group["lr"])
            if group.get("bank"):
                sched.base_lrs[i] = base * scale
            else:
                sched.base_lrs[i] = base

    def _scale_at(self, step: int) -> float:
        scale = 1.0
        for start, value in self.phases:
            if start <= step:
                scale = value
        return scale

    def on_train_start(self, trainer: Trainer) -> None:
        self._apply(trainer, self._scale_at(trainer.step + 1))

    def on_step_start(self, trainer: Trainer, step: int) -> None:
        if any(start == step for start, _ in self.phases):
            self._apply(trainer, self._scale_at(step))
            # the LR of this step was computed at the end of the previous one; refresh it
            sched = getattr(trainer.scheduler, "scheduler", trainer.scheduler)
            for i, group in enumerate(trainer.optimizer.param_groups):
                group["lr"] = sched.base_lrs[i] * sched.lr_lambdas[i](step - 1)


def mode_callbacks(
    mode: str,
    steps: int,
    bank_lr_scale: float = 0.1,
    pretrained_bank: bool = False,
    fractions: Sequence[float] = (),
    weights: dict[str, float] | None = None,
    parameter_names: Sequence[str] | None = None,
) -> list[Callback]:
    """Callbacks that implement a training mode (see the module docstring).

    Args:
        mode: ``joint``, ``two-phase`` or ``pooled``.
        steps: Total steps.
        bank_lr_scale: Bank-side LR multiplier in the last stage of ``two-phase``.
        pretrained_bank: Skip the pooled-only stage (the bank was loaded from a checkpoint).
        fractions: Stage lengths of ``two-phase`` as fractions of ``steps`` (default: A 0.4, B 0.3,
            C 0.3; without stage A: B 0.5, C 0.5).
        weights: The model's configured loss weights (restored when the sequence losses switch on).
        parameter_names: The model's parameter names; prefixes of parts the model does not have (the
            ``chunker.`` of a model without contextual chunks) are dropped from the freeze lists.
    """
    check_training_mode(mode)
    bank = list(GeometricMemory.BANK_PREFIXES)
    recon = list(GeometricMemory.RECONSTRUCTOR_PREFIXES)
    if parameter_names is not None:
        bank, recon = (
            [p for p in side if any(n.startswith(p) for n in parameter_names)] for side in (bank, recon)
        )
    if mode == "joint":
        return []
    seq_keys = ("seq_weight", "seq_norm_weight", "seq_pool_weight")
    defaults = {"seq_weight": 1.0, "seq_norm_weight": 0.1, "seq_pool_weight": 0.0}
    seq_on = {k: float((weights or defaults).get(k, defaults[k])) for k in seq_keys}
    pooled_only = {**dict.fromkeys(seq_keys, 0.0), "freeze": recon}
    if mode == "pooled":
        return [PhaseCallback([(0, pooled_only)])]
    if pretrained_bank:
        fa, fb = 0.0, (fractions[0] if fractions else 0.5)
    else:
        fa, fb = (fractions[0], fractions[1]) if len(fractions) >= 2 else (0.4, 0.3)
    a_end = round(steps * fa)
    b_end = a_end + round(steps * fb)
    phases: list[tuple[int, dict[str, Any]]] = []
    if a_end > 0:
        phases.append((0, pooled_only))
    phases.append((a_end + 1, {**seq_on, "freeze": bank, "unfreeze": recon}))
    phases.append((b_end + 1, {"unfreeze": bank + recon}))
    return [PhaseCallback(phases), LRScaleCallback([(0, 1.0), (b_end + 1, bank_lr_scale)])]


# ----------------------------------------------------------------------------- training
@dataclass
class MemoryRun:
    """Outcome of :func:`train_memory`."""

    model: GeometricMemory
    result: TrainResult
    evaluation: dict[str, float]
    convergence: dict[str, Any]
    out_dir: Path | None
    metrics: list[dict[str, Any]] = field(default_factory=list)


def train_memory(
    model: GeometricMemory,
    data: MemoryData,
    train_config: TrainConfig,
    mode: str = "joint",
    bank_lr_scale: float = 0.1,
    pretrained_bank: bool = False,
    periodic_eval_docs: int | None = 128,
    callbacks: Sequence[Callback] = (),
    resume: bool | str | os.PathLike = True,
    fresh: bool = False,
) -> MemoryRun:
    """Train the memory model with the shared :class:`~pentachora.training.Trainer`, then evaluate.

    Args:
        model: The model (its config must match ``data``'s encoders).
        data: Corpus + caches (:func:`prepare_memory_data`).
        train_config: Trainer settings (``batch_size`` documents per step).
        mode: ``joint`` / ``two-phase`` / ``pooled``.
        bank_lr_scale: Bank-side LR multiplier in two-phase's last stage.
        pretrained_bank: The model's bank was loaded from a trained checkpoint (two-phase skips its
            pooled-only stage).
        periodic_eval_docs: Held-out documents used by the evaluations during training (all at the end).
        callbacks: Extra callbacks.
        resume: Passed to :meth:`Trainer.fit` (the corpus, document counts, encoder and teacher
            fingerprints, mode and ``bank_lr_scale`` are part of what a resume must match;
            ``"force"`` resumes anyway).
        fresh: Start over, moving an earlier run in ``out_dir`` aside to ``OUT.old-<timestamp>/``.

    The run folder is locked until ``final/`` and ``eval.json`` are written; ``data.json`` is
    written only once the run is accepted.
    """
    if data.train is None:
        raise ConfigError("train_memory needs the training cache (prepare_memory_data(include_train=True))")
    model.check_encoder(data.encoder)
    model.attach_encoder(data.encoder)
    source = CachedDocumentSource(data.train, train_config.batch_size, seed=train_config.seed)
    seq_map = fit_student_to_teacher(data.train, same_space(data.encoder, data.teacher))
    monitor = memory_convergence_monitor()
    cbs = [
        *mode_callbacks(
            mode,
            train_config.steps,
            bank_lr_scale,
            pretrained_bank,
            weights=dict(model.loss_weights),
            parameter_names=[n for n, _ in model.named_parameters()],
        ),
        monitor,
        *callbacks,
    ]
    groups = model.param_groups(train_config.lr, train_config.weight_decay)
    out_dir = Path(train_config.out_dir) if train_config.out_dir else None
    run_data = {**data.describe(), "mode": mode, "bank_lr_scale": bank_lr_scale}
    # where the caches live may change between sessions; what they hold may not
    run_data.pop("train_cache", None)
    run_data.pop("heldout_cache", None)

    def eval_fn(m: torch.nn.Module) -> dict[str, float]:
        return evaluate_memory(m, data.heldout, max_docs=periodic_eval_docs, seq_map=seq_map)  # type: ignore[arg-type]

    trainer = Trainer(
        model, train_config, source, eval_fn=eval_fn, callbacks=cbs, param_groups=groups, run_data=run_data
    )
    lock = run_folder_lock(out_dir, enabled=is_main_process()) if out_dir is not None else nullcontext()
    with lock:
        result = trainer.fit(resume=resume, fresh=fresh)
        trained: GeometricMemory = trainer.unwrapped_model.to("cpu")  # type: ignore[assignment]
        for p in trained.parameters():
            p.requires_grad_(True)
        evaluation = evaluate_memory(trained, data.heldout, seq_map=seq_map)
        evaluation.update(
            train_steps=float(result.steps),
            train_wall_s=float(result.wall_time_s),
            nonfinite_steps=float(result.nonfinite_steps),
            torch_threads=float(torch.get_num_threads()),
        )
        metrics: list[dict[str, Any]] = []
        if out_dir is not None:
            trained.save_pretrained(out_dir / FINAL_DIR)
            atomic_write_json(out_dir / "eval.json", evaluation)
            atomic_write_json(
                out_dir / "caches.json",
                {"train_cache": str(data.train.path), "heldout_cache": str(data.heldout.path)},
            )
            metrics = read_metrics(out_dir / "metrics.jsonl")
    return MemoryRun(
        model=trained,
        result=result,
        evaluation=evaluation,
        convergence=monitor.report,
        out_dir=out_dir,
        metrics=metrics,
    )


# ----------------------------------------------------------------------------- issue 14: chunks, gradients
def _window_metrics(
    cache: FeatureCache, window_means: list[torch.Tensor], window_cos: list[torch.Tensor] | None
) -> dict[str, float]:
    """Per-window s_cos and cross-window retrieval from per-document ``(S_d, H)`` window means.

    ``cross_window_r1``: for every document d and ordered pair of its windows i ≠ j, rank the teacher-
    space embedding of window j of every held-out document that has a window j (the encoder's pooled
    output of that window alone) against window i's sequence mean; a hit is document d's window j.
    ``whole_r1``: window i's mean → the teacher embedding of the whole document, among all documents.
    ``first_window_tail_r1``: the first window's sequence mean → the teacher embedding of the tail.
    """
    from pentachora.memory.metrics import _unit

    pooled = cache.per_document("window_pooled")
    n = len(window_means)
    counts = [int(m.shape[0]) for m in window_means]
    hits = total = 0
    for j in range(max(counts)):
        docs = [d for d in range(n) if counts[d] > j]
        if len(docs) < 2:
            continue
        keys = _unit(torch.stack([pooled[d][j] for d in docs]))
        pos = {d: r for r, d in enumerate(docs)}
        q_rows, q_docs = [], []
        for d in docs:
            for i in range(counts[d]):
                if i != j:
                    q_rows.append(window_means[d][i])
                    q_docs.append(pos[d])
        if not q_rows:
            continue
        best = (_unit(torch.stack(q_rows)) @ keys.T).argmax(1)
        hits += int((best == torch.tensor(q_docs)).sum())
        total += len(q_rows)
    teacher = _unit(cache.tensors["teacher"][:n].float())
    rows = [(d, i) for d in range(n) for i in range(counts[d])]
    q = _unit(torch.stack([window_means[d][i] for d, i in rows]))
    whole = float(((q @ teacher.T).argmax(1) == torch.tensor([d for d, _ in rows])).float().mean())
    out = {
        "cross_window_r1": hits / total if total else math.nan,
        "cross_window_pairs": float(total),
        "whole_r1": whole,
    }
    if cache.has_tails:
        valid = cache.tensors["has_tail"][:n].bool()
        first = torch.stack([m[0] for m in window_means])
        out["first_window_tail_r1"] = recall_at_1(first, cache.tensors["tail"][:n].float(), valid)
    if window_cos is not None:
        flat = torch.cat(window_cos)
        out["window_s_cos"] = float(flat.mean())
        out["first_window_s_cos"] = float(torch.stack([c[0] for c in window_cos]).mean())
        later = [c[1:] for c in window_cos if c.numel() > 1]
        out["later_window_s_cos"] = float(torch.cat(later).mean()) if later else math.nan
        out["min_window_s_cos"] = float(flat.min())
    return out


@torch.no_grad()
def evaluate_chunks(
    model: GeometricMemory, cache: FeatureCache, max_docs: int | None = None, batch_size: int = EVAL_BATCH
) -> dict[str, float]:
    """Contextual chunks on cached documents: per-window s_cos to the native window (content tokens) and
    how much each window's chunk knows about the others (see :func:`_window_metrics`).

    Raises:
        ConfigError: The model has no contextual chunks.
    """

    model.config.output_mode.require_chunks("evaluate_chunks")
    n = cache.n_docs if max_docs is None else min(max_docs, cache.n_docs)
    device = next(model.parameters()).device
    means, coss = [], []
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(n, start + batch_size))
        batch = {k: v.to(device) for k, v in cache.batch(idx, with_targets=False).items()}
        out = model(batch)
        b, s = batch["segment_mask"].shape
        chunks = out.chunks.view(b, s, -1, out.chunks.shape[-1]).float().cpu()
        native = model.native_windows(batch).float().cpu()
        tok = (batch["attention_mask"].bool() & batch["segment_mask"].unsqueeze(-1)).cpu()
        cos = torch.nn.functional.cosine_similarity(chunks, native, dim=-1, eps=1e-8)
        m = tok.float()
        win_mean = (chunks * m.unsqueeze(-1)).sum(2) / m.sum(2, keepdim=True).clamp_min(1.0)
        win_cos = (cos * m).sum(2) / m.sum(2).clamp_min(1.0)
        for r in range(b):
            k = int(batch["segment_mask"][r].sum())
            means.append(win_mean[r, :k])
            coss.append(win_cos[r, :k])
    sub = cache if n == cache.n_docs else _subset(cache, n)
    return _window_metrics(sub, means, coss)


def concat_chunk_metrics(cache: FeatureCache) -> dict[str, float]:
    """The same measures for compel-style concatenation (every window's native sequence alone)."""
    sums = cache.per_document("window_target_sum")
    toks = cache.per_document("window_tokens")
    means = [s / t.clamp_min(1).unsqueeze(-1).float() for s, t in zip(sums, toks, strict=True)]
    out = _window_metrics(cache, means, None)
    out.update(window_s_cos=1.0, first_window_s_cos=1.0, later_window_s_cos=1.0, min_window_s_cos=1.0)
    return out


def loss_gradient_norms(
    model: GeometricMemory, batch: dict[str, torch.Tensor], at: str = "bank"
) -> dict[str, float]:
    """The norm of each weighted loss term's gradient at the bank side (the seed's §6.3 "loudest
    gradient"): ``‖∂(w_k·L_k)/∂θ_bank‖`` over the fusion, bank and projector parameters (``at="bank"``)
    or every parameter (``at="all"``), measured with :func:`torch.autograd.grad` on one batch.
    """
    names = {
        "infonce": "infonce_weight",
        "pooled_cos_loss": "pooled_cos_weight",
        "seq_loss": "seq_weight",
        "seq_norm": "seq_norm_weight",
        "seq_pool": "seq_pool_weight",
        "cv_loss": "cv_weight",
        "procrustes": "procrustes_weight",
        "chunk_loss": "chunk_weight",
        "chunk_ctx": "chunk_ctx_weight",
        "image_loss": "image_weight",
    }
    params = [
        p
        for n, p in model.named_parameters()
        if (at == "all" or n.startswith(GeometricMemory.BANK_PREFIXES)) and n != "log_temperature"
    ]
    was = model.training
    model.train()
    try:
        out = model(batch)
        norms: dict[str, float] = {}
        for term, weight in names.items():
            value = getattr(out, term, None)
            w = model.loss_weights.get(weight, 0.0)
            if value is None or not torch.is_tensor(value) or not value.requires_grad or w == 0:
                continue
            grads = torch.autograd.grad(w * value, params, retain_graph=True, allow_unused=True)
            sq = sum(float((g.float() ** 2).sum()) for g in grads if g is not None)
            norms[term] = math.sqrt(sq)
    finally:
        model.train(was)
    return norms
