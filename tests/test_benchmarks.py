"""Smoke tests of benchmark scripts on toy budgets (they must keep running as the library changes)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("model", ["svae", "nosvd", "geovae"])
def test_nosvd_ablation_run_records_a_trace_and_renders(model, tmp_path):
    bench = load("nosvd_ablation")
    spec = {
        "model": model, "tails": "raw", "lr": 1e-3, "seed": 0, "clip": "adaptive", "steps": 3, "batch_size": 2,
        "image_size": 32, "hidden": 16, "depth": 1, "full": False, "eval_per_type": 1, "blowup_ratio": 3.0,
        "threads": 1,
    }  # fmt: skip
    run = bench.run_one(spec)
    trace = run["trace"]
    assert trace["step"] == [1, 2, 3]
    assert all(z > 0 for z in trace["zero_mse"]) and all(math.isfinite(v) for v in trace["recon_loss"])
    # adaptive rule: the threshold is the recon loss, floored at 1
    assert trace["clip_threshold"] == [max(v, 1.0) for v in trace["recon_loss"]]
    assert set(run["eval_per_type"]) and run["eval_rel_mse_mean"] > 0
    assert run["latent_floats_per_patch"] == {"svae": 256 * 16 + 16 + 256, "nosvd": 16, "geovae": 16}[model]
    meta = {
        "command": "test", "machine": "m", "torch": "t", "workers": 1, "threads": 1, "wall_s": 1.0, "size": "toy",
        "steps": 3, "batch_size": 2, "image_size": 32, "clip": "adaptive", "blowup_ratio": 3.0,
    }  # fmt: skip
    data = {"meta": meta, "runs": [run]}
    md = bench.render_markdown(data)
    assert bench.LABELS[model] in md and "## Reading" in md
    bench.render_png(data, tmp_path / "x.png")
    assert (tmp_path / "x.png").stat().st_size > 0


def test_nosvd_ablation_pairs_share_the_initial_weights_of_their_common_parts():
    import torch

    bench = load("nosvd_ablation")
    spec = {"model": "nosvd", "seed": 3, "full": False, "hidden": 16, "depth": 1, "steps": 3}
    torch.manual_seed(3)
    ablation, _ = bench.build_model(spec)
    torch.manual_seed(3)
    canonical, _ = bench.build_model({**spec, "model": "svae"})
    reference = canonical.state_dict()
    shared = [k for k in ablation.state_dict() if k in reference]
    assert any(k.startswith("decoder.") for k in shared) and any(k.startswith("encoder.") for k in shared)
    assert all(torch.equal(ablation.state_dict()[k], reference[k]) for k in shared)
