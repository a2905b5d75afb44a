"""The shared benchmark harness (`pentachora.recipes.benchmarking`) and the rule that no benchmark leans on
another: each script under ``benchmarks/`` imports the package, never a sibling script."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

from pentachora.recipes.benchmarking import MixedSource, choose_on_validation, eval_schedule, reach

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


def test_choose_on_validation_picks_the_best_finite_usable_option():
    assert choose_on_validation({"a": 1.0, "b": 3.0, "c": 2.0}) == "b"
    assert choose_on_validation({"a": 1.0, "b": 3.0}, higher_is_better=False) == "a"
    assert choose_on_validation({"a": math.nan, "b": 0.5, "c": math.inf}) == "b"  # inf is not a score
    assert choose_on_validation({"a": 2.0, "b": 2.0}) == "a"  # ties go to the first listed
    assert choose_on_validation({"a": 5.0, "b": 1.0}, usable=lambda k: k != "a") == "b"
    assert choose_on_validation({"a": math.nan}) is None
    assert choose_on_validation({}) is None


def test_reach_reads_psnr_like_metrics_upward_and_losses_downward():
    curve = [
        {"step": 10, "train_s": 1.0, "psnr": 20.0, "psnr_val": 18.0, "mse": 0.3},
        {"step": 20, "train_s": 2.0, "psnr": 25.0, "psnr_val": 22.0, "mse": 0.1},
    ]
    assert reach(curve, "psnr", 24.0) == (20, 2.0)
    assert reach(curve, "psnr_val", 20.0) == (20, 2.0)  # a validation PSNR climbs too
    assert reach(curve, "mse", 0.2) == (20, 2.0)
    assert reach(curve, "psnr", 30.0) == (None, None)


def test_mixed_source_is_a_pure_function_of_seed_and_step():
    a, b = MixedSource(4, 16, 0.5, "clamp", seed=3), MixedSource(4, 16, 0.5, "clamp", seed=3)
    x = a.batch(7)
    assert x.shape == (4, 3, 16, 16) and torch.equal(x, b.batch(7)) and not torch.equal(x, a.batch(8))
    with pytest.raises(ValueError, match="noise_fraction"):
        MixedSource(4, 16, 1.5, "clamp", seed=0)


def test_eval_schedule_is_dense_early_and_ends_at_the_last_step():
    s = eval_schedule(120, early=10, every=50)
    assert {10, 20, 30, 40, 50, 100, 120} == s


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_no_benchmark_imports_another_or_edits_sys_path(script):
    siblings = {p.stem for p in SCRIPTS} - {script.stem}
    text = script.read_text(encoding="utf-8")
    assert "sys.path" not in text, f"{script.name} edits sys.path"
    assert not (_imports(script) & siblings), f"{script.name} imports {_imports(script) & siblings}"


def test_the_import_check_catches_a_sibling_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import sys\nfrom autoencoders import MixedSource\n", encoding="utf-8")
    assert "autoencoders" in _imports(probe)
