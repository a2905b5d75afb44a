"""Image tiling in the library (autoencoders/tiling.py), the image grid writer, and `--tile` bounds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pentachora.autoencoders.tiling import MAX_PATCHES_PER_PASS, check_patch_budget, reconstruct_image
from pentachora.cli import app
from pentachora.diagnostics.plots import save_image_grid
from pentachora.errors import ConfigError, DataError

runner = CliRunner()


class Recorder(torch.nn.Module):
    """A stand-in patch autoencoder: ``reconstruct`` adds the index of each call's first tile."""

    patch_size = 8

    def __init__(self, transform=None) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []
        self.transform = transform

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return x if self.transform is None else self.transform(x)


def test_tile_and_pad_return_the_input_size_and_say_what_they_did():
    img = torch.rand(3, 50, 70, generator=torch.Generator().manual_seed(0))
    model = Recorder()
    tiled = reconstruct_image(model, img, mode="tile", tile=32)
    assert tiled.image.shape == img.shape and torch.equal(tiled.image, img)
    assert (tiled.mode, tiled.tile, tiled.n_tiles, tiled.pad, tiled.pad_mode) == (
        "tile",
        32,
        6,
        (14, 26),
        "reflect",
    )
    assert tiled.describe() == "as 6 tiles of 32×32, reflect-padded by 14×26 px then cropped back"
    assert model.shapes == [(6, 3, 32, 32)]
    padded = reconstruct_image(model, img[None], mode="pad")
    assert padded.image.shape == img.shape and torch.equal(padded.image, img)
    assert padded.describe() == "as the whole image at once, reflect-padded by 6×2 px then cropped back"
    assert model.shapes[-1] == (1, 3, 56, 72)
    exact = reconstruct_image(Recorder(), torch.rand(3, 64, 64), tile=32)
    assert exact.pad == (0, 0) and exact.describe() == "as 4 tiles of 32×32"


def test_tiles_are_stitched_back_in_place():
    img = torch.arange(3 * 40 * 24, dtype=torch.float32).reshape(3, 40, 24)
    # each tile's reconstruction is its own flip: stitched back, every 8×8 block is flipped in place
    tiled = reconstruct_image(Recorder(lambda x: x.flip(-1)), img, mode="tile", tile=8, batch_size=5)
    blocks = img.unfold(1, 8, 8).unfold(2, 8, 8)
    expected = blocks.flip(-1).permute(0, 1, 3, 2, 4).reshape(3, 40, 24)
    assert torch.equal(tiled.image, expected) and tiled.n_tiles == 15


def test_small_images_replicate_and_default_tiles_fit():
    tiny = torch.rand(3, 3, 4)
    rec = reconstruct_image(Recorder(), tiny)  # default tile 64 is shrunk to what the image needs (8)
    assert rec.tile == 8 and rec.pad_mode == "replicate" and rec.image.shape == tiny.shape
    assert torch.equal(rec.image, tiny)
    with pytest.raises(ConfigError, match="larger than the 4×3 image needs; use at most 8"):
        reconstruct_image(Recorder(), tiny, tile=64)
    assert reconstruct_image(Recorder(), tiny, tile=64, fit_tile=True).tile == 8


@pytest.mark.parametrize(
    ("tile", "match"), [(0, "positive multiple"), (-5, "positive multiple"), (12, "multiple")]
)
def test_bad_tiles_are_refused(tile, match):
    with pytest.raises(ConfigError, match=match):
        reconstruct_image(Recorder(), torch.rand(3, 64, 64), tile=tile)


def test_patch_budget_bounds_one_pass():
    assert check_patch_budget(1024, 1024, 8) == MAX_PATCHES_PER_PASS
    with pytest.raises(ConfigError, match="more than the 16,384"):
        check_patch_budget(1032, 1024, 8)
    big = torch.zeros(1, 1, 1).expand(3, 2048, 1024)  # no memory: a view
    with pytest.raises(ConfigError, match=r"32,768 patches.*in tiles"):
        reconstruct_image(Recorder(), big, mode="pad")
    with pytest.raises(ConfigError, match="mode"):
        reconstruct_image(Recorder(), torch.rand(3, 8, 8), mode="zoom")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="shape"):
        reconstruct_image(Recorder(), torch.rand(2, 3, 8, 8))


def test_save_image_grid_layouts(tmp_path):
    x = torch.rand(5, 3, 4, 6)
    square = Image.open(save_image_grid(x, tmp_path / "a.png", nrow=None, pad=1))
    assert square.size == (3 * 7 + 1, 2 * 5 + 1)  # ⌈√5⌉ = 3 per row, 2 rows
    row = Image.open(save_image_grid(x, tmp_path / "b.png"))  # default: up to 8 per row
    assert row.size == (5 * 8 + 2, 4 + 4)
    one = torch.rand(1, 3, 7, 9)
    exact = save_image_grid(one, tmp_path / "c.png", nrow=1, pad=0)
    back = torch.tensor(np.array(Image.open(exact))).permute(2, 0, 1).float() / 255
    assert torch.allclose(back, one[0], atol=1 / 255)
    gray = Image.open(save_image_grid(torch.rand(4, 1, 3, 3), tmp_path / "g.png", nrow=None, pad=0))
    assert gray.mode == "L" and gray.size == (6, 6)


# ----------------------------------------------------------------------------- through the CLI
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiling") / "svae"
    result = runner.invoke(
        app,
        ["train", "svae", "--steps", "1", "--batch-size", "2", "--image-size", "16", "--data", "noise",
         "--noise-per-type", "1", "--eval-every", "0", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def photo(tmp_path):
    img = (torch.rand(3, 20, 30, generator=torch.Generator().manual_seed(1)) * 255).byte()
    path = tmp_path / "in.png"
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(path)
    return path


@pytest.mark.parametrize("tile", ["-5", "0", "5000"])
def test_reconstruct_tile_out_of_bounds_is_a_usage_error(run_dir, photo, tmp_path, tile):
    result = runner.invoke(
        app, ["reconstruct", str(run_dir), str(photo), "-o", str(tmp_path / "o.png"), "--tile", tile]
    )
    assert result.exit_code == 2 and "--tile" in result.output, result.output
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize(
    ("tile", "expect"), [("12", "multiple of the patch size 8"), ("64", "use at most 32")]
)
def test_reconstruct_tile_checked_against_patch_and_image(run_dir, photo, tmp_path, tile, expect):
    result = runner.invoke(
        app, ["reconstruct", str(run_dir), str(photo), "-o", str(tmp_path / "o.png"), "--tile", tile]
    )
    assert result.exit_code == 2, result.output
    line = [ln for ln in result.output.splitlines() if ln.startswith("error: ")]
    assert len(line) == 1 and "--tile" in line[0] and expect in line[0], result.output


def test_reconstruct_uses_the_training_size_and_writes_other_formats(run_dir, photo, tmp_path):
    assert json.loads((run_dir / "data.json").read_text())["image_size"] == 16
    result = runner.invoke(app, ["reconstruct", str(run_dir), str(photo), "-o", str(tmp_path / "o.jpg")])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # rich wraps at the terminal width
    assert "as 4 tiles of 16×16, reflect-padded by 12×2 px then cropped back" in said
    assert Image.open(tmp_path / "o.jpg").size == (30, 20)


def test_reconstruct_refuses_a_non_image_input(run_dir, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    result = runner.invoke(app, ["reconstruct", str(run_dir), str(bad), "-o", str(tmp_path / "o.png")])
    assert result.exit_code == 2 and "notes.png" in result.output and "Traceback" not in result.output
    result = runner.invoke(
        app, ["reconstruct", str(run_dir), str(tmp_path / "nope.png"), "-o", str(tmp_path / "o.png")]
    )
    assert result.exit_code == 2 and "does not exist" in result.output


def test_sample_size_is_bounded(tmp_path):
    from pentachora.autoencoders.geovae import GeoVAE, GeoVAEConfig

    torch.manual_seed(0)
    ckpt = tmp_path / "geovae"
    GeoVAE(GeoVAEConfig.preset("tiny-12")).save_pretrained(ckpt)
    ok = runner.invoke(app, ["sample", str(ckpt), "-n", "2", "--size", "16", "-o", str(tmp_path / "s.png")])
    assert ok.exit_code == 0, ok.output
    assert runner.invoke(app, ["sample", str(ckpt), "--size", "100000"]).exit_code == 2
    assert runner.invoke(app, ["sample", str(ckpt), "-n", "100000"]).exit_code == 2
    result = runner.invoke(app, ["sample", str(ckpt), "--size", "2048", "-o", str(tmp_path / "s.png")])
    assert result.exit_code == 2 and "more than the 16,384" in result.output, result.output
    result = runner.invoke(
        app, ["sample", str(ckpt), "-n", "1000", "--size", "512", "-o", str(tmp_path / "s.png")]
    )
    assert result.exit_code == 2 and "lower -n or --size" in result.output, result.output
    result = runner.invoke(app, ["sample", str(ckpt), "--size", "20", "-o", str(tmp_path / "s.png")])
    assert result.exit_code == 2 and "multiple of" in result.output


def test_an_oversized_image_is_refused_before_it_is_decoded(run_dir, photo, tmp_path, monkeypatch):
    """A 79 KB PNG of 9000×9000 pixels made tile mode take 7 GB: the size is read from the header."""
    import pentachora.autoencoders.tiling as tiling
    from pentachora.data import images

    monkeypatch.setattr(tiling, "MAX_IMAGE_PIXELS", 20 * 30 - 1)  # the photo is one pixel too many
    decoded = []
    real = images.pil_to_tensor01
    monkeypatch.setattr(images, "pil_to_tensor01", lambda img: decoded.append(1) or real(img))
    result = runner.invoke(app, ["reconstruct", str(run_dir), str(photo), "-o", str(tmp_path / "o.png")])
    assert result.exit_code == 2, result.output
    assert "30×20 = 600 pixels, more than the 599" in " ".join(result.output.split()) and not decoded
    assert not (tmp_path / "o.png").exists()


def test_the_library_refuses_an_oversized_image_in_both_modes():
    huge = torch.zeros(3, 1, 1).expand(3, 6000, 5000)  # no storage behind it
    for mode in ("tile", "pad"):
        with pytest.raises(ConfigError, match="30,000,000 pixels"):
            reconstruct_image(Recorder(), huge, mode=mode, tile=64)


def test_streamed_tiles_equal_a_whole_batch_reconstruction():
    """Tile mode now writes each batch of tiles into the output; the result must not depend on the batch."""
    img = torch.rand(3, 45, 70, generator=torch.Generator().manual_seed(2))

    def flip(x):
        return x.flip(-1) * 2 + x.mean(dim=(1, 2, 3), keepdim=True)  # per tile, like a patch model

    whole = reconstruct_image(Recorder(flip), img, tile=16, batch_size=1000).image
    for batch_size in (1, 3, 7):
        assert torch.equal(
            reconstruct_image(Recorder(flip), img, tile=16, batch_size=batch_size).image, whole
        )
