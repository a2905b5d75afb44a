"""Recipes: glue that trains and evaluates a model on a data spec with the one trainer.

Models do not import training and the trainer does not know models; a recipe is where the two
meet for a task (here: patch autoencoders on images or noise). The CLI, ``pentachora demo`` and the
benchmarks all go through :func:`train_autoencoder`, so they train the same way.

Run folder written by :func:`train_autoencoder`::

    OUT/train_config.json  model_config.json  data.json      resolved configuration
    OUT/metrics.jsonl      OUT/tensorboard/                  training + evaluation metrics
    OUT/checkpoints/step-XXXXXXX/                            resumable checkpoints
    OUT/final/             config.json + model.safetensors   the trained model (load_run_model(OUT))
    OUT/eval.json          final evaluation (held-out PSNR/SSIM, per-noise MSE, readouts)
    OUT/reconstructions.png  OUT/curves.png                  pictures
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pentachora.data.noise import NOISE_TYPES
from pentachora.data.spec import DataSpec, parse_data_spec
from pentachora.diagnostics.nonfinite import NonFiniteOriginCallback
from pentachora.errors import ConfigError
from pentachora.io import atomic_write_json
from pentachora.modeling import PentachoraModel
from pentachora.recipes.evaluation import EvalData, evaluate_autoencoder, make_eval_data
from pentachora.recipes.loading import FINAL_DIR
from pentachora.training import (
    METRICS_NAME,
    Callback,
    PhaseCallback,
    SoftHandCallback,
    TrainConfig,
    Trainer,
    TrainResult,
    read_metrics,
)
from pentachora.training.state import is_main_process, run_folder_lock

__all__ = [
    "FINAL_DIR",
    "GEOVAE_ALIGN_WEIGHTS",
    "GEOVAE_HANDOFF_WEIGHTS",
    "AutoencoderRun",
    "build_eval_data",
    "geovae_schedule",
    "train_autoencoder",
]

logger = logging.getLogger(__name__)


#: GeoVAE's per-sector CV weights: geometry first (alignment phase), then the hand-off.
GEOVAE_ALIGN_WEIGHTS = {
    "cv_enc_weight": 1.0,
    "cv_inv_weight": 1.0,
    "cv_lat_weight": 0.1,
    "cv_dec_weight": 0.1,
}
GEOVAE_HANDOFF_WEIGHTS = {
    "cv_enc_weight": 0.1,
    "cv_inv_weight": 0.1,
    "cv_lat_weight": 0.01,
    "cv_dec_weight": 0.01,
}


def geovae_schedule(
    steps: int,
    align: dict[str, float] | None = None,
    handoff: dict[str, float] | None = None,
    align_fraction: float = 0.1,
) -> PhaseCallback:
    """GeoVAE's CV schedule as a :class:`PhaseCallback`: the alignment phase for the first
    ``align_fraction`` of the steps, then the hand-off weights (the seeds used 20 then 10 on one
    sector; GeoVAE's loss is normalised per sector, see ``benchmarks/autoencoders.py``)."""
    if not (isinstance(align_fraction, (int, float)) and 0.0 <= align_fraction <= 1.0):
        raise ConfigError(f"align_fraction must be a number in [0, 1], got {align_fraction!r}")
    hand = max(1, round(steps * align_fraction))
    return PhaseCallback(
        [(0, dict(align or GEOVAE_ALIGN_WEIGHTS)), (hand + 1, dict(handoff or GEOVAE_HANDOFF_WEIGHTS))]
    )


@dataclass
class AutoencoderRun:
    """The outcome of :func:`train_autoencoder`."""

    name: str
    model: PentachoraModel
    result: TrainResult
    evaluation: dict[str, float]
    out_dir: Path | None
    metrics: list[dict[str, Any]] = field(default_factory=list)


def build_eval_data(
    data: DataSpec,
    image_size: int,
    noise_types: tuple[str, ...] = NOISE_TYPES,
    n_noise_per_type: int = 16,
    heavy_tails: str | None = None,
    max_tiles_per_image: int | None = None,
    seed: int = 0,
) -> EvalData:
    """Held-out tiles of the spec's held-out images (if any) plus fixed batches of each noise type.

    Noise evaluation uses the spec's heavy-tail mode for noise specs, ``clamp`` otherwise (unless
    ``heavy_tails`` is given). Noise images are ``image_size`` pixels square.
    """
    held = data.eval_images()
    tails = heavy_tails or (data.heavy_tails if data.is_noise else "clamp")
    return make_eval_data(
        held,
        tile=image_size,
        noise_types=tuple(noise_types),
        n_noise_per_type=n_noise_per_type,
        noise_size=image_size,
        heavy_tails=tails,
        seed=seed,
        max_tiles_per_image=max_tiles_per_image,
    )


def train_autoencoder(
    model: PentachoraModel,
    data: DataSpec | str,
    train_config: TrainConfig,
    image_size: int = 64,
    name: str | None = None,
    soft_hand: bool = True,
    callbacks: tuple[Callback, ...] = (),
    eval_data: EvalData | None = None,
    periodic_eval: EvalData | None = None,
    final_eval: bool = True,
    resume: bool | str | os.PathLike = True,
    fresh: bool = False,
) -> AutoencoderRun:
    """Train a patch autoencoder with the shared :class:`~pentachora.training.Trainer`, then evaluate it.

    Args:
        model: a patch autoencoder (PatchSVAE, its NoSVD variant, GeoVAE, ...).
        data: a :class:`DataSpec` or a ``--data`` string (``images``, ``noise:raw``, ``folder:PATH`` ...).
        train_config: trainer settings (``out_dir`` None trains in memory and writes nothing).
        image_size: training crop / noise size in pixels (a multiple of the patch size).
        name: label for logs and pictures (defaults to the model type).
        soft_hand: add the seeds' soft-hand CV schedule when the model reports a CV and has a CV
            target (``model.cv_target``); it sets the reconstruction and CV loss weights each step.
        callbacks: extra trainer callbacks (e.g. a geometry-first :class:`PhaseCallback`).
        eval_data: final evaluation data (default: :func:`build_eval_data` of ``data``).
        periodic_eval: cheaper data for evaluations during training (default: a subset of
            ``eval_data`` — 24 tiles and 4 noise samples per type).
        final_eval: run the full evaluation at the end and write ``eval.json``.
        resume: passed to :meth:`Trainer.fit` (True resumes from ``out_dir`` automatically; the
            data spec, image size, soft-hand flag and name are part of what a resume must match,
            ``"force"`` resumes anyway).
        fresh: start over, moving an earlier run in ``out_dir`` aside to ``OUT.old-<timestamp>/``.

    The run folder is locked from the start of training until ``final/`` and ``eval.json`` are
    written (a second training on it fails at once with ``RunFolderError``); ``data.json`` is
    written only once the run is accepted.

    Returns:
        An :class:`AutoencoderRun` with the trained model (unwrapped, on CPU) and its evaluation.
    """
    spec = parse_data_spec(data) if isinstance(data, str) else data
    name = name or model.model_type
    patch = getattr(model, "patch_size", 1)
    if image_size % patch:
        raise ValueError(f"image_size {image_size} is not a multiple of the model's patch size {patch}")
    eval_data = eval_data or build_eval_data(spec, image_size)
    periodic_eval = periodic_eval or eval_data.subset(max_tiles=24, n_noise=4)
    source = spec.train_source(train_config.batch_size, image_size, seed=train_config.seed)

    cbs: list[Callback] = [*callbacks, NonFiniteOriginCallback()]  # names the module behind a skipped step
    target = getattr(model, "cv_target", None)
    if soft_hand and target is not None and hasattr(model, "set_loss_weights"):
        cbs.append(SoftHandCallback(target_cv=float(target), metric="cv"))

    out_dir = Path(train_config.out_dir) if train_config.out_dir else None
    run_data = {"data": spec.spec, "image_size": image_size, "soft_hand": soft_hand, "name": name}

    def eval_fn(m: torch.nn.Module) -> dict[str, float]:
        return evaluate_autoencoder(m, periodic_eval)

    trainer = Trainer(model, train_config, source, eval_fn=eval_fn, callbacks=cbs, run_data=run_data)
    lock = run_folder_lock(out_dir, enabled=is_main_process()) if out_dir is not None else nullcontext()
    with lock:
        result = trainer.fit(resume=resume, fresh=fresh)
        trained = trainer.unwrapped_model.to("cpu")
        evaluation: dict[str, float] = {}
        if final_eval:
            evaluation = evaluate_autoencoder(trained, eval_data)
            evaluation["nonfinite_steps"] = float(result.nonfinite_steps)
            evaluation["train_steps"] = float(result.steps)
            evaluation["train_wall_s"] = float(result.wall_time_s)
        metrics: list[dict[str, Any]] = []
        if out_dir is not None:
            trained.save_pretrained(out_dir / FINAL_DIR)
            if final_eval:
                atomic_write_json(out_dir / "eval.json", evaluation)
            metrics = read_metrics(out_dir / METRICS_NAME)
    return AutoencoderRun(
        name=name, model=trained, result=result, evaluation=evaluation, out_dir=out_dir, metrics=metrics
    )
