"""Recipes for the diagnostics: the callbacks a ``--audit`` flag adds to a training run, and the
report of a run folder (``pentachora audit RUN``).

::

    from pentachora.recipes.diagnostics import audit_callbacks, audit_run

    cbs = audit_callbacks(model, watch="encoder@16,bottleneck", every=50)
    run = train_autoencoder(model, "images", TrainConfig(out_dir="runs/x", mixed_precision="bf16"), callbacks=tuple(cbs))
    audit_run("runs/x")      # runs/x/audit/audit.md + PNGs
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from pentachora.diagnostics.auditor import AuditCallback, _resolve, parse_watch
from pentachora.diagnostics.convergence import ConvergenceMonitor
from pentachora.diagnostics.loudness import LoudnessCallback
from pentachora.diagnostics.report import write_report
from pentachora.errors import ConfigError
from pentachora.training.callbacks import Callback

__all__ = ["audit_callbacks", "audit_run"]


def audit_callbacks(
    model: nn.Module,
    watch: str | Sequence[str],
    every: int = 100,
    loudness_terms: Sequence[str] | None = None,
    loudness_groups: Mapping[str, str | Sequence[str]] | None = None,
    loudness_every: int | None = None,
    convergence: bool = False,
    convergence_tags: Mapping[str, str | Sequence[str]] | None = None,
    **auditor_kwargs: Any,
) -> list[Callback]:
    """The diagnostics callbacks for one training run, with the names checked against ``model`` now.

    Args:
        model: The model that will be trained (names are resolved on it before training starts).
        watch: Modules / parameters for the CV precision auditor (``"a,b@16,c:field"`` or a list).
        every: Audit period in steps.
        loudness_terms: Loss-term names of the model output for the loudness meter (off when None).
        loudness_groups: ``{group: [parameter prefixes]}`` (default: one group per top-level child).
        loudness_every: Loudness period (default: ``every``).
        convergence: Also add a :class:`ConvergenceMonitor` over the evaluations (writes
            ``OUT/diagnostics_convergence.json``; the memory recipe has its own).
        convergence_tags: Tags for that monitor (default: by metric name).
        **auditor_kwargs: Passed to :class:`~pentachora.diagnostics.Auditor` (``reference_dtype``,
            ``max_deviation``, ``cv_band``, ...).

    Returns:
        ``[AuditCallback, (LoudnessCallback), (ConvergenceMonitor)]``.

    Raises:
        ConfigError: A watched name the model does not have (close matches listed), a bad period, or
            loudness groups that match no parameter.
    """
    if int(every) < 1:
        raise ConfigError(f"--audit-every must be >= 1 step, got {every}")
    for spec in parse_watch(watch):
        _resolve(model, spec)
    cbs: list[Callback] = [AuditCallback(watch, every=every, **auditor_kwargs)]
    if loudness_terms:
        groups = (
            dict(loudness_groups) if loudness_groups else {n: [f"{n}."] for n, _ in model.named_children()}
        )
        names = [n for n, _ in model.named_parameters()]
        for g, prefixes in groups.items():
            prefixes = [prefixes] if isinstance(prefixes, str) else list(prefixes)
            if not any(n.startswith(tuple(prefixes)) for n in names):
                raise ConfigError(
                    f"loudness group {g!r}: the prefixes {prefixes} match no parameter of {type(model).__name__}"
                )
        cbs.append(
            LoudnessCallback(
                list(loudness_terms), groups=groups, every=loudness_every or every, weights="model"
            )
        )
    if convergence:
        cbs.append(
            ConvergenceMonitor(tags=convergence_tags, source="eval", write="diagnostics_convergence.json")
        )
    return cbs


def audit_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write the diagnostics report of a run folder (markdown + PNGs, default ``RUN/audit``).

    Returns:
        ``{"markdown": path, ...}`` of the files written (see :func:`pentachora.diagnostics.report.write_report`).

    Raises:
        pentachora.errors.RunFolderError: No such folder, or no ``metrics.jsonl`` records in it.
    """
    return write_report(run_dir, out_dir)
