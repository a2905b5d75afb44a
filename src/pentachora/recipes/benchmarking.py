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
from pentachora.training import Callback, TrainConfig, Trainer

__all__ = [
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
    def _psnr(model: torch.nn.Module, tiles01: torch.Tensor) -> float:
        rec = torch.cat([model.reconstruct(to_model_space(t)) for t in tiles01.split(64)])
        return float(psnr(to_pixel_space(rec.float()), tiles01).clamp_max(100).mean())

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        model.eval()
        rec01 = to_pixel_space(
            torch.cat([model.reconstruct(to_model_space(t)) for t in self.tiles01.split(64)]).float()
        )
        out = {
            "psnr": float(psnr(rec01, self.tiles01).clamp_max(100).mean()),
            "mse": float((rec01 - self.tiles01).square().mean()),
        }
        if self.val01 is not None:
            out["psnr_val"] = self._psnr(model, self.val01)
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
