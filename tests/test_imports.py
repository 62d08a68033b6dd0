"""The package's import graph has no cycle, and the config layer imports no task or model code.

Every `import` and `from ... import` of an attnkd module counts, at module level and inside
functions alike (an import inside a function still makes the two modules depend on each other);
only imports under `if TYPE_CHECKING:` (type annotations, never run) do not."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path


SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The dotted names an import statement in `module` may refer to (a module, or a name in one)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:  # relative: from the package of `module`
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [target, *(f"{target}.{a.name}" for a in node.names)]


def type_checking_nodes(tree: ast.AST) -> set[int]:
    return {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
            for n in ast.walk(node)}


def import_graph(root: Path, package: str = "attnkd") -> dict[str, set[str]]:
    """module -> the package's modules it imports (module-level and function-level)."""
    files = {module_name(p, root): p for p in (root / package).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = type_checking_nodes(tree)
        deps = {t for node in ast.walk(tree) if id(node) not in skip for t in imported(node, name, path.name == "__init__.py")}
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        for d in graph[m] - seen:
            seen.add(d)
            todo.append(d)
    return seen


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph(SRC))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_a_cycle_is_found_with_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "attnkd"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from attnkd import b\n")
    (pkg / "b.py").write_text("def f():\n    from attnkd.sub import c\n")
    (pkg / "sub/__init__.py").write_text("")
    (pkg / "sub/c.py").write_text("from ..a import x\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from attnkd import a\n")
    graph = import_graph(tmp_path)
    assert find_cycle(graph) == ["attnkd.a", "attnkd.b", "attnkd.sub.c", "attnkd.a"]
    assert graph["attnkd.d"] == set()  # annotations only
    (pkg / "sub/c.py").write_text("x = 1\n")
    assert find_cycle(import_graph(tmp_path)) is None


CONFIG = ("attnkd.params", "attnkd.artifacts", "attnkd.plugins")
CODE = ("attnkd.tasks", "attnkd.students", "attnkd.models", "attnkd.signals", "attnkd.objective")


def test_the_config_layer_imports_no_task_model_or_student_code():
    graph = import_graph(SRC)
    for config in CONFIG:
        assert not {m for m in reachable(graph, config) if m.startswith(CODE)}, config
    # and in a fresh interpreter: validating params loads none of them; the task registry loads a
    # task when it is asked for, not before
    code = ("import sys, attnkd.params, attnkd.artifacts, attnkd.plugins; print(sorted(m for m in sys.modules if m.startswith('attnkd')));"
            "import attnkd.tasks as t; print('attnkd.tasks.squad' in sys.modules); t.get_task('squad'); print('attnkd.tasks.squad' in sys.modules)")
    config_modules, before, after = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert not any(m in config_modules for m in CODE), config_modules
    assert (before, after) == ("False", "True")
