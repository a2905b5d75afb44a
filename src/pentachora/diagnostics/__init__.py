"""Diagnostics: the CV precision auditor, the convergence-order monitor, the gradient-loudness meter,
run reports and plots.

Each tool works on its own (on any ``nn.Module`` / any logged curves) and as a Trainer callback:

* :mod:`~pentachora.diagnostics.auditor` — :func:`attach` / :class:`Auditor` (pentachoron CV of
  watched outputs at the run's precision vs a reference-precision recomputation; flags a module out
  of band and since when), :class:`AuditCallback`.
* :mod:`~pentachora.diagnostics.convergence` — :func:`analyse_convergence` (lock / climb / plateau
  events of structure / alignment / reconstruction curves, the seed's order and readings),
  :class:`ConvergenceMonitor`.
* :mod:`~pentachora.diagnostics.loudness` — :class:`LoudnessMeter` (the gradient norm each loss
  term alone sends into named parameter groups), :class:`LoudnessCallback`.
* :mod:`~pentachora.diagnostics.nonfinite` — :class:`NonFiniteTracer` / :func:`locate_nonfinite` (the
  first module whose *forward* output went NaN/inf, with finite inputs), :class:`NonFiniteOriginCallback`
  (replays a step the NaN guard skipped and names that module; free on finite steps).
* :mod:`~pentachora.diagnostics.report` — :func:`write_report` (markdown + PNG report of a run folder).
* :mod:`~pentachora.diagnostics.plots` — reconstruction grids and training curves.

This package imports geometry, training (callbacks) and io — never a model family.
"""

from pentachora.diagnostics.auditor import (
    AuditCallback,
    Auditor,
    AuditReading,
    WatchSpec,
    attach,
    cv_in_dtype,
    parse_watch,
    relative_deviation,
    unit_roundoff,
)
from pentachora.diagnostics.convergence import (
    TAGS,
    ConvergenceMonitor,
    ConvergenceReport,
    CurveEvent,
    analyse_convergence,
    convergence_order,
    tag_metrics,
)
from pentachora.diagnostics.loudness import LoudnessCallback, LoudnessMeter, LoudnessTable
from pentachora.diagnostics.nonfinite import (
    NonFiniteOrigin,
    NonFiniteOriginCallback,
    NonFiniteTracer,
    locate_nonfinite,
)

__all__ = [
    "TAGS",
    "AuditCallback",
    "AuditReading",
    "Auditor",
    "ConvergenceMonitor",
    "ConvergenceReport",
    "CurveEvent",
    "LoudnessCallback",
    "LoudnessMeter",
    "LoudnessTable",
    "NonFiniteOrigin",
    "NonFiniteOriginCallback",
    "NonFiniteTracer",
    "WatchSpec",
    "analyse_convergence",
    "attach",
    "convergence_order",
    "cv_in_dtype",
    "locate_nonfinite",
    "parse_watch",
    "relative_deviation",
    "tag_metrics",
    "unit_roundoff",
    "write_report",
]


def __getattr__(name: str):  # the report pulls in matplotlib; load it on first use
    if name == "write_report":
        from pentachora.diagnostics.report import write_report

        return write_report
    raise AttributeError(f"module 'pentachora.diagnostics' has no attribute {name!r}")
