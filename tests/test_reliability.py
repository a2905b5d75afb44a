"""Reliability: fresh machines, run folders, hostile checkpoints, bad settings (issue 10, items 1–10)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- 1. fresh machine
def test_requirements_install_the_versions_ci_tested():
    req = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    assert "-c constraints.txt" in [line.strip() for line in req]
    assert "torch==2.13.0" in [line.strip() for line in req]
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([0-9][A-Za-z0-9_.\-]*)", line)
            assert m, f"constraints.txt line is not an exact pin: {line!r}"
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    for name in (
        "pytest",
        "hypothesis",
        "transformers",
        "diffusers",
        "accelerate",
        "numpy",
        "scipy",
        "scikit-image",
        "safetensors",
        "typer",
        "pillow",
        "einops",
        "torch",
    ):
        assert name in pins, f"constraints.txt does not pin {name}"
    assert pins["torch"] == "2.13.0"
    assert "+" not in "".join(pins.values())  # local tags (+cpu) are not on PyPI
