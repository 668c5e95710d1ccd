"""The fast tier's promise (scripts/test.sh --fast runs what is not marked slow, rtsp or postgres): no test in
it starts the RTSP simulator, vms serve or another process, or a browser. Read from the test sources: a test
whose body, or a fixture of its module it uses, names one of those must carry one of the markers."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# What starts a process or a browser: the simulator, a vms serve, subprocesses, Chromium.
HEAVY_NAMES = {"Simulator", "running_serve", "subprocess", "Popen", "run_vms", "sync_playwright", "IngestSupervisor",
               "chromium"}
TIER_MARKS = {"slow", "rtsp", "postgres"}


def _marks(decorators: list[ast.expr]) -> set[str]:
    found = set()
    for d in decorators:
        for node in ast.walk(d):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "mark":
                found.add(node.attr)
    return found


def _module_marks(tree: ast.Module) -> set[str]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            return _marks([node.value])
    return set()


def _expected_to_fail(n: ast.AST) -> bool:
    """A `with pytest.raises(...)` block: what it calls is refused before it starts anything."""
    return isinstance(n, ast.With) and any(
        isinstance(i.context_expr, ast.Call) and isinstance(i.context_expr.func, ast.Attribute)
        and i.context_expr.func.attr == "raises" for i in n.items)


def _walk(node: ast.AST):
    yield node
    for child in ast.iter_child_nodes(node):
        if not _expected_to_fail(child):
            yield from _walk(child)


def _names(node: ast.AST) -> set[str]:
    out = set()
    for n in _walk(node):
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Attribute):
            out.add(n.attr)
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and "chromium" in n.value:
            out.add("chromium")
    return out


def heavy_unmarked_tests(tests_dir: Path = TESTS) -> list[str]:
    found = []
    for path in sorted(tests_dir.glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if _module_marks(tree) & TIER_MARKS:
            continue
        functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        fixtures = {name: fn for name, fn in functions.items()
                    if "fixture" in _names(ast.Module(fn.decorator_list, []))}
        for name, fn in functions.items():
            if name.startswith("test_") and not _marks(fn.decorator_list) & TIER_MARKS and _heavy(fn, fixtures):
                found.append(f"{path.name}::{name}")
    return found


def _heavy(fn: ast.FunctionDef, fixtures: dict[str, ast.FunctionDef], seen: frozenset[str] = frozenset()) -> bool:
    """Whether the function, or a fixture of its module it asks for (and theirs), names a HEAVY_NAME."""
    if _names(ast.Module(fn.body, [])) & HEAVY_NAMES:
        return True
    used = {a.arg for a in fn.args.args} & set(fixtures) - seen
    return any(_heavy(fixtures[u], fixtures, seen | {fn.name}) for u in used)


def test_no_test_of_the_fast_tier_starts_processes_or_a_browser():
    assert heavy_unmarked_tests() == [], "mark them @pytest.mark.slow (they are not for scripts/test.sh --fast)"


def test_the_check_sees_a_heavy_test(tmp_path):
    (tmp_path / "test_example.py").write_text(
        "import subprocess\nimport pytest\n\n@pytest.fixture\ndef server():\n    return subprocess.Popen(['true'])\n\n"
        "def test_uses_it(server):\n    pass\n\n@pytest.mark.slow\ndef test_marked(server):\n    pass\n\n"
        "def test_plain():\n    assert 1 + 1 == 2\n", encoding="utf-8")
    assert heavy_unmarked_tests(tmp_path) == ["test_example.py::test_uses_it"]
