"""Smoke test of benchmarks/diagnostics.py on toy budgets (GeoVAE parts; the MiniLM parts run in
the benchmark itself)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "diagnostics.py"


def load():
    spec = importlib.util.spec_from_file_location("bench_diagnostics", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_diagnostics_benchmark_quick_geovae_and_overhead(tmp_path: Path) -> None:
    bench = load()
    assert bench.main(["--quick", "--only", "geovae", "overhead", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "diagnostics_quick.json").read_text())
    runs = result["geovae"]["runs"]
    assert set(runs) == {"bf16 autocast", "fp32"}
    names = {a["name"] for a in runs["bf16 autocast"]["audits"]}
    assert names == set(bench.GEO_SECTORS)
    assert {a["run_dtype"] for a in runs["bf16 autocast"]["audits"]} == {"bf16"}
    assert set(result["overhead"]["runs"]) == {"none", "K=100", "K=10", "K=1", "none (again)"}
    md = (tmp_path / "diagnostics_quick.md").read_text()
    assert "## 4. The auditor on GeoVAE" in md and "## 5. Auditor overhead" in md
    assert any(p.name.startswith("diagnostics_geovae_") for p in tmp_path.iterdir())
