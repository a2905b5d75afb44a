"""The README's Python snippets run as written (in order, in one namespace, in a temp folder)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_the_two_setup_commands_and_ci_runs_the_test_one():
    text = README.read_text(encoding="utf-8")
    assert "pip install -r requirements.txt && pentachora demo" in text
    test_cmd = "pip install -r requirements.txt && python -m pytest"
    assert test_cmd in text
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert test_cmd in ci


def test_readme_python_snippets_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks()
    assert len(blocks) >= 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert (tmp_path / "my-svae" / "model.safetensors").is_file()
