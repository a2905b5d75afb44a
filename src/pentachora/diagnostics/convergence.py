"""The convergence-order monitor: lock, climb and plateau events from logged curves, and the seed's
readings of them.

The second seed (§3.2, §8.3) saw one order in every run: the geometry (pentachoron CV) **locks**
first, alignment (pooled accuracy) **climbs** second, reconstruction (sequence cosine) climbs last —
and read two failures from the curves: "if reconstruction plateaus while alignment climbs, the bank
is optimizing for the wrong consumer" and "if CV doesn't lock, precision or data is insufficient".

Metrics are tagged ``structure`` / ``alignment`` / ``reconstruction`` — explicitly
(``tags={"structure": ["cv"], "alignment": ["m_acc"], "reconstruction": ["s_cos"]}``) or by name
(:func:`tag_metrics`). For every tagged metric, in step order:

* **lock** (structure metrics): the first evaluation from which every later value stays within
  ``lock_tolerance`` (relative) of the final value, holding for at least ``lock_min_points``
  evaluations;
* **climb**: the first evaluation at which the metric has covered ``climb_fraction`` of its total
  improvement (from the first value to its best; losses improve downwards), if it improved by more
  than ``min_rise`` relative to its scale;
* **plateau**: the first evaluation from which the metric stays within ``plateau_tolerance``
  (relative) of its value there for at least ``plateau_min_points`` evaluations up to the end.

:func:`analyse_convergence` returns the events, whether the seed's order holds and the warnings;
:class:`ConvergenceMonitor` is the Trainer callback. :func:`convergence_order` is the memory model's
original analysis (CV lock, m_acc / s_cos climb), kept with its exact semantics.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pentachora.training.callbacks import Callback

if TYPE_CHECKING:
    from pentachora.training.loop import Trainer

__all__ = [
    "DEFAULT_TAG_PATTERNS",
    "TAGS",
    "ConvergenceMonitor",
    "ConvergenceReport",
    "CurveEvent",
    "analyse_convergence",
    "convergence_order",
    "detect_climb",
    "detect_lock",
    "detect_plateau",
    "tag_metrics",
]

logger = logging.getLogger(__name__)

TAGS = ("structure", "alignment", "reconstruction")

#: Name patterns (regular expressions, searched case-insensitively) used when no tags are given.
DEFAULT_TAG_PATTERNS: dict[str, tuple[str, ...]] = {
    "structure": (r"(^|[/.])cv$", r"^cv_(enc|lat|inv|dec)$", r"effective_rank"),
    "alignment": (r"m_acc", r"r1$", r"recall", r"pooled_cos$", r"align", r"infonce"),
    "reconstruction": (r"s_cos", r"psnr", r"recon", r"mse", r"seq_loss", r"ssim"),
}

#: Names whose smaller values are better (a metric improves downwards).
_LOWER_IS_BETTER = re.compile(r"loss|mse|infonce|nll|kl|error|recon$", re.IGNORECASE)

WARN_PLATEAU = (
    "reconstruction plateaus while alignment climbs: the shared representation is serving the louder consumer"
)
WARN_NO_LOCK = "CV never locked: precision or data is insufficient"


def tag_metrics(
    names: Sequence[str], patterns: Mapping[str, Sequence[str]] | None = None
) -> dict[str, list[str]]:
    """Tag metric names by pattern (first matching tag wins; ``_ref``/``_target``/``_weight`` keys skipped)."""
    patterns = patterns or DEFAULT_TAG_PATTERNS
    out: dict[str, list[str]] = {t: [] for t in patterns}
    for name in names:
        if re.search(r"(_ref|_target|_weight|_loss_w|max_deviation|flag)$", name):
            continue
        for tag, pats in patterns.items():
            if any(re.search(p, name, re.IGNORECASE) for p in pats):
                out[tag].append(name)
                break
    return out


# ----------------------------------------------------------------------------- event detectors
def _series(steps: Sequence[int], values: Sequence[float]) -> tuple[list[int], list[float]]:
    pts = [
        (int(s), float(v)) for s, v in zip(steps, values, strict=True) if v is not None and math.isfinite(v)
    ]
    return [s for s, _ in pts], [v for _, v in pts]


def detect_lock(
    steps: Sequence[int], values: Sequence[float], tolerance: float = 0.1, min_points: int = 2
) -> int | None:
    """First step from which every later value is within ``tolerance`` (relative) of the final one.

    ``None`` when the band holds for fewer than ``min_points`` evaluations (a value that is still
    moving at the end has not locked).
    """
    s, v = _series(steps, values)
    if not v:
        return None
    final = v[-1]
    band = tolerance * abs(final) if final else tolerance
    start, count = None, 0
    for step, value in zip(reversed(s), reversed(v), strict=True):
        if abs(value - final) > band:
            break
        start, count = step, count + 1
    return start if count >= min_points else None


def detect_climb(
    steps: Sequence[int],
    values: Sequence[float],
    fraction: float = 0.5,
    lower_is_better: bool = False,
    min_rise: float = 0.02,
) -> int | None:
    """First step at which ``fraction`` of the total improvement (first value → best) is covered.

    ``None`` when the metric never improved by more than ``min_rise`` × its scale
    (``max(|first|, |best|)``).
    """
    s, v = _series(steps, values)
    if len(v) < 2:
        return None
    sign = -1.0 if lower_is_better else 1.0
    u = [sign * x for x in v]
    start, best = u[0], max(u)
    scale = max(abs(v[0]), abs(sign * best), 1e-12)
    if best - start <= min_rise * scale:
        return None
    level = start + fraction * (best - start)
    return next(step for step, x in zip(s, u, strict=True) if x >= level)


def detect_plateau(
    steps: Sequence[int], values: Sequence[float], tolerance: float = 0.02, min_points: int = 3
) -> int | None:
    """First step from which the metric stays within ``tolerance`` (relative) of its value there
    until the end, over at least ``min_points`` evaluations; ``None`` if it never settles so."""
    s, v = _series(steps, values)
    for i in range(len(v) - min_points + 1):
        ref = v[i]
        band = tolerance * max(abs(ref), 1e-12)
        if all(abs(x - ref) <= band for x in v[i:]):
            return s[i]
    return None


# ----------------------------------------------------------------------------- analysis
@dataclasses.dataclass
class CurveEvent:
    """One event on a curve: ``kind`` ∈ {lock, climb, plateau} of ``metric`` (tag ``tag``) at ``step``."""

    kind: str
    metric: str
    tag: str
    step: int
    value: float

    @property
    def name(self) -> str:
        return f"{self.metric}_{self.kind}"


@dataclasses.dataclass
class ConvergenceReport:
    """What :func:`analyse_convergence` found.

    Attributes:
        evaluations: Records analysed.
        tags: ``{tag: [metric names]}`` used.
        events: Every lock / climb / plateau event, in step order.
        order: Names of the lock and climb events in step order (e.g. ``["cv_lock", "m_acc_climb"]``).
        order_holds: Whether structure locked no later than alignment climbed, and alignment climbed
            no later than reconstruction (``None`` when an event is missing).
        warnings: The seed's readings that apply, in words.
    """

    evaluations: int
    tags: dict[str, list[str]]
    events: list[CurveEvent]
    order: list[str]
    order_holds: bool | None
    warnings: list[str]

    def step_of(self, kind: str, tag: str) -> int | None:
        """The earliest ``kind`` event of any metric with ``tag`` (``None`` if none)."""
        steps = [e.step for e in self.events if e.kind == kind and e.tag == tag]
        return min(steps) if steps else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, with ``<metric>_<kind>_step`` keys for every event (``None`` where absent)."""
        out: dict[str, Any] = {
            "evaluations": self.evaluations,
            "tags": self.tags,
            "events": [dataclasses.asdict(e) for e in self.events],
            "order": self.order,
            "order_holds": self.order_holds,
            "seed_order_holds": self.order_holds,
            "warnings": self.warnings,
        }
        for tag, metrics in self.tags.items():
            kinds = ("lock", "climb") if tag == "structure" else ("climb", "plateau")
            for m in metrics:
                for kind in kinds:
                    out.setdefault(f"{m}_{kind}_step", None)
        for e in self.events:
            if out.get(f"{e.name}_step") is None:
                out[f"{e.name}_step"] = e.step
        return out


def analyse_convergence(
    history: Sequence[Mapping[str, Any]],
    tags: Mapping[str, str | Sequence[str]] | None = None,
    lower_is_better: Mapping[str, bool] | None = None,
    lock_tolerance: float = 0.1,
    lock_min_points: int = 2,
    climb_fraction: float = 0.5,
    min_rise: float = 0.02,
    plateau_tolerance: float = 0.02,
    plateau_min_points: int = 3,
    min_evaluations: int = 4,
) -> ConvergenceReport:
    """Find lock / climb / plateau events in tagged curves, check the order, read the warnings.

    Args:
        history: Records in step order, each with ``"step"`` and metric keys (e.g. the ``eval``
            records of ``metrics.jsonl``).
        tags: ``{"structure" | "alignment" | "reconstruction": name or names}``; default
            :func:`tag_metrics` of the keys present.
        lower_is_better: Per metric; default from the name (``loss``, ``mse``, ... improve downwards).
        lock_tolerance, lock_min_points: See :func:`detect_lock`.
        climb_fraction, min_rise: See :func:`detect_climb`.
        plateau_tolerance, plateau_min_points: See :func:`detect_plateau`.
        min_evaluations: Fewer records than this give no warnings (too early to tell).

    Returns:
        A :class:`ConvergenceReport`. Warnings: ``"CV never locked: ..."`` when a structure metric
        has no lock; ``"reconstruction plateaus while alignment climbs: ..."`` when a reconstruction
        metric's plateau starts before an alignment metric's climb; ``"order broken: ..."`` when
        alignment climbs before structure locks or reconstruction climbs before alignment.
    """
    rows = [r for r in history if "step" in r]
    rows = sorted(rows, key=lambda r: int(r["step"]))
    keys = sorted(
        {k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k not in ("step", "time")}
    )
    if tags is None:
        tag_map = tag_metrics(keys)
    else:
        unknown = sorted(set(tags) - set(TAGS))
        if unknown:
            from pentachora.errors import ConfigError

            raise ConfigError(f"unknown convergence tags {unknown}; use {list(TAGS)}")
        tag_map = {t: ([v] if isinstance(v, str) else list(v)) for t, v in tags.items()}
    tag_map = {t: [m for m in tag_map.get(t, []) if m in keys] for t in TAGS}
    steps = [int(r["step"]) for r in rows]
    events: list[CurveEvent] = []
    for tag, metrics in tag_map.items():
        for m in metrics:
            vals = [r.get(m) for r in rows]
            vals_f = [float(v) if isinstance(v, (int, float)) and v is not None else math.nan for v in vals]
            low = (lower_is_better or {}).get(m, bool(_LOWER_IS_BETTER.search(m)))
            found: list[tuple[str, int | None]] = []
            if tag == "structure":
                found.append(("lock", detect_lock(steps, vals_f, lock_tolerance, lock_min_points)))
            else:
                found.append(("climb", detect_climb(steps, vals_f, climb_fraction, low, min_rise)))
                found.append(
                    ("plateau", detect_plateau(steps, vals_f, plateau_tolerance, plateau_min_points))
                )
            for kind, step in found:
                if step is not None:
                    events.append(CurveEvent(kind, m, tag, step, vals_f[steps.index(step)]))
    events.sort(key=lambda e: (e.step, TAGS.index(e.tag), e.kind))
    report = ConvergenceReport(
        evaluations=len(rows),
        tags=tag_map,
        events=events,
        order=[e.name for e in events if e.kind in ("lock", "climb")],
        order_holds=None,
        warnings=[],
    )
    lock = report.step_of("lock", "structure")
    align = report.step_of("climb", "alignment")
    recon = report.step_of("climb", "reconstruction")
    if None not in (lock, align, recon):
        report.order_holds = bool(lock <= align <= recon)  # type: ignore[operator]
    if len(rows) < min_evaluations:
        return report
    if tag_map["structure"] and lock is None:
        report.warnings.append(WARN_NO_LOCK)
    recon_plateau = report.step_of("plateau", "reconstruction")
    align_climbs = [e.step for e in events if e.kind == "climb" and e.tag == "alignment"]
    if recon_plateau is not None and any(s > recon_plateau for s in align_climbs):
        report.warnings.append(WARN_PLATEAU)
    if lock is not None and align is not None and align < lock:
        report.warnings.append(
            f"order broken: alignment climbed (step {align}) before the structure locked (step {lock}); "
            "alignment gradients are fighting geometric transients"
        )
    if align is not None and recon is not None and recon < align:
        report.warnings.append(
            f"order broken: reconstruction climbed (step {recon}) before alignment (step {align})"
        )
    return report


# ----------------------------------------------------------------------------- the memory model's original analysis
def _first_step(steps: Sequence[int], ok: Sequence[bool]) -> int | None:
    """First step from which ``ok`` holds at every later evaluation."""
    result = None
    for step, flag in zip(reversed(steps), reversed(ok), strict=True):
        if not flag:
            break
        result = step
    return result


def convergence_order(
    history: Sequence[Mapping[str, Any]],
    cv_key: str = "cv",
    climb_keys: Sequence[str] = ("m_acc", "s_cos"),
    cv_tolerance: float = 0.1,
    climb_fraction: float = 0.5,
) -> dict[str, Any]:
    """When CV locks and when the alignment and sequence metrics climb (moved from ``memory.metrics``).

    * CV **locks** at the first evaluation from which every later CV stays within
      ``cv_tolerance`` (relative) of the final CV.
    * A metric **climbs** at the first evaluation where it has covered ``climb_fraction`` of its
      total rise (from the first evaluation to its best); ``None`` if it never rose.

    Args:
        history: Evaluation records in step order, each with ``"step"`` and the metric keys.
        cv_key: Key of the anchors' CV.
        climb_keys: Metrics whose climb is timed.
        cv_tolerance: Relative band around the final CV.
        climb_fraction: Share of the total rise that counts as "climbed".

    Returns:
        ``{"cv_lock_step", "<key>_climb_step" ..., "order": [names sorted by step], "seed_order_holds"}``
        where the seed's order is CV, then m_acc, then s_cos.
    """
    rows = [r for r in history if "step" in r]
    out: dict[str, Any] = {"evaluations": len(rows)}
    if not rows:
        out["order"] = []
        out["seed_order_holds"] = None
        return out
    steps = [int(r["step"]) for r in rows]
    events: dict[str, int | None] = {}
    cvs = [float(r.get(cv_key, math.nan)) for r in rows]
    if all(math.isfinite(c) for c in cvs):
        final = cvs[-1]
        band = cv_tolerance * abs(final) if final else cv_tolerance
        events["cv_lock"] = _first_step(steps, [abs(c - final) <= band for c in cvs])
    for key in climb_keys:
        vals = [float(r.get(key, math.nan)) for r in rows]
        finite = [v for v in vals if math.isfinite(v)]
        if len(finite) < 2:
            events[f"{key}_climb"] = None
            continue
        start, best = finite[0], max(finite)
        if best - start <= 1e-6:
            events[f"{key}_climb"] = None
            continue
        level = start + climb_fraction * (best - start)
        events[f"{key}_climb"] = next(
            (s for s, v in zip(steps, vals, strict=True) if math.isfinite(v) and v >= level), None
        )
    for name, step in events.items():
        out[f"{name}_step"] = step
    timed = sorted(((s, n) for n, s in events.items() if s is not None), key=lambda t: (t[0], t[1]))
    out["order"] = [n for _, n in timed]
    seq = [events.get("cv_lock"), events.get("m_acc_climb"), events.get("s_cos_climb")]
    out["seed_order_holds"] = (
        None if any(s is None for s in seq) else bool(seq[0] <= seq[1] <= seq[2])  # type: ignore[operator]
    )
    return out


# ----------------------------------------------------------------------------- trainer callback
class ConvergenceMonitor(Callback):
    """Records evaluations (or training scalars) and re-runs :func:`analyse_convergence` on them.

    New warnings are logged once each. :attr:`report` holds the latest analysis as a dict
    (:meth:`ConvergenceReport.to_dict`, plus the history); with ``write`` it is written to
    ``OUT/<write>`` at the end of training. The history is checkpointed, so a resumed run analyses
    the whole run.

    Args:
        tags: As for :func:`analyse_convergence` (default: by name).
        source: ``"eval"`` (the ``eval_fn`` metrics) or ``"train"`` (the step scalars, every ``every`` steps).
        every: Sampling period of training scalars (``source="train"``).
        write: File name in the run folder for the report (``None``: do not write).
        **options: Passed to :func:`analyse_convergence`.
    """

    state_key = "ConvergenceMonitor"

    def __init__(
        self,
        tags: Mapping[str, str | Sequence[str]] | None = None,
        source: str = "eval",
        every: int = 1,
        write: str | None = "convergence.json",
        **options: Any,
    ) -> None:
        if source not in ("eval", "train"):
            from pentachora.errors import ConfigError

            raise ConfigError(f"source must be 'eval' or 'train', got {source!r}")
        self.tags = None if tags is None else dict(tags)
        self.source = source
        self.every = max(1, int(every))
        self.write = write
        self.options = options
        self.history: list[dict[str, float]] = []
        self.report: dict[str, Any] = {}
        self._warned: set[str] = set()

    def _record(self, step: int, metrics: Mapping[str, float]) -> None:
        self.history = [h for h in self.history if h["step"] < step]
        self.history.append(
            {"step": step, **{k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}}
        )
        self._analyse(log=True)

    def _analyse(self, log: bool) -> None:
        rep = analyse_convergence(self.history, tags=self.tags, **self.options)
        self.report = rep.to_dict()
        for w in rep.warnings:
            if log and w not in self._warned:
                logger.warning("convergence monitor (after step %s): %s", self.history[-1]["step"], w)
            self._warned.add(w)

    def on_eval(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        if self.source == "eval":
            self._record(step, metrics)

    def on_step_end(self, trainer: Trainer, step: int, output_scalars: dict[str, float]) -> None:
        if self.source == "train" and step % self.every == 0:
            self._record(step, output_scalars)

    def on_train_end(self, trainer: Trainer) -> None:
        logger.info("convergence order: %s", self.report.get("order"))
        out_dir = trainer.out_dir
        if self.write and out_dir is not None and trainer.is_main_process:
            from pentachora.io import atomic_write_json

            atomic_write_json(out_dir / self.write, {**self.report, "history": self.history})

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "warned": sorted(self._warned)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state.get("history", []))
        self._warned = set(state.get("warned", []))
        if self.history:
            self._analyse(log=False)
