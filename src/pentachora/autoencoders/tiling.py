"""Reconstructing an image of any size through a patch autoencoder: tile it, or pad it.

A patch autoencoder sees images whose sides are multiples of its patch, and its cross-patch
attention costs memory quadratic in the number of patches of one forward pass. Two ways through:

* ``mode="tile"`` — pad the image to a multiple of ``tile``, cut it into ``tile × tile`` tiles (the
  training size is the natural choice), reconstruct them in batches and stitch them back;
* ``mode="pad"`` — pad the image to a multiple of the patch and reconstruct it in one pass (every
  patch attends to every other; refused past :data:`MAX_PATCHES_PER_PASS` patches).

Padding reflects the image at its bottom/right border (``replicate`` when the image is smaller than
the padding), and the result is cropped back to the input's size. :class:`TiledReconstruction` says
which of these happened. No training imports: this is the model's inference path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from pentachora.errors import ConfigError, DataError

__all__ = [
    "MAX_IMAGE_PIXELS",
    "MAX_PATCHES_PER_PASS",
    "TiledReconstruction",
    "check_image_pixels",
    "check_patch_budget",
    "reconstruct_image",
]

#: Most patches one forward pass may hold (128 × 128 patches: a 1024² image at patch 8). Attention
#: across the patches of one image makes memory grow with the square of this number.
MAX_PATCHES_PER_PASS = 16384

#: Most pixels of one image in either mode (25 MP, e.g. 6000×4000). Tile mode streams its tiles into the
#: output, but the image, its model-space copy, the padded copy and the reconstruction are whole images
#: (a few tens of bytes per pixel): a 79 KB PNG of 9000×9000 pixels took 7 GB before this cap.
MAX_IMAGE_PIXELS = 25_000_000


def check_image_pixels(height: int, width: int, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """:class:`ConfigError` for an image of more than ``max_pixels`` pixels (checked before decoding)."""
    if height * width > max_pixels:
        raise ConfigError(
            f"the image is {width}×{height} = {height * width:,} pixels, more than the {max_pixels:,} one "
            "reconstruction allows; crop or downscale it first"
        )


@dataclass
class TiledReconstruction:
    """What :func:`reconstruct_image` returns.

    Attributes:
        image: ``(C, H, W)`` reconstruction, the input's size, in the input's space.
        mode: ``"tile"`` or ``"pad"``.
        tile: the tile side (tile mode) or None.
        n_tiles: how many tiles were reconstructed (1 in pad mode).
        pad: ``(bottom, right)`` pixels added before reconstructing (and cropped afterwards).
        pad_mode: ``"reflect"`` or ``"replicate"``.
    """

    image: torch.Tensor
    mode: Literal["tile", "pad"]
    tile: int | None
    n_tiles: int
    pad: tuple[int, int]
    pad_mode: str

    def describe(self) -> str:
        """``"as 12 tiles of 64×64, reflect-padded by 14×10 px then cropped back"``."""
        how = (
            f"as {self.n_tiles} tile{'s' if self.n_tiles != 1 else ''} of {self.tile}×{self.tile}"
            if self.mode == "tile"
            else "as the whole image at once"
        )
        if any(self.pad):
            how += f", {self.pad_mode}-padded by {self.pad[0]}×{self.pad[1]} px then cropped back"
        return how


def check_patch_budget(
    height: int,
    width: int,
    patch: int,
    max_patches: int = MAX_PATCHES_PER_PASS,
    what: str = "an image",
    hint: str = "use a smaller size",
) -> int:
    """Patches of one ``height × width`` pass; :class:`ConfigError` past ``max_patches``."""
    n = math.ceil(height / patch) * math.ceil(width / patch)
    if n > max_patches:
        side = math.isqrt(max_patches) * patch
        raise ConfigError(
            f"{what} of {width}×{height} px is {n:,} patches of {patch}² in one pass, more than the "
            f"{max_patches:,} this allows (about {side}×{side} px); {hint}"
        )
    return n


def reconstruct_image(
    model: torch.nn.Module,
    image: torch.Tensor,
    mode: Literal["tile", "pad"] = "tile",
    tile: int | None = None,
    batch_size: int = 32,
    max_patches: int = MAX_PATCHES_PER_PASS,
    fit_tile: bool = False,
) -> TiledReconstruction:
    """Reconstruct one image of any size through a patch autoencoder (``model.reconstruct``).

    Args:
        model: a patch autoencoder (has ``patch_size`` and ``reconstruct(x)`` for ``(B, C, h, w)``).
        image: ``(C, H, W)`` or ``(1, C, H, W)`` in the model's input space.
        mode: ``"tile"`` or ``"pad"`` (see the module docstring).
        tile: tile side for tile mode, a multiple of the patch (default 64, or the patch if larger).
        batch_size: tiles per forward pass.
        max_patches: most patches one forward pass may hold.
        fit_tile: shrink a tile larger than the image needs to the largest useful one (for a
            default tile); without it such a tile is refused.

    Returns:
        A :class:`TiledReconstruction` of the input's size and shape (without the batch axis).

    Raises:
        ConfigError: unknown mode, a tile that is not a positive multiple of the patch, larger than
            the image needs, too many patches for one pass, or an image of more than
            :data:`MAX_IMAGE_PIXELS` pixels.
        DataError: the image is not a ``(C, H, W)`` tensor.
    """
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or min(image.shape) < 1:
        raise DataError(f"expected one (C, H, W) image, got a tensor of shape {tuple(image.shape)}")
    if mode not in ("tile", "pad"):
        raise ConfigError(f"mode must be 'tile' or 'pad', got {mode!r}")
    p = int(model.patch_size)
    h, w = image.shape[-2:]
    check_image_pixels(h, w)
    if mode == "tile":
        largest = math.ceil(max(h, w) / p) * p
        if tile is None:
            tile, fit_tile = max(64, p), True
        tile = int(tile)
        if tile < 1 or tile % p:
            raise ConfigError(f"tile {tile} must be a positive multiple of the patch size {p}")
        if fit_tile:
            tile = min(tile, largest)
        if tile > largest:
            raise ConfigError(f"tile {tile} is larger than the {w}×{h} image needs; use at most {largest}")
        check_patch_budget(tile, tile, p, max_patches, what="a tile")
        step = tile
    else:
        check_patch_budget(
            h, w, p, max_patches, what="the image", hint="reconstruct it in tiles (mode 'tile')"
        )
        step = p
    ph, pw = (-h) % step, (-w) % step
    pad_mode = "reflect" if min(h, w) > max(ph, pw) else "replicate"
    padded = F.pad(image[None], (0, pw, 0, ph), mode=pad_mode) if (ph or pw) else image[None]
    with torch.no_grad():
        if mode == "pad":
            rec = model.reconstruct(padded)
            n_tiles = 1
        else:  # stream: batches of tiles are cut, reconstructed and written into the output one at a time
            r, q = padded.shape[2] // tile, padded.shape[3] // tile
            rec = torch.empty_like(padded)
            cells = [(i, j) for i in range(r) for j in range(q)]
            for start in range(0, len(cells), batch_size):
                chunk = cells[start : start + batch_size]
                batch = torch.cat(
                    [padded[..., i * tile : (i + 1) * tile, j * tile : (j + 1) * tile] for i, j in chunk]
                )
                out = model.reconstruct(batch)
                for k, (i, j) in enumerate(chunk):
                    rec[0, :, i * tile : (i + 1) * tile, j * tile : (j + 1) * tile] = out[k]
            n_tiles = r * q
    return TiledReconstruction(
        image=rec[0, :, :h, :w],
        mode=mode,
        tile=tile if mode == "tile" else None,
        n_tiles=n_tiles,
        pad=(ph, pw),
        pad_mode=pad_mode,
    )
