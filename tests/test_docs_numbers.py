"""Tables the README and docs copy from a results file are the results file's own lines.

A block in a markdown document that starts with ``<!-- from benchmarks/results/NAME.md -->`` holds
lines copied from that results file (a table, usually); every non-empty line of the block, up to the
next blank line after the table, must occur verbatim in the results file. Rerunning the benchmark
regenerates the results file; this test then says which quoted lines went stale.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"<!-- from (benchmarks/results/[\w./-]+\.md) -->")


def quoted_blocks(doc: Path) -> list[tuple[str, list[str]]]:
    """``[(results path, [quoted lines])]`` of every marked block in ``doc``."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    blocks = []
    for i, line in enumerate(lines):
        m = MARKER.search(line)
        if not m:
            continue
        body = []
        for nxt in lines[i + 1 :]:
            if not nxt.strip():
                if body:
                    break
                continue
            body.append(nxt)
        blocks.append((m.group(1), body))
    return blocks


BLOCKS = [(doc, src, body) for doc in DOCS for src, body in quoted_blocks(doc)]


def test_some_blocks_are_marked():
    assert BLOCKS, "no <!-- from benchmarks/results/... --> blocks found in README.md or docs/"


@pytest.mark.parametrize(("doc", "src", "body"), BLOCKS, ids=[f"{d.name}:{s}" for d, s, _ in BLOCKS])
def test_quoted_lines_are_in_their_results_file(doc, src, body):
    results = ROOT / src
    assert results.is_file(), f"{doc.name} quotes {src}, which does not exist"
    have = set(results.read_text(encoding="utf-8").splitlines())
    stale = [line for line in body if line not in have]
    assert body and not stale, f"{doc.name}: lines not in {src} (rerun its command or recopy):\n" + "\n".join(
        stale
    )
