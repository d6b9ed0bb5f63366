"""The layering the code promises (docs/architecture.md), checked on the source itself:

- no import cycle between the project's modules (any import, also inside functions);
- `bggen_assets.core` imports neither Dagster nor `resources` / `sensors` / the asset layer;
- the serving API starts without building the Dagster code location.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bggen_assets", "resources", "sensors")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
            if "migrations" not in p.parts}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules imported by `name` (absolute and relative; `from pkg import mod` counts mod)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: _imports(m, p, known) for m, p in mods.items()}


def _is_package_of(a: str, b: str) -> bool:
    return b.startswith(a + ".")


def test_no_import_cycles():
    graph = _graph()
    # A package's __init__ importing its own submodules is not a cycle of the code's layers.
    edges = {m: {t for t in ts if not _is_package_of(m, t) and not _is_package_of(t, m)} for m, ts in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_core_knows_nothing_of_dagster_or_resources():
    bad = []
    for path in (ROOT / "bggen_assets" / "core").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for n in names:
                if n.split(".")[0] in ("dagster", "resources", "sensors") or n.startswith(
                        ("bggen_assets.assets", "bggen_assets.serving", "bggen_assets.steps", "bggen_assets.definitions")):
                    bad.append(f"{path.relative_to(ROOT)}: import {n}")
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                bad.append(f"{path.relative_to(ROOT)}: relative import {'.' * node.level}{node.module or ''} leaves core")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", ["bggen_assets.serving.api"])
def test_serving_starts_without_the_code_location(module):
    code = (f"import sys, {module}; "
            "bad = [m for m in ('bggen_assets.definitions', 'bggen_assets.assets', 'sensors') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"importing {module} imported {proc.stdout.strip()} {proc.stderr[-2000:]}"
