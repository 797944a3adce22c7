"""The structure docs/architecture.md describes, checked: module sizes, the one-way
import flow, no import circle, argparse only in the CLI, no global matplotlib state."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "brainseg"
MAX_LINES = 400

#: What each stage may import from brainseg (besides itself): the one-way flow
#: io -> data -> model -> train / infer -> postprocess -> evaluate, CLI on top.
BOTTOM = {"errors", "_version", "config", "card", "regions", "lateral", "ranges", "runtime", "arrays", "metrics", "atomic", "naming", "io"}
ALLOWED = {
    "data": BOTTOM,
    "model": BOTTOM,
    "plan": BOTTOM | {"data", "model"},
    "postprocess": BOTTOM | {"data"},
    "infer": BOTTOM | {"data", "model", "postprocess"},
    "train": BOTTOM | {"data", "model", "postprocess", "infer"},
    "evaluate": BOTTOM | {"data", "pairing"},
    "evaluate_regions": BOTTOM | {"data", "pairing", "evaluate"},
    "pairing": BOTTOM | {"data"},
    "viz": BOTTOM,
    "pipeline": BOTTOM | {"data", "plan", "model", "postprocess", "infer", "train", "evaluate", "evaluate_regions", "viz"},
}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(name: str, path: Path) -> set[str]:
    """brainseg modules ``name`` imports, at module level or inside functions."""
    mods = modules()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found.update(c for c in candidates if c in mods and c != name)
    return found


def test_no_module_is_over_the_size_limit():
    files = list(PACKAGE.rglob("*.py")) + list((REPO / "scripts").glob("*.py"))
    long = {str(p.relative_to(REPO)): n for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_import_circle():
    graph = {name: imports(name, path) for name, path in modules().items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("stage", sorted(ALLOWED))
def test_stages_import_only_what_comes_before_them(stage):
    bad = {}
    for name, path in modules().items():
        parts = name.split(".")
        if len(parts) < 2 or parts[1] != stage:
            continue
        for target in imports(name, path):
            top = target.split(".")[1] if target != "brainseg" else "brainseg"
            if top != stage and top not in ALLOWED[stage]:
                bad.setdefault(name, []).append(target)
    assert not bad, f"{stage} imports past the one-way flow: {bad}"


def test_argparse_and_global_matplotlib_state_stay_out_of_the_library():
    for name, path in modules().items():
        text = path.read_text()
        if not name.startswith("brainseg.cli"):
            assert "argparse" not in text, f"{path} uses argparse (only brainseg/cli may)"
        assert "matplotlib.use(" not in text and "import matplotlib.pyplot" not in text, f"{path} sets global matplotlib state"
