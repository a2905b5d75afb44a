"""Contract tests for pentachora.data.images (embedded photos, folders, crops, tiles, metrics)."""

from __future__ import annotations

import math
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pentachora.data import (
    HELDOUT_PHOTOS,
    SAMPLE_PHOTOS,
    BatchSource,
    ImageCropSource,
    heldout_tiles,
    load_hf_images,
    load_image_folder,
    load_sample_photos,
    parse_data_spec,
    psnr,
    split_heldout,
    ssim,
    to_model_space,
    to_pixel_space,
)
from pentachora.data import images as images_mod


@pytest.fixture(scope="module")
def photos() -> dict[str, list[torch.Tensor]]:
    return {split: load_sample_photos(split) for split in ("train", "heldout", "all")}


def _write_png(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)


# ---- embedded photographs ---------------------------------------------------------------------


def test_photos_load_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the embedded photos must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    images_mod._load_bundled.cache_clear()
    imgs = load_sample_photos("heldout")
    assert len(imgs) == len(HELDOUT_PHOTOS) == 2


def test_photos_are_rgb_in_unit_range(photos):
    for img in photos["all"]:
        assert img.dtype == torch.float32 and img.dim() == 3 and img.shape[0] == 3
        assert img.min() >= 0 and img.max() <= 1
        assert img.shape[1] >= 256 and img.shape[2] >= 256
        assert img.std() > 0.05  # a real picture, not a constant
    assert len(photos["all"]) == len(SAMPLE_PHOTOS) == 9


def test_train_and_heldout_are_disjoint_whole_images(photos):
    train, held, every = photos["train"], photos["heldout"], photos["all"]
    assert len(train) + len(held) == len(every) and len(held) >= 1 and len(train) >= 5
    for h in held:
        assert not any(h.shape == t.shape and torch.equal(h, t) for t in train)
    names_train = images_mod.sample_photo_names("train")
    assert not set(names_train) & set(HELDOUT_PHOTOS)
    # the stereo pair stays on one side of the split
    assert ("motorcycle_left.png" in names_train) == ("motorcycle_right.png" in names_train)


def test_validation_photos_are_outside_every_other_split():
    val = images_mod.sample_photo_names("validation")
    assert val == images_mod.VALIDATION_PHOTOS and len(val) >= 2
    trained = set(images_mod.sample_photo_names("train", include_grayscale=True))
    assert not set(val) & (trained | set(HELDOUT_PHOTOS) | set(images_mod.sample_photo_names("all", True)))
    for im in load_sample_photos("validation"):
        assert im.shape[0] == 3 and min(im.shape[1:]) >= 256 and im.std() > 0.05


def test_loaded_photos_are_copies(photos):
    a = load_sample_photos("heldout")
    a[0].zero_()
    assert load_sample_photos("heldout")[0].max() > 0


def test_grayscale_opt_in():
    names = images_mod.sample_photo_names("train", include_grayscale=True)
    assert "camera.png" in names and "camera.png" not in images_mod.sample_photo_names("heldout", True)
    gray = images_mod._load_bundled("camera.png")
    assert gray.shape[0] == 3 and torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    with pytest.raises(ValueError):
        load_sample_photos("test")  # type: ignore[arg-type]


# ---- pixel convention and metrics -------------------------------------------------------------


def test_space_conversions():
    x = torch.tensor([0.0, 0.25, 1.0])
    assert torch.equal(to_model_space(x), torch.tensor([-1.0, -0.5, 1.0]))
    assert torch.allclose(to_pixel_space(to_model_space(x)), x)
    assert torch.equal(to_pixel_space(torch.tensor([-3.0, 3.0])), torch.tensor([0.0, 1.0]))


def test_psnr_closed_form():
    a = torch.full((2, 3, 8, 8), 0.5)
    b = a.clone()
    b[0] += 0.1  # MSE 0.01 -> 20 dB
    b[1] += 0.01  # MSE 1e-4 -> 40 dB
    p = psnr(a, b)
    assert p.shape == (2,)
    assert torch.allclose(p, torch.tensor([20.0, 40.0], dtype=torch.float64), atol=1e-4)
    assert math.isclose(psnr(a[0], b[0]).item(), 20.0, abs_tol=1e-4)  # unbatched -> 0-d
    assert math.isinf(psnr(a, a)[0].item())
    assert math.isclose(images_mod.psnr_db_from_mse(0.01), 20.0)
    with pytest.raises(ValueError):
        psnr(a, b[:, :2])


def test_ssim_helper():
    g = torch.Generator().manual_seed(0)
    a = torch.rand((2, 3, 32, 32), generator=g)
    s_same = ssim(a, a)
    s_noisy = ssim(a, (a + 0.2 * torch.randn(a.shape, generator=g)).clamp(0, 1))
    assert torch.allclose(s_same, torch.ones(2, dtype=torch.float64))
    assert (s_noisy < 0.9).all()


# ---- crops and tiles --------------------------------------------------------------------------


def test_crop_source_shape_range_determinism(photos):
    src = ImageCropSource(photos["train"], crop_size=32, batch_size=8, seed=5)
    assert isinstance(src, BatchSource)
    x = src.batch(0)
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.min() < 0 < x.max()  # model space
    src.batch(7)
    assert torch.equal(src.batch(0), x)
    assert torch.equal(ImageCropSource(photos["train"], 32, 8, seed=5).batch(0), x)
    assert not torch.equal(src.batch(1), x)
    assert not torch.equal(ImageCropSource(photos["train"], 32, 8, seed=6).batch(0), x)


def test_crops_are_windows_of_the_image_and_flip():
    g = torch.Generator().manual_seed(0)
    img = torch.rand((3, 12, 20), generator=g)
    windows = img.unfold(1, 8, 1).unfold(2, 8, 1)  # (3, 5, 13, 8, 8)
    windows = windows.permute(1, 2, 0, 3, 4).reshape(-1, 3, 8, 8)
    plain = to_pixel_space(ImageCropSource([img], 8, 16, seed=1, flip=False).batch(0))
    for crop in plain:
        assert (windows - crop).abs().flatten(1).amax(1).min() < 1e-6
    flipped = to_pixel_space(ImageCropSource([img], 8, 64, seed=1, flip=True).batch(0))
    n_flipped = sum(int((windows - c.flip(-1)).abs().flatten(1).amax(1).min() < 1e-6) for c in flipped)
    assert 10 < n_flipped < 54  # about half are mirrored windows


def test_crop_larger_than_image_is_a_clear_error():
    with pytest.raises(ValueError, match="smaller than the 64×64 crop"):
        ImageCropSource([torch.rand(3, 100, 100), torch.rand(3, 40, 200)], crop_size=64, batch_size=2)
    with pytest.raises(ValueError, match="expected \\(3, H, W\\)"):
        ImageCropSource([torch.rand(1, 100, 100)], crop_size=8, batch_size=2)
    with pytest.raises(ValueError):
        ImageCropSource([], crop_size=8, batch_size=2)


def test_heldout_tiles_grid(photos):
    held = photos["heldout"]
    tiles = heldout_tiles(held, 64)
    expected = sum((h.shape[1] // 64) * (h.shape[2] // 64) for h in held)
    assert tiles.shape == (expected, 3, 64, 64)
    assert tiles.min() >= 0 and tiles.max() <= 1
    assert torch.equal(heldout_tiles(held, 64), tiles)
    img = held[0]  # first tile is the top-left of the centred grid
    top0, left0 = (img.shape[1] % 64) // 2, (img.shape[2] % 64) // 2
    assert torch.equal(tiles[0], img[:, top0 : top0 + 64, left0 : left0 + 64])
    second = img[:, top0 : top0 + 64, left0 + 64 : left0 + 128]
    assert torch.equal(tiles[1], second)  # row-major
    capped = heldout_tiles(held, 64, max_per_image=3)
    assert capped.shape[0] == 3 * len(held)
    with pytest.raises(ValueError):
        heldout_tiles([torch.rand(3, 10, 10)], 16)


# ---- folders ----------------------------------------------------------------------------------


def test_folder_loader(tmp_path: Path):
    rng = np.random.default_rng(0)
    _write_png(tmp_path / "a_rgb.png", rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    _write_png(tmp_path / "b_gray.png", rng.integers(0, 256, (16, 16), dtype=np.uint8))
    rgba = np.zeros((10, 12, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:5, :, 3] = 255  # top half opaque red, bottom half transparent
    _write_png(tmp_path / "c_rgba.png", rgba)
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(tmp_path / "d.JPG")
    (tmp_path / "notes.txt").write_text("not an image")
    imgs = load_image_folder(tmp_path)
    assert [tuple(i.shape) for i in imgs] == [(3, 20, 30), (3, 16, 16), (3, 10, 12), (3, 24, 24)]
    for img in imgs:
        assert img.dtype == torch.float32 and img.min() >= 0 and img.max() <= 1
    gray = imgs[1]
    assert torch.equal(gray[0], gray[2])
    red = imgs[2]
    assert torch.allclose(red[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(red[:, -1, 0], torch.ones(3))  # transparent -> white
    assert len(load_image_folder(tmp_path, max_images=2)) == 2


def test_folder_errors(tmp_path: Path):
    with pytest.raises(ValueError, match="contains no image files"):
        load_image_folder(tmp_path)
    (tmp_path / "readme.md").write_text("hi")
    with pytest.raises(ValueError, match="contains no image files"):
        load_image_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "missing")


def test_split_heldout():
    imgs = [torch.full((3, 4, 4), float(i)) for i in range(12)]
    train, held = split_heldout(imgs)
    assert [int(h[0, 0, 0]) for h in held] == [0, 10]
    assert len(train) == 10 and not {int(t[0, 0, 0]) for t in train} & {0, 10}


# ---- specs with images ------------------------------------------------------------------------


def test_images_spec(photos):
    spec = parse_data_spec("images")
    assert spec.kind == "images" and not spec.is_noise
    src = spec.train_source(batch_size=4, image_size=32, seed=0)
    assert isinstance(src, ImageCropSource) and len(src.images) == len(photos["train"])
    assert src.batch(0).shape == (4, 3, 32, 32)
    held = spec.eval_images()
    assert (
        held is not None
        and len(held) == 2
        and all(torch.equal(a, b) for a, b in zip(held, photos["heldout"], strict=True))
    )
    assert spec.eval_noise() is None


def test_folder_spec(tmp_path: Path):
    rng = np.random.default_rng(1)
    for i in range(3):
        _write_png(tmp_path / f"{i}.png", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    spec = parse_data_spec(f"folder:{tmp_path}")
    assert spec.kind == "folder" and spec.path == str(tmp_path)
    assert spec.train_source(2, 16).batch(3).shape == (2, 3, 16, 16)
    held = spec.eval_images()
    assert held is not None and len(held) == 1


def test_hf_spec_parsing():
    s = parse_data_spec("hf:user/pics")
    assert (s.kind, s.hf_name, s.hf_split, s.hf_column) == ("hf", "user/pics", "train", "image")
    s = parse_data_spec("hf:user/pics:validation:img")
    assert (s.hf_split, s.hf_column) == ("validation", "img")
    for bad in ("hf", "hf:", "hf:a:b:c:d", "hf:a::c", "images:x", "folder:"):
        with pytest.raises(ValueError, match="Valid forms"):
            parse_data_spec(bad)


def test_hf_loader_without_datasets_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(ImportError, match="pip install"):
        load_hf_images("user/pics")


def test_augmented_crop_source_is_seeded_varied_and_in_range():
    import torch

    from pentachora.data.images import AugmentedCropSource

    g = torch.Generator().manual_seed(0)
    ims = [torch.rand(3, 40, 60, generator=g), torch.rand(3, 20, 20, generator=g)]
    src = AugmentedCropSource(ims, 16, 8, seed=3, scales=(1.0, 0.5))
    assert src.n_images == 3  # the 20×20 image at 0.5 (10×10) is too small for a 16² crop
    a, b = src.batch(5), src.batch(5)
    assert a.shape == (8, 3, 16, 16) and torch.equal(a, b)
    assert not torch.equal(a, src.batch(6))
    assert a.min() >= -1 and a.max() <= 1
    with pytest.raises(ValueError, match="at any of the scales"):
        AugmentedCropSource([torch.rand(3, 8, 8)], 16, 2)
