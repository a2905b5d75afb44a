"""pentachora.training: the one trainer every model uses (HF Accelerate, callbacks, safe checkpoints).

Quick start::

    from pentachora.training import Trainer, TrainConfig, SoftHandCallback

    cfg = TrainConfig(steps=2000, lr=3e-4, out_dir="runs/svae", save_every=500, eval_every=250)
    result = Trainer(model, cfg, source, eval_fn=evaluate,
                     callbacks=[SoftHandCallback(target_cv=target_cv(16))]).fit()

Run the same script with ``accelerate launch`` for multi-GPU / multi-node. Run it again on the same
``out_dir`` to resume exactly where it stopped. See :mod:`pentachora.training.loop` for the step,
:mod:`pentachora.training.state` for the run-folder layout and
:mod:`pentachora.training.logging` for the ``metrics.jsonl`` schema.

:class:`BatchSource` and :func:`step_seed` are re-exported from :mod:`pentachora.data.seeding`, where
they are defined (one definition; the trainer seeds its model stream with ``salt=TRAIN_SALT``).
"""

from pentachora.data.seeding import BatchSource, step_seed
from pentachora.training.callbacks import (
    Callback,
    EarlyStopOnPlateau,
    PhaseCallback,
    SoftHandCallback,
    SupportsLossWeights,
)
from pentachora.training.config import GRAD_CLIP_MODES, LR_SCHEDULES, MIXED_PRECISION, TrainConfig
from pentachora.training.logging import METRICS_NAME, MetricsLogger, read_metrics
from pentachora.training.loop import (
    MODEL_CONFIG_NAME,
    SEEDING_SCHEME,
    TRAIN_CONFIG_NAME,
    Trainer,
    TrainingDiverged,
    TrainResult,
    default_param_groups,
    lr_factor,
    make_accelerator,
)
from pentachora.training.state import (
    CHECKPOINTS_DIR,
    FINAL_DIR,
    LoadedCheckpoint,
    checkpoint_name,
    find_resumable_checkpoint,
    latest_checkpoint,
    load_optimizer_state,
    read_checkpoint,
    resolve_model_dir,
    save_optimizer_state,
)

__all__ = [
    "CHECKPOINTS_DIR",
    "FINAL_DIR",
    "GRAD_CLIP_MODES",
    "LR_SCHEDULES",
    "METRICS_NAME",
    "MIXED_PRECISION",
    "MODEL_CONFIG_NAME",
    "SEEDING_SCHEME",
    "TRAIN_CONFIG_NAME",
    "BatchSource",
    "Callback",
    "EarlyStopOnPlateau",
    "LoadedCheckpoint",
    "MetricsLogger",
    "PhaseCallback",
    "SoftHandCallback",
    "SupportsLossWeights",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "checkpoint_name",
    "default_param_groups",
    "find_resumable_checkpoint",
    "latest_checkpoint",
    "load_optimizer_state",
    "lr_factor",
    "make_accelerator",
    "read_checkpoint",
    "read_metrics",
    "resolve_model_dir",
    "save_optimizer_state",
    "step_seed",
]
