"""pentachora.recipes — the one place where a model, a data source and the Trainer meet.

Models (``autoencoders``, ``memory``, ``hub``) never import the trainer and the trainer never imports
a model family; a recipe joins them for one task. The CLI, ``pentachora demo`` and the benchmarks all
go through these functions, so they train and evaluate the same way.

* :mod:`~pentachora.recipes.loading` — :func:`load_model` (dispatch on ``model_type``),
  :func:`load_run_model` (a run folder's ``final/`` or latest checkpoint).
* :mod:`~pentachora.recipes.autoencoders` — :func:`train_autoencoder`, :func:`geovae_schedule`.
* :mod:`~pentachora.recipes.evaluation` — held-out PSNR/SSIM and per-noise MSE of an autoencoder.
* :mod:`~pentachora.recipes.memory` — long-prompt memory training and evaluation (needs the
  ``memory`` extra; import it explicitly: ``from pentachora.recipes.memory import train_memory``).
"""

from pentachora.recipes.autoencoders import (
    GEOVAE_ALIGN_WEIGHTS,
    GEOVAE_HANDOFF_WEIGHTS,
    AutoencoderRun,
    build_eval_data,
    geovae_schedule,
    train_autoencoder,
)
from pentachora.recipes.evaluation import EvalData, evaluate_autoencoder, make_eval_data
from pentachora.recipes.loading import FINAL_DIR, load_model, load_run_model, resolve_model_dir

__all__ = [
    "FINAL_DIR",
    "GEOVAE_ALIGN_WEIGHTS",
    "GEOVAE_HANDOFF_WEIGHTS",
    "AutoencoderRun",
    "EvalData",
    "build_eval_data",
    "evaluate_autoencoder",
    "geovae_schedule",
    "load_model",
    "load_run_model",
    "make_eval_data",
    "resolve_model_dir",
    "train_autoencoder",
]
