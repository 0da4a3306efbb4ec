"""The layout is the architecture: imports point only downwards, and nothing imports in a circle.

The graph is read from the source (every import statement, those inside functions too),
so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "offsetlab"
# A folder may import its own modules and those of folders ranked lower, never higher.
RANKS = {"method": 0, "offsets": 1, "measure": 1, "worlds": 2, "frontends": 3}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    # The top-level package is the public facade (it re-exports the main names) and
    # ``__main__`` the entry point: both sit above every folder and are left out.
    return {module_name(p): p for p in PACKAGE.rglob("*.py")
            if p.parent != PACKAGE or p.name not in ("__init__.py", "__main__.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The offsetlab modules that ``name`` imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from pkg import mod` imports the module pkg.mod; `from mod import f`, mod.
            targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in known else stem
                       for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods) | {"offsetlab"}
    return {name: imports_of(name, path, known) - {"offsetlab"} for name, path in mods.items()}


def folder(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_lives_in_a_ranked_folder():
    stray = [n for n in modules() if folder(n) not in RANKS]
    assert not stray, f"modules outside {sorted(RANKS)}: {stray}"


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_imports_point_only_downwards():
    wrong = [f"{a} imports {b}" for a, targets in graph().items() for b in sorted(targets)
             if folder(a) != folder(b) and RANKS[folder(b)] >= RANKS[folder(a)]]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("source, expected", [
    ("from .b import x\n", {"offsetlab.method.b"}),
    ("def f():\n    from ..worlds import lab\n", {"offsetlab.worlds.lab"}),
    ("import offsetlab.worlds.lab as L\n", {"offsetlab.worlds.lab"}),
])
def test_the_graph_sees_relative_absolute_and_function_level_imports(tmp_path, source, expected):
    path = tmp_path / "a.py"
    path.write_text(source)
    known = {"offsetlab.method.a", "offsetlab.method.b", "offsetlab.worlds", "offsetlab.worlds.lab"}
    assert imports_of("offsetlab.method.a", path, known) == expected


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_files_grouped_on_one_worker_exist():
    # tests/conftest.py keeps the files that build SmolLM2 on one xdist worker, named by
    # their node-id paths: a renamed or moved file would silently fall out of its group.
    from conftest import SHARED_WORKER

    root = PACKAGE.parent
    assert SHARED_WORKER, "no files are grouped"
    for path in SHARED_WORKER:
        assert (root / path).is_file(), f"{path} is grouped in tests/conftest.py but does not exist"
