"""The package's shape: file and function sizes, one-way imports, explicit ``__all__``.

These keep the code base readable as it grows: no product file over 450 lines, no function
over 80 lines (a Rust function may stay longer when a ``// kept whole:`` comment above it says
why), no import circle among the package's modules, and an ``__all__`` in every module.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "python" / "mimir_fast"
RUST = ROOT / "rust" / "src"
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 80
KEPT_WHOLE = "// kept whole:"

PY_FILES = sorted(PACKAGE.rglob("*.py"))
RS_FILES = sorted(RUST.rglob("*.rs"))


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", PY_FILES + RS_FILES, ids=_rel)
def test_file_is_at_most_450_lines(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_FILE_LINES, f"{_rel(path)} has {lines} lines"


def _long_python_functions(source: str) -> list[str]:
    long = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                long.append(f"{node.name} (line {node.lineno}): {length} lines")
    return long


@pytest.mark.parametrize("path", PY_FILES, ids=_rel)
def test_python_functions_are_at_most_80_lines(path: Path) -> None:
    assert _long_python_functions(path.read_text()) == []


_RUST_FN = re.compile(r"^\s*(pub(\([a-z]+\))?\s+)?(const\s+)?(unsafe\s+)?fn\s+(\w+)")


def _strip_rust_literals(line: str) -> str:
    """The line without comments, strings and char literals (enough to count braces)."""
    line = re.sub(r'"(\\.|[^"\\])*"', '""', line)
    line = re.sub(r"'(\\.|[^'\\])'", "''", line)
    return line.split("//", 1)[0]


def _long_rust_functions(source: str) -> list[str]:
    lines = source.splitlines()
    long = []
    for start, line in enumerate(lines):
        match = _RUST_FN.match(line)
        if not match:
            continue
        depth, opened, end = 0, False, start
        for end in range(start, len(lines)):
            code = _strip_rust_literals(lines[end])
            if not opened and ";" in code and "{" not in code:
                break  # a declaration without a body (trait method)
            depth += code.count("{") - code.count("}")
            opened = opened or "{" in code
            if opened and depth <= 0:
                break
        length = end - start + 1
        above = "\n".join(lines[max(0, start - 8) : start])
        if length > MAX_FUNCTION_LINES and KEPT_WHOLE not in above:
            long.append(f"{match.group(5)} (line {start + 1}): {length} lines")
    return long


@pytest.mark.parametrize("path", RS_FILES, ids=_rel)
def test_rust_functions_are_at_most_80_lines(path: Path) -> None:
    assert _long_rust_functions(path.read_text()) == []


def test_the_length_checks_can_fail() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert _long_python_functions(f"def f():\n{body}\n") == ["f (line 1): 81 lines"]
    rust = "fn g() {\n" + "    let a = '{';\n" * (MAX_FUNCTION_LINES - 1) + "}\n"
    assert _long_rust_functions(rust) == ["g (line 1): 81 lines"]
    assert _long_rust_functions(f"{KEPT_WHOLE} one loop for speed\n" + rust) == []


# ---------------------------------------------------------------------------- import circles


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """Modules of the package that ``path`` imports (in functions too; not under TYPE_CHECKING)."""
    module = _module_name(path)
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    prefix = base[: len(base) - (child.level - 1)]
                    target = ".".join(prefix + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text()))
    resolved = set()
    for name in found:
        while name and name not in known:
            name = name.rpartition(".")[0]
        # a package re-exporting its own modules is no circle: drop child -> parent edges
        if name and name != module and not module.startswith(name + "."):
            resolved.add(name)
    return resolved


def _import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return circles


def test_no_import_circles() -> None:
    known = {_module_name(p) for p in PY_FILES}
    graph = {_module_name(p): _imports(p, known) for p in PY_FILES}
    assert _import_circles(graph) == []


def test_the_circle_check_can_fail() -> None:
    assert _import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


SHARED_TOOL = ROOT.parent / "shared" / "tools" / "import_cycles.py"


@pytest.mark.skipif(not SHARED_TOOL.exists(), reason="the workspace's import_cycles.py is absent")
def test_shared_import_cycle_tool_agrees() -> None:
    run = subprocess.run(
        [sys.executable, str(SHARED_TOOL), str(PACKAGE)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


# ------------------------------------------------------------------------------- __all__


def _declared_all(path: Path) -> list[str] | None:
    for node in ast.parse(path.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            return list(ast.literal_eval(node.value))
    return None


@pytest.mark.parametrize("path", PY_FILES, ids=_rel)
def test_every_module_declares_all(path: Path) -> None:
    assert _declared_all(path) is not None, f"{_rel(path)} has no __all__"


def test_top_level_all_is_sorted_and_public() -> None:
    names = _declared_all(PACKAGE / "__init__.py")
    assert names == sorted(names)
    assert [n for n in names if n.startswith("_") and n != "__version__"] == []
    import mimir_fast

    assert all(hasattr(mimir_fast, n) for n in names)
