"""Long-prompt modes have one home (pentachora.memory.modes): defined once, validated once, read by
the memory model, its recipes, the CLI and diffusion."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pentachora.errors import ConfigError
from pentachora.memory.modes import (
    POOLED_MODES,
    SEQUENCE_MODES,
    TRAINING_MODES,
    OutputMode,
    check_pooled_mode,
    check_training_mode,
)

PKG = Path(__file__).resolve().parents[1] / "src" / "pentachora"
REGISTRIES = {"SEQUENCE_MODES", "POOLED_MODES", "TRAINING_MODES", "MODES"}


def test_every_mode_registry_is_defined_once_in_its_home():
    defined = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for t in targets:
                if isinstance(t, ast.Name) and t.id in REGISTRIES:
                    defined.append((str(path.relative_to(PKG)), t.id))
    assert sorted(defined) == [
        ("memory/modes.py", "POOLED_MODES"),
        ("memory/modes.py", "SEQUENCE_MODES"),
        ("memory/modes.py", "TRAINING_MODES"),
    ]
    import pentachora.diffusion

    assert pentachora.diffusion.POOLED_MODES is POOLED_MODES


def test_output_mode_rules():
    assert OutputMode().problems(seq_len=77, window=77) == []
    assert OutputMode("residual", mean_shift=0.75).problems(77, 77) == []
    assert "seq_len == window" in OutputMode("residual").problems(64, 77)[0]
    assert "one of" in OutputMode("sideways").problems(77, 77)[0]
    assert "needs sequence_mode='residual'" in OutputMode(mean_shift=0.5).problems(77, 77)[0]
    assert "finite" in OutputMode("residual", mean_shift=float("nan")).problems(77, 77)[0]
    assert OutputMode(contextual_chunks=True).needs_native and not OutputMode().needs_native
    with pytest.raises(ConfigError, match="contextual_chunks=True"):
        OutputMode().require_chunks()
    OutputMode(contextual_chunks=True).require_chunks()


def test_the_config_validates_through_the_mode_home():
    from pentachora.memory import MemoryConfig

    config = MemoryConfig.preset("minilm-tiny-long")
    assert config.output_mode == OutputMode("residual", True, config.mean_shift)
    with pytest.raises(ConfigError, match="mean_shift > 0 needs"):
        MemoryConfig.preset("minilm-tiny", mean_shift=0.5)
    with pytest.raises(ConfigError, match="sequence_mode must be one of"):
        MemoryConfig.preset("minilm-tiny", sequence_mode="sideways")


def test_training_and_pooled_modes_are_checked_in_one_place():
    assert check_training_mode("two-phase") == "two-phase" and check_pooled_mode("memory") == "memory"
    with pytest.raises(ConfigError, match=str(TRAINING_MODES).replace("(", r"\(").replace(")", r"\)")):
        check_training_mode("sideways")
    with pytest.raises(ConfigError, match="pooled must be one of"):
        check_pooled_mode("max")
    assert SEQUENCE_MODES == ("reconstruct", "residual")
