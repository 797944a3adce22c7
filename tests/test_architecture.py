"""The structure docs/architecture.md describes, checked: each package imports only what the
document's table allows (and uses every import it allows), no import circle, module sizes,
few loose modules, argparse only in the CLI, no global matplotlib state."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "brainseg"
DOC = REPO / "docs" / "architecture.md"
MAX_LINES = 400
MAX_LOOSE_MODULES = 8


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """brainseg modules ``name`` imports, at module level or inside functions."""
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


def package_of(module: str) -> str:
    """The top-level package (or loose module) a module belongs to: ``brainseg.infer.batch`` -> ``infer``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "brainseg"


def allowed_from_doc() -> dict[str, set[str]]:
    """The table "What each package may import" of docs/architecture.md."""
    text = DOC.read_text()
    section = text.split("## What each package may import", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`"):
            continue
        table[cells[0].strip("`")] = set(re.findall(r"`([\w.]+)`", cells[1]))
    return table


ALLOWED = allowed_from_doc()


def package_imports() -> dict[str, dict[str, set[str]]]:
    """package -> imported package -> the modules that import it."""
    mods = modules()
    out: dict[str, dict[str, set[str]]] = {}
    for name, path in mods.items():
        for target in imports(name, path, mods):
            src, dst = package_of(name), package_of(target)
            if src != dst:
                out.setdefault(src, {}).setdefault(dst, set()).add(name)
    return out


def test_the_document_lists_every_package_and_only_rows_above_each_row():
    listed = list(ALLOWED)
    actual = {package_of(m) for m in modules()}
    assert set(listed) == actual, (
        f"packages missing from the table: {actual - set(listed)}; listed but absent: {set(listed) - actual}"
    )
    for i, name in enumerate(listed):
        later = set(listed[i:])
        assert not ALLOWED[name] & later, f"{name} may import {ALLOWED[name] & later}, which do not come before it"


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_what_the_table_allows(package):
    used = package_imports().get(package, {})
    bad = {dst: sorted(srcs) for dst, srcs in used.items() if dst not in ALLOWED[package]}
    assert not bad, f"{package} imports past docs/architecture.md's table: {bad}"
    unused = ALLOWED[package] - set(used)
    assert not unused, f"the table lets {package} import {sorted(unused)}, which nothing in it uses: tighten the row"


def test_no_import_circle():
    mods = modules()
    graph = {name: imports(name, path, mods) for name, path in mods.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_module_is_over_the_size_limit():
    files = list(PACKAGE.rglob("*.py")) + list((REPO / "scripts").rglob("*.py"))
    long = {str(p.relative_to(REPO)): n for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_few_modules_sit_loose_at_the_top_level():
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(loose) <= MAX_LOOSE_MODULES, f"{len(loose)} loose modules at brainseg/: {loose}"


def test_argparse_and_global_matplotlib_state_stay_out_of_the_library():
    for name, path in modules().items():
        text = path.read_text()
        if not name.startswith("brainseg.cli"):
            assert "argparse" not in text, f"{path} uses argparse (only brainseg/cli may)"
        assert "matplotlib.use(" not in text and "import matplotlib.pyplot" not in text, (
            f"{path} sets global matplotlib state"
        )
