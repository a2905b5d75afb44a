"""Every `pentachora ...` command the README shows still parses: same commands, flags and values."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command

from pentachora.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    """The ``pentachora ...`` lines of the README's shell blocks (continuations joined, ``&&`` split)."""
    blocks, current, lang = [], None, ""
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            if current is None:
                current, lang = [], line[3:].strip()
            else:
                if lang in ("bash", "sh", "shell", "console", ""):
                    blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    out = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("pentachora "):
                    out.append(part)
    return out


def parse_without_running(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse ``argv`` with the real CLI, but with every command body replaced by a recorder."""
    root = get_command(app)
    seen: list[tuple[str, dict[str, Any]]] = []

    def stub(group: Any, prefix: str) -> None:
        for name, cmd in getattr(group, "commands", {}).items():
            if hasattr(cmd, "commands"):
                stub(cmd, f"{prefix}{name} ")
            else:
                cmd.callback = lambda _n=f"{prefix}{name}", **kw: seen.append((_n, kw))

    stub(root, "")
    root.main(argv, prog_name="pentachora", standalone_mode=False)
    assert len(seen) == 1, argv
    return seen[0]


def test_the_readme_shows_commands():
    commands = readme_commands()
    assert len(commands) >= 8
    assert any(c.startswith("pentachora train svae") for c in commands)


@pytest.mark.parametrize("line", readme_commands())
def test_readme_command_parses(line):
    argv = shlex.split(line, comments=True)[1:]
    name, params = parse_without_running(argv)
    assert name.split()[0] == argv[0]
    if "--steps" in argv and name.startswith("train "):
        assert params["steps"] == int(argv[argv.index("--steps") + 1])
