"""End-to-end tests of the console script on tiny budgets (what a user types, what they get)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pentachora.cli import app
from pentachora.recipes import load_run_model

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, list(args), catch_exceptions=False)
    return result


def test_help_lists_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for cmd in ("demo", "train", "eval", "reconstruct", "geometry"):
        assert cmd in result.output


def test_cv_table_prints_dimension_dependent_values(tmp_path):
    out = tmp_path / "cv.json"
    result = invoke(
        "geometry",
        "cv-table",
        "-d",
        "16",
        "-d",
        "1024",
        "--trials",
        "2",
        "--samples",
        "500",
        "--json",
        str(out),
    )
    assert result.exit_code == 0
    rows = json.loads(out.read_text())
    by_dim = {r["dim"]: r["cv"] for r in rows}
    assert 0.17 < by_dim[16] < 0.23 and 0.015 < by_dim[1024] < 0.025
    bad = runner.invoke(app, ["geometry", "cv-table", "-d", "3"])
    assert bad.exit_code != 0


def test_train_svae_describe_reference_presets():
    result = invoke("train", "svae", "--preset", "fresnel", "--steps", "0")
    assert result.exit_code == 0
    assert "16,942,419" in result.output and "4,368" in result.output  # params, V·D + D + D² floats
    result = invoke("train", "svae", "--preset", "freckles", "--steps", "0")
    assert "2,557,539" in result.output


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "svae"
    result = invoke(
        "train", "svae", "--preset", "tiny", "--steps", "4", "--batch-size", "4", "--image-size", "32",
        "--eval-every", "2", "--save-every", "2", "--noise-per-type", "2", "--eval-tiles", "3", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    TRAIN_OUTPUT["svae"] = " ".join(result.output.split())
    return out


TRAIN_OUTPUT: dict[str, str] = {}


def test_eval_tiles_caps_the_held_out_tiles_in_train_and_eval(trained_run, tmp_path):
    # two held-out photos (chelsea, coffee): --eval-tiles 3 evaluates 6 tiles
    assert "evaluating on 6 held-out tiles of 32²" in TRAIN_OUTPUT["svae"]
    said = {}
    for cap in ("1", "2"):
        result = invoke(
            "eval", str(trained_run), "--image-size", "32", "--noise-per-type", "1", "--eval-tiles", cap
        )
        assert result.exit_code == 0, result.output
        said[cap] = " ".join(result.output.split())
    assert "on 2 held-out tiles of 32²" in said["1"] and "on 4 held-out tiles of 32²" in said["2"]


def test_train_writes_a_complete_run_folder(trained_run):
    for name in ("train_config.json", "model_config.json", "data.json", "metrics.jsonl", "eval.json",
                 "reconstructions.png", "curves.png", "final/config.json", "final/model.safetensors"):  # fmt: skip
        assert (trained_run / name).is_file(), name
    evaluation = json.loads((trained_run / "eval.json").read_text())
    assert {"psnr_heldout", "ssim_heldout", "mse_noise/cauchy", "cv", "erank"} <= set(evaluation)
    model = load_run_model(trained_run)
    assert model.model_type == "patch_svae"


def test_eval_and_reconstruct_commands(trained_run, tmp_path):
    out = tmp_path / "metrics.json"
    result = invoke(
        "eval",
        str(trained_run),
        "--image-size",
        "32",
        "--noise-per-type",
        "2",
        "--eval-tiles",
        "3",
        "--json",
        str(out),
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert metrics["latent_floats_per_patch"] == 32 * 8 + 8 + 64
    img = (torch.rand(3, 50, 70) * 255).byte().permute(1, 2, 0).numpy()
    Image.fromarray(img).save(tmp_path / "in.png")
    for mode in ("tile", "pad"):
        target = tmp_path / f"out-{mode}.png"
        result = invoke(
            "reconstruct", str(trained_run), str(tmp_path / "in.png"), "-o", str(target), "--mode", mode
        )
        assert result.exit_code == 0, result.output
        assert "PSNR" in result.output and "padded" in result.output
        assert Image.open(target).size == (70, 50)  # same size as the input


def test_clear_errors_for_bad_runs_and_data(tmp_path):
    result = runner.invoke(app, ["eval", str(tmp_path)])
    assert result.exit_code == 2 and "cannot load" in result.output
    (tmp_path / "config.json").write_text('{"model_type": "nope", "config": {}}')
    result = runner.invoke(app, ["eval", str(tmp_path)])
    assert result.exit_code == 2 and "unknown model_type" in result.output
    result = runner.invoke(
        app, ["train", "svae", "--steps", "1", "--data", "bogus", "--out", str(tmp_path / "x")]
    )
    assert result.exit_code != 0 and "bogus" in result.output
    result = runner.invoke(
        app, ["train", "svae", "--steps", "1", "--image-size", "60", "--out", str(tmp_path / "y")]
    )
    assert result.exit_code != 0


def test_train_svae_nosvd_with_the_reference_clip_rule(tmp_path):
    out = tmp_path / "nosvd"
    result = invoke(
        "train", "svae", "--preset", "tiny", "--readout", "linear", "--data", "noise:raw", "--steps", "2",
        "--batch-size", "2", "--image-size", "16", "--noise-per-type", "1", "--grad-clip-mode", "adaptive",
        "--weight-decay", "0", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["grad_clip_mode"] == "adaptive" and cfg["weight_decay"] == 0.0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("clip_threshold" in r for r in records if r.get("split") == "train")
    result = runner.invoke(
        app, ["train", "svae", "--steps", "1", "--grad-clip-mode", "adaptive", "--grad-clip", "0",
              "--out", str(tmp_path / "z")],
    )  # fmt: skip
    assert result.exit_code != 0 and "adaptive" in result.output
    result = runner.invoke(app, ["train", "svae", "--steps", "1", "--grad-clip-mode", "auto"])
    assert result.exit_code != 0 and "--grad-clip-mode" in result.output


def test_demo_runs_end_to_end_on_a_tiny_budget(tmp_path):
    result = invoke(
        "demo", "--steps", "2", "--batch-size", "2", "--image-size", "32", "--eval-tiles", "3",
        "--noise-per-type", "2", "--out", str(tmp_path), "--results", str(tmp_path / "demo"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["models"] and all("psnr_heldout" in m for m in summary["models"].values())
    # the results pair quotes the printed figures and records the command that made them
    md = (tmp_path / "demo.md").read_text()
    assert "Made by `pentachora demo --steps 2 " in md and "--results" in md
    for label, m in summary["models"].items():
        assert label in md and f"{m['psnr_heldout']:.2f} dB / {m['ssim_heldout']:.3f}" in md
    assert json.loads((tmp_path / "demo.json").read_text())["models"].keys() == summary["models"].keys()
    assert (tmp_path / "reconstructions.png").is_file() and (tmp_path / "curves.png").is_file()
    # the same command again: the results pair inside --out is the demo's own, not a stranger's
    again = invoke(
        "demo", "--steps", "2", "--batch-size", "2", "--image-size", "32", "--eval-tiles", "3",
        "--noise-per-type", "2", "--out", str(tmp_path), "--results", str(tmp_path / "demo"), "--models", "svae",
    )  # fmt: skip
    assert again.exit_code == 0, again.output


def test_demo_cli_names_the_recipe_contenders():
    from pentachora.cli.demo import DEFAULT_MODELS, DEMO_MODEL_NAMES
    from pentachora.recipes.demo import DEMO_MODELS

    assert tuple(DEMO_MODELS) == DEMO_MODEL_NAMES and set(DEFAULT_MODELS) <= set(DEMO_MODELS)


def test_cli_grad_clip_choices_are_the_trainer_modes():
    from pentachora.cli.autoencoders import GRAD_CLIP_MODE_CHOICES
    from pentachora.training import GRAD_CLIP_MODES

    assert GRAD_CLIP_MODE_CHOICES == GRAD_CLIP_MODES


def test_geometry_cli_default_dims_are_the_recipe_defaults():
    from pentachora.cli.geometry import DEFAULT_DIMS as CLI_DIMS
    from pentachora.recipes.geometry import DEFAULT_DIMS

    assert CLI_DIMS == DEFAULT_DIMS


def test_cli_memory_modes_are_the_recipe_modes():
    from typing import get_args

    from pentachora.cli.memory import MemoryMode
    from pentachora.memory.modes import TRAINING_MODES

    assert get_args(MemoryMode) == TRAINING_MODES
