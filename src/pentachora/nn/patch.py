"""Cutting images into non-overlapping square patches and stitching them back.

Layout of one patch token: channel-major ``(c, p1, p2)`` flattened, patches in raster order
(row by row over the patch grid) — the same order as the reference PatchSVAE, so a patch token of
``C·p·p`` floats is exactly the pixels of one ``C×p×p`` tile.
"""

from __future__ import annotations

import torch
from einops import rearrange

__all__ = ["check_image_batch", "patchify", "unpatchify"]


def _nearest_multiples(size: int, patch: int) -> str:
    lower = (size // patch) * patch
    upper = lower + patch
    return f"{lower} or {upper}" if lower > 0 else f"{upper}"


def check_image_batch(x: torch.Tensor, channels: int, patch: int) -> None:
    """Validate an image batch for a patch model, raising a :class:`ValueError` that says what to fix.

    Checks, in this order: a tensor; a floating dtype; 4 dims ``(B, C, H, W)``; ``B ≥ 1``; ``C == channels``;
    ``H, W ≥ patch``; ``H`` and ``W`` divisible by ``patch``; every pixel finite.

    Args:
        x: image batch ``(B, C, H, W)``.
        channels: the channel count the model was built for.
        patch: the model's square patch size in pixels.

    Raises:
        TypeError: ``x`` is not a floating-point tensor.
        ValueError: wrong number of dims, an empty batch, wrong channel count, image smaller than a patch, a side
            not divisible by the patch size (the message names the nearest valid sizes), or NaN/inf
            pixels (the message counts them).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected an image tensor (B, C, H, W), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"expected a floating-point image tensor, got dtype {x.dtype}; convert first, "
            "e.g. x.float() / 255 for uint8 pixels"
        )
    if x.dim() != 4:
        hint = " (a single image? add a batch axis with x.unsqueeze(0))" if x.dim() == 3 else ""
        raise ValueError(f"expected an image batch of shape (B, C, H, W), got shape {tuple(x.shape)}{hint}")
    b, c, h, w = x.shape
    if b == 0:
        raise ValueError(f"the image batch is empty (shape {tuple(x.shape)}); give at least one image")
    if c != channels:
        raise ValueError(
            f"expected {channels} channel(s), got {c} (input shape {tuple(x.shape)}); "
            "images are (B, C, H, W) with channels first"
        )
    if h < patch or w < patch:
        raise ValueError(
            f"image {h}×{w} is smaller than one {patch}×{patch} patch; use images of at least {patch}×{patch}"
        )
    bad = [(name, size) for name, size in (("height", h), ("width", w)) if size % patch]
    if bad:
        parts = "; ".join(
            f"{name} {size} → nearest valid {_nearest_multiples(size, patch)}" for name, size in bad
        )
        raise ValueError(
            f"image size {h}×{w} is not divisible by the patch size {patch} ({parts}); crop or pad the "
            "images to a multiple of the patch size (`pentachora reconstruct` pads automatically)"
        )
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(x.numel() - int(finite.sum()) - n_nan)
        raise ValueError(
            f"image batch contains non-finite pixels: {n_nan} NaN and {n_inf} inf of {x.numel()}"
        )


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Cut images into non-overlapping ``patch×patch`` tiles.

    Args:
        x: ``(B, C, H, W)`` with ``H`` and ``W`` divisible by ``patch``.
        patch: patch side in pixels.

    Returns:
        ``(B, N, C·patch·patch)`` tokens, ``N = (H/patch)·(W/patch)`` in raster order.
    """
    if x.dim() != 4 or x.shape[-1] % patch or x.shape[-2] % patch:
        raise ValueError(f"patchify needs (B, C, H, W) with H, W divisible by {patch}; got {tuple(x.shape)}")
    return rearrange(x, "b c (gh p1) (gw p2) -> b (gh gw) (c p1 p2)", p1=patch, p2=patch)


def unpatchify(tokens: torch.Tensor, patch: int, height: int, width: int, channels: int) -> torch.Tensor:
    """Stitch patch tokens back into images (the exact inverse of :func:`patchify`).

    Args:
        tokens: ``(B, N, channels·patch·patch)`` with ``N = (height/patch)·(width/patch)``.
        patch: patch side in pixels.
        height, width: image size in pixels (multiples of ``patch``).
        channels: channel count ``C``.

    Returns:
        ``(B, C, height, width)`` images.
    """
    if height % patch or width % patch:
        raise ValueError(f"height {height} and width {width} must be multiples of the patch size {patch}")
    gh, gw = height // patch, width // patch
    expected = (gh * gw, channels * patch * patch)
    if tokens.dim() != 3 or tuple(tokens.shape[1:]) != expected:
        raise ValueError(
            f"unpatchify expects tokens (B, {expected[0]}, {expected[1]}) for a {channels}×{height}×{width} "
            f"image with {patch}-pixel patches; got {tuple(tokens.shape)}"
        )
    return rearrange(
        tokens, "b (gh gw) (c p1 p2) -> b c (gh p1) (gw p2)", gh=gh, gw=gw, c=channels, p1=patch, p2=patch
    )
