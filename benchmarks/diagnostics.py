"""Diagnostics on our models: the seed's precision, loudness and §9.1 findings, measured.

Four studies and an overhead measurement, one process, CPU (2 shared cores):

1. **Precision** — the geometric memory (``minilm-tiny``: frozen all-MiniLM-L6-v2 student, a fresh
   192-d memory system) on long texts (consecutive Wikipedia documents joined to ≥ 27 windows) read
   through 4, 8, 16 and 27 segments of the GRU chain in fp32, bf16 / fp16 CPU autocast and pure
   bf16 / fp16 weights (``.to(dtype)``): CV of the memory tokens and of the bank anchors, the
   deviation of the bank's output, the pooled output and the sequence from an fp64 recomputation,
   and whether the auditor flags it. Then a short training at 27 segments in each precision from
   the same initial weights and batches: the step of the auditor's first flag vs the step at which
   the loss departs from the fp32 twin (> 5 % relative, or non-finite).
2. **Loudness** — a short memory training (``pentachora.recipes.memory.train_memory``) with the
   default loss mix and with ``seq_pool_weight=1``: the gradient norm each loss term alone sends
   into the bank (fusion + bank), the pooled head and the reconstructor, every K steps, weighted by
   the loss weights; and the tail R@1 of each run.
3. **§9.1** — the pentachoron CV of trained representations (MiniLM sentence embeddings, a trained
   GeoVAE's four sectors) with the Cayley–Menger arithmetic in fp32 vs fp64, on the same pentachora.
4. **GeoVAE** ``tiny-12`` trained with ``TrainConfig(mixed_precision="bf16")`` (and an fp32 twin)
   through ``pentachora.recipes.train_autoencoder`` with the auditor on its four CV sectors; the run
   folder's report (``pentachora audit``) is copied next to the results.
5. **Overhead** — the same GeoVAE fp32 run without the auditor and with it at K = 1, 10, 100, as
   wall-time ratios to the run without it (same process, same data).

Usage::

    python benchmarks/diagnostics.py              # everything (~15-20 min on 2 shared cores)
    python benchmarks/diagnostics.py --quick      # tiny sizes, a smoke run (~2 min)

Writes ``benchmarks/results/diagnostics.json``, ``diagnostics.md`` and ``diagnostics_*.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PRECISIONS = {
    "fp32": (None, False),
    "bf16 autocast": (torch.bfloat16, False),
    "fp16 autocast": (torch.float16, False),
    "bf16 weights": (torch.bfloat16, True),
    "fp16 weights": (torch.float16, True),
}
INPUT_KEYS = ("states", "attention_mask", "segment_mask")
GEO_SECTORS = ["encoder@16", "bottleneck", "inverse@16", "decoder.in_proj"]

logger = logging.getLogger("bench.diagnostics")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    p.add_argument("--segments", type=int, nargs="+", default=[4, 8, 16, 27])
    p.add_argument("--texts", type=int, default=6, help="long texts for study 1")
    p.add_argument("--precision-batch", type=int, default=2)
    p.add_argument("--precision-steps", type=int, default=8, help="training steps per precision (study 1)")
    p.add_argument("--precision-train-batch", type=int, default=1)
    p.add_argument("--audit-every", type=int, default=4)
    p.add_argument("--loudness-steps", type=int, default=32)
    p.add_argument("--loudness-every", type=int, default=8)
    p.add_argument("--geo-steps", type=int, default=120)
    p.add_argument("--geo-batch", type=int, default=8)
    p.add_argument("--geo-size", type=int, default=32)
    p.add_argument("--overhead-steps", type=int, default=100)
    p.add_argument("--only", nargs="+", default=None, help="precision loudness cv64 geovae overhead")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--render",
        type=Path,
        default=None,
        help="re-render the markdown and PNGs of an existing results JSON",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.segments, args.texts, args.precision_batch = [2, 4], 2, 2
        args.precision_steps, args.precision_train_batch, args.audit_every = 2, 1, 1
        args.loudness_steps, args.loudness_every = 4, 2
        args.geo_steps, args.geo_batch, args.geo_size, args.overhead_steps = 4, 2, 16, 4
    return args


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


# ----------------------------------------------------------------------------- study 1: precision
def long_texts(n: int, min_segments: int, encoder: Any) -> list[str]:
    """``n`` texts of at least ``min_segments`` × 75 MiniLM tokens: consecutive Wikipedia documents joined."""
    from pentachora.data.text import wikipedia_corpus

    docs = wikipedia_corpus().train
    need = min_segments * encoder.content_window
    texts, cur, cur_len = [], [], 0
    lengths = [len(t) for t in encoder.tokenize(docs)]
    for doc, length in zip(docs, lengths, strict=True):
        cur.append(doc)
        cur_len += length
        if cur_len >= need:
            texts.append("\n".join(cur))
            cur, cur_len = [], 0
            if len(texts) == n:
                break
    return texts


def memory_batches(config: Any, student: Any, texts: list[str]) -> dict[str, torch.Tensor]:
    """Features of ``texts`` (all segments) with the training targets."""
    from pentachora.data.text_features import segment_features
    from pentachora.memory import Segmenter

    seg = Segmenter(student, config.max_tokens, config.overlap)(texts)
    feats = segment_features(student, seg)
    teacher = student_teacher_embed(student, texts)
    return {
        "states": feats["states"],
        "attention_mask": seg.attention_mask.long(),
        "segment_mask": seg.segment_mask.bool(),
        "teacher": teacher,
        "seq_target": feats["target"][:, 0],
        "seq_mask": seg.attention_mask[:, 0].long(),
    }


def student_teacher_embed(student: Any, texts: list[str]) -> torch.Tensor:
    from pentachora.memory import FrozenTextEncoder

    teacher = FrozenTextEncoder(student.model, student.tokenizer, pooling="mean", name="minilm")
    return teacher.embed(texts)


def take(
    batch: dict[str, torch.Tensor], rows: slice | list[int], segments: int | None = None
) -> dict[str, torch.Tensor]:
    out = {k: v[rows] for k, v in batch.items()}
    if segments is not None:
        out["states"] = out["states"][:, :segments]
        out["attention_mask"] = out["attention_mask"][:, :segments]
        out["segment_mask"] = out["segment_mask"][:, :segments]
    return out


def reference_forward(model64: Any, batch: dict[str, torch.Tensor]) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """GeometricMemory's read + reconstruct in float64 (its ``read`` casts the states to fp32)."""
    token_mask = batch["attention_mask"].bool() & batch["segment_mask"].bool().unsqueeze(-1)
    content = model64.fusion(batch["states"].double(), token_mask)
    state = model64.bank(content, token_mask, batch["segment_mask"].bool())
    seg = state.entry_mask.unsqueeze(-1).to(state.entries.dtype)
    bank_mean = (state.entries * seg).sum(1) / seg.sum(1).clamp_min(1.0)
    pooled = model64.projector(model64.pool_norm(torch.cat([state.memory.mean(dim=1), bank_mean], dim=-1)))
    return state, pooled, model64.reconstruct(state)


def _lowp(model: Any, name: str) -> tuple[Any, str | None, torch.dtype | None]:
    """The model for a precision, its autocast name and dtype. Pure-dtype weights still run under
    autocast of the same dtype: GeometricMemory.read casts the encoder states to fp32 first."""
    dtype, pure = PRECISIONS[name]
    if dtype is None:
        return model, None, None
    label = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    return (copy.deepcopy(model).to(dtype) if pure else model), label, dtype


def _autocast(dtype: torch.dtype | None) -> Any:
    return torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None)


def _grab(store: dict[str, torch.Tensor], key: str) -> Any:
    def hook(module: Any, args: Any, output: torch.Tensor) -> None:
        store[key] = output.detach()

    return hook


def precision_forward(
    model: Any, batch: dict[str, torch.Tensor], segments: list[int]
) -> list[dict[str, Any]]:
    """Forward-only: each precision × number of segments (one audited forward pass each)."""
    from pentachora.diagnostics import attach, relative_deviation
    from pentachora.geometry import cv_metric

    model64 = copy.deepcopy(model).double().eval()
    rows = []
    for s in segments:
        b = take(batch, slice(None), s)
        with torch.no_grad():
            ref_state, ref_pooled, ref_seq = reference_forward(model64, b)
        ref_mem = ref_state.memory.reshape(-1, ref_state.memory.shape[-1])
        for name in PRECISIONS:
            m, autocast, _ = _lowp(model, name)
            m.eval()
            grabbed: dict[str, torch.Tensor] = {}
            hooks = [
                m.projector.register_forward_hook(_grab(grabbed, "pooled")),
                m.reconstructor.register_forward_hook(_grab(grabbed, "sequence")),
            ]
            t0 = time.perf_counter()
            with attach(m, ["bank:memory", "bank:entries"], precision=autocast) as aud:
                readings = {r.name: r for r in aud.audit(b, step=0)}
            for h in hooks:
                h.remove()
            anchors = m.bank.anchor_directions().detach()
            mem = readings["bank.memory"]
            rows.append(
                {
                    "segments": s,
                    "precision": name,
                    "run_dtype": mem.run_dtype,
                    "memory_cv": _finite(mem.cv),
                    "memory_cv_ref": _finite(mem.cv_ref),
                    "memory_cv_fp64_model": _finite(
                        cv_metric(F.normalize(ref_mem, dim=-1), 256, torch.Generator().manual_seed(1))
                    ),
                    "bank_deviation": _finite(mem.deviation),
                    "entries_deviation": _finite(readings["bank.entries"].deviation),
                    "anchors_cv": _finite(cv_metric(anchors.double(), 256, torch.Generator().manual_seed(1))),
                    "pooled_deviation": _finite(relative_deviation(grabbed["pooled"], ref_pooled)),
                    "sequence_deviation": _finite(relative_deviation(grabbed["sequence"], ref_seq)),
                    "band": _finite(mem.max_deviation),
                    "flagged": sorted(k for k, r in readings.items() if r.flagged),
                    "reasons": {k: r.reasons for k, r in readings.items() if r.flagged},
                    "audit_s": time.perf_counter() - t0,
                }
            )
            logger.info(
                "precision fwd S=%d %s: %s", s, name, {k: v for k, v in rows[-1].items() if k != "reasons"}
            )
    return rows


def precision_training(
    model: Any, batch: dict[str, torch.Tensor], steps: int, train_batch: int, every: int, lr: float = 3e-3
) -> dict[str, Any]:
    """Train from the same weights on the same batches in each precision; auditor every ``every`` steps."""
    from pentachora.diagnostics import attach

    n = batch["states"].shape[0]
    audit_rows = list(range(min(n, max(2, train_batch))))
    audit_batch = {k: v for k, v in take(batch, audit_rows).items() if k in INPUT_KEYS}  # no targets, no loss
    runs: dict[str, Any] = {}
    for name in PRECISIONS:
        m, autocast, dtype = _lowp(copy.deepcopy(model), name)
        m.train()
        opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.0)
        losses, cvs, t0 = [], [], time.perf_counter()
        aud = attach(m, ["bank:memory", "bank.anchors", "reconstructor"], precision=autocast)
        audits = []
        for r in aud.audit(audit_batch, step=0):
            audits.append(r.to_dict())
        failed = None
        for step in range(1, steps + 1):
            idx = [((step - 1) * train_batch + j) % n for j in range(train_batch)]
            b = take(batch, idx)
            torch.manual_seed(step)
            try:
                with _autocast(dtype):
                    out = m(b)
            except (RuntimeError, ValueError) as exc:  # an SVD or a CV of non-finite values
                failed = f"step {step}: {type(exc).__name__}: {str(exc)[:120]}"
                losses.append(None)
                cvs.append(None)
                audits.extend(r.to_dict() for r in aud.audit(audit_batch, step=step))
                break
            loss = out.loss
            opt.zero_grad(set_to_none=True)
            if torch.isfinite(loss):
                loss.backward()
                opt.step()
            losses.append(_finite(float(loss.detach())))
            cvs.append(_finite(float(out.cv)) if out.cv is not None else None)
            if step % every == 0 or step == steps:
                audits.extend(r.to_dict() for r in aud.audit(audit_batch, step=step))
        losses += [None] * (steps - len(losses))
        cvs += [None] * (steps - len(cvs))
        aud.detach()
        first = [s for s in aud.first_flagged.values() if s is not None]
        runs[name] = {
            "loss": losses,
            "anchors_cv": cvs,
            "audits": audits,
            "first_flag_step": min(first) if first else None,
            "flagged": dict(aud.first_flagged),
            "failed": failed,
            "wall_s": time.perf_counter() - t0,
        }
        logger.info(
            "precision train %s: loss %s first flag %s", name, losses[-3:], runs[name]["first_flag_step"]
        )
    ref = runs["fp32"]["loss"]
    for run in runs.values():
        depart = None
        for i, (a, b) in enumerate(zip(run["loss"], ref, strict=True)):
            if a is None or (b is not None and abs(a - b) > 0.05 * abs(b)):
                depart = i + 1
                break
        run["loss_departs_step"] = depart
        f = run["first_flag_step"]
        run["flag_lead_steps"] = (depart - f) if depart is not None and f is not None else None
    return {"steps": steps, "train_batch": train_batch, "audit_every": every, "lr": lr, "runs": runs}


# ----------------------------------------------------------------------------- study 2: loudness
LOUD_TERMS = ["infonce", "pooled_cos_loss", "procrustes", "seq_loss", "seq_norm", "seq_pool"]
LOUD_GROUPS = {
    "bank": ["fusion.", "bank."],
    "pooled_head": ["pool_norm.", "projector."],
    "reconstructor": ["reconstructor."],
}
POOLED_SIDE = ("infonce", "pooled_cos_loss", "procrustes")
SEQUENCE_SIDE = ("seq_loss", "seq_norm", "seq_pool")


def loudness_study(args: argparse.Namespace, student: Any, teacher: Any, work: Path) -> dict[str, Any]:
    from pentachora.diagnostics import LoudnessCallback
    from pentachora.memory import GeometricMemory, MemoryConfig
    from pentachora.recipes.memory import prepare_memory_data, train_memory
    from pentachora.training import TrainConfig

    base = MemoryConfig.preset("minilm-tiny")
    n_train, n_held = (8, 8) if args.quick else (128, 48)
    data = prepare_memory_data(
        base, "wiki", cache_root=work / "cache", max_train_docs=n_train, max_heldout_docs=n_held,
        encoders=(student, teacher), progress=False,
    )  # fmt: skip
    out: dict[str, Any] = {
        "train_docs": n_train,
        "heldout_docs": n_held,
        "steps": args.loudness_steps,
        "runs": {},
    }
    for label, overrides in (("default loss mix", {}), ("seq_pool_weight=1", {"seq_pool_weight": 1.0})):
        config = MemoryConfig.preset("minilm-tiny", **overrides)
        torch.manual_seed(args.seed)
        model = GeometricMemory(config)
        terms = [t for t in LOUD_TERMS if t != "seq_pool" or config.seq_pool_weight > 0]
        cb = LoudnessCallback(terms, groups=LOUD_GROUPS, every=args.loudness_every, weights="model")
        cfg = TrainConfig(
            steps=args.loudness_steps, batch_size=2 if args.quick else 8, lr=1e-3, warmup_steps=5,
            eval_every=0, progress=False, tensorboard=False, seed=args.seed, out_dir=str(work / label.replace("=", "")),
        )  # fmt: skip
        t0 = time.perf_counter()
        run = train_memory(model, data, cfg, callbacks=[cb], periodic_eval_docs=n_held)
        hist = cb.history
        summary = {}
        for g in LOUD_GROUPS:
            pooled = [
                sum(h["weights"][t] * h["norms"][t][g] for t in terms if t in POOLED_SIDE) for h in hist
            ]
            seq = [sum(h["weights"][t] * h["norms"][t][g] for t in terms if t in SEQUENCE_SIDE) for h in hist]
            summary[g] = {
                "sequence_over_pooled": [s / p if p else None for s, p in zip(seq, pooled, strict=True)],
                "seq_loss_over_infonce": [
                    h["norms"]["seq_loss"][g] * h["weights"]["seq_loss"] / (h["norms"]["infonce"][g] * h["weights"]["infonce"])
                    if h["norms"]["infonce"][g] else None
                    for h in hist
                ],
            }  # fmt: skip
        out["runs"][label] = {
            "overrides": overrides,
            "history": hist,
            "summary": summary,
            "evaluation": {k: _finite(v) for k, v in run.evaluation.items()},
            "convergence": {
                k: v for k, v in run.convergence.items() if k not in ("history", "events", "tags")
            },
            "wall_s": time.perf_counter() - t0,
        }
        logger.info("loudness %s: tail_r1 %s", label, run.evaluation.get("seq_tail_r1"))
    return out


# ----------------------------------------------------------------------------- study 3: §9.1
def cv_arithmetic(
    sets: dict[str, torch.Tensor], n_samples: int = 2000, trials: int = 5
) -> list[dict[str, Any]]:
    """CV in fp32 vs fp64 arithmetic on the same pentachora; the Monte-Carlo spread for scale."""
    from pentachora.diagnostics import cv_in_dtype

    rows = []
    for name, pts in sets.items():
        unit = F.normalize(pts.detach().double().reshape(-1, pts.shape[-1]), dim=-1)
        if unit.shape[0] < 5:
            logger.warning("cv64: %s has %d points, fewer than a pentachoron; skipped", name, unit.shape[0])
            continue
        if unit.shape[0] > 2048:
            unit = unit[torch.randperm(unit.shape[0], generator=torch.Generator().manual_seed(0))[:2048]]
        c64, c32 = [], []
        for t in range(trials):
            c64.append(cv_in_dtype(unit, torch.float64, n_samples, torch.Generator().manual_seed(100 + t)))
            c32.append(cv_in_dtype(unit, torch.float32, n_samples, torch.Generator().manual_seed(100 + t)))
        d = [abs(a - b) for a, b in zip(c32, c64, strict=True)]
        m64 = sum(c64) / trials
        spread = (sum((c - m64) ** 2 for c in c64) / max(trials - 1, 1)) ** 0.5
        from pentachora.geometry import target_cv

        rows.append(
            {
                "set": name, "points": unit.shape[0], "dim": unit.shape[1], "cv_fp64": m64, "cv_fp32": sum(c32) / trials,
                "max_abs_diff": max(d), "mc_spread": spread, "target_cv": target_cv(unit.shape[1]),
            }
        )  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- study 4 + overhead: GeoVAE
def geovae_run(args: argparse.Namespace, mixed: str, out_dir: Path | None, every: int | None, steps: int,
               batch: int, size: int) -> dict[str, Any]:  # fmt: skip
    from pentachora.autoencoders import GeoVAE
    from pentachora.autoencoders.geovae import GeoVAEConfig
    from pentachora.diagnostics import AuditCallback
    from pentachora.recipes import train_autoencoder
    from pentachora.training import TrainConfig

    torch.manual_seed(args.seed)
    model = GeoVAE(GeoVAEConfig.preset("tiny-12"))
    cbs = [AuditCallback(GEO_SECTORS, every=every)] if every else []
    cfg = TrainConfig(
        steps=steps, batch_size=batch, lr=1e-3, warmup_steps=min(20, steps // 4), mixed_precision=mixed,
        eval_every=0, log_every=10, progress=False, tensorboard=False, seed=args.seed,
        out_dir=str(out_dir) if out_dir else None,
    )  # fmt: skip
    eval_data = geovae_eval_data(size)
    t0 = time.perf_counter()
    run = train_autoencoder(model, "images", cfg, image_size=size, callbacks=tuple(cbs), eval_data=eval_data,
                            final_eval=out_dir is not None, periodic_eval=eval_data)  # fmt: skip
    wall = time.perf_counter() - t0
    hist = cbs[0].history if cbs else []
    return {"model": run.model, "wall_s": wall, "train_wall_s": run.result.wall_time_s, "audits": hist,
            "evaluation": {k: _finite(v) for k, v in run.evaluation.items()},
            "last": {k: _finite(v) for k, v in run.result.metrics.items() if isinstance(v, float)}}  # fmt: skip


_EVAL: dict[int, Any] = {}


def geovae_eval_data(size: int) -> Any:
    from pentachora.recipes import build_eval_data

    if size not in _EVAL:
        from pentachora.data.spec import parse_data_spec

        _EVAL[size] = build_eval_data(parse_data_spec("images"), size).subset(max_tiles=8, n_noise=2)
    return _EVAL[size]


def geovae_sectors(model: Any, size: int) -> dict[str, torch.Tensor]:
    """The four sector representations of a GeoVAE on held-out tiles (for study 3)."""
    data = geovae_eval_data(size)
    if data.tiles01 is None:
        return {}
    from pentachora.data.images import to_model_space

    x = to_model_space(data.tiles01)
    caught: dict[str, torch.Tensor] = {}
    hooks = []
    mods = dict(model.named_modules())
    for spec in GEO_SECTORS:
        name, _, dim = spec.partition("@")

        def keep(m: Any, a: Any, o: Any, spec: str = spec, dim: str = dim) -> None:
            caught[spec] = o.detach().reshape(-1, int(dim) if dim else o.shape[-1])

        hooks.append(mods[name].register_forward_hook(keep))
    model.eval()
    with torch.no_grad():
        model(x[:8])
    for h in hooks:
        h.remove()
    return caught


# ----------------------------------------------------------------------------- rendering
# ----------------------------------------------------------------------------- readings, computed
# Every sentence below is built from the numbers of the run it reads; thresholds are stated in the text.
SEED_CV_JUMP = 0.62 - 0.165  # the write-up's fp16 vs fp32 bank CV (seed §9.1), the effect we look for


def _span(values: list[float], fmt: str = "{:.2e}") -> str:
    lo, hi = min(values), max(values)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}–{fmt.format(hi)}"


def precision_reading(p: dict[str, Any]) -> list[str]:
    """Reading of study 1 from its rows: deviation range, CV movement, flags, training departures."""
    low = [r for r in p["forward"] if r["precision"] != "fp32" and r["bank_deviation"] is not None]
    if not low:
        return []
    s_max, s_min = max(p["segments"]), min(p["segments"])
    at_max = {r["precision"]: r["bank_deviation"] for r in low if r["segments"] == s_max}
    at_min = {r["precision"]: r["bank_deviation"] for r in low if r["segments"] == s_min}
    moves = [abs(r["memory_cv"] - r["memory_cv_fp64_model"]) for r in low if r["memory_cv"] is not None]
    flagged = sorted({r["precision"] for r in low if r["flagged"]})
    growth = [at_max[k] / at_min[k] for k in at_max if at_min.get(k)]
    jump = max(moves) >= SEED_CV_JUMP / 2
    out = [
        f"**Reading.** Through {s_max} GRU updates the bank's output deviates from its fp64 recomputation by "
        + ", ".join(f"{k} {v:.1e}" for k, v in at_max.items())
        + f" (all low-precision rows: {_span([r['bank_deviation'] for r in low])}); "
        f"from {s_min} to {s_max} segments it grows {_span(growth, '{:.1f}')}× "
        f"(√{s_max}/{s_min} = {math.sqrt(s_max / s_min):.1f}). The memory-token CV moves by at most "
        f"{max(moves):.4f} against the fp64 model, so the seed's fp16 CV jump (0.165 → 0.62) "
        + ("**appears**" if jump else "does **not** appear")
        + " here (threshold: half that jump). "
        + (
            f"Flagged by the default bands (32 × unit round-off): {', '.join(flagged)}."
            if flagged
            else "None of these is flagged by the default bands (32 × unit round-off)."
        )
    ]
    t = p["training"]
    ref = t["runs"]["fp32"]["loss"]
    parts = []
    for name, run in t["runs"].items():
        if name == "fp32":
            continue
        pairs = [(a, b) for a, b in zip(run["loss"], ref, strict=True) if a is not None and b is not None]
        if run["loss_departs_step"] is None and pairs:
            gap = max(abs(a - b) / abs(b) for a, b in pairs)
            parts.append(f"{name} follows the fp32 losses (max relative gap {gap:.1e})")
        else:
            lead = run["flag_lead_steps"]
            when = (
                "never flagged"
                if run["first_flag_step"] is None
                else f"first flagged at step {run['first_flag_step']}"
                + (
                    f", {lead} step(s) before the loss departs"
                    if lead and lead > 0
                    else ", no earlier than the loss"
                )
            )
            parts.append(f"{name} departs from fp32 at step {run['loss_departs_step']} ({when})")
    out.append(
        f"In training ({t['steps']} steps at {s_max} segments): "
        + "; ".join(parts)
        + ". Caveats: CPU only, an "
        "untrained model, a few steps; the seed's effect came from long fp16 GPU training with the CV loss feeding "
        "back into the anchors."
    )
    return out


def loudness_reading(lo: dict[str, Any]) -> list[str]:
    """Reading of study 2: the sequence/pooled and seq_loss/InfoNCE gradient ratios at the bank, per run."""
    parts = []
    for label, run in lo["runs"].items():
        sp = [v for v in run["summary"]["bank"]["sequence_over_pooled"] if v]
        si = [v for v in run["summary"]["bank"]["seq_loss_over_infonce"] if v]
        if not sp:
            continue
        mid = sorted(sp)[len(sp) // 2]
        verdict = (
            f"the sequence side reaches the bank {1 / mid:.0f}× quieter than the pooled side"
            if mid < 0.5
            else "the two sides are about equally loud (ratio within 0.5–2)"
            if mid <= 2
            else f"the sequence side is {mid:.1f}× louder"
        )
        parts.append(
            f"{label}: sequence/pooled at the bank {_span(sp, '{:.2f}')}, seq_loss/InfoNCE {_span(si, '{:.3f}')} — {verdict}"
        )
    return [
        "**Reading.** "
        + "; ".join(parts)
        + f". These {lo['steps']}-step runs measure loudness only; they are far too short to show what the "
        "loudness does to retrieval (compare the long trainings in `memory.md`)."
    ]


def cv64_reading(c: dict[str, Any]) -> list[str]:
    """Reading of study 3: is fp32-vs-fp64 CV difference below the Monte-Carlo spread for every set?"""
    rows = c["rows"]
    if not rows:
        return []
    worst = max(rows, key=lambda r: r["max_abs_diff"] / max(r["mc_spread"], 1e-300))
    ratio = worst["max_abs_diff"] / max(worst["mc_spread"], 1e-300)
    verdict = (
        "the settled CV is a property of the representation, not of the arithmetic"
        if ratio < 0.01
        else "the arithmetic moves the CV by a visible fraction of its sampling noise"
    )
    return [
        f"**Reading.** Over {len(rows)} representations the fp32 and fp64 CVs differ by at most "
        f"{worst['max_abs_diff']:.1e} ({worst['set']}), {ratio:.1e} of that set's Monte-Carlo spread: {verdict} "
        "(threshold: 1 % of the spread)."
    ]


def geovae_reading(g: dict[str, Any]) -> list[str]:
    """Reading of study 4: deviation against band, flags and whether they cleared, PSNR and wall time."""
    out = []
    bf, fp = g["runs"].get("bf16 autocast"), g["runs"].get("fp32")
    if not bf:
        return out
    devs = [a["deviation"] for a in bf["audits"] if a["deviation"] is not None]
    band = max(a["max_deviation"] for a in bf["audits"])
    flags = sorted({(a["name"], a["step"]) for a in bf["audits"] if a["flagged"]}, key=lambda x: x[1])
    last = {a["name"]: a for a in bf["audits"]}
    still = sorted(n for n, a in last.items() if a["flagged"])
    text = (
        f"**Reading.** Under bf16 autocast every sector's deviation from its fp64 recomputation stays at or "
        f"under {max(devs):.1e} (band {band:.2e}). "
    )
    if flags:
        names = sorted({n for n, _ in flags})
        text += f"Flags: {', '.join(names)} (first at step {flags[0][1]}); " + (
            f"still flagged at the end: {', '.join(still)}. " if still else "all cleared by the end. "
        )
    else:
        text += "Nothing is flagged. "
    if fp:
        text += (
            f"Held-out PSNR bf16 {bf['evaluation']['psnr_heldout']:.2f} vs fp32 {fp['evaluation']['psnr_heldout']:.2f} dB; "
            f"bf16 training took {bf['train_wall_s'] / fp['train_wall_s']:.1f}× the fp32 wall time on this CPU "
            "(same process, auditor on in both)."
        )
    return [text]


def overhead_reading(o: dict[str, Any]) -> list[str]:
    ks = [(k, v["ratio"]) for k, v in o["runs"].items() if k.startswith("K=")]
    base = [v["ratio"] for k, v in o["runs"].items() if k.startswith("none")]
    floor = abs(base[0] - base[-1])
    within = [k for k, r in ks if abs(r - 1) <= floor]
    return [
        "**Reading.** Wall time with the auditor on four sectors, as a ratio to the unaudited run: "
        + ", ".join(f"{r:.2f}× at {k}" for k, r in ks)
        + f" over a {o['steps']}-step run. The two unaudited runs differ by {floor * 100:.0f} %, the noise floor "
        "of these ratios" + (f"; {', '.join(within)} cannot be told from no auditor." if within else ".")
    ]


def render_markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Diagnostics on our models: precision, loudness, §9.1",
        "",
        f"Command: `{r['command']}` ({r['wall_s'] / 60:.1f} min on {r['machine']}; torch {r['torch']}, CPU only — "
        "no GPU run was possible in this session).",
        "",
    ]
    p = r.get("precision")
    if p:
        lines += [
            "## 1. Precision through the GRU chain (geometric memory, minilm-tiny, untrained)",
            "",
            f"{p['texts']} long texts (consecutive Wikipedia documents joined), MiniLM features, a fresh memory system "
            "(seeded). Deviation = ‖y − y_fp64‖/‖y_fp64‖; *bank* = the bank re-run in fp64 on its own (low-precision) "
            "input (the auditor's module reference), *pooled / sequence* = end to end against the whole model in fp64. "
            "Band = 32 × unit round-off of the run's dtype.",
            "",
            "| segments | precision | memory-token CV | CV (fp64 model) | bank dev. | pooled dev. | sequence dev. | band | flagged |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for row in p["forward"]:
            lines.append(
                f"| {row['segments']} | {row['precision']} | {_f(row['memory_cv'], 4)} | {_f(row['memory_cv_fp64_model'], 4)} | "
                f"{_e(row['bank_deviation'])} | {_e(row['pooled_deviation'])} | {_e(row['sequence_deviation'])} | "
                f"{_e(row['band'])} | {', '.join(row['flagged']) or '—'} |"
            )
        t = p["training"]
        lines += [
            "",
            f"Training at {max(p['segments'])} segments, {t['steps']} steps of {t['train_batch']} texts, AdamW lr {t['lr']}, "
            f"same initial weights and batches; auditor every {t['audit_every']} steps on a fixed batch "
            "(bank memory tokens, anchors, reconstructor). *Loss departs* = first step whose loss is > 5 % from the fp32 "
            "twin's (or non-finite).",
            "",
            "| precision | final loss | anchors CV (start → end) | memory CV end (fp64 ref) | max bank dev. | first flag | loss departs | lead (steps) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, run in t["runs"].items():
            mem = [a for a in run["audits"] if a["name"] == "bank.memory"]
            devs = [a["deviation"] for a in mem if a["deviation"] is not None]
            cvs = [c for c in run["anchors_cv"] if c is not None]
            lines.append(
                f"| {name} | {_f(run['loss'][-1], 4)} | {_f(cvs[0] if cvs else None, 4)} → {_f(cvs[-1] if cvs else None, 4)} | "
                f"{_f(mem[-1]['cv'], 4)} ({_f(mem[-1]['cv_ref'], 4)}) | {_e(max(devs) if devs else None)} | "
                f"{run['first_flag_step'] if run['first_flag_step'] is not None else '—'} | "
                f"{run['loss_departs_step'] if run['loss_departs_step'] is not None else '—'} | "
                f"{run['flag_lead_steps'] if run['flag_lead_steps'] is not None else '—'} |"
            )
        for name, run in t["runs"].items():
            if run.get("failed"):
                lines.append(f"- {name}: training stopped at {run['failed']}")
        lines += ["", *precision_reading(p), ""]
    lo = r.get("loudness")
    if lo:
        lines += [
            "## 2. Gradient loudness at the bank",
            "",
            f"`train_memory` on {lo['train_docs']} training documents, {lo['steps']} steps, minilm-tiny; the gradient norm "
            "each term alone sends into each parameter group, times its loss weight, on a fixed batch. "
            "Sequence side = seq_loss + seq_norm (+ seq_pool); pooled side = infonce + pooled_cos + procrustes "
            "(sums of per-term norms).",
            "",
            "| run | step | " + " | ".join(f"{t} → bank" for t in LOUD_TERMS) + " | seq/pooled at bank | seq_loss/infonce at bank | tail R@1 (sequence) | tail R@1 (pooled) |",
            "|---|---:|" + "---:|" * (len(LOUD_TERMS) + 4),
        ]  # fmt: skip
        for label, run in lo["runs"].items():
            for i, h in enumerate(run["history"]):
                if i not in (0, len(run["history"]) - 1):
                    continue
                cells = [
                    _e(h["weights"][t] * h["norms"][t]["bank"]) if t in h["norms"] else "—"
                    for t in LOUD_TERMS
                ]
                ev = run["evaluation"]
                lines.append(
                    f"| {label} | {h['step']} | "
                    + " | ".join(cells)
                    + f" | {_f(run['summary']['bank']['sequence_over_pooled'][i], 3)}"
                    f" | {_f(run['summary']['bank']['seq_loss_over_infonce'][i], 3)}"
                    f" | {_f(ev.get('seq_tail_r1'), 3) if i else ''} | {_f(ev.get('tail_r1'), 3) if i else ''} |"
                )
        lines += ["", *loudness_reading(lo), ""]
    c = r.get("cv64")
    if c:
        lines += [
            "## 3. §9.1 — is the settled CV a property of the arithmetic?",
            "",
            "Same unit vectors, same 2,000 random pentachora (5 seeds), Cayley–Menger determinant in fp32 vs fp64.",
            "",
            "| representation | points | D | CV fp64 | CV fp32 | max abs(fp32 − fp64) | Monte-Carlo spread | target_cv(D) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in c["rows"]:
            lines.append(
                f"| {row['set']} | {row['points']} | {row['dim']} | {row['cv_fp64']:.6f} | {row['cv_fp32']:.6f} | "
                f"{row['max_abs_diff']:.2e} | {row['mc_spread']:.2e} | {row['target_cv']:.4f} |"
            )
        lines += ["", *cv64_reading(c), ""]
    g = r.get("geovae")
    if g:
        lines += [
            "## 4. The auditor on GeoVAE tiny-12 under bf16 autocast",
            "",
            f"`train_autoencoder(GeoVAE tiny-12, 'images', TrainConfig(mixed_precision=...))`, {g['steps']} steps, batch "
            f"{g['batch']}, {g['size']}×{g['size']} crops; `AuditCallback({GEO_SECTORS}, every={g['every']})`.",
            "",
            "| run | sector | CV (end) | CV fp64 ref | target | max deviation | band | first flag | held-out PSNR |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for label, run in g["runs"].items():
            for sector in GEO_SECTORS:
                key = sector.replace(":", ".")
                rows = [a for a in run["audits"] if a["name"] == key]
                if not rows:
                    continue
                devs = [a["deviation"] for a in rows if a["deviation"] is not None]
                flags = [a["step"] for a in rows if a["flagged"]]
                lines.append(
                    f"| {label} | {sector} | {_f(rows[-1]['cv'], 4)} | {_f(rows[-1]['cv_ref'], 4)} | {_f(rows[-1]['cv_target'], 4)} | "
                    f"{_e(max(devs) if devs else None)} | {_e(rows[-1]['max_deviation'])} | {flags[0] if flags else '—'} | "
                    f"{_f(run['evaluation'].get('psnr_heldout'), 2)} |"
                )
        if g.get("report"):
            lines += ["", f"Report of the bf16 run folder (`pentachora audit`): {', '.join(g['report'])}"]
        lines += ["", *geovae_reading(g), ""]
    o = r.get("overhead")
    if o:
        lines += [
            "## 5. Auditor overhead (GeoVAE tiny-12, fp32, four sectors)",
            "",
            f"{o['steps']} steps, batch {o['batch']}, {o['size']}×{o['size']}; training wall time as a ratio to the same run "
            "without the auditor, same process.",
            "",
            "| auditor | wall (s) | ratio |",
            "|---|---:|---:|",
        ]
        for label, row in o["runs"].items():
            lines.append(f"| {label} | {row['wall_s']:.1f} | {row['ratio']:.2f} |")
        lines += ["", *overhead_reading(o), ""]
    return "\n".join(lines) + "\n"


def _f(x: Any, nd: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{nd}f}"


def _e(x: Any) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.2e}"


def render_png(r: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    paths = []
    p = r.get("precision")
    if p:
        fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
        for name in PRECISIONS:
            rows = [x for x in p["forward"] if x["precision"] == name]
            s = [x["segments"] for x in rows]
            axes[0].plot(s, [x["bank_deviation"] or math.nan for x in rows], marker="o", label=name)
            axes[1].plot(s, [x["sequence_deviation"] or math.nan for x in rows], marker="o", label=name)
            run = p["training"]["runs"].get(name)
            if run:
                axes[2].plot(
                    range(1, len(run["loss"]) + 1),
                    [v if v is not None else math.nan for v in run["loss"]],
                    label=name,
                )
        axes[0].set(title="bank output deviation vs fp64", xlabel="segments", yscale="log")
        axes[1].set(title="sequence deviation vs fp64 model", xlabel="segments", yscale="log")
        axes[2].set(title=f"training loss at {max(p['segments'])} segments", xlabel="step")
        for ax in axes:
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        path = out / "diagnostics_precision.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    lo = r.get("loudness")
    if lo:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for label, run in lo["runs"].items():
            steps = [h["step"] for h in run["history"]]
            for ax, g in zip(axes, ("bank", "reconstructor"), strict=True):
                ax.plot(
                    steps,
                    [v or math.nan for v in run["summary"][g]["sequence_over_pooled"]],
                    marker="o",
                    label=label,
                )
                ax.set(title=f"sequence-side / pooled-side gradient at {g}", xlabel="step", yscale="log")
                ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        path = out / "diagnostics_loudness.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.render is not None:
        result = json.loads(args.render.read_text())
        args.render.with_suffix(".md").write_text(render_markdown(result))
        render_png(result, args.render.parent)
        return 0
    for noisy in ("pentachora.training.loop", "pentachora.memory", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    only = set(args.only or ["precision", "loudness", "cv64", "geovae", "overhead"])
    args.out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    result: dict[str, Any] = {
        "command": (
            "python benchmarks/diagnostics.py " + shlex.join(argv if argv is not None else sys.argv[1:])
        ).strip(),
        "machine": f"{platform.platform()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
    }
    work = Path(tempfile.mkdtemp(prefix="pentachora-diag-"))
    sets: dict[str, torch.Tensor] = {}
    try:
        student = teacher = None
        if only & {"precision", "loudness", "cv64"}:
            from pentachora.memory import GeometricMemory, MemoryConfig
            from pentachora.recipes.memory import resolve_config

            config, student, teacher = resolve_config(
                MemoryConfig.preset("minilm-tiny", max_tokens=max(args.segments) * 75)
            )
        if "precision" in only:
            texts = long_texts(args.texts, max(args.segments), student)
            feats = memory_batches(config, student, texts)
            torch.manual_seed(args.seed)
            model = GeometricMemory(config)
            fwd = precision_forward(model, take(feats, slice(0, args.precision_batch)), args.segments)
            train = precision_training(
                model, feats, args.precision_steps, args.precision_train_batch, args.audit_every
            )
            result["precision"] = {
                "texts": len(texts),
                "segments": args.segments,
                "forward": fwd,
                "training": train,
            }
            sets["MiniLM mean-pooled embeddings (long texts)"] = feats["teacher"]
        if "loudness" in only:
            result["loudness"] = loudness_study(args, student, teacher, work)
        if "cv64" in only and student is not None:
            from pentachora.data.text import wikipedia_corpus

            docs = wikipedia_corpus().train[: 512 if not args.quick else 16]
            sets["MiniLM sentence embeddings (512 documents)"] = student_teacher_embed(student, docs)
        if "geovae" in only:
            folder = work / "geovae-bf16"
            runs = {}
            for label, mp in (("bf16 autocast", "bf16"), ("fp32", "no")):
                every = max(1, args.geo_steps // 16)
                res = geovae_run(args, mp, folder if mp == "bf16" else work / "geovae-fp32", every,
                                 args.geo_steps, args.geo_batch, args.geo_size)  # fmt: skip
                if mp == "no":
                    for name, pts in geovae_sectors(res["model"], args.geo_size).items():
                        sets[f"GeoVAE tiny-12 {name} ({args.geo_steps} steps)"] = pts
                res.pop("model")
                runs[label] = res
            from pentachora.diagnostics.report import write_report

            report = write_report(folder)
            copied = []
            for path in report.values():
                if path.suffix == ".png":
                    dest = args.out / f"diagnostics_geovae_{path.name}"
                    shutil.copy(path, dest)
                    copied.append(dest.name)
            result["geovae"] = {"steps": args.geo_steps, "batch": args.geo_batch, "size": args.geo_size,
                                "every": max(1, args.geo_steps // 16), "runs": runs, "report": copied}  # fmt: skip
        if "cv64" in only and sets:
            result["cv64"] = {"rows": cv_arithmetic(sets)}
        if "overhead" in only:
            runs = {}
            for label, every in (
                ("none", None),
                ("K=100", 100),
                ("K=10", 10),
                ("K=1", 1),
                ("none (again)", None),
            ):
                res = geovae_run(
                    args, "no", None, every, args.overhead_steps, 16, 64 if not args.quick else 16
                )
                runs[label] = {"wall_s": res["train_wall_s"]}
            base = (runs["none"]["wall_s"] + runs["none (again)"]["wall_s"]) / 2
            for row in runs.values():
                row["ratio"] = row["wall_s"] / base
            result["overhead"] = {
                "steps": args.overhead_steps,
                "batch": 16,
                "size": 64 if not args.quick else 16,
                "runs": runs,
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["wall_s"] = time.perf_counter() - t_all
    stem = "diagnostics" if not args.quick else "diagnostics_quick"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str))
    (args.out / f"{stem}.md").write_text(render_markdown(result))
    if not args.quick:
        render_png(result, args.out)
    logger.info("wrote %s (%.1f min)", args.out / f"{stem}.md", result["wall_s"] / 60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
