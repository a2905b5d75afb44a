"""Loading trained models from checkpoint and run folders.

Loading dispatches on the ``model_type`` written in ``config.json``; the model families register
themselves when their package is imported. This lives in ``recipes`` (not in :mod:`pentachora.modeling`)
because it has to import every model family: the model contract itself imports none of them.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from pathlib import Path

import torch

from pentachora.io import CheckpointError
from pentachora.modeling import PentachoraModel

__all__ = ["FINAL_DIR", "load_model", "load_run_model", "resolve_model_dir"]

#: The folder inside a run folder that holds the trained model.
FINAL_DIR = "final"


def _register_families() -> None:
    importlib.import_module("pentachora.autoencoders")  # registers the autoencoder families
    with contextlib.suppress(ImportError):  # the geometric memory needs the `memory` extra
        importlib.import_module("pentachora.memory")
    with contextlib.suppress(ImportError):
        importlib.import_module("pentachora.hub")
    with contextlib.suppress(ImportError):  # the miniature T2I model and its reader need diffusers
        importlib.import_module("pentachora.t2i")


def load_model(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> PentachoraModel:
    """Load any registered pentachora model from a checkpoint folder, dispatching on ``model_type``."""
    _register_families()
    return PentachoraModel.from_pretrained(directory, map_location=map_location)


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """The checkpoint folder behind ``path``: itself, its ``final/`` or its latest checkpoint.

    Raises:
        CheckpointError: ``path`` is none of a checkpoint folder or a run folder with a model.
    """
    from pentachora.training import latest_checkpoint

    path = Path(path)
    if (path / "config.json").is_file():
        return path
    if (path / FINAL_DIR / "config.json").is_file():
        return path / FINAL_DIR
    ckpt = latest_checkpoint(path) if path.is_dir() else None
    if ckpt is not None:
        return Path(ckpt)
    raise CheckpointError(
        f"{path} is neither a checkpoint folder (config.json + model.safetensors) nor a run folder "
        f"with {FINAL_DIR}/ or checkpoints/"
    )


def load_run_model(path: str | os.PathLike, map_location: str = "cpu") -> PentachoraModel:
    """Load a model from a run folder (its ``final/`` or latest checkpoint) or a checkpoint folder."""
    return load_model(resolve_model_dir(path), map_location)
