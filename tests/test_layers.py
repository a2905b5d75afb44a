"""The import layers of docs/architecture.md, checked over the source with ``ast``.

Every ``import`` in every module under ``src/pentachora`` counts for the layer rules, including imports
inside functions (a lazy import is still a dependency). The cycle check uses module-level imports only
(imports inside function bodies and under ``if TYPE_CHECKING:`` run after every module has loaded).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PKG = SRC / "pentachora"
BENCHMARKS = ROOT / "benchmarks"

MODEL_FAMILIES = ("autoencoders", "memory", "hub", "t2i")


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` at ``path:line`` (``lazy``: inside a function or TYPE_CHECKING)."""

    source: str
    target: str
    path: str
    line: int
    lazy: bool

    def __str__(self) -> str:
        kind = " (lazy)" if self.lazy else ""
        return f"{self.source} -> {self.target}  [{self.path}:{self.line}{kind}]"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_package(name: str) -> bool:
    return (SRC / Path(*name.split(".")) / "__init__.py").is_file()


def _exists(name: str) -> bool:
    base = SRC / Path(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[tuple[ast.stmt, bool]]:
    """Every import statement of a module, with whether it is lazy (in a function or TYPE_CHECKING)."""

    def walk(node: ast.AST, lazy: bool) -> Iterator[tuple[ast.stmt, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child, lazy
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                yield from walk(child, True)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), True)
                for stmt in child.orelse:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), lazy)
            else:
                yield from walk(child, lazy)

    yield from walk(tree, False)


def _targets(source: str, node: ast.stmt, is_pkg: bool) -> list[str]:
    """The pentachora modules an import statement loads (submodules named by ``from X import m``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "pentachora"]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = source.split(".") if is_pkg else source.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        mod = ".".join(base + ([node.module] if node.module else []))
    else:
        mod = node.module or ""
    if mod.split(".")[0] != "pentachora":
        return []
    out = []
    for alias in node.names:
        sub = f"{mod}.{alias.name}"
        out.append(sub if _exists(sub) else mod)
    return sorted(set(out))


def edges_of(path: Path, name: str) -> list[Edge]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    rel = str(path.relative_to(ROOT))
    is_pkg = path.name == "__init__.py"
    return [
        Edge(name, target, rel, node.lineno, lazy)
        for node, lazy in _imports(tree)
        for target in _targets(name, node, is_pkg)
    ]


def library_edges() -> list[Edge]:
    return [e for path in sorted(PKG.rglob("*.py")) for e in edges_of(path, module_name(path))]


def layer(module: str) -> str:
    """``pentachora.autoencoders.svae`` → ``autoencoders``; ``pentachora.io`` → ``io``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def violations(edges: list[Edge]) -> list[str]:
    """Every edge that breaks a layer rule, with the rule it breaks."""
    foundation = ("io", "errors", "geometry", "nn")
    bad = []
    for e in edges:
        src, dst = layer(e.source), layer(e.target)
        if src == dst or dst == "":
            continue
        why = None
        if src in ("geometry", "nn") and dst not in foundation:
            why = f"{src}/ may import only io, errors, geometry and nn"
        elif src in ("io", "errors") and dst not in ("io", "errors"):
            why = f"{src}.py may import only io and errors"
        elif src in MODEL_FAMILIES and dst in ("training", "recipes", "cli", "diagnostics"):
            why = f"model package {src}/ must not import {dst}"
        elif src == "training" and dst in (*MODEL_FAMILIES, "recipes", "cli"):
            why = f"training/ must not import {dst}"
        elif src == "diagnostics" and dst in (*MODEL_FAMILIES, "recipes", "cli"):
            why = f"diagnostics/ must not import {dst}"
        elif src == "data" and dst in (*MODEL_FAMILIES, "training", "recipes", "cli", "diagnostics"):
            why = f"data/ (sources, regimes, metrics) must not import {dst}"
        elif src == "modeling" and dst in (*MODEL_FAMILIES, "training", "recipes", "cli", "diagnostics"):
            why = f"modeling.py (the model contract) must not import {dst}"
        elif src != "cli" and dst == "cli":
            why = "library code must not import the CLI"
        if why:
            bad.append(f"{e}: {why}")
    return bad


def find_cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components (size > 1, or self-loops) of the module-level import graph."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        if not e.lazy and e.source != e.target:
            graph.setdefault(e.source, set()).add(e.target)
            graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:  # Tarjan, iterative enough for our depth
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return out


def _cycle_edges(edges: list[Edge], component: list[str]) -> list[str]:
    members = set(component)
    return [str(e) for e in edges if not e.lazy and e.source in members and e.target in members]


# ------------------------------------------------------------------------------------------- tests
def test_the_parser_sees_lazy_relative_and_type_checking_imports():
    code = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "import pentachora.io\n"
        "from pentachora import geometry\n"
        "from . import svae\n"
        "if TYPE_CHECKING:\n"
        "    from pentachora.training import Trainer\n"
        "def f():\n"
        "    from pentachora.recipes import load_model\n"
    )
    tree = ast.parse(code)
    got = sorted(
        (t, lazy)
        for node, lazy in _imports(tree)
        for t in _targets("pentachora.autoencoders._layer_probe", node, False)
    )
    assert got == [
        ("pentachora.autoencoders.svae", False),
        ("pentachora.geometry", False),
        ("pentachora.io", False),
        ("pentachora.recipes", True),
        ("pentachora.training", True),
    ]
    fake = [Edge("pentachora.autoencoders.x", "pentachora.training.loop", "x.py", 1, True)]
    assert violations(fake) and "must not import training" in violations(fake)[0]
    allowed = [
        Edge("pentachora.recipes.x", "pentachora.training", "x.py", 1, False),
        Edge("pentachora.cli.x", "pentachora.autoencoders.svae", "x.py", 1, True),
        Edge("pentachora.nn.x", "pentachora.geometry", "x.py", 1, False),
        Edge("pentachora.diagnostics.x", "pentachora.training.callbacks", "x.py", 1, False),
    ]
    assert violations(allowed) == []
    forbidden = [
        Edge("pentachora.geometry.x", "pentachora.modeling", "x.py", 1, False),
        Edge("pentachora.training.x", "pentachora.memory", "x.py", 1, True),
        Edge("pentachora.diagnostics.x", "pentachora.autoencoders", "x.py", 1, False),
        Edge("pentachora.hub.x", "pentachora.recipes", "x.py", 1, False),
        Edge("pentachora.recipes.x", "pentachora.cli", "x.py", 1, True),
        Edge("pentachora.data.x", "pentachora.autoencoders.svae", "x.py", 1, False),
    ]
    assert len(violations(forbidden)) == len(forbidden)
    ring = [
        Edge("pentachora.a", "pentachora.b", "a.py", 1, False),
        Edge("pentachora.b", "pentachora.a", "b.py", 1, False),
        Edge("pentachora.b", "pentachora.c", "b.py", 2, True),
        Edge("pentachora.c", "pentachora.b", "c.py", 1, False),
    ]
    assert find_cycles(ring) == [["pentachora.a", "pentachora.b"]]


def test_every_library_import_respects_the_layers():
    edges = library_edges()
    assert len(edges) > 50  # the parser found the imports
    bad = violations(edges)
    assert not bad, "import-layer violations:\n  " + "\n  ".join(bad)


def test_no_module_level_import_cycles():
    edges = library_edges()
    cycles = find_cycles(edges)
    msg = "\n".join(
        "cycle among " + ", ".join(c) + ":\n    " + "\n    ".join(_cycle_edges(edges, c)) for c in cycles
    )
    assert not cycles, "module-level import cycles:\n" + msg


@pytest.mark.parametrize("path", sorted(BENCHMARKS.glob("*.py")), ids=lambda p: p.name)
def test_benchmarks_import_recipes_not_the_cli(path):
    edges = edges_of(path, f"benchmarks.{path.stem}")
    bad = [str(e) for e in edges if e.target == "pentachora.cli" or e.target.startswith("pentachora.cli.")]
    assert not bad, "benchmarks must not import pentachora.cli:\n  " + "\n  ".join(bad)


def test_cli_modules_import_torch_and_models_lazily():
    """``pentachora --help`` must not import torch: no CLI module imports it (or a model) at module level."""
    heavy = ("torch", "numpy", "transformers", "diffusers", "accelerate", "safetensors")
    bad = []
    for path in sorted((PKG / "cli").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node, lazy in _imports(tree):
            if lazy:
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for n in names:
                if n.split(".")[0] in heavy:
                    bad.append(f"{path.name}:{node.lineno} imports {n}")
        for e in edges_of(path, module_name(path)):
            if not e.lazy and layer(e.target) not in ("cli", "errors", ""):
                bad.append(str(e))
    assert not bad, "CLI modules must import these inside command bodies:\n  " + "\n  ".join(bad)
