"""Which module's *forward* output went NaN or infinite first — named, at no cost while nothing does.

``torch.autograd.detect_anomaly`` only covers the backward pass and slows every step. Here forward hooks
on every submodule check each output with one ``isfinite`` reduction; the first module whose output holds
a non-finite value while all of its inputs were finite is where the values were made (hooks run
children-first, so an inner module is found before the block that contains it; a non-finite value made
by functional code between children is charged to the module whose ``forward`` holds that code).

* :class:`NonFiniteTracer` — a context manager around any forward pass; ``tracer.origin`` afterwards.
* :func:`locate_nonfinite` — run ``model(batch)`` under a tracer without gradients.
* :class:`NonFiniteOriginCallback` — for the :class:`~pentachora.training.Trainer`: after a step the NaN
  guard skipped, it replays that step's forward pass (same batch, same random seed, global RNG restored
  afterwards, so training continues exactly as without it) under a tracer and logs the module. Steps that
  are finite cost nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from pentachora.training import Callback, Trainer

__all__ = ["NonFiniteOrigin", "NonFiniteOriginCallback", "NonFiniteTracer", "locate_nonfinite"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class NonFiniteOrigin:
    """Where a forward pass first produced a non-finite value.

    Attributes:
        module: Dotted name of the module (``""``: the model's own ``forward``).
        type: Its class name.
        kind: ``"nan"``, ``"inf"`` or ``"nan+inf"``.
        count: Non-finite elements in its output.
        numel: Elements of its (floating) output.
        inputs_finite: Whether all of its tensor inputs were finite (``False`` only when no module made
            the values: they came in with the batch).
        params_finite: Whether its own parameters and buffers were finite (``False``: the weights are
            already broken; look at the previous update or the checkpoint).
    """

    module: str
    type: str
    kind: str
    count: int
    numel: int
    inputs_finite: bool
    params_finite: bool

    def describe(self) -> str:
        name = self.module or "<the model's own forward>"
        where = "its inputs were finite" if self.inputs_finite else "its inputs were already non-finite"
        weights = "" if self.params_finite else "; its own parameters hold non-finite values"
        return f"{name} ({self.type}) output {self.count}/{self.numel} {self.kind} values; {where}{weights}"


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _tensors(getattr(obj, f.name))


def _all_finite(obj: Any) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in _tensors(obj))


class NonFiniteTracer:
    """Forward hooks on every module of ``model`` that remember the first non-finite output's origin.

    Use as a context manager (hooks are removed on exit)::

        with NonFiniteTracer(model) as tracer:
            model(batch)
        if tracer.origin is not None:
            print(tracer.origin.describe())

    Attributes:
        origin: The first :class:`NonFiniteOrigin` (a module whose inputs were finite), or — if the values
            came in with the input — the first module that saw them, with ``inputs_finite=False``.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.origin: NonFiniteOrigin | None = None
        self._fallback: NonFiniteOrigin | None = None
        self._handles: list[Any] = []

    def __enter__(self) -> NonFiniteTracer:
        for name, module in self.model.named_modules():
            self._handles.append(module.register_forward_hook(self._hook(name), with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self.origin is None:
            self.origin = self._fallback

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            if self.origin is not None:
                return
            outs = list(_tensors(output))
            bad = [t for t in outs if not bool(torch.isfinite(t).all())]
            if not bad:
                return
            nan = any(bool(torch.isnan(t).any()) for t in bad)
            inf = any(bool(torch.isinf(t).any()) for t in bad)
            record = NonFiniteOrigin(
                module=name, type=type(module).__name__, kind="nan+inf" if nan and inf else "nan" if nan else "inf",
                count=sum(int((~torch.isfinite(t)).sum()) for t in bad), numel=sum(t.numel() for t in outs),
                inputs_finite=_all_finite(args) and _all_finite(kwargs),
                params_finite=all(bool(torch.isfinite(p).all()) for p in module.parameters(recurse=False))
                and all(bool(torch.isfinite(b).all()) for b in module.buffers(recurse=False) if b.is_floating_point()),
            )  # fmt: skip
            if record.inputs_finite:
                self.origin = record
            elif self._fallback is None:
                self._fallback = record

        return hook


@torch.no_grad()
def locate_nonfinite(model: nn.Module, batch: Any) -> NonFiniteOrigin | None:
    """``model(batch)`` without gradients under a :class:`NonFiniteTracer`; ``None`` if all was finite."""
    with NonFiniteTracer(model) as tracer:
        model(batch)
    return tracer.origin


class NonFiniteOriginCallback(Callback):
    """Name the module behind every step the trainer's NaN/inf guard skips (see the module docstring).

    The replay uses the step's own batch and random seed and restores the global RNG afterwards, so a run
    with this callback trains bit-for-bit like one without it. ``origins`` keeps ``{"step", ...}`` records
    (checkpointed); each is also logged as a warning.

    Args:
        max_reports: Replays per run (the first ones say the most; later skipped steps are only counted).
    """

    state_key = "NonFiniteOriginCallback"

    def __init__(self, max_reports: int = 5) -> None:
        self.max_reports = int(max_reports)
        self.origins: list[dict[str, Any]] = []

    def on_step_end(self, trainer: Trainer, step: int, output_scalars: dict[str, float]) -> None:
        if not trainer.last_step_skipped or len(self.origins) >= self.max_reports:
            return
        batch, seed = trainer.last_batch, trainer.last_step_seed
        if batch is None or seed is None:
            return
        model = trainer.unwrapped_model
        cpu_state = torch.get_rng_state()
        cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        try:
            torch.manual_seed(seed)
            with trainer.accelerator.autocast():
                origin = locate_nonfinite(model, batch)
        finally:
            torch.set_rng_state(cpu_state)
            if cuda_states is not None:
                torch.cuda.set_rng_state_all(cuda_states)
        record: dict[str, Any] = {"step": step}
        if origin is None:
            record["origin"] = None
            logger.warning("step %d was skipped as non-finite, but its forward pass is finite (the backward "
                           "pass or the gradient norm made the NaN/inf)", step)  # fmt: skip
        else:
            record.update(dataclasses.asdict(origin))
            logger.warning("step %d: the first non-finite forward output: %s", step, origin.describe())
        self.origins.append(record)

    def state_dict(self) -> dict[str, Any]:
        return {"origins": list(self.origins)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.origins = list(state.get("origins", []))
