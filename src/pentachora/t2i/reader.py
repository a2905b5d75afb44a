"""The scene reader: the instrument that turns an image of the scene world into a layout.

Every image-level number of the text-to-image benchmarks rests on it, so it is a model like any
other (config dataclass, strict safetensors checkpoint, trained by the one Trainer) and it is tested
against ground truth: cell accuracy on clean renders and under the noise and blur that generated
images show (``benchmarks/t2i_reader.py``).

A small CNN reads the whole image; its feature map is pooled to a ``2g × 2g`` lattice (four
sub-cells per cell, so the head sees where inside the cell the pixels are) and one shared head
classifies each cell:

* ``labels``: ``0`` empty, else ``1 + colour · n_shapes + shape`` (the world's layout labels);
* ``sizes``: the size index of the object in the cell (meaningful where the label is not empty).

Shapes: images ``(B, 3, H, W)`` in ``[0, 1]`` → logits ``(B, g², n_classes)`` and ``(B, g², n_sizes)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from pentachora.data.scenes import SceneWorldConfig
from pentachora.errors import DataError
from pentachora.modeling import ModelOutput, PentachoraModel, Presets, register_model

__all__ = ["ReaderOutput", "SceneReader", "SceneReaderConfig", "SceneReading"]


def _world_cpu() -> SceneWorldConfig:
    return SceneWorldConfig()


@dataclass
class SceneReaderConfig(Presets):
    """Configuration of :class:`SceneReader`.

    Attributes:
        world: The scene world it reads (canvas size, grid and vocabulary).
        width: Channels of the first convolutions (the second stage has ``2·width``).
        head_hidden: Hidden width of the per-cell head.
        size_weight: Weight of the size loss (on occupied cells) against the label loss.
    """

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "cpu": {},
        "gpu": {"world": SceneWorldConfig.preset("gpu"), "width": 48},
    }
    preset_family = "scene-reader"

    world: SceneWorldConfig = field(default_factory=_world_cpu)
    width: int = 32
    head_hidden: int = 128
    size_weight: float = 0.5


@dataclass
class ReaderOutput(ModelOutput):
    """Training output: ``loss = label CE + size_weight · size CE`` and the cell accuracy."""

    label_loss: torch.Tensor | None = None
    size_loss: torch.Tensor | None = None
    cell_accuracy: torch.Tensor | None = None
    label_logits: torch.Tensor | None = None
    size_logits: torch.Tensor | None = None


@dataclass
class SceneReading:
    """What the reader sees in a batch of images.

    Attributes:
        labels: ``(B, g²)`` int64, 0 empty, else ``1 + colour · n_shapes + shape``.
        sizes: ``(B, g²)`` int64 size index (−1 where the label is empty).
        confidence: ``(B, g²)`` probability of the chosen label.
    """

    labels: torch.Tensor
    sizes: torch.Tensor
    confidence: torch.Tensor


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.GELU())


@register_model
class SceneReader(PentachoraModel):
    """Per-cell classifier of scene-world images (see the module docstring).

    Args:
        config: A :class:`SceneReaderConfig`.
    """

    model_type = "scene-reader"
    config_class = SceneReaderConfig

    def __init__(self, config: SceneReaderConfig) -> None:
        super().__init__(config)
        w = config.width
        world = config.world
        self.grid = world.grid
        self.n_classes = world.n_classes
        self.n_sizes = len(world.sizes)
        self.features = nn.Sequential(
            _conv(3, w), _conv(w, w), _conv(w, 2 * w, stride=2), _conv(2 * w, 2 * w), _conv(2 * w, 2 * w)
        )
        self.head = nn.Sequential(
            nn.Linear(4 * 2 * w, config.head_hidden), nn.GELU(),
            nn.Linear(config.head_hidden, self.n_classes + self.n_sizes),
        )  # fmt: skip

    def _check(self, images: torch.Tensor) -> None:
        size = self.config.world.image_size
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (size, size):
            raise DataError(
                f"the scene reader reads (B, 3, {size}, {size}) images in [0, 1], got {tuple(images.shape)}"
            )
        if not torch.isfinite(images).all():
            raise DataError("the images hold NaN or infinite values")

    def logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, H, W)`` in [0, 1] → label logits ``(B, g², n_classes)``, size logits ``(B, g², n_sizes)``."""
        self._check(images)
        h = self.features(images * 2 - 1)
        h = F.adaptive_avg_pool2d(h, 2 * self.grid)
        h = rearrange(h, "b c (gy sy) (gx sx) -> b (gy gx) (sy sx c)", sy=2, sx=2)
        out = self.head(h)
        return out[..., : self.n_classes], out[..., self.n_classes :]

    def forward(self, batch: dict[str, torch.Tensor]) -> ReaderOutput:
        """Loss on a batch ``{"pixel_values" (B,3,H,W), "labels" (B,g²), "sizes" (B,g²; −1 empty)}``."""
        label_logits, size_logits = self.logits(batch["pixel_values"])
        labels, sizes = batch["labels"].long(), batch["sizes"].long()
        label_loss = F.cross_entropy(label_logits.flatten(0, 1), labels.flatten())
        occupied = sizes.flatten() >= 0
        if occupied.any():
            size_loss = F.cross_entropy(size_logits.flatten(0, 1)[occupied], sizes.flatten()[occupied])
        else:
            size_loss = label_logits.sum() * 0.0
        loss = label_loss + self.config.size_weight * size_loss
        accuracy = (label_logits.argmax(-1) == labels).float().mean()
        return ReaderOutput(
            loss=loss, label_loss=label_loss, size_loss=size_loss, cell_accuracy=accuracy.detach(),
            label_logits=label_logits, size_logits=size_logits,
        )  # fmt: skip

    @torch.no_grad()
    def read(self, images: torch.Tensor, batch_size: int = 256) -> SceneReading:
        """The layout the reader sees in ``images`` ``(B, 3, H, W)`` in [0, 1] (eval mode, no grad)."""
        was = self.training
        self.eval()
        labels, sizes, conf = [], [], []
        try:
            for start in range(0, images.shape[0], batch_size):
                lab, siz = self.logits(images[start : start + batch_size].to(next(self.parameters()).device))
                p = lab.softmax(-1)
                c, label = p.max(-1)
                size = torch.where(label > 0, siz.argmax(-1), torch.full_like(label, -1))
                labels.append(label.cpu())
                sizes.append(size.cpu())
                conf.append(c.cpu())
        finally:
            self.train(was)
        if not labels:
            empty = torch.zeros(0, self.grid * self.grid, dtype=torch.long)
            return SceneReading(empty, empty.clone(), empty.float())
        return SceneReading(torch.cat(labels), torch.cat(sizes), torch.cat(conf))

    def describe(self) -> dict[str, Any]:
        """JSON-able summary (world, parameters)."""
        return {"world": dataclasses.asdict(self.config.world), "params": self.num_parameters()}
