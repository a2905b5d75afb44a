"""The one training loop every pentachora model uses, on HF Accelerate.

The model computes its own loss: ``model(batch)`` returns a :class:`~pentachora.modeling.ModelOutput`
whose ``.loss`` is a 0-d tensor and whose ``.scalars()`` are logged. The trainer never looks at the
model's type; recipes (soft-hand CV schedule, phases, early stopping) are
:mod:`~pentachora.training.callbacks`.

One step ``s`` (1-based) is::

    callbacks.on_step_start(s)
    batch = train_source.batch(s)                   # a pure function of (source seed, s)
    torch.manual_seed(step_seed(seed, s, rank))     # per-step model randomness, reproducible
    out = model(batch); accelerator.backward(out.loss)
    t = grad_clip, or max(out.scalars()[adaptive_clip_key], grad_clip) in adaptive mode
    g = accelerator.clip_grad_norm_(params, t)           # pre-clip norm, logged
    if loss or g is non-finite, or t is NaN: zero the grads, count it  (TrainingDiverged after K in a row)
    else: optimizer.step()
    scheduler.step(); callbacks.on_step_end(s, scalars); log; maybe evaluate; maybe checkpoint

**Exact resume.** A checkpoint after step ``k`` holds the model, the optimizer and LR-scheduler
state, the counters and every callback's state. Resuming restores them and continues at step
``k + 1``; the batch source regenerates batch ``k + 1`` itself and the model's randomness at step
``s`` depends only on ``(seed, s, rank)``, so an interrupted-and-resumed run matches an
uninterrupted one bit for bit on CPU (on GPU up to the determinism of the kernels).

**Multi-GPU / multi-node.** ``accelerate launch script.py`` runs the same code under DDP with no
change. Process ``r`` of ``W`` draws ``train_source.batch((s - 1) * W + r + 1)`` (so ``batch(s)``
when ``W = 1``); logged scalars are averaged over processes, so non-finite decisions and callback
states agree on every rank; only the main process writes files. Checkpoints hold full (unsharded)
states, which fits DDP; FSDP/DeepSpeed sharded optimizer states are not supported here. Exact resume
needs the same world size.

**Run folders.** :meth:`Trainer.fit` holds an exclusive lock on ``out_dir/.lock`` for the whole call
(a second training on the folder fails at once), resumes only a run with the same seed, model config
and ``run_data`` (``resume="force"`` overrides), refuses to start over on a folder holding a finished
run without a usable checkpoint (``fresh=True`` moves it aside), and never overwrites a checkpoint
folder that failed to load. Ctrl-C finishes the current step and writes a checkpoint before
``KeyboardInterrupt`` propagates. A ``torch.linalg.LinAlgError`` in the forward or backward pass (a
decomposition of NaN values) counts as a non-finite step; under DDP such a failure on one rank only
would desynchronise the gradient all-reduce, so the guard is exact for single-process runs.

**Global RNG.** Because the trainer seeds torch's global generator before every step (and before
every evaluation), code that runs after :meth:`Trainer.fit` sees a generator state determined by
the run, not the one it had before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from pentachora.data.seeding import EVAL_SALT, TRAIN_SALT, BatchSource, step_seed
from pentachora.errors import ConfigError, RunFolderError
from pentachora.io import CheckpointError, atomic_write_json, read_json
from pentachora.modeling import PentachoraModel, config_to_dict
from pentachora.training.callbacks import Callback
from pentachora.training.config import TrainConfig
from pentachora.training.logging import MetricsLogger, clean_record
from pentachora.training.state import (
    CHECKPOINTS_DIR,
    FINISHED_ARTIFACTS,
    LoadedCheckpoint,
    RunFolderExistsError,
    check_model_matches,
    checkpoint_name,
    clean_stale_temp_files,
    find_resumable_checkpoint,
    latest_checkpoint,
    move_run_aside,
    previous_run_artifacts,
    prune_checkpoints,
    read_checkpoint,
    run_folder_lock,
    set_aside_unreadable,
    write_checkpoint,
)

if TYPE_CHECKING:
    from accelerate import Accelerator

logger = logging.getLogger(__name__)

TRAIN_CONFIG_NAME = "train_config.json"
MODEL_CONFIG_NAME = "model_config.json"
DATA_NAME = "data.json"
TRAINER_STATE_FORMAT = "pentachora-trainer-state-v1"
SEEDING_SCHEME = (
    "before the forward pass of step s (1-based) on process r: "
    "torch.manual_seed(step_seed(seed, s, r)) with step_seed = splitmix64(((seed * 1_000_003 + s) mod 2**64) "
    "XOR splitmix64(0x7E3A_1C55 + r)) >> 1; evaluation after step s uses salt 0x3E7A_1C55 instead"
)


# ----------------------------------------------------------------------------- public small pieces
class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite steps (see ``TrainConfig.max_nonfinite_in_row``).

    Attributes:
        step: The last (skipped) step.
        what: What was non-finite at that step (``"loss"``, ``"grad_norm"``, ``"clip_threshold"`` —
            the adaptive clip's threshold — comma-joined).
        in_row: Consecutive non-finite steps.
        checkpoint: The last good checkpoint folder, or ``None`` if none was saved.
    """

    def __init__(
        self, step: int, what: str, in_row: int, checkpoint: Path | None, limit: int, every_step: bool = False
    ) -> None:
        self.step, self.what, self.in_row, self.checkpoint = step, what, in_row, checkpoint
        where = (
            f"{checkpoint}"
            if checkpoint is not None
            else "none was saved (no out_dir, or before the first save)"
        )
        head = (
            f"training diverged: every one of the {in_row} steps of this run was non-finite, so nothing was "
            "trained"
            if every_step
            else f"training diverged: {in_row} non-finite steps in a row (max_nonfinite_in_row={limit})"
        )
        super().__init__(
            f"{head}; the last was step {step} (non-finite: {what.replace(',', ', ')}). "
            f"Last good checkpoint: {where}. Check the data for NaN/inf, lower the learning rate or "
            "tighten grad_clip (in grad_clip_mode='fixed'), then resume from that checkpoint."
        )


@dataclasses.dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns.

    Attributes:
        steps: Steps completed in total (including earlier sessions of a resumed run).
        nonfinite_steps: Steps skipped because the loss or the gradient norm was non-finite (total).
        wall_time_s: Wall-clock seconds of this :meth:`Trainer.fit` call.
        metrics: The last step's training scalars (model scalars, ``lr``, ``grad_norm``, ...).
        eval_metrics: The last evaluation's metrics (empty without ``eval_fn``).
        checkpoint: The final checkpoint folder (``None`` without ``out_dir``).
        resumed_from: The step this session resumed after, or ``None`` for a fresh start.
        stopped_early: Whether a callback set ``trainer.should_stop``.
    """

    steps: int
    nonfinite_steps: int
    wall_time_s: float
    metrics: dict[str, float]
    eval_metrics: dict[str, float]
    checkpoint: Path | None
    resumed_from: int | None
    stopped_early: bool


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the peak learning rate used at (1-based) ``step``.

    Linear warm-up ``step / warmup_steps`` for ``step <= warmup_steps``; then, with progress
    ``t = (step - warmup) / (steps - warmup)`` in ``[0, 1]``: cosine
    ``m + (1 - m)·(1 + cos πt)/2``, linear ``1 - (1 - m)·t`` or constant ``1`` (``m = min_lr_ratio``).
    """
    warm = config.warmup_steps
    if warm > 0 and step <= warm:
        return step / warm
    if config.lr_schedule == "constant":
        return 1.0
    span = max(config.steps - warm, 1)
    t = min(max((step - warm) / span, 0.0), 1.0)
    m = config.min_lr_ratio
    if config.lr_schedule == "cosine":
        return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * t))
    return 1.0 - (1.0 - m) * t


def default_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on parameters with ``ndim >= 2``, none on biases/norms/scalars.

    Every parameter is included (also frozen ones, so that unfreezing later trains them).
    """
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_accelerator(mixed_precision: str = "no") -> Accelerator:
    """An :class:`accelerate.Accelerator` for the trainer (CPU when CUDA is absent).

    The scheduler is stepped by the trainer once per training step (``step_scheduler_with_optimizer``
    off), so the schedule is a function of the step number alone. Accelerate keeps process-wide
    state; in a single process, asking for another ``mixed_precision`` than an earlier Accelerator
    re-initialises that state instead of failing.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    kwargs = {
        "mixed_precision": mixed_precision,
        "cpu": not torch.cuda.is_available(),
        "step_scheduler_with_optimizer": False,
    }
    try:
        return Accelerator(**kwargs)
    except ValueError as exc:
        if "already been initialized" not in str(exc) or PartialState().num_processes > 1:
            raise
        logger.info("re-initialising Accelerate's process state for mixed_precision=%r", mixed_precision)
        AcceleratorState._reset_state()
        return Accelerator(**kwargs)


# ----------------------------------------------------------------------------- the trainer
class Trainer:
    """Train a :class:`~pentachora.modeling.PentachoraModel` on a :class:`BatchSource`.

    Args:
        model: The model; ``model(batch)`` returns a ``ModelOutput`` with a 0-d ``.loss``.
        config: How to train.
        train_source: Object with ``batch(step) -> batch``, deterministic in (its seed, step).
        eval_fn: Optional ``eval_fn(model) -> dict[str, float]``, called every ``eval_every`` steps and
            at the end on the unwrapped model, under ``torch.no_grad()`` and ``model.eval()`` (train
            mode is restored afterwards), on every process (make it cheap or rank-aware). The global
            torch RNG is seeded first, so evaluations with random subsets are reproducible.
        callbacks: :class:`~pentachora.training.callbacks.Callback` instances, run in order.
        param_groups: Optional optimizer parameter groups (``{"params": [...], "lr": ...}`` dicts) for
            differential learning rates; groups without ``lr``/``weight_decay`` use the config's. The
            LR schedule scales every group's own peak ``lr``. Default: :func:`default_param_groups`.
        optimizer_factory: Optional ``factory(param_groups) -> Optimizer`` replacing AdamW (its state
            must hold only tensors, numbers and strings — true of every ``torch.optim`` optimizer).
        accelerator: An existing ``Accelerator`` (default: :func:`make_accelerator`).
        run_data: What the run trains on (data spec, image size ...), JSON-able. Written to
            ``out_dir/data.json`` once the run is accepted and into every checkpoint; a resume whose
            ``run_data`` differs from the saved one is refused unless ``fit(resume="force")``.

    Attributes:
        model: The model as prepared by Accelerate (DDP-wrapped under ``accelerate launch``).
        unwrapped_model: The plain model (for ``set_loss_weights``, saving, evaluation).
        optimizer, scheduler, accelerator: As prepared.
        step: Steps completed so far.
        start_step: ``step`` when the current :meth:`fit` began (after a resume).
        nonfinite_steps, nonfinite_in_row: Counters of skipped steps.
        last_step_skipped: Whether the step just finished was skipped.
        should_stop: Set it from a callback to end training after the current step.
        last_checkpoint: The newest checkpoint folder written or resumed from.
    """

    def __init__(
        self,
        model: PentachoraModel,
        config: TrainConfig,
        train_source: BatchSource,
        eval_fn: Callable[[nn.Module], Mapping[str, float]] | None = None,
        callbacks: Iterable[Callback] = (),
        param_groups: Sequence[dict[str, Any]] | None = None,
        optimizer_factory: Callable[[list[dict[str, Any]]], torch.optim.Optimizer] | None = None,
        accelerator: Accelerator | None = None,
        run_data: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(model, PentachoraModel):
            raise TypeError(f"Trainer needs a PentachoraModel, got {type(model).__name__}")
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        if not callable(getattr(train_source, "batch", None)):
            raise TypeError(
                f"train_source must have a batch(step) method; {type(train_source).__name__} has none"
            )
        self.config = config
        self.train_source = train_source
        self.run_data: dict[str, Any] | None = (
            _json_normalise(dict(run_data)) if run_data is not None else None
        )
        self.eval_fn = eval_fn
        self.callbacks: list[Callback] = list(callbacks)
        self.accelerator = (
            accelerator if accelerator is not None else make_accelerator(config.mixed_precision)
        )
        self._raw_model = model
        self.model: nn.Module = model
        groups = self._param_groups(model, param_groups)
        if optimizer_factory is None:
            self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(
                groups, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay
            )
        else:
            self.optimizer = optimizer_factory(groups)
        cfg = config

        def schedule(epoch: int) -> float:  # LambdaLR's epoch e = optimizer steps done; step e+1 is next
            return lr_factor(epoch + 1, cfg)

        self.scheduler: Any = LambdaLR(self.optimizer, schedule)
        self.step = 0
        self.start_step = 0
        self.nonfinite_steps = 0
        self.nonfinite_in_row = 0
        self._warned_clip_key = False
        self.last_step_skipped = False
        #: The last step's batch (on the device) and the seed its randomness was drawn from: what a callback
        #: needs to replay that step's forward pass (e.g. to name where a NaN came from).
        self.last_batch: Any = None
        self.last_step_seed: int | None = None
        self.last_nonfinite: tuple[str, ...] = ()
        self.should_stop = False
        self.last_checkpoint: Path | None = None
        self.last_metrics: dict[str, float] = {}
        self.last_eval_metrics: dict[str, float] = {}
        self._elapsed_before = 0.0
        self._session_t0 = time.perf_counter()
        self._prepared = False
        self._last_eval_step: int | None = None
        self._last_save_step: int | None = None
        self._metrics_logger: MetricsLogger | None = None
        self._gn_window: list[float] = []
        self._batch_checked = False
        self._step_consistent = True  # False while a step is half applied (no checkpoint then)
        self._interrupt_requested = False

    # ------------------------------------------------------------------ properties / helpers
    @property
    def out_dir(self) -> Path | None:
        """The run folder, or ``None`` when training in memory."""
        return Path(self.config.out_dir) if self.config.out_dir else None

    @property
    def unwrapped_model(self) -> PentachoraModel:
        """The plain model (not DDP-wrapped)."""
        if not self._prepared:
            return self._raw_model
        return self.accelerator.unwrap_model(self.model)

    @property
    def is_main_process(self) -> bool:
        """Whether this process writes files and shows the progress bar."""
        return bool(self.accelerator.is_main_process)

    def _param_groups(
        self, model: nn.Module, param_groups: Sequence[dict[str, Any]] | None
    ) -> list[dict[str, Any]]:
        if param_groups is None:
            return default_param_groups(model, self.config.weight_decay)
        groups = []
        for i, group in enumerate(param_groups):
            if "params" not in group:
                raise ValueError(f"param_groups[{i}] has no 'params'")
            groups.append({**group, "params": list(group["params"])})
        covered = {id(p) for g in groups for p in g["params"]}
        left_out = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
        if left_out:
            logger.warning(
                "%d trainable parameters are in no param group and will not be trained, e.g. %s",
                len(left_out),
                left_out[:5],
            )
        return groups

    def _callback_keys(self) -> list[tuple[str, Callback]]:
        seen: dict[str, int] = {}
        keyed = []
        for cb in self.callbacks:
            base = cb.state_key or type(cb).__name__
            seen[base] = seen.get(base, 0) + 1
            keyed.append((base if seen[base] == 1 else f"{base}#{seen[base]}", cb))
        return keyed

    def _dispatch(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def _elapsed(self) -> float:
        return self._elapsed_before + (time.perf_counter() - self._session_t0)

    # ------------------------------------------------------------------ resume
    def _resume_checkpoint(
        self, resume: bool | str | os.PathLike
    ) -> tuple[LoadedCheckpoint | None, list[Path]]:
        """The checkpoint to resume from, and the newer unreadable folders that were skipped."""
        out_dir = self.out_dir
        if resume is False:
            if out_dir is not None:
                latest = latest_checkpoint(out_dir)
                if latest is not None:
                    raise RunFolderExistsError(
                        f"{out_dir} already holds checkpoints (latest {latest}); fit(resume=True) continues "
                        "that run, fit(fresh=True) moves it aside and starts over, or choose a new or "
                        "empty out_dir"
                    )
                finished = [
                    n for n in previous_run_artifacts(out_dir) if n in (*FINISHED_ARTIFACTS, CHECKPOINTS_DIR)
                ]
                if finished:
                    raise RunFolderExistsError(
                        f"{out_dir} holds an earlier run ({', '.join(finished)}); fit(fresh=True) moves it "
                        "aside and starts over, or choose a new or empty out_dir"
                    )
            return None, []
        if resume is not True and resume != "force":
            return read_checkpoint(resume), []  # an explicit folder: errors are the caller's to see
        if out_dir is None:
            return None, []
        unreadable: list[tuple[Path, str]] = []
        ckpt = find_resumable_checkpoint(out_dir, warn=self.is_main_process, unreadable=unreadable)
        if ckpt is None:
            found = previous_run_artifacts(out_dir)
            finished = [n for n in found if n in (*FINISHED_ARTIFACTS, CHECKPOINTS_DIR)]
            if finished:
                why = (
                    "; ".join(f"{p.name}: {reason}" for p, reason in unreadable[:2])
                    if unreadable
                    else "no checkpoint folder"
                )
                raise RunFolderError(
                    f"{out_dir} holds an earlier run ({', '.join(finished)}) but no usable checkpoint to "
                    f"resume from ({why}); starting over would replace it. Pass fresh=True (CLI: --fresh) to "
                    f"move it aside into {out_dir.name}.old-<timestamp>/ and start over, or choose another "
                    "out_dir"
                )
            if found and self.is_main_process:
                logger.warning(
                    "%s holds an earlier attempt that saved no checkpoint (%s); starting over",
                    out_dir,
                    ", ".join(found),
                )
        return ckpt, [p for p, _ in unreadable]

    def _check_moment_shapes(self, source: Path) -> None:
        """Every per-parameter optimizer tensor (``exp_avg``, ``exp_avg_sq``, a momentum buffer) has its
        parameter's shape: a misshapen one would crash mid-step, after the run had resumed."""
        for group in self.optimizer.param_groups:
            for param in group["params"]:
                for name, value in self.optimizer.state.get(param, {}).items():
                    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                        raise CheckpointError(
                            f"checkpoint {source}: optimizer state {name!r} has shape {tuple(value.shape)} for a "
                            f"parameter of shape {tuple(param.shape)}"
                        )

    def _restore(self, ckpt: LoadedCheckpoint, force: bool = False) -> None:
        """Apply a checkpoint read into memory; everything is checked before anything is changed.

        Args:
            ckpt: The checkpoint.
            force: Accept a different seed, ``run_data`` or model config (the model type and the
                tensor shapes must still match).
        """
        ts = ckpt.trainer_state
        if force:
            if ckpt.model_meta["model_type"] != self._raw_model.model_type:
                check_model_matches(ckpt, self._raw_model)  # raises the model-type message
        else:
            check_model_matches(ckpt, self._raw_model)
            saved_seed = ts.get("seeding", {}).get("seed")
            if saved_seed is not None and saved_seed != self.config.seed:
                raise RunFolderError(
                    f"{ckpt.path} was trained with seed {saved_seed}, this run has seed {self.config.seed}: "
                    "resuming would mix two runs. Use the same seed, another out_dir, fresh=True (CLI: "
                    "--fresh) to start over, or resume='force' (CLI: --force-resume) to continue anyway"
                )
            self._check_run_data(ckpt)
        saved_groups = ckpt.optimizer_state.get("param_groups", [])
        ours = [len(g["params"]) for g in self.optimizer.param_groups]
        theirs = [len(g.get("params", [])) for g in saved_groups]
        if ours != theirs:
            raise CheckpointError(
                f"checkpoint {ckpt.path}: optimizer parameter groups differ (checkpoint sizes {theirs}, "
                f"trainer {ours}); resume with the same param_groups"
            )
        ts = ckpt.trainer_state
        states = ts.get("callbacks", {})
        self._raw_model.load_state_dict_checked(ckpt.model_state, source=str(ckpt.path))
        try:
            self.optimizer.load_state_dict(ckpt.optimizer_state)
            if ckpt.scheduler_state is not None:
                self.scheduler.load_state_dict(ckpt.scheduler_state)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"checkpoint {ckpt.path}: the optimizer/scheduler state does not fit this trainer ({exc})"
            ) from exc
        self._check_moment_shapes(ckpt.path)
        self.step = ckpt.step
        self.nonfinite_steps = int(ts.get("nonfinite_steps", 0))
        self.nonfinite_in_row = int(ts.get("nonfinite_in_row", 0))
        self._elapsed_before = float(ts.get("elapsed_s", 0.0))
        self.last_metrics = dict(ts.get("metrics", {}))
        self.last_eval_metrics = dict(ts.get("eval_metrics", {}))
        self._last_eval_step = ts.get("last_eval_step")  # None in checkpoints written before it was kept
        self._last_save_step = ckpt.step
        self.last_checkpoint = ckpt.path
        for key, cb in self._callback_keys():
            if key in states:
                try:
                    cb.load_state_dict(states[key])
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    raise CheckpointError(
                        f"checkpoint {ckpt.path}: callback {key}'s state is malformed ({exc})"
                    ) from exc
            else:
                logger.warning("checkpoint %s has no state for callback %s; it starts fresh", ckpt.path, key)
        old_cfg = ts.get("train_config", {})
        changed = sorted(
            k for k, v in self.config.to_dict().items() if k in old_cfg and not _json_eq(old_cfg[k], v)
        )
        if changed:
            logger.warning(
                "resuming %s with a changed TrainConfig: %s",
                ckpt.path,
                ", ".join(f"{k}={old_cfg[k]!r}->{getattr(self.config, k)!r}" for k in changed),
            )
        world = ts.get("seeding", {}).get("world_size")
        if world is not None and world != self.accelerator.num_processes:
            logger.warning(
                "checkpoint was written with %s processes, resuming with %s: not an exact resume",
                world,
                self.accelerator.num_processes,
            )
        logger.info("resumed from %s after step %d", ckpt.path, ckpt.step)

    def _check_run_data(self, ckpt: LoadedCheckpoint) -> None:
        """Refuse a resume whose ``run_data`` (data spec, image size ...) differs from the saved one."""
        if self.run_data is None:
            return
        saved = ckpt.trainer_state.get("run_data")
        if saved is None and self.out_dir is not None and (self.out_dir / DATA_NAME).is_file():
            with contextlib.suppress(CheckpointError):
                saved = read_json(self.out_dir / DATA_NAME)  # checkpoints written before run_data
        if not isinstance(saved, dict):
            return
        saved = _json_normalise(saved)
        keys = sorted(set(saved) | set(self.run_data))
        diff = [
            f"{k}: saved {saved.get(k, '<absent>')!r} vs now {self.run_data.get(k, '<absent>')!r}"
            for k in keys
            if saved.get(k, "<absent>") != self.run_data.get(k, "<absent>")
        ]
        if diff:
            raise RunFolderError(
                f"{ckpt.path} was trained on other data ({'; '.join(diff[:4])}): resuming would mix two runs. "
                "Use the same data, another out_dir, fresh=True (CLI: --fresh) to start over, or "
                "resume='force' (CLI: --force-resume) to continue anyway"
            )

    # ------------------------------------------------------------------ state / checkpoints
    def trainer_state(self) -> dict[str, Any]:
        """The JSON-able state written as ``trainer_state.json`` into every checkpoint."""
        from pentachora import __version__

        return {
            "format": TRAINER_STATE_FORMAT,
            "step": self.step,
            "nonfinite_steps": self.nonfinite_steps,
            "nonfinite_in_row": self.nonfinite_in_row,
            "elapsed_s": self._elapsed(),
            "seeding": {
                "seed": self.config.seed,
                "scheme": SEEDING_SCHEME,
                "world_size": self.accelerator.num_processes,
            },
            "callbacks": {key: cb.state_dict() for key, cb in self._callback_keys()},
            "metrics": clean_record(self.last_metrics),
            "eval_metrics": clean_record(self.last_eval_metrics),
            "last_eval_step": self._last_eval_step,
            "train_config": self.config.to_dict(),
            "run_data": self.run_data,
            "model_type": self._raw_model.model_type,
            "pentachora_version": __version__,
        }

    def save_checkpoint(self) -> Path | None:
        """Write ``out_dir/checkpoints/step-XXXXXXX`` (main process) and prune old ones.

        Returns:
            The checkpoint folder, or ``None`` without ``out_dir``.
        """
        out_dir = self.out_dir
        if out_dir is None:
            return None
        path = out_dir / CHECKPOINTS_DIR / checkpoint_name(self.step)
        if self.is_main_process:
            write_checkpoint(
                out_dir / CHECKPOINTS_DIR,
                self.step,
                self.unwrapped_model,
                self.trainer_state(),
                self.optimizer.state_dict(),
                self.scheduler.state_dict(),
            )
            for old in prune_checkpoints(out_dir, self.config.keep_last_checkpoints):
                logger.debug("pruned checkpoint %s", old)
        self.accelerator.wait_for_everyone()
        self.last_checkpoint = path
        self._last_save_step = self.step
        return path

    def _write_run_configs(self) -> None:
        from pentachora import __version__

        out_dir = self.out_dir
        if out_dir is None or not self.is_main_process:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / TRAIN_CONFIG_NAME, self.config.to_dict())
        model = self._raw_model
        atomic_write_json(
            out_dir / MODEL_CONFIG_NAME,
            {
                "model_type": model.model_type,
                "pentachora_version": __version__,
                "config": config_to_dict(model.config),
            },
        )
        if self.run_data is not None:
            atomic_write_json(out_dir / DATA_NAME, self.run_data)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        """Run ``eval_fn`` now (no-grad, eval mode), log an ``"eval"`` record and call ``on_eval``.

        Returns:
            The metrics as floats (empty without ``eval_fn``).
        """
        if self.eval_fn is None:
            return {}
        model = self.unwrapped_model
        was_training = model.training
        model.eval()
        torch.manual_seed(
            step_seed(self.config.seed, self.step, self.accelerator.process_index, salt=EVAL_SALT)
        )
        try:
            with torch.no_grad():
                raw = self.eval_fn(model)
        finally:
            model.train(was_training)
        metrics = {str(k): float(v) for k, v in dict(raw).items()}
        self.last_eval_metrics = metrics
        self._last_eval_step = self.step
        if self._metrics_logger is not None:
            self._metrics_logger.write(
                {"split": "eval", "step": self.step, "time": self._elapsed(), **metrics}
            )
        if self.is_main_process:
            logger.info("eval after step %d: %s", self.step, _fmt(metrics))
        self._dispatch("on_eval", self.step, metrics)
        return metrics

    def log_metrics(self, step: int, scalars: Mapping[str, Any], split: str = "train") -> None:
        """Write one record ``{"split", "step", "time", **scalars}`` to ``metrics.jsonl`` and TensorBoard.

        For callbacks that measure on their own schedule (e.g. every K steps, whatever ``log_every``
        is); records of any split are dropped like the others on resume. A no-op without ``out_dir``,
        outside :meth:`fit` and on non-main processes.
        """
        if self._metrics_logger is not None:
            self._metrics_logger.write(
                {"split": split, "step": int(step), "time": self._elapsed(), **scalars}
            )

    # ------------------------------------------------------------------ one step
    def _source_index(self, step: int) -> int:
        acc = self.accelerator
        return (step - 1) * acc.num_processes + acc.process_index + 1

    def _check_batch(self, batch: Any) -> None:
        if self._batch_checked:
            return
        self._batch_checked = True
        if (
            self.is_main_process
            and isinstance(batch, torch.Tensor)
            and batch.ndim > 0
            and batch.shape[0] != self.config.batch_size
        ):
            logger.warning(
                "the first batch has %d rows but TrainConfig.batch_size is %d (the source decides; "
                "the config value is only recorded)",
                batch.shape[0],
                self.config.batch_size,
            )

    def _reduce(self, scalars: dict[str, float]) -> dict[str, float]:
        acc = self.accelerator
        if acc.num_processes == 1 or not scalars:
            return scalars
        keys = sorted(scalars)  # the same order on every rank
        values = torch.tensor([scalars[k] for k in keys], dtype=torch.float64, device=acc.device)
        reduced = dict(zip(keys, acc.reduce(values, reduction="mean").tolist(), strict=True))
        return {k: float(reduced[k]) for k in scalars}

    def _clip_threshold(self, scalars: dict[str, float]) -> float:
        """The max-norm of this step: ``grad_clip`` (fixed), or ``max(loss part, grad_clip)`` (adaptive)."""
        cfg = self.config
        if not cfg.grad_clip:
            return math.inf
        if cfg.grad_clip_mode == "fixed":
            return float(cfg.grad_clip)
        if cfg.adaptive_clip_key not in scalars and not self._warned_clip_key:
            self._warned_clip_key = True
            logger.warning(
                "adaptive clip: the model output has no scalar %r (it has: %s); following 'loss' instead",
                cfg.adaptive_clip_key,
                ", ".join(sorted(scalars)),
            )
        followed = float(scalars.get(cfg.adaptive_clip_key, scalars["loss"]))
        # a non-finite followed value gives a NaN threshold, which the NaN/inf guard turns into a skip
        return max(followed, float(cfg.grad_clip)) if math.isfinite(followed) else math.nan

    def _train_step(self, step: int) -> tuple[dict[str, float], list[str]]:
        """Run step ``step``; return its scalars and what was non-finite (empty if the update ran)."""
        cfg, acc = self.config, self.accelerator
        self._step_consistent = False
        self._dispatch("on_step_start", step)
        batch = self.train_source.batch(self._source_index(step))
        self._check_batch(batch)
        from accelerate.utils import send_to_device

        batch = send_to_device(batch, acc.device)
        self.last_batch = batch
        self.last_step_seed = step_seed(cfg.seed, step, acc.process_index, salt=TRAIN_SALT)
        torch.manual_seed(self.last_step_seed)
        try:
            output = self.model(batch)
            loss = getattr(output, "loss", None)
            if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
                raise TypeError(
                    f"{type(self.unwrapped_model).__name__}(batch) must return a ModelOutput whose .loss is a "
                    f"0-d tensor; got {type(output).__name__} with loss={type(loss).__name__}"
                    + (f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else "")
                )
            acc.backward(loss)
            scalars = output.scalars() if hasattr(output, "scalars") else {}
            scalars.setdefault("loss", float(loss.detach().float()))
        except torch.linalg.LinAlgError as exc:
            # a decomposition of NaN/inf values (e.g. the SVD's eigh after NaN weights) fails instead of
            # returning NaN: the step is non-finite, and the NaN guard below skips and counts it
            if self.is_main_process:
                logger.warning("step %d: %s; treated as a non-finite loss", step, str(exc).splitlines()[0])
            self.optimizer.zero_grad(set_to_none=True)
            scalars = {"loss": math.nan}
        scalars = self._reduce(scalars)
        max_norm = self._clip_threshold(scalars)
        # clip at inf when the threshold is NaN: the norm is still measured and the step is skipped below
        norm = acc.clip_grad_norm_(
            self.model.parameters(), max_norm if not math.isnan(max_norm) else math.inf
        )
        grad_norm = float(norm) if norm is not None else math.nan
        lr = float(self.scheduler.get_last_lr()[0])
        nonfinite = [
            name for name, v in (("loss", scalars["loss"]), ("grad_norm", grad_norm)) if not math.isfinite(v)
        ]
        if math.isnan(max_norm):  # inf is a legitimate threshold (no clipping); NaN is not
            nonfinite.append("clip_threshold")
        if nonfinite:
            self.nonfinite_steps += 1
            self.nonfinite_in_row += 1
        else:
            self.optimizer.step()
            self.nonfinite_in_row = 0
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            if nonfinite:  # the schedule follows the step number, skipped or not
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            self.scheduler.step()
        self.step = step
        self.last_step_skipped = bool(nonfinite)
        out = {"lr": lr, **scalars, "grad_norm": grad_norm}
        if cfg.grad_clip_mode == "adaptive":
            out["clip_threshold"] = max_norm
        self._dispatch("on_step_end", step, out)
        self._step_consistent = True
        return out, nonfinite

    # ------------------------------------------------------------------ fit
    def fit(self, resume: bool | str | os.PathLike = True, fresh: bool = False) -> TrainResult:
        """Train until ``config.steps`` (or until a callback sets ``should_stop``).

        The run folder is locked for the whole call (``out_dir/.lock``): a second training on the
        same folder fails at once. Run metadata (``train_config.json``, ``model_config.json``,
        ``data.json``) is written only once the run is accepted. Temporary files left by an
        interrupted earlier write are deleted. Ctrl-C (SIGINT, single process) finishes the current
        step, writes a checkpoint there and re-raises ``KeyboardInterrupt``, so a rerun resumes at
        that step; a second Ctrl-C stops at once.

        Args:
            resume: ``True`` continues from the newest complete checkpoint in ``out_dir`` if there is
                one (corrupt or partial folders are skipped with a warning and renamed
                ``unreadable-step-…`` so nothing overwrites them); the seed, the model config and
                ``run_data`` must match the saved run. ``"force"`` resumes even if they differ
                (the model type and tensor shapes must still match). ``False`` starts fresh and
                refuses an ``out_dir`` that already holds checkpoints or a finished run. A path
                resumes from that checkpoint folder.
            fresh: Start over: move the earlier run's files (``train_config.json`` ... ``final/``,
                ``checkpoints/``) into a new sibling folder ``OUT.old-YYYYmmdd-HHMMSS/`` first.

        Returns:
            A :class:`TrainResult`.

        Raises:
            TrainingDiverged: after ``max_nonfinite_in_row`` consecutive non-finite steps.
            pentachora.errors.CheckpointError: the checkpoint to resume from belongs to another model
                type or config, or does not fit the optimizer.
            pentachora.errors.RunFolderError: ``out_dir`` is in use by another training; the saved run
                has another seed or ``run_data``; or it holds a finished run but no usable
                checkpoint (pass ``fresh=True``).
            FileExistsError: ``resume=False`` on an ``out_dir`` with checkpoints or a finished run
                (a :class:`~pentachora.training.state.RunFolderExistsError`).
        """
        if fresh and resume not in (True, False):
            raise ConfigError(
                "fit(fresh=True) starts over; it cannot be combined with resume='force' or a path"
            )
        out_dir = self.out_dir
        lock = (
            run_folder_lock(out_dir, enabled=self.is_main_process)
            if out_dir is not None
            else contextlib.nullcontext()
        )
        with lock:
            return self._fit(resume, fresh)

    def _fit(self, resume: bool | str | os.PathLike, fresh: bool) -> TrainResult:
        cfg, acc = self.config, self.accelerator
        self._session_t0 = time.perf_counter()
        out_dir = self.out_dir
        resumed_from = None
        if not self._prepared:
            if out_dir is not None and self.is_main_process:
                for path in clean_stale_temp_files(out_dir):
                    logger.warning("removed stale temporary checkpoint data %s (an interrupted save)", path)
            acc.wait_for_everyone()
            unreadable: list[Path] = []
            if fresh:
                if out_dir is not None and self.is_main_process:
                    moved = move_run_aside(out_dir)
                    if moved is not None:
                        logger.warning("fresh start: moved the earlier run in %s to %s", out_dir, moved)
                acc.wait_for_everyone()
                ckpt = None
            else:
                ckpt, unreadable = self._resume_checkpoint(resume)
            if ckpt is not None:
                self._restore(ckpt, force=resume == "force")
                resumed_from = ckpt.step
                acc.wait_for_everyone()
                if self.is_main_process:
                    for path in unreadable:
                        if path.exists():
                            kept = set_aside_unreadable(path)
                            logger.warning("kept the unreadable checkpoint %s as %s", path, kept)
            self.model, self.optimizer, self.scheduler = acc.prepare(
                self._raw_model, self.optimizer, self.scheduler
            )
            self._prepared = True
        self.start_step = self.step
        self.should_stop = False
        self._write_run_configs()
        if out_dir is not None and self.is_main_process:
            # a continuation keeps the records up to the current step and drops any later ones
            self._metrics_logger = MetricsLogger(
                out_dir, tensorboard=cfg.tensorboard, resume_step=self.step if self.step else None
            )
        from tqdm.auto import tqdm

        pbar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc="train",
            dynamic_ncols=True,
            disable=not (cfg.progress and self.is_main_process),
        )
        logger.info(
            "training %s (%d parameters) for steps %d..%d on %s, %d process(es), mixed_precision=%s, out_dir=%s",
            type(self._raw_model).__name__,
            self._raw_model.num_parameters(),
            self.step + 1,
            cfg.steps,
            acc.device,
            acc.num_processes,
            cfg.mixed_precision,
            out_dir,
        )
        self.model.train()
        self._interrupt_requested = False
        restore_sigint = self._install_sigint_handler()
        try:
            self._dispatch("on_train_start")
            for step in range(self.step + 1, cfg.steps + 1):
                scalars, nonfinite = self._train_step(step)
                self.last_nonfinite = tuple(nonfinite)
                self.last_metrics = scalars
                self._log_step(step, scalars, nonfinite, pbar)
                if (
                    nonfinite
                    and cfg.max_nonfinite_in_row
                    and self.nonfinite_in_row >= cfg.max_nonfinite_in_row
                ):
                    raise TrainingDiverged(
                        step,
                        ",".join(nonfinite),
                        self.nonfinite_in_row,
                        self.last_checkpoint,
                        cfg.max_nonfinite_in_row,
                    )
                if cfg.eval_every and step % cfg.eval_every == 0:
                    self.evaluate()
                if cfg.save_every and step % cfg.save_every == 0:
                    self.save_checkpoint()
                if self._interrupt_requested:
                    raise KeyboardInterrupt
                if self.should_stop:
                    logger.info("stopping after step %d (requested by a callback)", step)
                    break
            ran = self.step - self.start_step
            if ran > 0 and cfg.max_nonfinite_in_row and self.nonfinite_in_row >= ran:
                # every step was skipped: a run that trained nothing is not a success
                raise TrainingDiverged(
                    self.step,
                    ",".join(self.last_nonfinite or ("loss",)),
                    self.nonfinite_in_row,
                    self.last_checkpoint,
                    cfg.max_nonfinite_in_row,
                    every_step=True,
                )
            # the final evaluation, also when a kill came after the last checkpoint but before its record
            final_eval_missing = (
                self.eval_fn is not None and self.step > 0 and self._last_eval_step != self.step
            )
            if self.step > self.start_step or final_eval_missing:
                evaluated = final_eval_missing
                if evaluated:
                    self.evaluate()
                if self._last_save_step != self.step or evaluated:  # the checkpoint records the evaluation
                    self.save_checkpoint()
            self._dispatch("on_train_end")
        except KeyboardInterrupt:
            self._checkpoint_on_interrupt()
            raise
        finally:
            restore_sigint()
            pbar.close()
            if self._metrics_logger is not None:
                self._metrics_logger.close()
                self._metrics_logger = None
        return TrainResult(
            steps=self.step,
            nonfinite_steps=self.nonfinite_steps,
            wall_time_s=time.perf_counter() - self._session_t0,
            metrics=dict(self.last_metrics),
            eval_metrics=dict(self.last_eval_metrics),
            checkpoint=self.last_checkpoint,
            resumed_from=resumed_from,
            stopped_early=self.should_stop,
        )

    def _install_sigint_handler(self) -> Callable[[], None]:
        """Make the first Ctrl-C stop after the current step (single process, main thread, default
        handler only); returns the function that restores the previous handler."""
        if (
            self.accelerator.num_processes != 1
            or threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        ):
            return lambda: None

        def handler(signum: int, frame: Any) -> None:
            if self._interrupt_requested or self.out_dir is None:
                raise KeyboardInterrupt
            self._interrupt_requested = True
            logger.warning(
                "interrupted: finishing step %d, then saving a checkpoint (press Ctrl-C again to stop now)",
                self.step + 1,
            )

        signal.signal(signal.SIGINT, handler)

        def restore() -> None:
            if signal.getsignal(signal.SIGINT) is handler:
                signal.signal(signal.SIGINT, signal.default_int_handler)

        return restore

    def _checkpoint_on_interrupt(self) -> None:
        """On KeyboardInterrupt: save the current step if its state is whole, and say where a rerun resumes."""
        if self.out_dir is None or self.accelerator.num_processes != 1:
            return
        if self._step_consistent and self.step > (self._last_save_step or 0) and self.step > self.start_step:
            try:
                self.save_checkpoint()
            except Exception as exc:  # the interrupt matters more than the save
                logger.error("could not save a checkpoint after the interrupt: %s", exc)
        where = self.last_checkpoint
        logger.warning(
            "training interrupted after step %d; %s",
            self.step,
            f"a rerun with the same out_dir resumes from {where}"
            if where is not None
            else "no checkpoint was saved, a rerun starts over",
        )

    def _log_step(self, step: int, scalars: dict[str, float], nonfinite: list[str], pbar: Any) -> None:
        cfg = self.config
        if math.isfinite(scalars["grad_norm"]):
            self._gn_window.append(scalars["grad_norm"])
        if nonfinite and self.is_main_process:
            logger.warning(
                "step %d: non-finite %s; update skipped (%d in a row, %d in total)",
                step,
                " and ".join(nonfinite),
                self.nonfinite_in_row,
                self.nonfinite_steps,
            )
        pbar.update(1)
        if not (step % cfg.log_every == 0 or step == 1 or step == cfg.steps or nonfinite or self.should_stop):
            return
        record: dict[str, Any] = {"split": "train", "step": step, "time": self._elapsed(), **scalars}
        record["grad_norm_max"] = max(self._gn_window) if self._gn_window else math.nan
        record["nonfinite_steps"] = self.nonfinite_steps
        record["skipped"] = bool(nonfinite)
        if nonfinite:
            record["nonfinite"] = ",".join(nonfinite)
        self._gn_window = []
        if self._metrics_logger is not None:
            self._metrics_logger.write(record)
        if not pbar.disable:
            post = {"loss": scalars["loss"], "gn": scalars["grad_norm"], "lr": scalars["lr"]}
            extra = [k for k in scalars if k not in ("loss", "lr", "grad_norm")][:2]
            post.update({k: scalars[k] for k in extra})
            if self.nonfinite_steps:
                post["nonfinite"] = self.nonfinite_steps
            pbar.set_postfix(
                {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in post.items()}, refresh=False
            )
        elif self.is_main_process:
            logger.info("step %d/%d %s", step, cfg.steps, _fmt(scalars))


def _fmt(values: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def _json_eq(a: Any, b: Any) -> bool:
    return _json_normalise(a) == _json_normalise(b)


def _json_normalise(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, default=str))
