"""A diagnostics report of a run folder: markdown + PNG curves from ``metrics.jsonl``.

:func:`write_report` reads what the diagnostics callbacks logged (``audit`` and ``loudness``
records) and the training / evaluation curves, re-runs the convergence analysis on them, and writes
into ``OUT`` (default ``RUN/audit``)::

    audit.md               summary: per-module CV / deviation / flags, convergence events and
                           warnings, loudness ratio table, links to the pictures
    audit_cv.png           CV per watched module over the steps (fp64 reference dashed, target dotted)
    audit_deviation.png    precision deviation per module (log scale) with its band
    convergence.png        the tagged curves (normalised) with their lock / climb / plateau events
    loudness.png           gradient-norm ratios per parameter group

A run without ``audit`` / ``loudness`` records still gets the convergence part. A folder without a
``metrics.jsonl`` (or with an empty one) raises :class:`~pentachora.errors.RunFolderError`.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pentachora.diagnostics.convergence import TAGS, analyse_convergence
from pentachora.errors import RunFolderError
from pentachora.io import atomic_save_figure, atomic_write_text
from pentachora.training.logging import METRICS_NAME, read_metrics

__all__ = ["load_run_records", "write_report"]

_METRICS = ("cv", "cv_ref", "cv_target", "deviation", "max_deviation", "flag")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def load_run_records(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``RUN/metrics.jsonl``; a clear error when there are none."""
    run = Path(run_dir)
    if not run.is_dir():
        raise RunFolderError(f"run folder {run} does not exist; give the folder a training run wrote")
    path = run / METRICS_NAME
    if not path.is_file():
        raise RunFolderError(
            f"{run} has no {METRICS_NAME}: it is not a training run folder (or the run never logged); "
            "train with out_dir set (`pentachora train ... --out RUN`) first"
        )
    records = read_metrics(path)
    if not records:
        raise RunFolderError(f"{path} holds no metric records; the run logged nothing yet")
    return records


def _modules(audit: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{module: {metric: [(step, value)]}}`` from ``audit`` records."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for rec in audit:
        for key, value in rec.items():
            if "/" not in key:
                continue
            module, metric = key.rsplit("/", 1)
            if metric in _METRICS and isinstance(value, (int, float)):
                out[module][metric].append((int(rec["step"]), float(value)))
    return out


def _loudness(records: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for rec in records:
        for key, value in rec.items():
            if key.startswith("ratio/") and isinstance(value, (int, float)) and math.isfinite(value):
                out[key.removeprefix("ratio/")].append((int(rec["step"]), float(value)))
    return out


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    _plt().close(fig)
    return path


def _plot_cv(mods: Mapping[str, Mapping[str, list]], path: Path) -> Path:
    plt = _plt()
    n = len(mods)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2), squeeze=False)
    for ax, (name, m) in zip(axes[0], mods.items(), strict=True):
        for metric, style, label in (
            ("cv", "-o", "run precision"),
            ("cv_ref", "--", "reference"),
            ("cv_target", ":", "target_cv(D)"),
        ):
            pts = m.get(metric, [])
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, style, ms=3, label=label)
        flags = [s for s, v in m.get("flag", []) if v > 0]
        for s in flags:
            ax.axvline(s, color="red", alpha=0.15)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("pentachoron CV")
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def _plot_deviation(mods: Mapping[str, Mapping[str, list]], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for name, m in mods.items():
        pts = [(s, max(v, 1e-18)) for s, v in m.get("deviation", []) if math.isfinite(v)]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        (line,) = ax.plot(xs, ys, "-o", ms=3, label=name)
        band = m.get("max_deviation", [])
        if band:
            ax.axhline(band[-1][1], color=line.get_color(), ls=":", alpha=0.7)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("‖y − y_ref‖ / ‖y_ref‖")
    ax.set_title("precision deviation (dotted: band)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _plot_convergence(history: Sequence[Mapping[str, Any]], report: Any, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    colors = {"structure": "tab:blue", "alignment": "tab:orange", "reconstruction": "tab:green"}
    for tag in TAGS:
        for metric in report.tags.get(tag, []):
            pts = [
                (int(r["step"]), float(r[metric])) for r in history if isinstance(r.get(metric), (int, float))
            ]
            pts = [(s, v) for s, v in pts if math.isfinite(v)]
            if len(pts) < 2:
                continue
            xs, ys = zip(*pts, strict=True)
            lo, hi = min(ys), max(ys)
            norm = [(y - lo) / (hi - lo) if hi > lo else 0.5 for y in ys]
            ax.plot(
                xs,
                norm,
                label=f"{metric} ({tag})",
                color=colors[tag],
                alpha=0.5 + 0.5 * (metric == report.tags[tag][0]),
            )
    marks = {"lock": "s", "climb": "^", "plateau": "_"}
    for e in report.events:
        ax.plot([e.step], [1.04], marks[e.kind], color=colors[e.tag], ms=9)
        ax.annotate(e.name, (e.step, 1.04), fontsize=6, rotation=60, ha="left", va="bottom")
    ax.set_ylim(-0.05, 1.35)
    ax.set_xlabel("step")
    ax.set_ylabel("normalised value")
    ax.set_title("convergence order (■ lock, ▲ climb, — plateau)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="lower right")
    return _save(fig, path)


def _plot_loudness(ratios: Mapping[str, list[tuple[int, float]]], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for key, pts in sorted(ratios.items()):
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, [max(y, 1e-12) for y in ys], "-o", ms=3, label=key)
    ax.set_yscale("log")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("gradient-norm ratio")
    ax.set_title("loudness: term / reference term, per parameter group")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    return _save(fig, path)


def _fmt(x: Any, spec: str = ".4g") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return format(x, spec)


def write_report(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    tags: Mapping[str, str | Sequence[str]] | None = None,
) -> dict[str, Path]:
    """Write the diagnostics report of a run folder (see the module docstring).

    Args:
        run_dir: A run folder with ``metrics.jsonl``.
        out_dir: Where to write (default ``run_dir/audit``).
        tags: Convergence tags (default: by metric name).

    Returns:
        ``{"markdown": path, "cv": ..., "deviation": ..., "convergence": ..., "loudness": ...}``
        (the pictures that had data).

    Raises:
        RunFolderError: No run folder, or no metrics in it.
    """
    run = Path(run_dir)
    records = load_run_records(run)
    out = Path(out_dir) if out_dir is not None else run / "audit"
    out.mkdir(parents=True, exist_ok=True)
    by_split: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_split[str(r.get("split", "train"))].append(r)
    paths: dict[str, Path] = {}
    lines = [f"# Diagnostics report: `{run}`", ""]
    lines.append(
        f"{len(records)} records: "
        + ", ".join(f"{len(v)} {k}" for k, v in sorted(by_split.items()))
        + f" (from `{run / METRICS_NAME}`)."
    )
    lines.append("")

    # ------------------------------------------------------------------ auditor
    mods = _modules(by_split.get("audit", []))
    lines += ["## CV precision auditor", ""]
    if mods:
        paths["cv"] = _plot_cv(mods, out / "audit_cv.png")
        paths["deviation"] = _plot_deviation(mods, out / "audit_deviation.png")
        lines += [
            "| module | audits | CV (last) | CV reference | target_cv(D) | deviation (last / max) | band | flagged since |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for name, m in mods.items():
            last = {k: (v[-1][1] if v else None) for k, v in m.items()}
            devs = [v for _, v in m.get("deviation", []) if math.isfinite(v)]
            flags = m.get("flag", [])
            since, streak = None, None
            for s, v in flags:
                if v > 0 and streak is None:
                    streak = s
                elif v <= 0:
                    streak = None
            since = streak
            first = next((s for s, v in flags if v > 0), None)
            flag_text = (
                "—"
                if first is None
                else (f"step {since}" if since is not None else f"cleared (first at step {first})")
            )
            lines.append(
                f"| `{name}` | {len(m.get('cv', []))} | {_fmt(last.get('cv'))} | {_fmt(last.get('cv_ref'))} | "
                f"{_fmt(last.get('cv_target'))} | {_fmt(last.get('deviation'), '.2e')} / {_fmt(max(devs) if devs else None, '.2e')} | "
                f"{_fmt(last.get('max_deviation'), '.2e')} | {flag_text} |"
            )
        lines += ["", "![CV per module](audit_cv.png)", "", "![precision deviation](audit_deviation.png)", ""]
    else:
        lines += ["No `audit` records (train with the auditor: `AuditCallback` / `--audit`).", ""]

    # ------------------------------------------------------------------ convergence
    # evaluations when there are enough of them to show an order, else the training records
    source = "eval" if len(by_split.get("eval", [])) >= 4 else "train"
    history = by_split.get(source, [])
    rep = analyse_convergence(history, tags=tags)
    lines += ["## Convergence order", "", f"From the {len(history)} `{source}` records; tags: "]
    lines[-1] += "; ".join(f"{t}: {', '.join(rep.tags[t]) or '—'}" for t in TAGS) + "."
    lines.append("")
    if rep.events:
        paths["convergence"] = _plot_convergence(history, rep, out / "convergence.png")
        lines += ["| step | event | metric | tag | value |", "|---:|---|---|---|---:|"]
        for e in rep.events:
            lines.append(f"| {e.step} | {e.kind} | `{e.metric}` | {e.tag} | {_fmt(e.value)} |")
        lines += [""]
    order = " → ".join(rep.order) or "no lock/climb events"
    holds = {True: "holds", False: "does **not** hold", None: "cannot be checked (an event is missing)"}[
        rep.order_holds
    ]
    lines += [f"Order: {order}. The seed's order (structure → alignment → reconstruction) {holds}.", ""]
    for w in rep.warnings:
        lines.append(f"- **warning**: {w}")
    if rep.warnings:
        lines.append("")
    if "convergence" in paths:
        lines += ["![convergence](convergence.png)", ""]

    # ------------------------------------------------------------------ loudness
    loud = by_split.get("loudness", [])
    lines += ["## Gradient loudness", ""]
    ratios = _loudness(loud)
    if loud:
        norms = sorted(
            {
                k
                for r in loud
                for k in r
                if k.count("/") == 1 and not k.startswith("ratio/") and not k.endswith("/value")
            }
        )
        pick = sorted({0, len(loud) // 2, len(loud) - 1})
        lines += [
            "| term → group | " + " | ".join(f"step {loud[i]['step']}" for i in pick) + " |",
            "|---|" + "---:|" * len(pick),
        ]
        for k in norms:
            lines.append(f"| {k} | " + " | ".join(_fmt(loud[i].get(k), ".3e") for i in pick) + " |")
        for k in sorted(ratios):
            vals = dict(ratios[k])
            lines.append(
                f"| ratio {k} | "
                + " | ".join(_fmt(vals.get(int(loud[i]["step"])), ".3g") for i in pick)
                + " |"
            )
        lines.append("")
        if ratios:
            paths["loudness"] = _plot_loudness(ratios, out / "loudness.png")
            lines += ["![loudness](loudness.png)", ""]
    else:
        lines += ["No `loudness` records (train with `LoudnessCallback`).", ""]
    md = out / "audit.md"
    atomic_write_text(md, "\n".join(lines) + "\n")
    paths = {"markdown": md, **paths}
    return paths
