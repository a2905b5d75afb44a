"""Scoring generated layouts against the ground truth, with bootstrap intervals.

A *layout* is ``(N, g²)`` int64: 0 for an empty cell, else ``1 + colour · n_shapes + shape``. For
every ground-truth object (a non-empty cell of the truth) the reader's layout of the generated image
says whether something is drawn there (*position*), in the right colour, in the right shape, or both
(*object*: colour, shape and cell all right — the recall every benchmark reports). *Binding* is
object recall among objects drawn in the right cell (given that something is there, is it the
described colour × shape?). *False objects* are cells drawn but empty in the truth.

Intervals: a percentile bootstrap over *captions* (every sample of one caption — its seeds and its
objects — is resampled together, since they are not independent), of the ratio of sums.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pentachora.errors import DataError

__all__ = [
    "OFFSET_BINS",
    "ObjectHits",
    "bootstrap_ratio",
    "chance_object_recall",
    "long_caption_regions",
    "object_hits",
    "paired_recall_difference",
    "score_long_captions",
    "shuffled_tail_chance",
    "summarise_hits",
]


@dataclass
class ObjectHits:
    """One row per ground-truth object of every scored image.

    Attributes:
        image: Index of the image (row of the layouts) the object belongs to.
        cell: Its cell.
        position, colour, shape, object: Whether the generated image has something / the right colour
            / the right shape / the right colour and shape in that cell.
        false_objects: ``(N,)`` cells drawn in each image that are empty in the truth.
    """

    image: np.ndarray
    cell: np.ndarray
    position: np.ndarray
    colour: np.ndarray
    shape: np.ndarray
    object: np.ndarray
    false_objects: np.ndarray


def object_hits(
    pred: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray, n_shapes: int
) -> ObjectHits:
    """Per-object hits of predicted layouts against the truth.

    Args:
        pred: ``(N, g²)`` layouts read from generated images.
        truth: ``(N, g²)`` ground-truth layouts.
        n_shapes: Shapes in the world (to split a label into colour and shape).

    Raises:
        DataError: The two have different shapes.
    """
    p, t = np.asarray(pred, dtype=np.int64), np.asarray(truth, dtype=np.int64)
    if p.shape != t.shape or p.ndim != 2:
        raise DataError(f"layouts must both be (N, cells); got {p.shape} and {t.shape}")
    image, cell = np.nonzero(t > 0)
    pv, tv = p[image, cell], t[image, cell]
    drawn = pv > 0
    colour = drawn & ((pv - 1) // n_shapes == (tv - 1) // n_shapes)
    shape = drawn & ((pv - 1) % n_shapes == (tv - 1) % n_shapes)
    return ObjectHits(
        image=image, cell=cell, position=drawn, colour=colour, shape=shape, object=pv == tv,
        false_objects=((p > 0) & (t == 0)).sum(axis=1),
    )  # fmt: skip


def bootstrap_ratio(
    numerators: Sequence[float] | np.ndarray,
    denominators: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """``sum(num) / sum(den)`` and its percentile bootstrap interval over clusters.

    Args:
        numerators, denominators: One entry per cluster (caption).
        n_boot: Bootstrap resamples.
        seed: Seed of the resampling.
        level: Coverage of the interval.

    Returns:
        ``(estimate, low, high)``; NaN when the denominators sum to 0.
    """
    num, den = np.asarray(numerators, dtype=np.float64), np.asarray(denominators, dtype=np.float64)
    if num.shape != den.shape:
        raise DataError(f"numerators {num.shape} and denominators {den.shape} differ")
    total = den.sum()
    if total <= 0:
        return float("nan"), float("nan"), float("nan")
    estimate = float(num.sum() / total)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(num), size=(n_boot, len(num)))
    d = den[idx].sum(axis=1)
    ratios = num[idx].sum(axis=1) / np.where(d > 0, d, np.nan)
    lo, hi = np.nanpercentile(ratios, [50 * (1 - level), 100 - 50 * (1 - level)])
    return estimate, float(lo), float(hi)


def summarise_hits(
    hits: ObjectHits, clusters: np.ndarray, mask: np.ndarray | None = None, n_boot: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Recall figures (with 95 % bootstrap intervals over clusters) of the objects selected by ``mask``.

    Args:
        hits: From :func:`object_hits`.
        clusters: ``(N_images,)`` cluster id (caption) of every image.
        mask: Which objects to count (default: all).
        n_boot, seed: The bootstrap.

    Returns:
        ``{"n_objects", "object_recall", "object_recall_lo", "object_recall_hi", "position_recall",
        "colour_recall", "shape_recall", "binding", ...}``.
    """
    mask, per_cluster = _cluster_sums(hits, clusters, mask)
    count = per_cluster(np.ones(int(mask.sum())))
    out: dict[str, float] = {"n_objects": float(mask.sum())}
    for name in ("object", "position", "colour", "shape"):
        est, lo, hi = bootstrap_ratio(per_cluster(getattr(hits, name)[mask]), count, n_boot, seed)
        out[f"{name}_recall"], out[f"{name}_recall_lo"], out[f"{name}_recall_hi"] = est, lo, hi
    est, lo, hi = bootstrap_ratio(
        per_cluster(hits.object[mask]), per_cluster(hits.position[mask]), n_boot, seed
    )
    out["binding"], out["binding_lo"], out["binding_hi"] = est, lo, hi
    return out


def chance_object_recall(n_colours: int, n_shapes: int, drawn_fraction: float = 1.0) -> float:
    """Object recall of an image that draws a uniformly random colour × shape in a fraction
    ``drawn_fraction`` of the cells: ``drawn_fraction / (n_colours · n_shapes)``."""
    return float(drawn_fraction) / (n_colours * n_shapes)


def paired_recall_difference(
    hits_a: ObjectHits,
    hits_b: ObjectHits,
    clusters: np.ndarray,
    mask: np.ndarray | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Object recall of ``a`` minus that of ``b`` on the *same* objects, with a paired bootstrap
    interval over clusters (captions): both contenders are resampled with the same captions, so the
    interval is that of the difference, not of two independent estimates.

    Raises:
        DataError: The two scorings are not of the same objects (different images or cells).
    """
    if not (np.array_equal(hits_a.image, hits_b.image) and np.array_equal(hits_a.cell, hits_b.cell)):
        raise DataError("paired_recall_difference needs two scorings of the same objects")
    mask, per_cluster = _cluster_sums(hits_a, clusters, mask)
    diff = hits_a.object[mask].astype(np.float64) - hits_b.object[mask].astype(np.float64)
    return bootstrap_ratio(per_cluster(diff), per_cluster(np.ones(int(mask.sum()))), n_boot, seed, level)


def _cluster_sums(
    hits: ObjectHits, clusters: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """The object mask and ``values (selected objects) → per-cluster sums`` (clusters of their images)."""
    mask = np.ones(len(hits.image), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    ids, inv = np.unique(np.asarray(clusters)[hits.image[mask]], return_inverse=True)

    def per_cluster(values: np.ndarray) -> np.ndarray:
        return np.bincount(inv, weights=np.asarray(values, dtype=np.float64), minlength=len(ids))

    return mask, per_cluster


# ============================================================================ long captions
OFFSET_BINS = (0, 25, 50, 75, 100, 125, 150, 200, 300)
"""Token offsets (start of an object's sentence) for the recall curve."""


def long_caption_regions(captions: list, n_seeds: int, window: int) -> dict[str, np.ndarray]:
    """Per scored object (image-major, objects in cell order): its region and token start."""
    regions, starts = [], []
    for scene, cap in captions:
        by_cell = sorted(range(len(scene.objects)), key=lambda j: scene.objects[j].cell)
        rows_r = [cap.object_region(j, window) for j in by_cell]
        rows_s = [cap.spans[j][0] for j in by_cell]
        for _ in range(n_seeds):
            regions += rows_r
            starts += rows_s
    return {"region": np.array(regions), "start": np.array(starts)}


def score_long_captions(scores: dict[str, Any], captions: list, n_seeds: int, window: int) -> dict[str, Any]:
    """Recall by region, over token offset, false objects, binding; with bootstrap intervals."""
    hits, clusters = scores["hits"], scores["clusters"]
    meta = long_caption_regions(captions, n_seeds, window)
    assert len(meta["region"]) == len(hits.object), "objects and hits out of step"
    out: dict[str, Any] = {"all": summarise_hits(hits, clusters)}
    for region in ("head", "seam", "tail"):
        mask = meta["region"] == region
        out[region] = summarise_hits(hits, clusters, mask) if mask.any() else {"n_objects": 0.0}
    curve = []
    for lo, hi in itertools.pairwise(OFFSET_BINS):
        mask = (meta["start"] >= lo) & (meta["start"] < hi)
        if mask.any():
            s = summarise_hits(hits, clusters, mask, n_boot=500)
            curve.append({"lo": lo, "hi": hi, "n": s["n_objects"], "recall": s["object_recall"],
                          "recall_lo": s["object_recall_lo"], "recall_hi": s["object_recall_hi"]})  # fmt: skip
    out["curve"] = curve
    per_image = hits.false_objects.astype(float)
    img_clusters = np.asarray(clusters)
    ids = np.unique(img_clusters)
    num = np.array([per_image[img_clusters == c].sum() for c in ids])
    den = np.array([(img_clusters == c).sum() for c in ids], dtype=float)
    est, lo, hi = bootstrap_ratio(num, den)
    out["false_objects_per_image"] = {"mean": est, "lo": lo, "hi": hi}
    return out


def shuffled_tail_chance(scores: dict[str, Any], layouts: np.ndarray, captions: list, n_seeds: int, window: int,
                    n_shapes: int, seed: int = 0) -> float:  # fmt: skip
    """Tail recall of the same images scored against *another* caption's layout (a derangement):
    what an image that knows nothing of a prompt's tail scores on it."""
    rng = np.random.default_rng(seed)
    n = len(captions)
    perm = (np.arange(n) + 1 + rng.integers(0, n - 1)) % n if n > 1 else np.arange(n)
    truth = np.repeat(layouts[perm], n_seeds, axis=0)
    hits = object_hits(scores["reading"], truth, n_shapes)
    meta = long_caption_regions([captions[i] for i in perm], n_seeds, window)
    mask = meta["region"] == "tail"
    return float(hits.object[mask].mean()) if mask.any() else math.nan
