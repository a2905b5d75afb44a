"""Pictures of the scene world: a sample sheet of scenes with their captions, and contender sheets.

* :func:`save_sample_sheet` — renders with their captions (object sentences past the first window
  in red, the window boundary marked ``‖``).
* :func:`save_contender_sheet` — for a few long prompts, the image every contender generated,
  side by side, with the reader's detections marked on each cell (green: a described object read
  exactly; orange: something else drawn where an object was described; red: an object drawn in a
  cell the prompt left empty) and the tail objects named under the row.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from pentachora.data.scenes import Caption, Scene, SceneWorld
from pentachora.io import atomic_save_figure

__all__ = ["ceiling_curve", "save_ceiling_curve", "save_contender_sheet", "save_sample_sheet"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_sample_sheet(
    world: SceneWorld, samples: Sequence[tuple[Scene, Caption]], path: str | Path, columns: int = 4
) -> Path:
    """A PNG grid: each scene's render above its caption (objects described only past the first window
    listed in red below it).

    Args:
        world: The world that rendered the scenes.
        samples: ``(scene, caption)`` pairs.
        path: Output PNG.
        columns: Scenes per row.
    """
    plt = _plt()
    n = len(samples)
    rows = max(1, -(-n // columns))
    w = world.config.window_tokens
    font, line_in = 5.6, 5.6 * 1.3 / 72  # points, and one text line in inches
    texts = []
    for scene, caption in samples:
        tail = [o for i, o in enumerate(scene.objects) if caption.object_region(i, w) == "tail"]
        body = textwrap.wrap(caption.text, 64)
        note = (
            textwrap.wrap(f"only past token {w}: " + "; ".join(
                f"{o.colour} {o.shape} @ {world.cell_name(o.cell)}" for o in tail), 64)
            if tail else []
        )  # fmt: skip
        texts.append((body, note))
    img_in, title_in, col_in, pad_in = 2.6, 0.25, 4.3, 0.15
    text_in = max(len(b) + len(t) + 1 for b, t in texts) * line_in
    row_in = title_in + img_in + text_in + pad_in
    fig_w, fig_h = col_in * min(n, columns), row_in * rows
    fig = plt.figure(figsize=(fig_w, fig_h))
    for k, ((scene, caption), (body, note)) in enumerate(zip(samples, texts, strict=True)):
        r, c = divmod(k, columns)
        left = (c * col_in + (col_in - img_in) / 2) / fig_w
        bottom = (fig_h - r * row_in - title_in - img_in) / fig_h
        ax = fig.add_axes((left, bottom, img_in / fig_w, img_in / fig_h))
        ax.imshow(world.render(scene).transpose(1, 2, 0), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{caption.kind}, {len(scene.objects)} objects, {caption.n_tokens} tokens", fontsize=8)
        x0 = (c * col_in + 0.1) / fig_w
        y0 = bottom - 0.06 / fig_h
        fig.text(x0, y0, "\n".join(body), va="top", ha="left", fontsize=font, family="monospace")
        if note:
            y1 = y0 - (len(body) + 0.5) * line_in / fig_h
            fig.text(x0, y1, "\n".join(note), va="top", ha="left", fontsize=font, family="monospace",
                     color="crimson")  # fmt: skip
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_figure(fig, path, dpi=130)
    plt.close(fig)
    return path


def save_contender_sheet(
    world: SceneWorld,
    prompts: Sequence[tuple[Scene, Caption]],
    images: Mapping[str, np.ndarray],
    readings: Mapping[str, np.ndarray],
    path: str | Path,
    scores: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """One row per long prompt, one column per contender, detections marked (see the module docstring).

    Args:
        world: The world.
        prompts: ``(scene, caption)`` of each row.
        images: ``{contender: (rows, 3, H, W) in [0, 1]}``.
        readings: ``{contender: (rows, g²) labels read}``.
        path: Output PNG.
        scores: Optional ``{contender: [per-row text]}`` shown under each image.
    """
    plt = _plt()
    from matplotlib.patches import Rectangle

    names = list(images)
    rows = len(prompts)
    cols = len(names) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.25 * rows), squeeze=False)
    g, size = world.config.grid, world.config.image_size
    cs = size / g
    w = world.config.window_tokens
    for r, (scene, caption) in enumerate(prompts):
        truth = world.layout(scene)
        panels = [("ground truth", world.render(scene), truth)] + [
            (name, images[name][r], readings[name][r]) for name in names
        ]
        for c, (name, img, read) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(np.asarray(img).transpose(1, 2, 0), interpolation="nearest", extent=(0, size, size, 0))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("\n".join(textwrap.wrap(name, 24)), fontsize=7)
            for cell in range(g * g):
                t, p = int(truth[cell]), int(read[cell])
                if c == 0:
                    region = None
                    for i, o in enumerate(scene.objects):
                        if o.cell == cell:
                            region = caption.object_region(i, w)
                    if region == "tail":
                        colour = "crimson"
                    else:
                        continue
                elif t > 0 and p == t:
                    colour = "lime"
                elif t > 0:
                    colour = "orange"
                elif p > 0:
                    colour = "red"
                else:
                    continue
                y, x = divmod(cell, g)
                ax.add_patch(Rectangle((x * cs + 0.4, y * cs + 0.4), cs - 0.8, cs - 0.8, fill=False,
                                       edgecolor=colour, linewidth=1.1))  # fmt: skip
            if scores is not None and c > 0:
                ax.set_xlabel(scores[name][r], fontsize=6)
        tail = [o for i, o in enumerate(scene.objects) if caption.object_region(i, w) == "tail"]
        axes[r][0].set_ylabel(
            "\n".join(textwrap.wrap("tail: " + ", ".join(f"{o.colour} {o.shape}" for o in tail), 22)),
            fontsize=6,
        )
    fig.suptitle(
        "long prompts through each encoder\n(boxes: green = described object read exactly, orange = wrong "
        "object in a described cell, red = object in an empty cell;\nground truth: red boxes = objects "
        "described only past token 75)",
        fontsize=7,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_figure(fig, path, dpi=140)
    plt.close(fig)
    return path


def ceiling_curve(metrics: Sequence[Mapping]) -> list[dict[str, float]]:
    """``[{"step", "train_s", "object_recall", ...}]`` from a T2I run's ``metrics.jsonl`` records.

    ``train_s`` is the run's clock at the evaluation minus the time spent in the evaluations so far
    (each evaluation records its own ``eval_s``), i.e. training seconds only.
    """
    rows, spent = [], 0.0
    for rec in metrics:
        if rec.get("split") != "eval" or "object_recall" not in rec:
            continue
        train_s = float(rec.get("time", float("nan"))) - spent
        spent += float(rec.get("eval_s", 0.0))
        rows.append({"step": int(rec["step"]), "train_s": train_s,
                     **{k: float("nan") if rec[k] is None else float(rec[k])  # NaN is stored as null
                        for k in ("object_recall", "position_recall", "binding", "false_objects_per_image")
                        if k in rec}})  # fmt: skip
    return rows


def save_ceiling_curve(rows: Sequence[Mapping], path: str | Path, title: str = "") -> Path:
    """Object recall of validation short captions against training minutes (the ceiling's curve)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    minutes = [r["train_s"] / 60 for r in rows]
    for key, label in (("object_recall", "object recall"), ("position_recall", "something in the cell"),
                       ("binding", "binding")):  # fmt: skip
        if rows and key in rows[0]:
            ax.plot(minutes, [r[key] for r in rows], marker="o", label=label)
    ax.axhline(0.8, color="gray", ls=":", lw=0.8, label="goal 0.8")
    ax.set_xlabel("training minutes (evaluations excluded)")
    ax.set_ylabel("validation short captions")
    ax.set_ylim(0, 1)
    ax.set_title(title or "miniature T2I: the short-caption ceiling during training", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_figure(fig, path, dpi=130)
    plt.close(fig)
    return path
