"""Smoke tests of the autoencoder benchmark's budget modes (issue 13) at a toy size."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "autoencoders.py"


def load():
    spec = importlib.util.spec_from_file_location("bench_autoencoders_budget", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(**kw) -> argparse.Namespace:
    base = dict(
        budget_kind="steps", chunk_steps=2, curve_points=2, curve_side=64, warmup_fraction=0.1, schedule="cosine",
        grad_clip=1.0, align_fraction=0.1, batch_size=2, image_size=16, noise_fraction=0.5, seeds=[0],
    )  # fmt: skip
    base.update(kw)
    return argparse.Namespace(**base)


def test_interleaved_runner_charges_each_contender_and_keeps_curves():
    bench = load()
    small = dict(patch_size=8, V=8, D=8, enc_hidden=16, dec_hidden=16, enc_depth=1, dec_depth=1)
    small.update(bottleneck_hidden=8, inverse_hidden=8, cv_patches=2, cv_points=8, cv_samples=4)
    factories = {
        "GeoVAE": lambda: bench.GeoVAE(bench.GeoVAEConfig(**small, bounded_heads=True)),
        "NoSVD": lambda: bench.PatchSVAE(bench.PatchSVAEConfig(patch_size=8, V=8, D=8, hidden=16, depth=1, readout="linear")),
    }  # fmt: skip
    args = _args()
    images = [torch.rand(3, 32, 48)]
    runners = bench.train_interleaved(
        factories, dict.fromkeys(factories, 1e-3), lambda: bench.MixedSource(2, 16, 0.5, "clamp", 0),
        args, torch.device("cpu"), 0, 5.0, images,
    )  # fmt: skip
    for r in runners.values():
        assert r.step == 5 and r.nonfinite == 0 and r.cpu_s > 0 and r.wall_s > 0
        assert [c["step"] for c in r.curve] == [3, 5] or [c["step"] for c in r.curve] == [4, 5]
        assert all(math.isfinite(c["psnr"]) for c in r.curve)
    # the GeoVAE runner applied the recipe's hand-off weights after the alignment phase
    assert (
        runners["GeoVAE"].model.loss_weights["cv_enc_weight"] == bench.GEOVAE_HANDOFF_WEIGHTS["cv_enc_weight"]
    )
    # same seed → same initial weights across runs; a contender's lr schedule reaches 0 at the budget's end
    assert runners["GeoVAE"]._lr_factor() < 1e-6


def test_codec_curves_and_model_rate_are_sane():
    bench = load()
    g = torch.Generator().manual_seed(0)
    im = torch.rand(3, 32, 32, generator=g) * 0.2 + torch.linspace(0, 0.8, 32).view(1, 1, 32)
    cur = bench.codec_curves([im], [10, 90])
    for pts in cur.values():
        assert pts[0]["bpp"] < pts[1]["bpp"] and pts[0]["psnr"] < pts[1]["psnr"]
    tiny = bench.TinyAE(4, width=8)
    rows = bench.model_rate(tiny, [im], [4, 8], torch.device("cpu"))
    # 4 floats per 8×8 pixels: 8 bits → 0.5 bpp plus side information
    assert rows[1]["bpp_raw"] == (4 * 16 * 8 + 4 * 64) / (32 * 32)
    assert rows[0]["bpp_raw"] < rows[1]["bpp_raw"] and all(math.isfinite(r["psnr"]) for r in rows)


@pytest.mark.slow
def test_fair_mode_runs_end_to_end_at_a_toy_size(tmp_path):
    bench = load()
    bench.main([
        "--mode", "fair", "--budget", "2", "--budget-kind", "steps", "--batch-size", "1", "--image-size", "64",
        "--ratios", "48", "--only", "GeoVAE", "--chunk-steps", "1", "--curve-points", "1", "--bits", "8",
        "--codec-qualities", "50", "--train-eval-side", "64", "--curve-side", "64", "--scales", "1", "--out", str(tmp_path),
    ])  # fmt: skip
    res = json.loads((tmp_path / "autoencoders_fair.json").read_text())
    row = res["ratios"]["48"]["GeoVAE"]
    assert row["seeds"][0]["steps"] == 2 and row["floats_per_16x16_patch"] == 16
    assert row["seeds"][0]["rate"][0]["bits"] == 8 and "gap_train_minus_heldout" in row
    assert (tmp_path / "autoencoders_fair_rate.png").stat().st_size > 0
    assert "Rate at 48:1" in (tmp_path / "autoencoders_fair.md").read_text()


def test_lr_sweep_mode_runs_end_to_end_at_a_toy_size(tmp_path):
    bench = load()
    bench.main([
        "--mode", "lr-sweep", "--steps", "2", "--seeds", "0", "--lrs", "1e-2", "--only", "GeoVAE",
        "--curve-points", "0", "--batch-size", "2", "--image-size", "16", "--out", str(tmp_path),
    ])  # fmt: skip
    sweep = json.loads((tmp_path / "autoencoders_lr_sweep.json").read_text())
    assert sweep["runs"][0]["nonfinite_steps"] == 0 and sweep["runs"][0]["steps"] == 2
    assert "| GeoVAE | 0.01 |" in (tmp_path / "autoencoders_lr_sweep.md").read_text()


def test_lr_select_scores_on_validation_photos_and_fair_mode_reads_the_choice(tmp_path):
    bench = load()
    bench.main([
        "--mode", "lr-select", "--budget", "3", "--budget-kind", "steps", "--batch-size", "2", "--image-size", "16",
        "--ratios", "48", "--only", "NoSVD", "--lrs", "1e-3", "1e-1", "--chunk-steps", "3", "--scales", "1",
        "--tag", "toy", "--out", str(tmp_path),
    ])  # fmt: skip
    res = json.loads((tmp_path / "autoencoders_lr_select_toy.json").read_text())
    assert res["mode"] == "lr-select" and res["validation_photos"] == list(bench.VALIDATION_PHOTOS)
    row = res["ratios"]["48"]["NoSVD"]
    scores = {float(k): v["psnr_validation"] for k, v in row["by_lr"].items()}
    assert set(scores) == {1e-3, 1e-1} and all(math.isfinite(v) for v in scores.values())
    assert row["chosen_lr"] == max(scores, key=scores.get)  # the best validation PSNR, nothing else
    assert bench.chosen_lrs([tmp_path / "autoencoders_lr_select_toy.json"]) == {
        "48": {"NoSVD": row["chosen_lr"]}
    }
    md = (tmp_path / "autoencoders_lr_select_toy.md").read_text()
    assert "validation photos" in md and f"**{row['chosen_lr']:g}**" in md
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"ratios": {}}))
    with pytest.raises(SystemExit, match="not a --mode lr-select"):
        bench.chosen_lrs([other])
