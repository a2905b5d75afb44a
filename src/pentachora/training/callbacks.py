"""Callbacks: everything a training recipe adds to the one loop, without a branch in it.

A :class:`Callback` receives the :class:`~pentachora.training.Trainer` at five points and may read
or change it (``trainer.unwrapped_model``, ``trainer.optimizer``, ``trainer.step``,
``trainer.should_stop``, ...). Its :meth:`Callback.state_dict` (JSON-able) is stored in every
checkpoint's ``trainer_state.json`` and handed back through :meth:`Callback.load_state_dict` before
``on_train_start`` on resume, so schedules continue exactly where they stopped.

Loss weights are set through a documented duck-typed method on the model::

    model.set_loss_weights(**weights)   # e.g. recon_weight=1.2, cv_weight=0.1

A model that supports a weight schedule defines it (and raises on names it does not know);
:class:`SoftHandCallback` and :class:`PhaseCallback` call it on the unwrapped model and fail at
train start with a clear message when the model does not have it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from torch import nn

from pentachora.geometry import soft_hand_weights

if TYPE_CHECKING:
    from pentachora.training.loop import Trainer

logger = logging.getLogger(__name__)


@runtime_checkable
class SupportsLossWeights(Protocol):
    """A model whose loss weights can be changed during training."""

    def set_loss_weights(self, **weights: float) -> None:
        """Set named loss weights (e.g. ``recon_weight``, ``cv_weight``) for the following steps."""
        ...


def require_loss_weights(model: nn.Module, who: str) -> SupportsLossWeights:
    """Return ``model`` if it has ``set_loss_weights``, else raise a clear ``TypeError``."""
    if not callable(getattr(model, "set_loss_weights", None)):
        raise TypeError(
            f"{who} needs the model to define `set_loss_weights(**weights)`; "
            f"{type(model).__name__} does not (see pentachora.training.callbacks)"
        )
    return model  # type: ignore[return-value]


class Callback:
    """Base class: override the hooks you need; all default to doing nothing.

    Hooks run on every process (so that state stays identical across ranks); writing files from a
    callback should check ``trainer.accelerator.is_main_process``.

    Attributes:
        state_key: Name under which the state is stored in ``trainer_state.json`` (default: the class
            name; the trainer appends ``#2``, ``#3`` ... for repeated classes).
    """

    state_key: str | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        """Called once per :meth:`Trainer.fit`, after a resume was restored and before the first step.

        Args:
            trainer: The trainer; ``trainer.step`` is the number of steps already done (0 when fresh).
        """

    def on_step_start(self, trainer: Trainer, step: int) -> None:
        """Called before the batch of ``step`` is drawn and the forward pass runs.

        Args:
            trainer: The trainer (``trainer.step == step - 1``).
            step: The step about to run (1-based).
        """

    def on_step_end(self, trainer: Trainer, step: int, output_scalars: dict[str, float]) -> None:
        """Called after the optimizer step (or the skip of a non-finite step), before logging.

        Args:
            trainer: The trainer (``trainer.step == step``; ``trainer.last_step_skipped`` tells whether
                the update was skipped).
            step: The step just finished.
            output_scalars: The model output's ``scalars()`` (averaged over processes) plus ``lr`` and
                ``grad_norm``. Values may be NaN on skipped steps. Entries a callback adds here are
                logged with the step.
        """

    def on_eval(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        """Called after each evaluation.

        Args:
            trainer: The trainer.
            step: The step after which the evaluation ran.
            metrics: What ``eval_fn`` returned (as floats).
        """

    def on_train_end(self, trainer: Trainer) -> None:
        """Called once at the end of a successful :meth:`Trainer.fit` (after the final checkpoint)."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state to restore on resume (default: none)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class SoftHandCallback(Callback):
    """The seeds' soft-hand CV schedule as a callback.

    After every step it folds the CV the model reported (``output_scalars[metric]``) into an
    exponential moving average and sets ``recon_weight, cv_weight =
    soft_hand_weights(ema_cv, target_cv, sigma, boost, penalty)`` on the model through
    ``model.set_loss_weights(recon_weight=..., cv_weight=...)`` for the next step. Near the target
    the reconstruction term is boosted; far from it the CV term takes over. Before the first CV is
    seen (and at the very start) the weights for an unmeasured CV are applied (``p = 0``).

    Non-finite CV readings (e.g. on a skipped step) are ignored. The state (EMA and weights) is
    checkpointed and re-applied on resume.

    Args:
        target_cv: CV target; take it from ``pentachora.geometry.target_cv(D)`` of the space that is
            regularised (never a hard-coded "universal" band).
        metric: Key of the CV in the model output's scalars.
        sigma: Width of the proximity bump (see ``cv_proximity``).
        boost: Extra reconstruction weight at the target.
        penalty: CV weight far from the target.
        ema: EMA coefficient (weight of the old value), in ``[0, 1)``.
    """

    def __init__(
        self,
        target_cv: float,
        metric: str = "cv",
        sigma: float = 0.15,
        boost: float = 0.5,
        penalty: float = 0.3,
        ema: float = 0.9,
    ) -> None:
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {ema}")
        self.target_cv = float(target_cv)
        self.metric = metric
        self.sigma = float(sigma)
        self.boost = float(boost)
        self.penalty = float(penalty)
        self.ema = float(ema)
        self.ema_cv: float | None = None
        self.updates = 0
        self.weights: dict[str, float] = {}

    def _apply(self, trainer: Trainer) -> None:
        cv = math.nan if self.ema_cv is None else self.ema_cv
        recon_w, cv_w = soft_hand_weights(cv, self.target_cv, self.sigma, self.boost, self.penalty)
        self.weights = {"recon_weight": recon_w, "cv_weight": cv_w}
        require_loss_weights(trainer.unwrapped_model, "SoftHandCallback").set_loss_weights(**self.weights)

    def on_train_start(self, trainer: Trainer) -> None:
        require_loss_weights(trainer.unwrapped_model, "SoftHandCallback")
        self._apply(trainer)

    def on_step_end(self, trainer: Trainer, step: int, output_scalars: dict[str, float]) -> None:
        if self.metric not in output_scalars and getattr(trainer, "last_step_skipped", False):
            # a diverged step may not define the CV at all: the NaN/inf guard skipped it, so do we
            output_scalars["soft_hand/ema_cv"] = math.nan if self.ema_cv is None else self.ema_cv
            return
        if self.metric not in output_scalars:
            raise KeyError(
                f"SoftHandCallback: the model output reports no scalar {self.metric!r}; "
                f"it reports {sorted(output_scalars)}"
            )
        value = float(output_scalars[self.metric])
        if math.isfinite(value):
            self.ema_cv = value if self.ema_cv is None else self.ema * self.ema_cv + (1.0 - self.ema) * value
            self.updates += 1
            self._apply(trainer)
        output_scalars["soft_hand/ema_cv"] = math.nan if self.ema_cv is None else self.ema_cv
        output_scalars["soft_hand/recon_weight"] = self.weights["recon_weight"]
        output_scalars["soft_hand/cv_weight"] = self.weights["cv_weight"]

    def state_dict(self) -> dict[str, Any]:
        return {"ema_cv": self.ema_cv, "updates": self.updates, "weights": dict(self.weights)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema_cv = None if state.get("ema_cv") is None else float(state["ema_cv"])
        self.updates = int(state.get("updates", 0))
        self.weights = {k: float(v) for k, v in state.get("weights", {}).items()}


class PhaseCallback(Callback):
    """Switch loss weights and frozen parameters at given steps (alignment phase, then hand-off).

    ``phases`` is a list of ``(start_step, spec)``. A phase is in force from ``start_step`` on (the
    step of that number is the first one trained under it; ``0`` or ``1`` mean from the beginning).
    In ``spec`` the keys ``"freeze"`` and ``"unfreeze"`` take lists of parameter-name prefixes
    (matched against ``model.named_parameters()``; ``""`` matches all) whose ``requires_grad`` is
    switched off/on; every other key is passed to ``model.set_loss_weights(**weights)``::

        PhaseCallback([
            (0,   {"recon_weight": 0.0, "cv_weight": 1.0, "freeze": ["decoder."]}),  # geometry first
            (500, {"recon_weight": 1.0, "cv_weight": 0.1, "unfreeze": ["decoder."]}),  # hand-off
        ])

    On (re)start every phase that began at or before the next step is replayed in order, so a resumed
    run trains under exactly the weights and frozen set of the uninterrupted one. The optimizer is
    built over all parameters, so unfreezing later works; frozen parameters get no gradient and no
    update (under DDP, changing ``requires_grad`` mid-run needs ``find_unused_parameters``).

    Args:
        phases: ``(start_step, spec)`` pairs; start steps must be distinct.
    """

    RESERVED = ("freeze", "unfreeze")

    def __init__(self, phases: Sequence[tuple[int, dict[str, Any]]]) -> None:
        starts = [int(s) for s, _ in phases]
        if len(set(starts)) != len(starts):
            raise ValueError(f"PhaseCallback: phase start steps must be distinct, got {starts}")
        if any(s < 0 for s in starts):
            raise ValueError(f"PhaseCallback: phase start steps must be >= 0, got {starts}")
        self.phases: list[tuple[int, dict[str, Any]]] = sorted(
            ((int(s), dict(spec)) for s, spec in phases), key=lambda p: p[0]
        )
        self.current: int | None = None  # start step of the phase in force

    @staticmethod
    def _weights(spec: dict[str, Any]) -> dict[str, float]:
        return {k: float(v) for k, v in spec.items() if k not in PhaseCallback.RESERVED}

    def _check(self, model: nn.Module) -> None:
        names = [n for n, _ in model.named_parameters()]
        for start, spec in self.phases:
            if self._weights(spec):
                require_loss_weights(model, f"PhaseCallback (phase at step {start})")
            for key in self.RESERVED:
                for prefix in _as_list(spec.get(key, [])):
                    if not any(n.startswith(prefix) for n in names):
                        raise ValueError(
                            f"PhaseCallback (phase at step {start}): {key} prefix {prefix!r} matches no "
                            f"parameter of {type(model).__name__}"
                        )

    def _apply(self, trainer: Trainer, start: int, spec: dict[str, Any]) -> None:
        model = trainer.unwrapped_model
        for key, flag in (("freeze", False), ("unfreeze", True)):
            prefixes = _as_list(spec.get(key, []))
            for name, param in model.named_parameters():
                if any(name.startswith(p) for p in prefixes):
                    param.requires_grad_(flag)
                    if not flag:
                        param.grad = None
        weights = self._weights(spec)
        if weights:
            require_loss_weights(model, "PhaseCallback").set_loss_weights(**weights)
        self.current = start
        logger.info("PhaseCallback: phase from step %d in force (%s)", start, spec)

    def on_train_start(self, trainer: Trainer) -> None:
        self._check(trainer.unwrapped_model)
        next_step = trainer.step + 1
        for start, spec in self.phases:
            if start <= next_step:
                self._apply(trainer, start, spec)

    def on_step_start(self, trainer: Trainer, step: int) -> None:
        for start, spec in self.phases:
            if start == step and self.current != start:
                self._apply(trainer, start, spec)

    def state_dict(self) -> dict[str, Any]:
        return {"current": self.current}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.current = state.get("current")


def _as_list(value: str | Iterable[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


class EarlyStopOnPlateau(Callback):
    """Stop when an evaluation metric has not improved for ``patience`` evaluations.

    Args:
        monitor: Key in the ``eval_fn`` metrics.
        mode: ``"min"`` or ``"max"``.
        patience: Evaluations without improvement before stopping.
        min_delta: Smallest change that counts as an improvement.
    """

    def __init__(
        self, monitor: str = "loss", mode: str = "min", patience: int = 5, min_delta: float = 0.0
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.monitor = monitor
        self.mode = mode
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.best: float | None = None
        self.bad_evals = 0

    def on_eval(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        if self.monitor not in metrics:
            raise KeyError(
                f"EarlyStopOnPlateau: eval metrics have no {self.monitor!r}; got {sorted(metrics)}"
            )
        value = float(metrics[self.monitor])
        better = self.best is None or (
            value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        )
        if better and math.isfinite(value):
            self.best, self.bad_evals = value, 0
        else:
            self.bad_evals += 1
            if self.bad_evals >= self.patience:
                logger.info(
                    "EarlyStopOnPlateau: %s has not improved on %.6g for %d evaluations; stopping at step %d",
                    self.monitor,
                    self.best if self.best is not None else math.nan,
                    self.bad_evals,
                    step,
                )
                trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
        self.bad_evals = int(state.get("bad_evals", 0))
