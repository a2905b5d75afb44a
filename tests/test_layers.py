"""The import layers of docs/architecture.md, checked over the source with ``ast``.

Every ``import`` in every module under ``src/pentachora`` counts for the layer rules, including imports
inside functions (a lazy import is still a dependency). The cycle check uses module-level imports only
(imports inside function bodies and under ``if TYPE_CHECKING:`` run after every module has loaded).
"""

from __future__ import annotations

import ast
import dataclasses
import re
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
            elif _dynamic_import(child) is not None:
                yield child, lazy  # type: ignore[misc]
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


def _dynamic_import(node: ast.AST) -> str | None:
    """The module named by ``importlib.import_module("x")`` / ``__import__("x")`` with a literal name."""
    if not isinstance(node, ast.Call) or not node.args or not isinstance(node.args[0], ast.Constant):
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
        return node.args[0].value
    return None


def _targets(source: str, node: ast.stmt, is_pkg: bool, everything: bool = False) -> list[str]:
    """The pentachora modules an import statement (or a literal ``importlib`` call) loads (submodules named
    by ``from X import m``); ``everything``: every module, not only pentachora's (for benchmarks)."""
    ours = (lambda m: True) if everything else (lambda m: m.split(".")[0] == "pentachora")
    dynamic = _dynamic_import(node)
    if dynamic is not None:
        return [dynamic] if ours(dynamic) else []
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if ours(a.name)]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = source.split(".") if is_pkg else source.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        mod = ".".join(base + ([node.module] if node.module else []))
    else:
        mod = node.module or ""
    if not ours(mod):
        return []
    out = []
    for alias in node.names:
        sub = f"{mod}.{alias.name}"
        out.append(sub if _exists(sub) else mod)
    return sorted(set(out))


def edges_of(path: Path, name: str, everything: bool = False, code: str | None = None) -> list[Edge]:
    tree = ast.parse(code if code is not None else path.read_text(encoding="utf-8"), filename=str(path))
    rel = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    is_pkg = path.name == "__init__.py"
    return [
        Edge(name, target, rel, node.lineno, lazy)
        for node, lazy in _imports(tree)
        for target in _targets(name, node, is_pkg, everything)
    ]


def library_edges() -> list[Edge]:
    return [e for path in sorted(PKG.rglob("*.py")) for e in edges_of(path, module_name(path))]


def layer(module: str) -> str:
    """``pentachora.autoencoders.svae`` → ``autoencoders``; ``pentachora.io`` → ``io``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


#: The import table of docs/architecture.md, encoded once: what each layer may import besides itself and
#: the package root (``pentachora/__init__.py``, which imports nothing of its own). A package missing here
#: is a violation until it is given a row (here and in the docs, which ``test_the_docs_show_this_table``
#: compares).
MAY_IMPORT: dict[str, frozenset[str]] = {
    "errors": frozenset(),
    "resources": frozenset({"errors"}),
    "io": frozenset({"errors"}),
    "modeling": frozenset({"io", "errors"}),
    "geometry": frozenset({"io", "errors"}),
    "nn": frozenset({"geometry", "io", "errors"}),
    "data": frozenset({"geometry", "nn", "io", "errors"}),
    **{
        family: frozenset({"geometry", "nn", "data", "modeling", "io", "errors"}) for family in MODEL_FAMILIES
    },
    "training": frozenset({"geometry", "modeling", "data", "io", "errors"}),
    "diagnostics": frozenset({"geometry", "nn", "training", "io", "errors"}),
    "diffusion": frozenset(
        {*MODEL_FAMILIES, "training", "geometry", "nn", "data", "modeling", "io", "errors"}
    ),
}
MAY_IMPORT["recipes"] = frozenset({*MAY_IMPORT, "recipes"} - {"recipes"})  # every layer but the CLI
MAY_IMPORT["cli"] = frozenset({*MAY_IMPORT, "recipes"})  # every layer
#: Benchmarks import recipes and what is below them, never the CLI and never one another.
BENCHMARK_MAY_IMPORT = frozenset(MAY_IMPORT["cli"] - {"cli"})


def violations(edges: list[Edge]) -> list[str]:
    """Every edge that breaks :data:`MAY_IMPORT` (module-level and lazy imports alike), with the rule."""
    bad = []
    for e in edges:
        src, dst = layer(e.source), layer(e.target)
        if src == "" and dst != "":
            bad.append(f"{e}: the package root pentachora/__init__.py may import nothing of its own")
            continue
        if src == dst or dst == "":
            continue
        allowed = MAY_IMPORT.get(src)
        if allowed is None:
            bad.append(f"{e}: {src}/ has no row in the layer table (docs/architecture.md and MAY_IMPORT)")
        elif dst not in allowed:
            family = " (one model family never imports another)" if {src, dst} <= set(MODEL_FAMILIES) else ""
            bad.append(f"{e}: {src}/ may import only {', '.join(sorted(allowed)) or 'nothing'}{family}")
    return bad


def benchmark_violations(edges: list[Edge], benchmark_stems: set[str]) -> list[str]:
    """Edges of a benchmark script that reach the CLI or another benchmark."""
    bad = []
    for e in edges:
        if e.target.split(".")[0] in benchmark_stems or e.target.startswith("benchmarks"):
            bad.append(f"{e}: benchmarks never import one another (share code through pentachora.recipes)")
        elif e.target.startswith("pentachora") and layer(e.target) not in BENCHMARK_MAY_IMPORT | {""}:
            bad.append(f"{e}: benchmarks import recipes and models, never {layer(e.target)}")
    return bad


def layer_cycles() -> list[list[str]]:
    """Cycles of the table itself (it must be a hierarchy)."""
    return find_cycles(
        [Edge(a, b, "table", 0, False) for a, deps in MAY_IMPORT.items() for b in deps if a != b]
    )


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
def test_the_parser_sees_lazy_relative_type_checking_and_importlib_imports():
    code = (
        "from __future__ import annotations\n"
        "import importlib\n"
        "from typing import TYPE_CHECKING\n"
        "import pentachora.io\n"
        "from pentachora import geometry\n"
        "from . import svae\n"
        "if TYPE_CHECKING:\n"
        "    from pentachora.training import Trainer\n"
        "def f():\n"
        "    from pentachora.recipes import load_model\n"
        "    importlib.import_module('pentachora.hub')\n"
        "    __import__('pentachora.cli')\n"
    )
    tree = ast.parse(code)
    got = sorted(
        (t, lazy)
        for node, lazy in _imports(tree)
        for t in _targets("pentachora.autoencoders._layer_probe", node, False)
    )
    assert got == [
        ("pentachora.autoencoders.svae", False),
        ("pentachora.cli", True),
        ("pentachora.geometry", False),
        ("pentachora.hub", True),
        ("pentachora.io", False),
        ("pentachora.recipes", True),
        ("pentachora.training", True),
    ]


def _edge(source: str, target: str, lazy: bool = False) -> Edge:
    return Edge(source, target, "probe.py", 1, lazy)


#: One probe of each kind the table forbids; each must be reported (the old blacklist accepted them all).
FORBIDDEN_PROBES = {
    "family to family (hub -> memory)": _edge("pentachora.hub.x", "pentachora.memory.model"),
    "family to family (autoencoders -> hub)": _edge("pentachora.autoencoders.x", "pentachora.hub"),
    "family to family, lazy (t2i -> autoencoders)": _edge(
        "pentachora.t2i.x", "pentachora.autoencoders", True
    ),
    "training -> diagnostics": _edge("pentachora.training.x", "pentachora.diagnostics.auditor"),
    "training -> diffusion, lazy": _edge("pentachora.training.x", "pentachora.diffusion", True),
    "training -> a family": _edge("pentachora.training.x", "pentachora.memory", True),
    "diffusion -> recipes": _edge("pentachora.diffusion.x", "pentachora.recipes.loading", True),
    "modeling -> data": _edge("pentachora.modeling", "pentachora.data.spec"),
    "data -> modeling": _edge("pentachora.data.x", "pentachora.modeling"),
    "data -> a family": _edge("pentachora.data.x", "pentachora.autoencoders.svae"),
    "geometry -> nn": _edge("pentachora.geometry.x", "pentachora.nn"),
    "io -> modeling": _edge("pentachora.io", "pentachora.modeling"),
    "a family -> recipes": _edge("pentachora.hub.x", "pentachora.recipes"),
    "diagnostics -> a family": _edge("pentachora.diagnostics.x", "pentachora.autoencoders"),
    "recipes -> cli": _edge("pentachora.recipes.x", "pentachora.cli", True),
    "the package root -> a subpackage": _edge("pentachora", "pentachora.autoencoders"),
    "a package without a row": _edge("pentachora.newthing.x", "pentachora.io"),
}


@pytest.mark.parametrize("kind", sorted(FORBIDDEN_PROBES))
def test_every_kind_of_forbidden_import_is_reported(kind):
    assert violations([FORBIDDEN_PROBES[kind]]), f"the layer check accepted {kind}"


def test_what_the_table_allows_passes():
    allowed = [
        _edge("pentachora.recipes.x", "pentachora.training"),
        _edge("pentachora.cli.x", "pentachora.autoencoders.svae", True),
        _edge("pentachora.nn.x", "pentachora.geometry"),
        _edge("pentachora.diagnostics.x", "pentachora.training.callbacks"),
        _edge("pentachora.training.x", "pentachora.geometry"),  # a callback's schedule reads geometry
        _edge("pentachora.diffusion.x", "pentachora.memory.model"),
        _edge("pentachora.t2i.x", "pentachora.modeling"),  # a latent first stage comes through the registry
        _edge("pentachora.modeling", "pentachora"),  # the root holds only __version__
    ]
    assert violations(allowed) == []


def test_benchmark_probes_are_reported():
    stems = {"hub_scenes", "t2i_latent"}
    probes = [
        _edge("benchmarks.t2i_latent", "hub_scenes"),
        _edge("benchmarks.t2i_latent", "benchmarks.hub_scenes"),
        _edge("benchmarks.t2i_latent", "pentachora.cli.options", True),
    ]
    assert [len(benchmark_violations([p], stems)) for p in probes] == [1, 1, 1]
    assert benchmark_violations([_edge("benchmarks.t2i_latent", "pentachora.recipes.t2i")], stems) == []
    # a benchmark loading another through importlib is seen too
    code = "import importlib\ndef f():\n    importlib.import_module('hub_scenes')\n"
    edges = edges_of(BENCHMARKS / "probe.py", "benchmarks.probe", everything=True, code=code)
    assert benchmark_violations(edges, stems)


def test_the_table_is_a_hierarchy():
    assert layer_cycles() == []
    ring = [
        Edge("pentachora.a", "pentachora.b", "a.py", 1, False),
        Edge("pentachora.b", "pentachora.a", "b.py", 1, False),
        Edge("pentachora.b", "pentachora.c", "b.py", 2, True),
        Edge("pentachora.c", "pentachora.b", "c.py", 1, False),
    ]
    assert find_cycles(ring) == [["pentachora.a", "pentachora.b"]]


def test_every_package_has_a_row():
    packages = {p.parent.name for p in PKG.glob("*/__init__.py")} | {p.stem for p in PKG.glob("*.py")} - {
        "__init__"
    }
    assert packages - set(MAY_IMPORT) == set(), "add a row to MAY_IMPORT and docs/architecture.md"


def _docs_table() -> dict[str, frozenset[str]]:
    """``docs/architecture.md``'s "may import" table, one entry per package named in its first column."""
    rows: dict[str, frozenset[str]] = {}
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Packages and what they may import", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("package", "---"):
            continue
        names = [n.strip("/").removesuffix(".py") for n in re.findall(r"`([^`]+)`", cells[0])]
        rule = cells[2]
        if rule.startswith("every layer but"):
            deps = frozenset(set(MAY_IMPORT) - {"cli", "recipes"})
        elif rule.startswith("every layer"):
            deps = frozenset(set(MAY_IMPORT) - {"cli"})
        elif rule.startswith("nothing"):
            deps = frozenset()
        else:
            deps = frozenset(n.strip("/") for n in re.findall(r"`([^`]+)`", rule.split(" — ")[0]))
        for name in names:
            rows[name] = deps
    return rows


def test_the_docs_show_this_table():
    """docs/architecture.md is the table this test enforces: same packages, same allowed imports."""
    assert _docs_table() == MAY_IMPORT


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
def test_benchmarks_import_recipes_never_the_cli_or_each_other(path):
    edges = edges_of(path, f"benchmarks.{path.stem}", everything=True)
    bad = benchmark_violations(edges, {p.stem for p in BENCHMARKS.glob("*.py")} - {path.stem})
    assert not bad, "\n  ".join(bad)


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


def test_cli_registration_runs_one_way():
    """The package root imports the command modules; they import ``cli.app``, never the root back.

    Imports inside functions count here: a registration ring hidden in a function is still a ring.
    """
    edges = [
        dataclasses.replace(e, lazy=False)
        for path in sorted((PKG / "cli").glob("*.py"))
        for e in edges_of(path, module_name(path))
        if layer(e.target) == "cli"
    ]
    cycles = find_cycles(edges)
    assert not cycles, "CLI import rings:\n" + "\n".join(
        ", ".join(c) + ":\n    " + "\n    ".join(_cycle_edges(edges, c)) for c in cycles
    )


CLI_FUNCTION_MAX_LINES = 60


def test_cli_functions_only_parse_and_print():
    """No CLI function runs past ~60 lines: the work of a command lives in a recipe."""
    long = []
    for path in sorted((PKG / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > CLI_FUNCTION_MAX_LINES:
                    long.append(f"cli/{path.name}:{node.lineno} {node.name}: {n} lines")
    assert not long, "move the work into recipes:\n  " + "\n  ".join(long)


def _without_type_checking_blocks(path: Path) -> str:
    """The module's source with its ``if TYPE_CHECKING:`` bodies removed (annotations only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            node.body = [ast.Pass()]
    return ast.unparse(tree)


def test_no_import_cycles_even_inside_functions():
    """A lazy import hides a cycle from Python, not from the reader: ``container`` ↔ ``export`` and
    ``data.sources`` ↔ ``images`` / ``noise`` were such rings. Imports for annotations only
    (``TYPE_CHECKING``) do not count."""
    edges = [
        dataclasses.replace(e, lazy=False)
        for path in sorted(PKG.rglob("*.py"))
        for e in edges_of(path, module_name(path), code=_without_type_checking_blocks(path))
    ]
    cycles = find_cycles(edges)
    assert not cycles, "import cycles (lazy imports counted):\n" + "\n".join(
        ", ".join(c) + ":\n    " + "\n    ".join(_cycle_edges(edges, c)) for c in cycles
    )
