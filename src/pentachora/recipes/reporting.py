"""What every benchmark writes: the command and machine, JSON + markdown, and verdicts computed from numbers.

A benchmark script calls :func:`run_meta` at the start, builds its results dict, states its goals as
:class:`Verdict` s computed from the measured numbers (never typed by hand), and ends with
:func:`write_results`, which writes ``NAME.json`` (everything, including the verdicts and the command)
and ``NAME.md`` (the markdown it is given, under a header that repeats the command).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from pentachora.io import atomic_write_json, atomic_write_text

__all__ = ["Verdict", "fmt_ci", "fmt_recall", "run_meta", "verdict", "write_results"]


def run_meta(script: str, argv: Sequence[str] | None = None, **extra: Any) -> dict[str, Any]:
    """The command that reproduces this run (``python SCRIPT ARGS``), the machine and the versions.

    Args:
        script: The script path relative to the repository root (``benchmarks/t2i_long.py``).
        argv: The arguments (default ``sys.argv[1:]``).
        **extra: More fields to record.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    import diffusers  # noqa: F401 - recorded when present
    import transformers  # noqa: F401

    versions = {"torch": torch.__version__}
    for name in ("diffusers", "transformers", "numpy"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    return {
        "command": " ".join(["python", script, *map(shlex.quote, args)]),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads",
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": versions,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        **extra,
    }


@dataclass
class Verdict:
    """A goal judged from a measured number: ``value op threshold``."""

    goal: str
    value: float
    op: str
    threshold: float
    met: bool

    @property
    def text(self) -> str:
        mark = "met" if self.met else "missed"
        return f"{self.goal}: {self.value:.3f} {self.op} {self.threshold:.3f} — **{mark}**"


def verdict(goal: str, value: float, op: str, threshold: float) -> Verdict:
    """Judge ``value op threshold`` (``op`` one of ``>=``, ``>``, ``<=``, ``<``); NaN is never met."""
    ops = {">=": value >= threshold, ">": value > threshold, "<=": value <= threshold, "<": value < threshold}
    if op not in ops:
        raise ValueError(f"op must be one of {sorted(ops)}, got {op!r}")
    met = bool(ops[op]) and math.isfinite(value)
    return Verdict(goal=goal, value=float(value), op=op, threshold=float(threshold), met=met)


def fmt_ci(est: float, lo: float, hi: float, digits: int = 3) -> str:
    """``0.812 [0.780, 0.841]`` (``—`` for NaN)."""
    if not math.isfinite(est):
        return "—"
    return f"{est:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def fmt_recall(summary: dict[str, Any]) -> str:
    """A region's object recall with its interval (``—`` when the region scored no objects), from a
    :func:`~pentachora.t2i.scoring.summarise_hits` dict."""
    if not summary.get("n_objects"):
        return "—"
    return fmt_ci(summary["object_recall"], summary["object_recall_lo"], summary["object_recall_hi"])


def write_results(
    out_stem: str | os.PathLike, data: dict[str, Any], markdown: str, verdicts: Sequence[Verdict] = ()
) -> tuple[Path, Path]:
    """Write ``OUT.json`` (``data`` + verdicts) and ``OUT.md`` (command header + ``markdown`` + verdicts).

    Returns:
        The two paths.
    """
    stem = Path(out_stem)
    payload = dict(data)
    payload["verdicts"] = [asdict(v) for v in verdicts]
    meta = payload.get("meta", {})
    header = [f"_Made by `{meta.get('command', '?')}` on {meta.get('machine', '?')}._", ""]
    body = markdown.rstrip() + "\n"
    if verdicts:
        body += (
            "\n### Goals (computed from the numbers above)\n\n"
            + "\n".join(f"* {v.text}" for v in verdicts)
            + "\n"
        )
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    atomic_write_json(json_path, json.loads(json.dumps(payload, default=_jsonable)))
    atomic_write_text(md_path, "\n".join(header) + body)
    return json_path, md_path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
