"""Real images: the embedded scikit-image photographs, folders, Hugging Face datasets, crops, metrics.

Pixel convention (used everywhere in pentachora):

* Loaders return float32 tensors of shape (3, H, W) with values in **[0, 1]** ("pixel space").
  Grayscale is replicated to 3 channels; RGBA / LA / palette images with transparency are composited
  over a white background; 16-bit images are scaled by their type's maximum.
* Models see **model space** ``to_model_space(x) = 2x − 1`` ∈ [−1, 1]. :class:`ImageCropSource`
  yields model-space batches. Decoders' outputs go back with ``to_pixel_space(y) = ((y + 1) / 2)``
  clamped to [0, 1].
* PSNR is reported in [0, 1] pixel space, per image: ``psnr = 10·log10(1 / MSE)`` (so an MSE of
  0.01 is 20 dB). Note that an MSE measured in model space is 4× the pixel-space MSE.

The embedded default is the set of natural RGB photographs bundled inside scikit-image's package
data folder (read straight from disk; nothing is downloaded). The held-out split is of **whole
images** (:data:`HELDOUT_PHOTOS`: chelsea and coffee; options are chosen on :data:`VALIDATION_PHOTOS`); the stereo pair ``motorcycle_left`` /
``motorcycle_right`` stays together on the training side.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import weakref
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from einops import rearrange
from PIL import Image, UnidentifiedImageError

from pentachora.data.seeding import step_generator
from pentachora.errors import DataError

logger = logging.getLogger(__name__)

SAMPLE_PHOTOS: tuple[str, ...] = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "retina.jpg",
    "ihc.png",
)
"""The natural RGB photographs shipped inside scikit-image's ``data`` folder (file names)."""

HELDOUT_PHOTOS: tuple[str, ...] = ("chelsea.png", "coffee.png")
"""Whole photographs held out for evaluation (a cat and a coffee cup: 300×451 and 400×600)."""

VALIDATION_PHOTOS: tuple[str, ...] = ("cell.png", "clock_motion.png")
"""Bundled grayscale photographs that no split trains on: the validation split, where benchmarks
choose their options (learning rates, designs) so the held-out photos stay untouched until the
report. A microscope image (550×660) and a photo of a clock (300×400), replicated to 3 channels."""

GRAYSCALE_PHOTOS: tuple[str, ...] = (
    "camera.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "moon.png",
    "coins.png",
)
"""Grayscale natural images also bundled; opt-in for training (replicated to 3 channels)."""

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
"""File extensions :func:`load_image_folder` reads (case-insensitive)."""

HELDOUT_EVERY: int = 10
""":func:`split_heldout` holds out every 10th image of a folder / HF dataset (at least one)."""

DEFAULT_HF_MAX_IMAGES: int = 2000
"""Default cap on images :func:`load_hf_images` materialises in memory."""


# ----------------------------------------------------------------------------------------------
# Pixel conventions and metrics
# ----------------------------------------------------------------------------------------------


def to_model_space(x01: torch.Tensor) -> torch.Tensor:
    """Pixel space [0, 1] → model space [−1, 1]: ``2x − 1`` (any shape)."""
    return x01 * 2 - 1


def to_pixel_space(y: torch.Tensor) -> torch.Tensor:
    """Model space → pixel space: ``((y + 1) / 2)`` clamped to [0, 1] (any shape)."""
    return ((y + 1) / 2).clamp(0, 1)


def _as_batch(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() == 3:
        return a.unsqueeze(0), b.unsqueeze(0), True
    if a.dim() != 4:
        raise ValueError(f"expected (C, H, W) or (B, C, H, W), got {tuple(a.shape)}")
    return a, b, False


def psnr(a01: torch.Tensor, b01: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in [0, 1] pixel space, per image: ``10·log10(1 / MSE)``.

    Args:
        a01: (B, C, H, W) or (C, H, W), values in [0, 1].
        b01: Same shape as ``a01``.

    Returns:
        (B,) float64 tensor of dB values (a 0-d tensor for unbatched input); ``inf`` where equal.
    """
    a, b, single = _as_batch(a01, b01)
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(dim=1)
    out = 10 * torch.log10(1.0 / mse)
    return out[0] if single else out


def ssim(a01: torch.Tensor, b01: torch.Tensor) -> torch.Tensor:
    """Structural similarity per image (``skimage.metrics.structural_similarity``, data_range=1).

    Args:
        a01: (B, C, H, W) or (C, H, W), values in [0, 1]; H and W at least 7.
        b01: Same shape as ``a01``.

    Returns:
        (B,) float64 tensor (a 0-d tensor for unbatched input).
    """
    from skimage.metrics import structural_similarity

    a, b, single = _as_batch(a01, b01)
    an = a.detach().cpu().double().numpy()
    bn = b.detach().cpu().double().numpy()
    vals = [structural_similarity(x, y, channel_axis=0, data_range=1.0) for x, y in zip(an, bn, strict=True)]
    out = torch.tensor(vals, dtype=torch.float64)
    return out[0] if single else out


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def pil_to_tensor01(img: Image.Image) -> torch.Tensor:
    """Convert a PIL image of any common mode to (3, H, W) float32 in [0, 1].

    Grayscale is replicated to 3 channels; transparency is composited over white; 16-bit and
    32-bit integer images are scaled by their type's maximum, float images are clipped to [0, 1].
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        if img.mode == "F":
            arr = np.clip(arr, 0.0, 1.0)
        else:
            arr = arr / (65535.0 if img.mode.startswith("I;16") or arr.max() <= 65535 else 2**32 - 1)
        arr = np.repeat(arr[..., None], 3, axis=-1)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float().clamp(0, 1)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float() / 255.0


class MissingDataError(DataError, FileNotFoundError):
    """A data file or folder does not exist (a :class:`DataError` and a ``FileNotFoundError``)."""


#: Where each image tensor returned by the loaders came from (for messages that name the file), by
#: ``id`` of the tensor; an entry leaves with its tensor.
_ORIGINS: dict[int, str] = {}


def image_origin(image: torch.Tensor) -> str | None:
    """The file (or dataset row) an image tensor was loaded from, if a loader here made it."""
    return _ORIGINS.get(id(image))


def _remember(image: torch.Tensor, origin: str) -> torch.Tensor:
    key = id(image)
    with contextlib.suppress(TypeError):
        weakref.finalize(image, _ORIGINS.pop, key, None)
        _ORIGINS[key] = origin
    return image


def load_image_file(path: str | os.PathLike[str], max_pixels: int | None = None) -> torch.Tensor:
    """Load one image file as (3, H, W) float32 in [0, 1] (see :func:`pil_to_tensor01`).

    Args:
        path: The file.
        max_pixels: Refuse an image of more pixels, read from its header before it is decoded.

    Raises:
        MissingDataError: the file does not exist (also a ``FileNotFoundError``).
        DataError: the file is empty, a folder, not an image, truncated or corrupt (names the file).
    """
    path = Path(path)
    if not path.exists():
        raise MissingDataError(f"image file {str(path)!r} does not exist")
    if not path.is_file():
        raise DataError(f"{str(path)!r} is not a file (expected an image)")
    if path.stat().st_size == 0:
        raise DataError(f"image file {str(path)!r} is empty (0 bytes)")
    try:
        with Image.open(path) as img:
            if max_pixels is not None and img.size[0] * img.size[1] > max_pixels:
                w, h = img.size
                raise DataError(
                    f"image file {str(path)!r} is {w}×{h} = {w * h:,} pixels, more than the {max_pixels:,} "
                    "allowed here; crop or downscale it first"
                )
            img.load()
            tensor = pil_to_tensor01(img)
    except Image.DecompressionBombError as err:
        raise DataError(f"image file {str(path)!r} is too large to decode safely ({err})") from err
    except (OSError, ValueError, SyntaxError, EOFError) as err:  # UnidentifiedImageError is an OSError
        what = (
            "not an image PIL can read" if isinstance(err, UnidentifiedImageError) else "truncated or corrupt"
        )
        raise DataError(f"image file {str(path)!r} is {what} ({err})") from err
    if tensor.ndim != 3 or tensor.shape[1] < 1 or tensor.shape[2] < 1:
        raise DataError(f"image file {str(path)!r} has no pixels (shape {tuple(tensor.shape)})")
    return _remember(tensor, str(path))


def skimage_data_dir() -> Path:
    """The folder of images bundled inside the installed scikit-image package."""
    import skimage.data

    return Path(os.path.dirname(skimage.data.__file__))


@cache
def _load_bundled(name: str) -> torch.Tensor:
    path = skimage_data_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"scikit-image's bundled image {name!r} is missing from {path.parent}")
    logger.debug("loading bundled scikit-image photo %s", path)
    return load_image_file(path)


PhotoSplit = Literal["train", "validation", "heldout", "all"]


def sample_photo_names(split: PhotoSplit = "train", include_grayscale: bool = False) -> tuple[str, ...]:
    """File names of the embedded photographs in a split.

    Args:
        split: ``"train"``, ``"validation"`` (:data:`VALIDATION_PHOTOS`, for choosing options),
            ``"heldout"`` (:data:`HELDOUT_PHOTOS`, for reporting) or ``"all"`` (train + held-out).
        include_grayscale: Add :data:`GRAYSCALE_PHOTOS` (training side only).

    Returns:
        The file names, in :data:`SAMPLE_PHOTOS` order (grayscale ones last).
    """
    if split not in ("train", "validation", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'validation', 'heldout' or 'all', got {split!r}")
    extra = GRAYSCALE_PHOTOS if include_grayscale else ()
    if split == "validation":
        return VALIDATION_PHOTOS
    if split == "heldout":
        return tuple(n for n in SAMPLE_PHOTOS if n in HELDOUT_PHOTOS)
    if split == "train":
        return tuple(n for n in SAMPLE_PHOTOS if n not in HELDOUT_PHOTOS) + extra
    return SAMPLE_PHOTOS + extra


def load_sample_photos(split: PhotoSplit = "train", include_grayscale: bool = False) -> list[torch.Tensor]:
    """The natural photographs bundled with scikit-image, read from disk (no download).

    Args:
        split: ``"train"`` (7 photos), ``"validation"`` (cell, clock_motion: grayscale, never trained
            on), ``"heldout"`` (chelsea, coffee) or ``"all"`` (train + held-out).
        include_grayscale: Also return the grayscale naturals (camera, brick, grass, gravel, moon,
            coins) replicated to 3 channels, on the training side. Off by default so the colour
            statistics stay those of real RGB photographs.

    Returns:
        List of (3, H, W) float32 tensors in [0, 1] (fresh copies; sizes differ per photo).
    """
    names = sample_photo_names(split, include_grayscale)
    return [_load_bundled(n).clone() for n in names]


def load_image_folder(path: str | os.PathLike[str], max_images: int | None = None) -> list[torch.Tensor]:
    """Load every image in a folder (non-recursive), sorted by file name.

    Args:
        path: Folder holding png / jpg / jpeg / bmp / webp files.
        max_images: Keep only the first ``max_images`` files (by name).

    Returns:
        List of (3, H, W) float32 tensors in [0, 1].

    Raises:
        MissingDataError: If the folder does not exist (also a ``FileNotFoundError``).
        DataError: If it is not a folder or holds no readable image file (names the files tried).
    """
    folder = Path(path)
    if not folder.exists():
        raise MissingDataError(f"image folder {str(folder)!r} does not exist or is not a directory")
    if not folder.is_dir():
        raise DataError(f"image folder {str(folder)!r} does not exist or is not a directory (it is a file)")
    try:
        entries = list(folder.iterdir())
    except OSError as err:
        raise DataError(f"cannot list image folder {str(folder)!r} ({err})") from err
    files = sorted(p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if max_images is not None:
        files = files[:max_images]
    if not files:
        others = sorted(p.name for p in entries)[:3]
        seen = f"; it holds {len(entries)} other entries, e.g. {others}" if entries else "; it is empty"
        raise DataError(
            f"image folder {str(folder)!r} contains no image files (looked for "
            f"{', '.join(IMAGE_EXTENSIONS)}){seen}"
        )
    images = []
    failures: list[str] = []
    for p in files:
        try:
            images.append(load_image_file(p))
        except (DataError, OSError) as err:
            logger.warning("skipping unreadable image %s: %s", p, err)
            failures.append(f"{p.name}: {err}")
    if not images:
        raise DataError(
            f"no image in {str(folder)!r} could be read ({len(failures)} tried; first: {failures[0]})"
        )
    logger.info("loaded %d images from %s", len(images), folder)
    return images


@contextlib.contextmanager
def hf_dataset_errors(name: str, split: str) -> Iterator[None]:
    """Turn the failures of ``datasets`` (offline, unknown dataset or split, network errors) into a
    :class:`DataError` that says what is needed; our own errors pass through."""
    try:
        yield
    except (DataError, KeyError, TypeError):
        raise
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(
            f"cannot read the Hugging Face dataset {name!r} (split {split!r}): {first}. A Hub dataset "
            "needs internet access (or a copy in the local Hugging Face cache with HF_DATASETS_OFFLINE=1); "
            "without it, pass a local dataset folder as the name or use --data folder:PATH"
        ) from err


def load_hf_images(
    name: str,
    split: str = "train",
    column: str = "image",
    max_images: int | None = DEFAULT_HF_MAX_IMAGES,
    **load_kwargs: Any,
) -> list[torch.Tensor]:
    """Load images from a Hugging Face dataset (streamed, so only ``max_images`` are fetched).

    Args:
        name: Dataset name on the Hub (or a local dataset path).
        split: Split to read.
        column: Column holding the images (PIL images, or dicts with ``bytes`` / ``path``).
        max_images: Stop after this many images (``None``: the whole split — beware of memory).
        **load_kwargs: Passed to ``datasets.load_dataset`` (e.g. ``name=`` for a config).

    Returns:
        List of (3, H, W) float32 tensors in [0, 1].

    Raises:
        ImportError: If ``datasets`` is not installed.
        KeyError: If the column does not exist.
        ValueError: If no image was read.
    """
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            "loading Hugging Face datasets needs the 'datasets' package: pip install 'pentachora[hf]'"
        ) from err
    import io

    images: list[torch.Tensor] = []
    with hf_dataset_errors(name, split):
        ds = datasets.load_dataset(name, split=split, streaming=True, **load_kwargs)
        for i, row in enumerate(ds):
            if max_images is not None and i >= max_images:
                break
            if column not in row:
                raise KeyError(f"dataset {name!r} has no column {column!r}; columns: {sorted(row)}")
            item = row[column]
            where = f"{name}[{split}] row {i}"
            if isinstance(item, Image.Image):
                images.append(_remember(pil_to_tensor01(item), where))
            elif isinstance(item, dict) and item.get("bytes") is not None:
                try:
                    with Image.open(io.BytesIO(item["bytes"])) as img:
                        img.load()
                        images.append(_remember(pil_to_tensor01(img), where))
                except (OSError, ValueError, SyntaxError, EOFError) as err:
                    raise DataError(f"{where}: column {column!r} is not a readable image ({err})") from err
            elif isinstance(item, dict) and item.get("path"):
                images.append(load_image_file(item["path"]))
            elif isinstance(item, str):
                images.append(load_image_file(item))
            else:
                raise TypeError(f"column {column!r} of {name!r} holds {type(item).__name__}, not an image")
    if not images:
        raise DataError(f"no images read from {name!r} split {split!r}")
    logger.info("loaded %d images from Hugging Face dataset %s[%s]", len(images), name, split)
    return images


def split_heldout(
    images: Sequence[torch.Tensor], every: int = HELDOUT_EVERY
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Deterministic split of whole images: every ``every``-th image (index 0, every, ...) is held out.

    With a single image there is nothing to hold out: it is used for both (a warning is logged).

    Args:
        images: The images, in a fixed order.
        every: Hold out indices ``0, every, 2·every, ...``.

    Returns:
        ``(train, heldout)`` lists.
    """
    images = list(images)
    if len(images) == 1:
        logger.warning("only one image: it is used for both training and evaluation")
        return images, images
    held = [im for i, im in enumerate(images) if i % every == 0]
    train = [im for i, im in enumerate(images) if i % every != 0]
    return train, held


# ----------------------------------------------------------------------------------------------
# Training crops and evaluation tiles
# ----------------------------------------------------------------------------------------------


class ImageCropSource:
    """Random crops of a list of images, a pure function of ``(seed, step)``.

    Per sample: an image is picked uniformly (not by area), then a uniformly random ``crop × crop``
    window, then a horizontal flip with probability ½ (if ``flip``). Batches are in model space.

    Args:
        images: (3, H, W) tensors in [0, 1], each at least ``crop_size`` on both sides.
        crop_size: Side of the square crops in pixels.
        batch_size: Crops per batch.
        seed: Base seed.
        flip: Random horizontal flips.

    Raises:
        ValueError: If there are no images, one is not (3, H, W), or one is smaller than the crop.
    """

    def __init__(
        self,
        images: Sequence[torch.Tensor],
        crop_size: int,
        batch_size: int,
        seed: int = 0,
        flip: bool = True,
    ) -> None:
        images = list(images)
        if not images:
            raise DataError("ImageCropSource needs at least one image")
        if crop_size < 1 or batch_size < 1:
            raise DataError(f"crop_size and batch_size must be >= 1, got {crop_size}, {batch_size}")
        for i, im in enumerate(images):
            origin = image_origin(im)
            label = f"image {i}" + (f" ({origin})" if origin else "")
            if im.dim() != 3 or im.shape[0] != 3:
                raise DataError(f"{label} has shape {tuple(im.shape)}, expected (3, H, W)")
            if im.shape[1] < crop_size or im.shape[2] < crop_size:
                raise DataError(
                    f"{label} is {im.shape[1]}×{im.shape[2]} pixels, smaller than the "
                    f"{crop_size}×{crop_size} crop; use a smaller crop or larger images"
                )
        self.images = [im.float() for im in images]
        self.crop_size = crop_size
        self.batch_size = batch_size
        self.seed = seed
        self.flip = flip
        self._heights = torch.tensor([im.shape[1] for im in self.images])
        self._widths = torch.tensor([im.shape[2] for im in self.images])

    def batch(self, step: int) -> torch.Tensor:
        """The batch for ``step``: (B, 3, crop, crop) float32 in model space [−1, 1]."""
        g = step_generator(self.seed, step)
        b, c = self.batch_size, self.crop_size
        which = torch.randint(0, len(self.images), (b,), generator=g)
        u = torch.rand((b, 2), generator=g, dtype=torch.float64)
        top = (u[:, 0] * (self._heights[which] - c + 1)).floor().long()
        left = (u[:, 1] * (self._widths[which] - c + 1)).floor().long()
        flips = torch.rand((b,), generator=g) < 0.5
        crops = torch.stack(
            [
                self.images[i][:, t : t + c, l_ : l_ + c]
                for i, t, l_ in zip(which.tolist(), top.tolist(), left.tolist(), strict=True)
            ]
        )
        if self.flip:
            crops = torch.where(flips.view(b, 1, 1, 1), crops.flip(-1), crops)
        return to_model_space(crops)

    def __repr__(self) -> str:
        return (
            f"ImageCropSource(n_images={len(self.images)}, crop_size={self.crop_size}, "
            f"batch_size={self.batch_size}, seed={self.seed}, flip={self.flip})"
        )


def heldout_tiles(
    images: Sequence[torch.Tensor], tile: int, max_per_image: int | None = None
) -> torch.Tensor:
    """Deterministic evaluation tiles: a centred grid of non-overlapping ``tile × tile`` tiles.

    Each image contributes ``floor(H / tile) · floor(W / tile)`` tiles in row-major order; the
    leftover border is split evenly on both sides. With ``max_per_image`` an evenly spaced subset of
    each image's tiles is kept. An image smaller than a tile contributes nothing (logged).

    Args:
        images: (3, H, W) tensors in [0, 1].
        tile: Tile side in pixels.
        max_per_image: Cap on tiles per image (evenly spaced over the grid).

    Returns:
        (N, 3, tile, tile) float32 in **pixel space [0, 1]** (apply :func:`to_model_space` before a
        model).

    Raises:
        DataError: If no image yields a tile (a ValueError).
    """
    out: list[torch.Tensor] = []
    for i, im in enumerate(images):
        h, w = im.shape[-2:]
        rows, cols = h // tile, w // tile
        if rows == 0 or cols == 0:
            logger.warning(
                "held-out image %d (%d×%d) is smaller than the %d-pixel tile; skipped", i, h, w, tile
            )
            continue
        top0, left0 = (h - rows * tile) // 2, (w - cols * tile) // 2
        grid = im[:, top0 : top0 + rows * tile, left0 : left0 + cols * tile]
        tiles = rearrange(grid, "c (r th) (q tw) -> (r q) c th tw", th=tile, tw=tile)
        if max_per_image is not None and tiles.shape[0] > max_per_image:
            keep = torch.linspace(0, tiles.shape[0] - 1, max_per_image).round().long()
            tiles = tiles[keep]
        out.append(tiles)
    if not out:
        sizes = ", ".join(f"{im.shape[-2]}×{im.shape[-1]}" for im in images) or "none given"
        raise DataError(
            f"no held-out image is at least {tile}×{tile} pixels (they are {sizes}); use a tile / --image-size "
            "no larger than the smallest side"
        )
    return torch.cat(out).float().contiguous()


def psnr_db_from_mse(mse: float) -> float:
    """PSNR in dB for a pixel-space ([0, 1]) MSE: ``10·log10(1 / mse)`` (``inf`` for 0)."""
    return math.inf if mse <= 0 else 10 * math.log10(1.0 / mse)


class AugmentedCropSource:
    """Random crops from several scales of a list of images, with flips and 90° turns (training variety).

    Each image is resized once to every factor in ``scales`` (antialiased bilinear; a scale at which
    the image would be smaller than the crop is dropped) and the crops are drawn by an
    :class:`ImageCropSource` over that pyramid, so every image scale is picked uniformly. Each crop
    is then turned by a random multiple of 90° (``rot90``) and flipped vertically with
    probability ½ (``vflip``), on top of the horizontal flip. A pure function of ``(seed, step)``.

    Args:
        images: (3, H, W) tensors in [0, 1].
        crop_size: side of the square crops in pixels.
        batch_size: crops per batch.
        seed: base seed.
        scales: resize factors (1 keeps the image; 0.5 halves each side).
        rot90, vflip: the extra augmentations.

    Raises:
        ValueError: no image is at least ``crop_size`` on both sides at any scale.
    """

    def __init__(
        self,
        images: Sequence[torch.Tensor],
        crop_size: int,
        batch_size: int,
        seed: int = 0,
        scales: Sequence[float] = (1.0, 0.75, 0.5),
        rot90: bool = True,
        vflip: bool = True,
    ) -> None:
        pyramid: list[torch.Tensor] = []
        for im in images:
            for s in scales:
                h, w = round(im.shape[-2] * s), round(im.shape[-1] * s)
                if min(h, w) < crop_size:
                    continue
                if s == 1.0:
                    pyramid.append(im.float())
                else:
                    resized = torch.nn.functional.interpolate(
                        im.float()[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False
                    )[0]
                    pyramid.append(resized.clamp(0, 1))
        if not pyramid:
            raise ValueError(
                f"no image is at least {crop_size}×{crop_size} pixels at any of the scales {scales}"
            )
        self.crops = ImageCropSource(pyramid, crop_size, batch_size, seed=seed, flip=True)
        self.seed, self.rot90, self.vflip, self.scales = seed, rot90, vflip, tuple(scales)
        self.batch_size, self.crop_size = batch_size, crop_size

    @property
    def n_images(self) -> int:
        """Images in the pyramid (every usable scale of every image)."""
        return len(self.crops.images)

    def batch(self, step: int) -> torch.Tensor:
        """The batch for ``step``: (B, 3, crop, crop) float32 in model space [−1, 1]."""
        x = self.crops.batch(step)
        g = step_generator(self.seed + 1_000_003, step)
        turns = torch.randint(0, 4 if self.rot90 else 1, (x.shape[0],), generator=g)
        flips = torch.rand((x.shape[0],), generator=g) < (0.5 if self.vflip else 0.0)
        out = [xi.rot90(int(k), dims=(-2, -1)) for xi, k in zip(x, turns.tolist(), strict=True)]
        x = torch.stack(out)
        return torch.where(flips.view(-1, 1, 1, 1), x.flip(-2), x)

    def __repr__(self) -> str:
        return (
            f"AugmentedCropSource(n_images={self.n_images}, crop_size={self.crop_size}, batch_size={self.batch_size}, "
            f"scales={self.scales}, rot90={self.rot90}, vflip={self.vflip}, seed={self.seed})"
        )
