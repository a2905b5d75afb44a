"""Loading trained models from checkpoint and run folders.

Loading dispatches on the ``model_type`` written in ``config.json``; the model families register
themselves when their package is imported. This lives in ``recipes`` (not in :mod:`pentachora.modeling`)
because it has to import every model family: the model contract itself imports none of them. Where a run
folder keeps its model (:func:`~pentachora.training.state.resolve_model_dir`, ``FINAL_DIR``) is the run-folder
layout's, so it lives with it in :mod:`pentachora.training.state`, re-exported here.
"""

from __future__ import annotations

import contextlib
import importlib
import os

import torch

from pentachora.modeling import PentachoraModel
from pentachora.training.state import FINAL_DIR, load_latest, resolve_model_dir

__all__ = ["FINAL_DIR", "load_latest", "load_model", "load_run_model", "preset_rows", "resolve_model_dir"]


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


def load_run_model(path: str | os.PathLike, map_location: str = "cpu") -> PentachoraModel:
    """Load a model from a run folder (its ``final/`` or latest checkpoint) or a checkpoint folder."""
    return load_latest(path, lambda folder: load_model(folder, map_location))


def preset_rows(families: list[str] | None = None, count_params: bool = True) -> list[dict]:
    """One row per registered model family and preset (``pentachora models``): its parameters and
    latent floats per patch, or the ``error`` that kept it from being built.

    Raises:
        ConfigError: a family in ``families`` that is not registered (the known ones are listed).
    """
    from pentachora.errors import ConfigError
    from pentachora.modeling import describe_preset, list_presets

    _register_families()
    listing = list_presets()
    unknown = sorted(set(families or ()) - set(listing))
    if unknown:
        raise ConfigError(f"--family: unknown model type(s) {unknown}; known: {sorted(listing)}")
    rows = []
    for model_type, names in listing.items():
        if families and model_type not in families:
            continue
        for name in names or [None]:
            try:
                rows.append(describe_preset(model_type, name, count_params=count_params))
            except (ConfigError, ImportError) as exc:  # e.g. AutoencoderKL without diffusers
                rows.append({"model_type": model_type, "model": "?", "preset": name, "error": str(exc)})
    return rows
