"""Pictures of trained autoencoders: a reconstruction grid of held-out tiles and the training curves."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pentachora.data.images import psnr, to_model_space, to_pixel_space
from pentachora.diagnostics.plots import save_reconstruction_grid, save_training_curves

__all__ = ["save_run_pictures"]


def save_run_pictures(
    out: Path, runs: Mapping[str, Any], tiles01: torch.Tensor | None, n: int = 8
) -> dict[str, Path]:
    """Write ``out/reconstructions.png`` (``n`` held-out tiles through every run's model, with its
    PSNR) and ``out/curves.png`` (the training curves of every run).

    Args:
        out: folder to write into.
        runs: ``{label: run}`` where a run has ``.model`` (a patch autoencoder) and ``.metrics``
            (records from ``metrics.jsonl``), e.g. :class:`~pentachora.recipes.AutoencoderRun`.
        tiles01: ``(N, 3, T, T)`` held-out tiles in [0, 1], or None (no reconstruction grid).
        n: tiles shown (evenly spaced through ``tiles01``).

    Returns:
        ``{"reconstructions": path, "curves": path}`` for the pictures written.
    """
    out = Path(out)
    paths: dict[str, Path] = {}
    if tiles01 is not None:
        idx = torch.linspace(0, tiles01.shape[0] - 1, min(n, tiles01.shape[0])).round().long()
        originals = tiles01[idx]
        recons, titles = {}, {}
        with torch.no_grad():
            for name, run in runs.items():
                rec = to_pixel_space(run.model.reconstruct(to_model_space(originals)))
                recons[name] = rec
                titles[name] = f"{name}\n{float(psnr(rec, originals).mean()):.1f} dB"
        paths["reconstructions"] = save_reconstruction_grid(
            originals, recons, out / "reconstructions.png", titles
        )
    curves = {name: run.metrics for name, run in runs.items() if run.metrics}
    if curves:
        paths["curves"] = save_training_curves(curves, out / "curves.png")
    return paths
