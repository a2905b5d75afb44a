"""What the image benchmarks share: their training mix, their evaluation, the one training path, and the rule
that chooses options on validation data.

Every script under ``benchmarks/`` is a thin layer over the recipes; the pieces more than one of them
needs live here (and in :mod:`pentachora.recipes.reporting`, which writes results with their command and
computed verdicts), so no benchmark imports another.

* :class:`MixedSource` — photo crops and noise in one batch, a pure function of ``(seed, step)``.
* :class:`PhotoEvalSet` — held-out photo tiles (and optionally validation tiles) and noise batches.
* :func:`train_eval` — train one model with the one :class:`~pentachora.training.Trainer` on the mix,
  evaluating on a schedule (:class:`TimedEvaluation`) outside the timed part.
* :func:`reach`, :func:`eval_schedule`, :func:`machine_info`, :func:`strip_models` — curve and record helpers.
* :class:`BudgetSettings`, :class:`BudgetRunner`, :func:`train_interleaved` — equal budgets (process
  CPU seconds, wall seconds or steps), contenders trained round-robin in chunks so that they share the
  machine's load, each charged only its own chunks.
* :func:`choose_on_validation` — the one rule for picking an option from validation scores.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from pentachora.data import (
    CURRICULUM_TIERS,
    NOISE_TYPES,
    ImageCropSource,
    NoiseSource,
    heldout_tiles,
    load_sample_photos,
    noise_eval_sets,
    psnr,
    to_model_space,
    to_pixel_space,
)
from pentachora.modeling import PentachoraModel
from pentachora.training import Callback, TrainConfig, Trainer, TrainingDiverged

__all__ = [
    "BudgetRunner",
    "BudgetSettings",
    "MixedSource",
    "PhotoEvalSet",
    "TimedEvaluation",
    "TrainEvalSettings",
    "choose_on_validation",
    "eval_schedule",
    "machine_info",
    "reach",
    "strip_models",
    "train_eval",
    "train_interleaved",
    "train_steps",
]

K = TypeVar("K", bound=Hashable)


class MixedSource:
    """Photo crops and noise in one batch, a pure function of ``(seed, step)``.

    ``batch(step)`` = ``n_photo`` crops of the training photos (model space) followed by
    ``n_noise`` images of the 16 noise types (uniformly mixed), concatenated: ``(B, 3, S, S)``.
    """

    def __init__(
        self, batch_size: int, image_size: int, noise_fraction: float, heavy_tails: str, seed: int
    ) -> None:
        if not 0.0 <= noise_fraction <= 1.0:
            raise ValueError(f"noise_fraction must be in [0, 1], got {noise_fraction}")
        self.n_noise = round(batch_size * noise_fraction)
        self.n_photo = batch_size - self.n_noise
        self.photos = (
            ImageCropSource(load_sample_photos("train"), image_size, self.n_photo, seed=seed)
            if self.n_photo
            else None
        )
        self.noise = (
            NoiseSource(NOISE_TYPES, self.n_noise, image_size, seed=seed + 1, heavy_tails=heavy_tails)
            if self.n_noise
            else None
        )

    def batch(self, step: int) -> torch.Tensor:
        parts = [s.batch(step) for s in (self.photos, self.noise) if s is not None]
        return torch.cat(parts)


class PhotoEvalSet:
    """Fixed held-out photo tiles (pixel space) and noise batches per type (model space).

    With ``validation=True`` also tiles of the validation photos, scored as ``psnr_val``: options are
    chosen there, the held-out ``psnr`` is what gets reported.
    """

    def __init__(
        self, image_size: int, tiles_per_image: int, noise_per_type: int, seed: int, validation: bool = False
    ) -> None:
        self.tiles01 = heldout_tiles(load_sample_photos("heldout"), image_size, max_per_image=tiles_per_image)
        self.val01 = (
            heldout_tiles(load_sample_photos("validation"), image_size, max_per_image=tiles_per_image)
            if validation
            else None
        )
        self.noise = noise_eval_sets(
            NOISE_TYPES, noise_per_type, image_size, seed=seed + 7, heavy_tails="clamp"
        )

    @staticmethod
    def _reconstruct01(model: torch.nn.Module, tiles01: torch.Tensor) -> torch.Tensor:
        """The model's reconstruction of pixel-space tiles, back in pixel space (batches of 64)."""
        rec = torch.cat([model.reconstruct(to_model_space(t)) for t in tiles01.split(64)])
        return to_pixel_space(rec.float())

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        model.eval()
        rec01 = self._reconstruct01(model, self.tiles01)
        out = {
            "psnr": float(psnr(rec01, self.tiles01).clamp_max(100).mean()),
            "mse": float((rec01 - self.tiles01).square().mean()),
        }
        if self.val01 is not None:
            val01 = self._reconstruct01(model, self.val01)
            out["psnr_val"] = float(psnr(val01, self.val01).clamp_max(100).mean())
        per_type = {
            k: float((model.reconstruct(x).float() - x).square().mean()) for k, x in self.noise.items()
        }
        for tier, types in CURRICULUM_TIERS.items():
            out[f"tier{tier}_mse"] = statistics.mean(per_type[t] for t in types)
        out["noise_mse"] = statistics.mean(per_type.values())
        return out


class TimedEvaluation(Callback):
    """Accumulates pure training time (batch + step) and evaluates at the steps of ``schedule``.

    Evaluation runs outside the timed part, in eval mode without gradients (train mode restored).
    """

    def __init__(self, evaluator: Callable[[torch.nn.Module], dict[str, float]], schedule: set[int]) -> None:
        self.evaluator = evaluator
        self.schedule = schedule
        self.train_s = 0.0
        self._t0 = 0.0
        self.curve: list[dict[str, float]] = []

    def on_step_start(self, trainer: Trainer, step: int) -> None:
        self._t0 = time.perf_counter()

    def on_step_end(self, trainer: Trainer, step: int, output_scalars: dict[str, float]) -> None:
        self.train_s += time.perf_counter() - self._t0
        if step in self.schedule:
            model = trainer.unwrapped_model
            was = model.training
            with torch.no_grad():
                metrics = self.evaluator(model)
            model.train(was)
            self.curve.append({"step": step, "train_s": self.train_s, **metrics})


def eval_schedule(steps: int, early: int, every: int) -> set[int]:
    """Every ``early`` steps up to 50 (the transfer happens early), then every ``every``, and the end."""
    return set(range(early, min(50, steps) + 1, early)) | set(range(every, steps + 1, every)) | {steps}


@dataclass(frozen=True)
class TrainEvalSettings:
    """What :func:`train_eval` needs besides the model: the mix, the optimiser, the evaluation schedule."""

    batch_size: int
    image_size: int
    noise_fraction: float
    lr: float
    seed: int
    eval_early: int
    eval_every: int
    progress: bool = False

    @classmethod
    def from_namespace(cls, args: Any) -> TrainEvalSettings:
        """From a benchmark's parsed arguments (fields of the same names)."""
        return cls(**{f: getattr(args, f) for f in cls.__dataclass_fields__ if hasattr(args, f)})


KEEP_SCALARS = ("route_entropy", "route_active", "route_scale", "cv_anchor", "cv_enc", "kl", "recon_loss")


def train_eval(
    model: PentachoraModel,
    settings: TrainEvalSettings,
    steps: int,
    evaluator: Callable[[torch.nn.Module], dict[str, float]],
    align_fraction: float | None = None,
    callbacks: tuple[Callback, ...] = (),
) -> dict[str, Any]:
    """Train ``model`` for ``steps`` with the one Trainer on :class:`MixedSource`; evaluate on the schedule.

    Args:
        model: Any pentachora model (its ``forward`` returns a loss).
        settings: Batch, crop size, noise fraction, lr, seed, evaluation schedule.
        steps: Optimiser steps (warm-up 5 %, grad-clip 1.0, cosine).
        evaluator: ``model -> {metric: value}``, called in eval mode without gradients.
        align_fraction: GeoVAE-family models: the geometry-first CV schedule
            (:func:`~pentachora.recipes.batteries.container_phases`: alignment weights for this fraction of
            the steps, then the hand-off weights); ``None`` trains on the model's own weights.
        callbacks: More Trainer callbacks.

    Returns:
        ``params``, ``steps``, ``nonfinite_steps``, ``train_s`` (pure training seconds), ``s_per_step``,
        ``final`` (the last evaluation), ``curve`` (every evaluation with its step and seconds) and
        ``last_scalars`` (a few of the model's own scalars at the last step).
    """
    rec = TimedEvaluation(evaluator, eval_schedule(steps, settings.eval_early, settings.eval_every))
    source = MixedSource(
        settings.batch_size, settings.image_size, settings.noise_fraction, "clamp", settings.seed
    )
    cfg = TrainConfig(
        steps=steps,
        batch_size=settings.batch_size,
        lr=settings.lr,
        warmup_steps=max(1, steps // 20),
        grad_clip=1.0,
        seed=settings.seed,
        eval_every=0,
        log_every=max(1, steps // 10),
        out_dir=None,
        progress=settings.progress,
        tensorboard=False,
    )
    if align_fraction is not None:
        from pentachora.recipes.batteries import container_phases

        callbacks = (container_phases(steps, align_fraction), *callbacks)
    trainer = Trainer(model, cfg, source, callbacks=[*callbacks, rec])
    res = trainer.fit(resume=False)
    last = trainer.last_metrics
    return {
        "params": model.num_parameters(),
        "steps": res.steps,
        "nonfinite_steps": res.nonfinite_steps,
        "train_s": rec.train_s,
        "s_per_step": rec.train_s / max(res.steps, 1),
        "final": {k: v for k, v in rec.curve[-1].items() if k not in ("step", "train_s")},
        "curve": rec.curve,
        "last_scalars": {k: float(last[k]) for k in KEEP_SCALARS if k in last},
    }


def train_steps(
    model: torch.nn.Module, config: TrainConfig, source: Any, callbacks: tuple[Callback, ...] = ()
) -> dict[str, Any]:
    """Train for ``config.steps`` with the one Trainer (no resume); a divergence is recorded, not raised.

    Returns:
        ``steps`` and ``nonfinite_steps`` done, ``diverged`` (the :class:`TrainingDiverged` message or
        ``None``), ``train_wall_s``, ``last`` (the last logged float scalars) and ``trainer``.
    """
    trainer = Trainer(model, config, source, callbacks=list(callbacks))
    t0 = time.perf_counter()
    diverged = None
    try:
        result = trainer.fit(resume=False)
        steps, nonfinite = result.steps, result.nonfinite_steps
    except TrainingDiverged as exc:
        diverged = str(exc)
        steps, nonfinite = trainer.step, trainer.nonfinite_steps
    return {
        "steps": steps,
        "nonfinite_steps": nonfinite,
        "diverged": diverged,
        "train_wall_s": time.perf_counter() - t0,
        "last": {k: v for k, v in trainer.last_metrics.items() if isinstance(v, float)},
        "trainer": trainer,
    }


def reach(curve: list[dict[str, float]], metric: str, target: float) -> tuple[int | None, float | None]:
    """First evaluation step (and training seconds) at which ``metric`` reaches ``target`` (PSNR-like
    metrics, named ``psnr…``, upward; everything else downward)."""
    higher = metric.startswith("psnr")
    for row in curve:
        v = row[metric]
        if (v >= target) if higher else (v <= target):
            return int(row["step"]), float(row["train_s"])
    return None, None


def choose_on_validation(
    scores: Mapping[K, float], higher_is_better: bool = True, usable: Callable[[K], bool] | None = None
) -> K | None:
    """The option with the best finite validation score (``None`` when no option is usable).

    Ties go to the first option in ``scores``' order, so list the cheaper / default option first.
    ``usable`` rules options out (e.g. runs with non-finite steps).
    """
    best: K | None = None
    for key, value in scores.items():
        if not math.isfinite(value) or (usable is not None and not usable(key)):
            continue
        if best is None or (value > scores[best] if higher_is_better else value < scores[best]):
            best = key
    return best


def machine_info() -> dict[str, Any]:
    """Python, torch, platform, cores, torch threads and the load average at the start."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if hasattr(os, "getloadavg"):
        info["loadavg_at_start"] = os.getloadavg()
    return info


def strip_models(obj: Any) -> Any:
    """``obj`` without its ``model`` / ``module`` entries (at any depth), for a results JSON."""
    if isinstance(obj, dict):
        return {k: strip_models(v) for k, v in obj.items() if k not in ("model", "module")}
    if isinstance(obj, list):
        return [strip_models(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------------- equal budgets
@dataclass(frozen=True)
class BudgetSettings:
    """How contenders share an equal budget.

    Attributes:
        budget: Per contender (and seed): CPU seconds, wall seconds or optimiser steps (``kind``).
        kind: ``"cpu"`` (``time.process_time``: barely changed by other processes' load when the
            process runs one torch thread), ``"wall"`` or ``"steps"``.
        warmup_fraction: Linear warm-up over this fraction of the budget used.
        schedule: ``"cosine"`` (to 0 at the budget's end) or ``"constant"`` after warm-up.
        grad_clip: Global norm clip (0 disables it and only measures the norm).
        align_fraction: GeoVAE-family models use the alignment CV weights for this fraction of their
            budget, then the hand-off weights (the recipe's schedule); ``align_of`` overrides it per name.
        chunk_steps: Steps a contender takes before the next one's turn.
        curve_points: Evaluations per contender at equal fractions of the budget (0: none).
    """

    budget: float
    kind: str = "cpu"
    warmup_fraction: float = 0.05
    schedule: str = "cosine"
    grad_clip: float = 1.0
    align_fraction: float = 0.1
    align_of: tuple[tuple[str, float], ...] = ()
    chunk_steps: int = 10
    curve_points: int = 8

    def __post_init__(self) -> None:
        if self.kind not in ("cpu", "wall", "steps"):
            raise ValueError(f"kind must be 'cpu', 'wall' or 'steps', got {self.kind!r}")
        if not (self.budget > 0 and math.isfinite(self.budget)):
            raise ValueError(f"budget must be a positive number, got {self.budget}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")


class BudgetRunner:
    """One contender in an interleaved budget run: model, AdamW, step count, charged time, curve."""

    def __init__(self, name: str, model: torch.nn.Module, lr: float, settings: BudgetSettings) -> None:
        from pentachora.training.loop import default_param_groups

        self.name, self.model, self.lr, self.settings = name, model, lr, settings
        self.opt = torch.optim.AdamW(default_param_groups(model, 0.01), lr=lr)
        self.step = 0
        self.cpu_s = 0.0
        self.wall_s = 0.0
        self.nonfinite = 0
        self.curve: list[dict[str, float]] = []
        self.max_z_std = 0.0
        self.max_kl = 0.0
        self.phase: str | None = None
        self.align_fraction = dict(settings.align_of).get(name, settings.align_fraction)

    @property
    def used(self) -> float:
        """Budget used: CPU seconds, wall seconds or steps (per ``settings.kind``)."""
        return {"cpu": self.cpu_s, "wall": self.wall_s, "steps": float(self.step)}[self.settings.kind]

    @property
    def done(self) -> bool:
        return self.used >= self.settings.budget

    def _lr_factor(self) -> float:
        frac = min(1.0, self.used / self.settings.budget)
        warm = self.settings.warmup_fraction
        if warm > 0 and frac < warm:
            return max(frac / warm, 0.02)
        if self.settings.schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (frac - warm) / max(1e-9, 1 - warm)))

    def _geo_phase(self) -> None:
        from pentachora.autoencoders.geovae import GeoVAE
        from pentachora.recipes.autoencoders import GEOVAE_ALIGN_WEIGHTS, GEOVAE_HANDOFF_WEIGHTS

        if not isinstance(self.model, GeoVAE):
            return
        phase = "align" if self.used < self.align_fraction * self.settings.budget else "handoff"
        if phase != self.phase:
            self.model.set_loss_weights(
                **(GEOVAE_ALIGN_WEIGHTS if phase == "align" else GEOVAE_HANDOFF_WEIGHTS)
            )
            self.phase = phase

    def run_chunk(self, source: Any, n: int, device: torch.device) -> None:
        """Up to ``n`` steps on ``source.batch(step)`` (fewer when the budget runs out)."""
        self.model.train()
        for _ in range(n):
            if self.done:
                return
            self._geo_phase()
            batch = source.batch(self.step + 1).to(device)
            c0, w0 = time.process_time(), time.perf_counter()
            for g in self.opt.param_groups:
                g["lr"] = self.lr * self._lr_factor()
            out = self.model(batch)
            loss = out.loss
            self.opt.zero_grad(set_to_none=True)
            ok = bool(torch.isfinite(loss))
            if ok:
                loss.backward()
                params = [p for p in self.model.parameters() if p.grad is not None]
                if self.settings.grad_clip > 0:
                    gn = torch.nn.utils.clip_grad_norm_(params, self.settings.grad_clip)
                else:
                    gn = torch.sqrt(sum(p.grad.float().square().sum() for p in params))
                ok = bool(torch.isfinite(gn))
            if ok:
                self.opt.step()
            else:
                self.nonfinite += 1
            if device.type == "cuda":
                torch.cuda.synchronize()
            self.cpu_s += time.process_time() - c0
            self.wall_s += time.perf_counter() - w0
            self.step += 1
            z = getattr(out, "z_std", None)
            if z is not None and torch.isfinite(z):
                self.max_z_std = max(self.max_z_std, float(z.detach()))
            kl = getattr(out, "kl", None)
            if kl is not None and torch.isfinite(kl):
                self.max_kl = max(self.max_kl, float(kl.detach()))


def train_interleaved(
    factories: Mapping[str, Callable[[], torch.nn.Module]],
    lrs: Mapping[str, float],
    source_fn: Callable[[], Any],
    settings: BudgetSettings,
    device: torch.device,
    seed: int,
    curve_metric: Callable[[torch.nn.Module], float] | None = None,
    progress: Callable[[dict[str, BudgetRunner]], None] | None = None,
) -> dict[str, BudgetRunner]:
    """Build every contender (``torch.manual_seed(seed)`` before each), then train them round-robin until
    each has used ``settings.budget``.

    Args:
        factories: ``name -> () -> model`` (a model's ``forward(batch)`` returns ``.loss``).
        lrs: Peak learning rate per name.
        source_fn: Builds the batch source (``batch(step)``), shared by every contender.
        settings: The budget and schedule.
        device: Where to train.
        seed: Seeds each model's initial weights.
        curve_metric: ``model -> value`` recorded ``settings.curve_points`` times per contender (at equal
            fractions of the budget) as ``curve[i]["psnr"]`` with the step and the charged seconds.
        progress: Called after every round (e.g. to log).
    """
    runners = {}
    for name, factory in factories.items():
        torch.manual_seed(seed)
        runners[name] = BudgetRunner(name, factory().to(device), lrs[name], settings)
    source = source_fn()
    marks = [settings.budget * (i + 1) / settings.curve_points for i in range(settings.curve_points)]
    next_mark = dict.fromkeys(runners, 0)
    while not all(r.done for r in runners.values()):
        for name, r in runners.items():
            if r.done:
                continue
            r.run_chunk(source, settings.chunk_steps, device)
            while (
                curve_metric is not None
                and next_mark[name] < len(marks)
                and (r.used >= marks[next_mark[name]] or r.done)
            ):
                r.curve.append(
                    {"step": r.step, "cpu_s": r.cpu_s, "wall_s": r.wall_s, "psnr": curve_metric(r.model)}
                )
                next_mark[name] += 1
        if progress is not None:
            progress(runners)
    return runners
