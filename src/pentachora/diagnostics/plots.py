"""Pictures people would rather look at than read: reconstruction grids and training curves.

Uses matplotlib's non-interactive Agg backend; every function writes a PNG and returns its path.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from pentachora.io import atomic_save_figure, atomic_save_image

__all__ = ["save_image_grid", "save_reconstruction_grid", "save_training_curves"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_image_grid(
    images01: torch.Tensor, path: str | os.PathLike, nrow: int | None = 8, pad: int = 2
) -> Path:
    """Save ``(N, C, H, W)`` images in [0, 1] as one PNG grid (white padding).

    Args:
        images01: images in pixel space (C = 3 or 1; values are clamped to [0, 1]).
        path: output image file (parent folders are created; the extension picks the format).
        nrow: images per row (None: ⌈√N⌉, a square-ish grid).
        pad: padding in pixels between images (0 with one image writes that image as it is).

    Returns:
        The path written.
    """
    from PIL import Image

    x = images01.detach().float().clamp(0, 1).cpu()
    n, c, h, w = x.shape
    ncol = min(nrow or max(1, math.ceil(math.sqrt(n))), n)
    nrows = math.ceil(n / ncol)
    canvas = torch.ones(c, nrows * (h + pad) + pad, ncol * (w + pad) + pad)
    for i in range(n):
        r, q = divmod(i, ncol)
        canvas[
            :, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w
        ] = x[i]
    arr = (canvas.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    if c == 1:
        arr = arr[..., 0]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_image(Image.fromarray(arr), path)
    return path


def save_reconstruction_grid(
    originals01: torch.Tensor,
    reconstructions01: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    titles: Mapping[str, str] | None = None,
) -> Path:
    """One row of originals and one row per model of reconstructions, labelled.

    Args:
        originals01: ``(N, 3, H, W)`` in [0, 1].
        reconstructions01: ``{model name: (N, 3, H, W)}`` in [0, 1].
        path: output PNG.
        titles: optional row labels (e.g. with PSNR) keyed like ``reconstructions01``.
    """
    plt = _plt()
    rows = [("original", originals01)] + [((titles or {}).get(k, k), v) for k, v in reconstructions01.items()]
    n = originals01.shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n, 1.75 * len(rows)), squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for i in range(n):
            ax = axes[r][i]
            ax.imshow(
                imgs[i].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy(), interpolation="nearest"
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center", labelpad=4)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def save_training_curves(
    runs: Mapping[str, Sequence[Mapping[str, float]]],
    path: str | os.PathLike,
    keys: Sequence[str] = ("recon_loss", "cv", "grad_norm", "psnr_heldout"),
) -> Path:
    """Plot metrics of one or several runs against the step, one panel per key.

    Args:
        runs: ``{run name: metrics records}`` as read from ``metrics.jsonl`` (train and eval
            records; a panel uses whichever records carry its key).
        path: output PNG.
        keys: metric names, one panel each (panels with no data are dropped).
    """
    plt = _plt()
    present = [k for k in keys if any(k in rec for recs in runs.values() for rec in recs)]
    if not present:
        present = ["loss"]
    fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.2), squeeze=False)
    for ax, key in zip(axes[0], present, strict=True):
        for name, recs in runs.items():
            pts = [
                (r["step"], r[key]) for r in recs if key in r and r[key] is not None and math.isfinite(r[key])
            ]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, label=name, marker="o" if len(pts) < 20 else None, ms=3)
        ax.set_title(key)
        ax.set_xlabel("step")
        if key in ("recon_loss", "loss", "grad_norm", "mse_heldout"):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path
