"""Metric writers: ``metrics.jsonl`` (always) and TensorBoard (when importable).

``metrics.jsonl`` holds one JSON object per line. Training records::

    {"split": "train", "step": 10, "time": 1.23, "lr": 0.001, "loss": 0.52, <every other scalar the
     model's output reports>, "grad_norm": 0.8, "grad_norm_max": 1.4, "nonfinite_steps": 0,
     "skipped": false, <entries callbacks added>}

A skipped (non-finite) step also carries ``"nonfinite": "loss"`` / ``"grad_norm"`` /
``"loss,grad_norm"``. Evaluation records::

    {"split": "eval", "step": 10, "time": 1.5, <every key eval_fn returned>}

``time`` is wall-clock seconds of training so far (summed over resumed sessions). Non-finite floats
are written as ``null`` so the file stays strict JSON. On resume, records after the resumed step are
dropped (they belong to the interrupted tail that is about to be replayed), and TensorBoard is
opened with ``purge_step`` for the same reason.

Only the main process writes; the trainer never constructs these on other ranks.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from pentachora.io import atomic_write_text, loads_json

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_TB_WARNED = False


def clean_record(record: dict[str, Any]) -> dict[str, Any]:
    """Make a record strict-JSON: floats stay floats, non-finite floats become ``None``."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[key] = value
    return out


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a ``metrics.jsonl`` file (skipping a torn last line, if any)."""
    records = []
    path = Path(path)
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(loads_json(line))
        except json.JSONDecodeError:
            logger.warning("ignoring an unreadable line in %s", path)
    return records


class JsonlWriter:
    """Append-only ``metrics.jsonl`` writer (flushed after every record).

    Args:
        path: File to write.
        resume_step: ``None`` starts a fresh file; a step number keeps the records up to and
            including that step and drops the later ones (rewritten atomically).
    """

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            atomic_write_text(self.path, "")
        else:
            kept = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= resume_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, record: dict[str, Any]) -> None:
        """Append one record."""
        self._fh.write(json.dumps(clean_record(record)) + "\n")
        self._fh.flush()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if not self._fh.closed:
            self._fh.close()


class TensorBoardWriter:
    """``torch.utils.tensorboard.SummaryWriter`` behind a tolerant facade.

    If tensorboard cannot be imported, warns once per process and becomes a no-op.

    Args:
        log_dir: Event-file folder.
        purge_step: On resume, the first step to be written again (events at or after it from the
            interrupted session are purged).
    """

    def __init__(self, log_dir: str | os.PathLike, purge_step: int | None = None) -> None:
        global _TB_WARNED
        self._writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # pragma: no cover - depends on the environment
            if not _TB_WARNED:
                logger.warning("tensorboard is not importable (%s); writing metrics.jsonl only", exc)
                _TB_WARNED = True
            return
        self._writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    @property
    def active(self) -> bool:
        """Whether events are being written."""
        return self._writer is not None

    def write(self, record: dict[str, Any]) -> None:
        """Add every finite numeric field as scalar ``<split>/<key>`` at ``record["step"]``."""
        if self._writer is None:
            return
        split = record.get("split", "train")
        step = int(record["step"])
        for key, value in record.items():
            if key in ("step", "split", "time") or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._writer.add_scalar(f"{split}/{key}", value, global_step=step)

    def close(self) -> None:
        """Flush and close (idempotent)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class MetricsLogger:
    """The run's metric sinks: ``metrics.jsonl`` plus optional TensorBoard.

    Args:
        out_dir: Run folder.
        tensorboard: Also write TensorBoard events to ``out_dir/tensorboard``.
        resume_step: Step the run resumes after (``None`` for a fresh run).
    """

    def __init__(
        self, out_dir: str | os.PathLike, tensorboard: bool = True, resume_step: int | None = None
    ) -> None:
        out_dir = Path(out_dir)
        self.jsonl = JsonlWriter(out_dir / METRICS_NAME, resume_step=resume_step)
        purge = None if resume_step is None else resume_step + 1
        self.tensorboard = (
            TensorBoardWriter(out_dir / TENSORBOARD_DIR, purge_step=purge) if tensorboard else None
        )

    def write(self, record: dict[str, Any]) -> None:
        """Write one record (it must have ``step`` and ``split``) to every sink."""
        self.jsonl.write(record)
        if self.tensorboard is not None:
            self.tensorboard.write(record)

    def close(self) -> None:
        """Close every sink (idempotent)."""
        self.jsonl.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
