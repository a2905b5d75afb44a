"""The CV precision auditor: pentachoron CV of watched outputs at the run's precision, checked against
the same computation in a reference precision.

The second seed (§6.1, §8.3) read CV = 0.62 on a memory bank trained in fp16 where fp32 gave 0.165
on the same computation, before any loss showed it. The auditor turns that observation into a tool
for any ``nn.Module``::

    from pentachora.diagnostics import attach

    with attach(model, watch=["encoder", "bank:memory", "decoder.in_proj@16"], precision="bf16") as auditor:
        readings = auditor.audit(batch, step=0)      # one AuditReading per watched name
    auditor.flags                                    # {name: step since which it is out of band}

Every audit runs one forward pass of ``model`` on a **fixed audit batch** (eval mode, no gradient,
the global RNG forked and restored, so training is not perturbed) under the run's precision
(``precision="bf16"`` / ``"fp16"`` autocast, or the model's own dtype), capturing each watched
module's inputs and output through forward hooks. Then, for each watched output:

* ``cv`` — the pentachoron CV (:func:`pentachora.geometry.cv_metric`) of its rows, unit-normalised
  (the last axis, or chunks of ``@dim`` of it, are the points), on a fixed random subset of rows and
  fixed random pentachora, so successive audits are comparable;
* ``cv_ref`` and ``deviation`` — the same output recomputed in ``reference_dtype`` (fp64 by default;
  fp32 is enough for a bf16/fp16 run) and the relative deviation ``‖y − y_ref‖ / ‖y_ref‖``.
  ``reference="module"`` (default) re-runs a hook-free deep copy of the watched module, cast up, on its
  captured inputs cast up — the error the module itself adds (a module that wraps a whole recurrent
  chain, such as the memory bank, includes the chain's accumulation). ``reference="model"``
  re-runs a deep copy of the whole model on the batch cast up — the error accumulated from the input
  (needs a model whose forward keeps the dtype it is given);
* ``cv_target`` — :func:`pentachora.geometry.target_cv` of the point dimension (the CV of random unit
  vectors there; a trained representation may sit away from it, so it is reported, not enforced).

A reading is **flagged** when the output is non-finite, when ``deviation`` exceeds its band
(``max_deviation``, default ``deviation_factor`` × the unit round-off of the run's dtype:
1.9e-6 for fp32, 1.6e-2 for fp16, 0.125 for bf16), when ``cv`` departs from ``cv_ref`` by more than
``cv_tolerance`` (relative), or when ``cv`` leaves an explicit ``cv_band``. The auditor remembers
since which step each name is out of band (:attr:`Auditor.flags`) and logs a warning naming it.

Names: ``module.path`` (as in ``model.named_modules()``), optionally ``:field`` to pick a tensor from a
structured output (a dataclass field, a dict key or a tuple index; default: the first tensor) and
``@dim`` to split the last axis into ``dim``-sized points. A parameter or buffer name audits that
tensor's CV only (there is nothing to recompute). Unknown names raise
:class:`~pentachora.errors.ConfigError` listing close matches. :meth:`Auditor.detach` removes every
hook; the model is then exactly as before.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from pentachora.errors import ConfigError
from pentachora.geometry import cv_metric, target_cv
from pentachora.training.callbacks import Callback

if TYPE_CHECKING:
    from pentachora.training.loop import Trainer

__all__ = [
    "PRECISIONS",
    "AuditCallback",
    "AuditReading",
    "Auditor",
    "WatchSpec",
    "attach",
    "cv_in_dtype",
    "dynamic_range_bits",
    "parse_watch",
    "relative_deviation",
    "unit_roundoff",
]

logger = logging.getLogger(__name__)

#: Precision names accepted by ``precision`` (autocast dtypes; ``fp32``/``no`` mean no autocast).
PRECISIONS: dict[str, torch.dtype | None] = {
    "no": None,
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
_DTYPE_NAMES = {torch.float64: "fp64", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def unit_roundoff(dtype: torch.dtype) -> float:
    """Unit round-off ``u = eps / 2`` of a floating dtype (6.0e-8 fp32, 4.9e-4 fp16, 3.9e-3 bf16)."""
    return float(torch.finfo(dtype).eps) / 2.0


def relative_deviation(run: torch.Tensor, ref: torch.Tensor) -> float:
    """``‖run − ref‖_F / ‖ref‖_F`` in float64 (``inf`` when ``run`` is non-finite, 0 for 0 = 0)."""
    a, b = run.detach().to(torch.float64), ref.detach().to(torch.float64)
    if not torch.isfinite(a).all():
        return math.inf
    num, den = float((a - b).norm()), float(b.norm())
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def cv_in_dtype(
    points: torch.Tensor, dtype: torch.dtype, n_samples: int = 2000, generator: torch.Generator | None = None
) -> float:
    """Pentachoron CV with the Cayley–Menger arithmetic done in ``dtype`` (the seed's §9.1 question).

    :func:`pentachora.geometry.cv_metric` always works in float64; this computes the squared
    distances, the bordered determinant and the volumes in ``dtype`` (e.g. fp32) on the same random
    pentachora, to measure how much the arithmetic itself moves the CV.

    Args:
        points: ``(N, D)`` points, N ≥ 5 (used as given: normalise first if you want directions).
        dtype: Arithmetic dtype (float32 or float64; CPU ``det`` has no half-precision kernel).
        n_samples: Random pentachora.
        generator: Seeded generator for the subsets (pass equal seeds to compare dtypes).

    Returns:
        ``std(vol) / mean(vol)`` over the pentachora with a positive squared volume.
    """
    from pentachora.geometry import random_subsets

    idx = random_subsets(points.shape[0], 5, n_samples, generator=generator, device=points.device)
    x = points.detach().to(dtype)[idx]  # (S, 5, D)
    edges = x[:, 1:] - x[:, :1]
    g = edges @ edges.transpose(-1, -2)
    sq = torch.diagonal(g, dim1=-2, dim2=-1)
    d2 = x.new_zeros(x.shape[0], 5, 5)
    d2[:, 0, 1:] = sq
    d2[:, 1:, 0] = sq
    d2[:, 1:, 1:] = (sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2 * g).clamp_min(0.0)
    cm = x.new_ones(x.shape[0], 6, 6)
    cm[:, 0, 0] = 0.0
    cm[:, 1:, 1:] = d2
    vol2 = -torch.linalg.det(cm) / (2.0**4 * math.factorial(4) ** 2)  # (−1)^(k+1) with k = 4
    vol = vol2.clamp_min(0.0).sqrt()
    vol = vol[vol2 > 0]
    if vol.numel() < 2:
        return math.nan
    return float(vol.std() / vol.mean())


# ----------------------------------------------------------------------------- watch specs
@dataclasses.dataclass(frozen=True)
class WatchSpec:
    """One watched name: ``module.path[:field][@dim]``.

    Attributes:
        text: The string as given (used as the label in logs and metrics).
        name: Module, parameter or buffer path.
        field: Which tensor of a structured output (dataclass field, dict key or tuple index).
        dim: Split the last axis into points of this size (e.g. a flattened ``V×D`` frame → ``D``).
    """

    text: str
    name: str
    field: str | None = None
    dim: int | None = None

    @classmethod
    def parse(cls, text: str) -> WatchSpec:
        """Parse ``module.path[:field][@dim]``."""
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"a watched name must be a non-empty string, got {text!r}")
        rest, dim = text.strip(), None
        if "@" in rest:
            rest, dim_text = rest.rsplit("@", 1)
            if not dim_text.isdigit() or int(dim_text) < 1:
                raise ConfigError(
                    f"watch {text!r}: '@' must be followed by a point dimension, e.g. 'encoder@16'"
                )
            dim = int(dim_text)
        name, _, field = rest.partition(":")
        return cls(text=text.strip(), name=name, field=field or None, dim=dim)

    @property
    def label(self) -> str:
        """A metric-key-safe label (``:`` becomes ``.``)."""
        return self.text.replace(":", ".")


def parse_watch(watch: str | Sequence[str]) -> list[WatchSpec]:
    """Parse one name, a comma-separated string or a list of names; refuse duplicates and an empty list."""
    items = [w for w in watch.split(",")] if isinstance(watch, str) else list(watch)
    specs = [WatchSpec.parse(w) for w in items if not (isinstance(w, str) and not w.strip())]
    if not specs:
        raise ConfigError("watch names no module; give at least one, e.g. watch=['encoder']")
    labels = [s.label for s in specs]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ConfigError(f"watch names {dupes} more than once")
    return specs


def _resolve(model: nn.Module, spec: WatchSpec) -> nn.Module | torch.Tensor:
    modules = dict(model.named_modules())
    if spec.name in modules:
        return modules[spec.name]
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    if spec.name in tensors:
        return tensors[spec.name]
    names = [n for n in modules if n] + list(tensors)
    close = difflib.get_close_matches(spec.name, names, n=5, cutoff=0.5)
    hint = f"close matches: {', '.join(close)}" if close else "see model.named_modules() for the names"
    raise ConfigError(
        f"watch {spec.text!r}: {type(model).__name__} has no module, parameter or buffer named "
        f"{spec.name!r}; {hint}"
    )


def _first_tensor(items: Any) -> torch.Tensor | None:
    for item in items:
        if isinstance(item, torch.Tensor) and item.is_floating_point():
            return item
    return None


def _select(output: Any, spec: WatchSpec) -> torch.Tensor:
    """The tensor of ``output`` that ``spec`` watches."""
    found: Any
    if spec.field is None:
        if isinstance(output, torch.Tensor):
            found = output
        elif isinstance(output, Mapping):
            found = _first_tensor(output.values())
        elif dataclasses.is_dataclass(output):
            found = _first_tensor(getattr(output, f.name) for f in dataclasses.fields(output))
        elif isinstance(output, (tuple, list)):
            found = _first_tensor(output)
        else:
            found = None
    elif isinstance(output, Mapping):
        found = output.get(spec.field)
    elif isinstance(output, (tuple, list)) and spec.field.isdigit():
        found = output[int(spec.field)] if int(spec.field) < len(output) else None
    else:
        found = getattr(output, spec.field, None)
    if not isinstance(found, torch.Tensor) or not found.is_floating_point():
        what = f"field {spec.field!r}" if spec.field else "a floating-point tensor"
        raise ConfigError(
            f"watch {spec.text!r}: the output of {spec.name!r} ({type(output).__name__}) has no {what}; "
            "pick one with 'module:field'"
        )
    return found


def _cast(obj: Any, dtype: torch.dtype | None, clone: bool = False) -> Any:
    """Detach (and cast, and clone) every floating tensor inside a nest of tuples/lists/dicts/dataclasses."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.is_floating_point() and dtype is not None and t.dtype != dtype:
            return t.to(dtype)
        return t.clone() if clone else t
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_cast(o, dtype, clone) for o in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cast(o, dtype, clone) for o in obj)
    if isinstance(obj, Mapping):
        return {k: _cast(v, dtype, clone) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(
            obj,
            **{f.name: _cast(getattr(obj, f.name), dtype, clone) for f in dataclasses.fields(obj) if f.init},
        )
    return obj


def _strip(module: nn.Module) -> nn.Module:
    """Remove every hook and instance-patched ``forward`` (e.g. Accelerate's autocast wrapper)."""
    for m in module.modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_forward_hooks_with_kwargs",
            "_forward_pre_hooks_with_kwargs",
            "_forward_hooks_always_called",
        ):
            d = getattr(m, attr, None)
            if d is not None:
                d.clear()
        m.__dict__.pop("forward", None)
        m.__dict__.pop("_original_forward", None)
    return module


def _points(t: torch.Tensor, dim: int | None) -> torch.Tensor:
    d = dim or t.shape[-1]
    if t.numel() % d:
        raise ConfigError(f"an output of {tuple(t.shape)} cannot be split into points of size {d}")
    return t.detach().reshape(-1, d)


def dynamic_range_bits(t: torch.Tensor) -> float:
    """``log2(max|t| / min nonzero |t|)`` over the finite entries (``nan`` when there is no nonzero one)."""
    a = t.detach().abs().double()
    a = a[torch.isfinite(a) & (a > 0)]
    if a.numel() == 0:
        return math.nan
    return float(torch.log2(a.max() / a.min()))


def _lowest(dtypes: Sequence[torch.dtype]) -> torch.dtype:
    floats = [d for d in dtypes if d.is_floating_point]
    return max(floats, key=lambda d: torch.finfo(d).eps) if floats else torch.float32


# ----------------------------------------------------------------------------- readings
@dataclasses.dataclass
class AuditReading:
    """One watched output at one audit.

    Attributes:
        step: Training step of the audit (``None`` outside a run).
        name: The watched name (label form).
        dim: Point dimension D.
        run_dtype: The precision the output was computed at (``bf16`` under bf16 autocast, ...).
        reference_dtype: The reference precision.
        cv: CV of the output's unit rows as computed at the run's precision.
        cv_ref: The same rows recomputed in the reference precision (``nan`` for parameters).
        cv_target: ``target_cv(D)``.
        deviation: ``‖y − y_ref‖ / ‖y_ref‖`` (``nan`` for parameters).
        max_deviation: The deviation band.
        flagged: Whether any check failed.
        reasons: What failed, in words.
        range_bits: Dynamic range of the output at the run's precision, ``log2(max|y| / min nonzero |y|)``
            over its finite values (bf16 carries 8 significant bits: a range far beyond the format's
            exponent range, or small values next to huge ones, is where precision is lost).
    """

    step: int | None
    name: str
    dim: int
    run_dtype: str
    reference_dtype: str
    cv: float
    cv_ref: float
    cv_target: float
    deviation: float
    max_deviation: float
    flagged: bool = False
    reasons: list[str] = dataclasses.field(default_factory=list)
    range_bits: float = math.nan

    @property
    def cv_gap(self) -> float:
        """``cv − target_cv(D)``."""
        return self.cv - self.cv_target

    def scalars(self) -> dict[str, float]:
        """Flat metrics ``{"<name>/cv": ..., "<name>/cv_ref", "/cv_target", "/deviation", "/flag"}``."""
        p = self.name
        return {
            f"{p}/cv": self.cv,
            f"{p}/cv_ref": self.cv_ref,
            f"{p}/cv_target": self.cv_target,
            f"{p}/deviation": self.deviation,
            f"{p}/max_deviation": self.max_deviation,
            f"{p}/flag": float(self.flagged),
            f"{p}/range_bits": self.range_bits,
        }

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


# ----------------------------------------------------------------------------- the auditor
class Auditor:
    """CV precision auditor attached to named parts of ``model`` (see the module docstring).

    Args:
        model: Any ``nn.Module``.
        watch: Names to watch (``module.path[:field][@dim]``, a parameter name, or a comma-separated
            string of them).
        precision: ``"bf16"`` / ``"fp16"`` run the audit forward under that autocast, ``"fp32"`` /
            ``"no"`` / ``None`` run the model as it is (a ``.half()`` model is then audited at fp16).
        reference_dtype: Recompute precision (``torch.float64``; ``torch.float32`` for a cheaper check
            of a bf16/fp16 run).
        reference: ``"module"`` (re-run each watched module on its captured inputs) or ``"model"``
            (re-run the whole model on the batch).
        max_deviation: Deviation band; ``None`` = ``deviation_factor × unit_roundoff(run dtype)``.
        deviation_factor: See ``max_deviation``.
        cv_tolerance: Allowed relative difference between ``cv`` and ``cv_ref``.
        cv_band: Optional absolute ``(low, high)`` band for ``cv`` — one pair for all names or
            ``{name: (low, high)}``.
        max_points: Rows used for the CV (a fixed random subset when there are more).
        cv_samples: Random pentachora per CV.
        seed: Seed of the fixed row subset and pentachora.
        forward: ``forward(model, batch)`` (default ``model(batch)``).
    """

    def __init__(
        self,
        model: nn.Module,
        watch: str | Sequence[str],
        precision: str | None = None,
        reference_dtype: torch.dtype = torch.float64,
        reference: str = "module",
        max_deviation: float | None = None,
        deviation_factor: float = 32.0,
        cv_tolerance: float = 0.05,
        cv_band: tuple[float, float] | Mapping[str, tuple[float, float]] | None = None,
        max_points: int = 512,
        cv_samples: int = 256,
        seed: int = 0,
        forward: Callable[[nn.Module, Any], Any] | None = None,
    ) -> None:
        if precision not in (None, *PRECISIONS):
            raise ConfigError(f"precision must be one of {sorted(PRECISIONS)} or None, got {precision!r}")
        if reference not in ("module", "model"):
            raise ConfigError(f"reference must be 'module' or 'model', got {reference!r}")
        if not reference_dtype.is_floating_point:
            raise ConfigError(f"reference_dtype must be a floating dtype, got {reference_dtype}")
        if max_points < 5 or cv_samples < 2:
            raise ConfigError("max_points must be >= 5 and cv_samples >= 2")
        self.model = model
        self.specs = parse_watch(watch)
        self.targets = {s.label: _resolve(model, s) for s in self.specs}
        self.precision = precision
        self.reference_dtype = reference_dtype
        self.reference = reference
        self.max_deviation = max_deviation
        self.deviation_factor = float(deviation_factor)
        self.cv_tolerance = float(cv_tolerance)
        self.cv_band = cv_band
        self.max_points = int(max_points)
        self.cv_samples = int(cv_samples)
        self.seed = int(seed)
        self.forward = forward or (lambda m, b: m(b))
        #: every reading so far, as JSON-able dicts
        self.history: list[dict[str, Any]] = []
        #: ``{name: step}`` for names out of band now, since that step
        self.flags: dict[str, int | None] = {}
        #: ``{name: step}`` of the first flagged audit of each name ever
        self.first_flagged: dict[str, int | None] = {}
        self._capturing: dict[str, list[tuple[Any, Any, Any]]] | None = None
        self._handles: list[Any] = []
        for spec in self.specs:
            target = self.targets[spec.label]
            if isinstance(target, nn.Module):
                self._handles.append(target.register_forward_hook(self._hook(spec.label), with_kwargs=True))

    # ------------------------------------------------------------------ hooks
    def _hook(self, label: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            if self._capturing is not None:
                self._capturing[label].append(
                    (
                        _cast(args, None, clone=True),
                        _cast(kwargs, None, clone=True),
                        _cast(output, None, clone=True),
                    )
                )

        return hook

    @property
    def attached(self) -> bool:
        """Whether the hooks are still registered."""
        return bool(self._handles)

    def detach(self) -> None:
        """Remove every hook (idempotent); the model is left exactly as before :func:`attach`."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> Auditor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    # ------------------------------------------------------------------ precision helpers
    def _device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = PRECISIONS.get(self.precision) if self.precision else None
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self._device().type, dtype=dtype)

    @contextlib.contextmanager
    def _quiet_mode(self, model: nn.Module) -> Iterator[None]:
        """Eval mode, no gradient, the global RNG forked; everything restored afterwards."""
        modes = {m: m.training for m in model.modules()}
        device = self._device()
        devices = [device.index or 0] if device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                model.eval()
                yield
        finally:
            for m, mode in modes.items():
                m.training = mode

    def _run_dtype(self, label: str, out: torch.Tensor) -> torch.dtype:
        autocast = PRECISIONS.get(self.precision) if self.precision else None
        target = self.targets[label]
        params = [p.dtype for p in target.parameters()] if isinstance(target, nn.Module) else []
        return _lowest([out.dtype, *params, *([autocast] if autocast else [])])

    def _band(self, run_dtype: torch.dtype) -> float:
        if self.max_deviation is not None:
            return float(self.max_deviation)
        return self.deviation_factor * unit_roundoff(run_dtype)

    def _row_subset(self, n: int, device: torch.device) -> torch.Tensor | None:
        if n <= self.max_points:
            return None
        g = torch.Generator().manual_seed(self.seed)
        return torch.randperm(n, generator=g)[: self.max_points].to(device)

    def _cv(self, points: torch.Tensor, subset: torch.Tensor | None) -> float:
        x = points if subset is None else points[subset]
        if x.shape[0] < 5 or x.shape[1] < 4 or not torch.isfinite(x).all():
            return math.nan
        unit = F.normalize(x.to(torch.float64), dim=-1)
        return cv_metric(
            unit, n_samples=self.cv_samples, generator=torch.Generator().manual_seed(self.seed + 1)
        )

    def _cv_band(self, label: str) -> tuple[float, float] | None:
        band = self.cv_band
        if band is None:
            return None
        if isinstance(band, Mapping):
            return band.get(label)  # type: ignore[return-value]
        return band  # type: ignore[return-value]

    # ------------------------------------------------------------------ capture + reference
    def _capture(self, batch: Any) -> dict[str, list[tuple[Any, Any, Any]]]:
        self._capturing = {s.label: [] for s in self.specs}
        try:
            with self._autocast():
                self.forward(self.model, batch)
            return self._capturing
        finally:
            self._capturing = None

    def _reference_outputs(
        self, batch: Any, captured: dict[str, list[tuple[Any, Any, Any]]]
    ) -> dict[str, list[Any]]:
        ref = self.reference_dtype
        device_type = self._device().type
        out: dict[str, list[Any]] = {}
        if self.reference == "model":
            model = _strip(copy.deepcopy(self.model, memo={id(self): self})).to(ref)
            model.eval()
            out = {label: [] for label in captured}
            mods = dict(model.named_modules())
            handles = []
            for spec in self.specs:
                if isinstance(self.targets[spec.label], nn.Module):

                    def keep(m: nn.Module, a: Any, o: Any, label: str = spec.label) -> None:
                        out[label].append(_cast(o, None))

                    handles.append(mods[spec.name].register_forward_hook(keep))
            try:
                with torch.autocast(device_type, enabled=False):
                    self.forward(model, _cast(batch, ref))
            except RuntimeError as exc:
                raise ConfigError(
                    f"reference='model' could not re-run {type(self.model).__name__} in {ref} ({exc}); "
                    "its forward does not keep the dtype it is given — use reference='module'"
                ) from exc
            finally:
                for h in handles:
                    h.remove()
            return out
        done: dict[str, list[Any]] = {}  # one recomputation per module, whatever fields are watched
        for spec in self.specs:
            target = self.targets[spec.label]
            if not isinstance(target, nn.Module):
                continue
            if spec.name not in done:
                module = _strip(copy.deepcopy(target, memo={id(self): self})).to(ref)
                module.eval()
                with torch.autocast(device_type, enabled=False):
                    done[spec.name] = [
                        module(*_cast(args, ref), **_cast(kwargs, ref))
                        for args, kwargs, _ in captured[spec.label]
                    ]
            out[spec.label] = done[spec.name]
        return out

    # ------------------------------------------------------------------ the audit
    def audit(self, batch: Any, step: int | None = None) -> list[AuditReading]:
        """Audit every watched name on ``batch`` (see the module docstring).

        Args:
            batch: What ``forward(model, batch)`` takes; use the same batch at every audit.
            step: Training step, recorded with the readings and used for :attr:`flags`.

        Returns:
            One :class:`AuditReading` per watched name, in watch order.
        """
        if not self.attached:
            raise ConfigError("this Auditor was detached; attach a new one to audit again")
        with self._quiet_mode(self.model):
            captured = self._capture(batch)
            refs = self._reference_outputs(batch, captured)
        readings = [self._reading(spec, captured, refs, step) for spec in self.specs]
        for r in readings:
            self._update_flags(r)
            self.history.append(r.to_dict())
        return readings

    def _reading(
        self, spec: WatchSpec, captured: dict[str, list[Any]], refs: dict[str, list[Any]], step: int | None
    ) -> AuditReading:
        label, ref_name = spec.label, _DTYPE_NAMES.get(self.reference_dtype, str(self.reference_dtype))
        target = self.targets[label]
        if not isinstance(target, nn.Module):
            pts = _points(target, spec.dim)
            run_dtype = target.dtype
            subset = self._row_subset(pts.shape[0], pts.device)
            finite = bool(torch.isfinite(pts).all())
            cv = self._cv(pts, subset)
            reading = AuditReading(
                step, label, pts.shape[1], _DTYPE_NAMES.get(run_dtype, str(run_dtype)), ref_name, cv, math.nan,
                _target(pts.shape[1]), math.nan, math.nan,
            )  # fmt: skip
            reading.range_bits = dynamic_range_bits(pts)
            if not finite:
                reading.reasons.append("non-finite values")
            self._check_cv_band(reading)
            reading.flagged = bool(reading.reasons)
            return reading
        calls = captured[label]
        if not calls:
            raise ConfigError(
                f"watch {spec.text!r}: module {spec.name!r} did not run in the audit forward pass; "
                "watch a module the forward actually calls"
            )
        run = [_select(o, spec) for _, _, o in calls]
        ref = [_select(o, spec) for o in refs[label]]
        run_dtype = self._run_dtype(label, run[0])
        run_pts = torch.cat([_points(t, spec.dim) for t in run])
        ref_pts = torch.cat([_points(t, spec.dim) for t in ref])
        subset = self._row_subset(run_pts.shape[0], run_pts.device)
        finite = bool(torch.isfinite(run_pts).all())
        dev = relative_deviation(run_pts, ref_pts)
        band = self._band(run_dtype)
        reading = AuditReading(
            step, label, run_pts.shape[1], _DTYPE_NAMES.get(run_dtype, str(run_dtype)), ref_name,
            self._cv(run_pts, subset), self._cv(ref_pts, subset), _target(run_pts.shape[1]), dev, band,
        )  # fmt: skip
        reading.range_bits = dynamic_range_bits(run_pts)
        if not finite:
            reading.reasons.append("non-finite values in the output")
        elif dev > band:
            reading.reasons.append(
                f"deviation {dev:.3g} from the {ref_name} recomputation > band {band:.3g} "
                f"({reading.run_dtype} run)"
            )
        cv_apart = abs(reading.cv - reading.cv_ref) > self.cv_tolerance * max(abs(reading.cv_ref), 1e-12)
        if math.isfinite(reading.cv) and math.isfinite(reading.cv_ref) and cv_apart:
            reading.reasons.append(
                f"CV {reading.cv:.4f} vs {reading.cv_ref:.4f} in {ref_name} (more than {self.cv_tolerance:.0%} apart)"
            )
        self._check_cv_band(reading)
        reading.flagged = bool(reading.reasons)
        return reading

    def _check_cv_band(self, reading: AuditReading) -> None:
        band = self._cv_band(reading.name)
        if band is not None and math.isfinite(reading.cv) and not band[0] <= reading.cv <= band[1]:
            reading.reasons.append(f"CV {reading.cv:.4f} outside the band [{band[0]:.4g}, {band[1]:.4g}]")

    def _update_flags(self, r: AuditReading) -> None:
        if r.flagged:
            if r.name not in self.flags:
                self.flags[r.name] = r.step
                self.first_flagged.setdefault(r.name, r.step)
                logger.warning(
                    "CV auditor: %r out of band since step %s: %s", r.name, r.step, "; ".join(r.reasons)
                )
        elif r.name in self.flags:
            logger.info(
                "CV auditor: %r back in band at step %s (out since %s)", r.name, r.step, self.flags[r.name]
            )
            del self.flags[r.name]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: the readings, current flags and first flags."""
        return {
            "history": list(self.history),
            "flags": dict(self.flags),
            "first_flagged": dict(self.first_flagged),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.history = list(state.get("history", []))
        self.flags = dict(state.get("flags", {}))
        self.first_flagged = dict(state.get("first_flagged", {}))


def _target(dim: int) -> float:
    return float(target_cv(dim)) if dim >= 4 else math.nan


def attach(model: nn.Module, watch: str | Sequence[str], **kwargs: Any) -> Auditor:
    """Attach an :class:`Auditor` to ``model`` (usable as a context manager that detaches on exit)."""
    return Auditor(model, watch, **kwargs)


# ----------------------------------------------------------------------------- trainer callback
class AuditCallback(Callback):
    """The auditor as a Trainer callback: audit every ``every`` steps on one fixed batch.

    The audit batch is ``audit_batch`` or the training source's batch ``audit_index`` (regenerated
    identically on resume). The run's precision is ``TrainConfig.mixed_precision`` unless
    ``precision`` is given. Readings are written with :meth:`Trainer.log_metrics` as
    ``{"split": "audit", "step": s, "<name>/cv": ..., "<name>/deviation": ..., ...}`` records
    (``metrics.jsonl`` and TensorBoard ``audit/<name>/cv``), also at step 0 of a fresh run. The
    readings and flags are checkpointed, so a resumed run reports the same "since" steps.

    Args:
        watch: As for :class:`Auditor`.
        every: Audit period in steps.
        audit_batch: A fixed batch (default: the source's batch ``audit_index``).
        audit_index: Source index of the default audit batch.
        **auditor_kwargs: Passed to :class:`Auditor` (``reference_dtype``, ``max_deviation``, ...).
    """

    state_key = "AuditCallback"

    def __init__(
        self,
        watch: str | Sequence[str],
        every: int = 100,
        audit_batch: Any = None,
        audit_index: int = 1,
        **auditor_kwargs: Any,
    ) -> None:
        if int(every) < 1:
            raise ConfigError(f"audit every must be >= 1 step, got {every}")
        self.specs = parse_watch(watch)
        self.every = int(every)
        self.audit_batch = audit_batch
        self.audit_index = int(audit_index)
        self.kwargs = dict(auditor_kwargs)
        self.auditor: Auditor | None = None
        self._batch: Any = None
        self._pending: dict[str, Any] | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        from accelerate.utils import send_to_device

        kwargs = dict(self.kwargs)
        if "precision" not in kwargs:
            mp = trainer.config.mixed_precision
            kwargs["precision"] = mp if mp in PRECISIONS else None
        if self.auditor is not None:
            self.auditor.detach()
        self.auditor = Auditor(trainer.unwrapped_model, [s.text for s in self.specs], **kwargs)
        if self._pending is not None:
            self.auditor.load_state_dict(self._pending)
            self._pending = None
        batch = (
            self.audit_batch if self.audit_batch is not None else trainer.train_source.batch(self.audit_index)
        )
        self._batch = send_to_device(batch, trainer.accelerator.device)
        if trainer.step == 0:
            self._audit(trainer, 0)

    def _audit(self, trainer: Trainer, step: int) -> None:
        assert self.auditor is not None
        readings = self.auditor.audit(self._batch, step=step)
        scalars: dict[str, float] = {}
        for r in readings:
            scalars.update(r.scalars())
        trainer.log_metrics(step, scalars, split="audit")

    def on_step_end(self, trainer: Trainer, step: int, output_scalars: dict[str, float]) -> None:
        if step % self.every == 0:
            self._audit(trainer, step)

    def on_train_end(self, trainer: Trainer) -> None:
        if self.auditor is not None:
            for name, since in self.auditor.flags.items():
                logger.warning("CV auditor: %r still out of band at the end (since step %s)", name, since)
            self.auditor.detach()

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every reading so far (JSON-able dicts)."""
        if self.auditor is not None:
            return self.auditor.history
        return list((self._pending or {}).get("history", []))

    def state_dict(self) -> dict[str, Any]:
        if self.auditor is not None:
            return self.auditor.state_dict()
        return dict(self._pending or {})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = dict(state)
        if self.auditor is not None:
            self.auditor.load_state_dict(state)
            self._pending = None
