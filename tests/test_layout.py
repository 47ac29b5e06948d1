"""The package's shape: no import cycle between disttgl's modules, no module over 400 lines.

Both read the source (``ast``), never import it, so they cost nothing and need no torch.

Import rule for the cycle check: every ``import`` counts, at module level, under ``if TYPE_CHECKING``
and inside functions alike. A cycle hidden behind a function-level import is still a cycle: the two
modules cannot be understood, tested or moved apart. The one exception is an import placed inside a
function so that a light command (``disttgl info``, ``--help``) does not pay for importing torch;
such an import must be listed in ``DEFERRED_FOR_TORCH`` below with the function it sits in, and it
is then left out of the graph. Today none is needed.

``KNOWN_CYCLE_EDGES`` lists imports that close a cycle someone is removing now, each with the
reason; the check skips them, and fails once one is gone so the entry is dropped with it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "disttgl"
MAX_LINES = 400

# (importing module, function, imported module): function-level imports that exist only to keep
# torch out of light commands, and are allowed to close a cycle. Keep it empty if you can.
DEFERRED_FOR_TORCH: set[tuple[str, str, str]] = set()

# (importing module, imported module) -> reason: known cycles, skipped until they are removed
KNOWN_CYCLE_EDGES: dict[tuple[str, str], str] = {}

# module -> why it may exceed MAX_LINES
LONG_MODULES_ALLOWED: dict[str, str] = {}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The disttgl module that importing ``name`` loads (``a.b.c`` -> ``a.b`` when c is a name in a.b)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _enclosing_functions(tree: ast.AST) -> dict[ast.AST, str]:
    """Import node -> name of the innermost function holding it ("" at module level)."""
    where: dict[ast.AST, str] = {}

    def visit(node: ast.AST, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                where[child] = func
            visit(child, inner)

    visit(tree, "")
    return where


def import_edges() -> set[tuple[str, str, str]]:
    """Every (importing module, function holding the import or "", imported disttgl module)."""
    modules = _modules()
    edges = set()
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node, func in _enclosing_functions(tree).items():
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    pkg = mod if is_pkg else mod.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        pkg = pkg.rpartition(".")[0]
                    base = f"{pkg}.{base}" if base else pkg
                # ``from a.b import c`` loads a.b.c when c is a module, else a.b
                targets = [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                dep = _resolve(target, modules) if target.split(".")[0] == "disttgl" else None
                if dep is not None and dep != mod:
                    edges.add((mod, func, dep))
    return edges


def import_graph(skip_known: bool = True) -> dict[str, set[str]]:
    """module -> the disttgl modules it imports: every import counted except ``DEFERRED_FOR_TORCH``
    (see the module docstring); ``skip_known`` also leaves out ``KNOWN_CYCLE_EDGES``."""
    graph: dict[str, set[str]] = {m: set() for m in _modules()}
    for mod, func, dep in import_edges():
        if (mod, func, dep) in DEFERRED_FOR_TORCH or (skip_known and (mod, dep) in KNOWN_CYCLE_EDGES):
            continue
        graph[mod].add(dep)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [m0, m1, ..., m0], or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def dfs(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for dep in sorted(graph[m]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := dfs(dep)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := dfs(m)):
            return found
    return None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_sees_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_listed_exceptions_are_still_needed():
    edges = import_edges()
    graph = import_graph()
    for (mod, dep), reason in KNOWN_CYCLE_EDGES.items():
        assert reason.strip(), (mod, dep)
        assert any(m == mod and d == dep for m, _, d in edges), \
            f"{mod} no longer imports {dep}: drop it from KNOWN_CYCLE_EDGES"
        assert find_cycle({**graph, mod: graph[mod] | {dep}}), \
            f"{mod} -> {dep} closes no cycle any more: drop it from KNOWN_CYCLE_EDGES"
    for entry in DEFERRED_FOR_TORCH:
        assert entry in edges, f"{entry} is no such function-level import: drop it from DEFERRED_FOR_TORCH"
        assert entry[1], f"{entry} is a module-level import: it is always counted"


def test_no_module_over_400_lines():
    modules = _modules()
    too_long = {m: n for m, p in modules.items()
                if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
                and m not in LONG_MODULES_ALLOWED}
    assert not too_long, f"modules over {MAX_LINES} lines (split them, or list them with a reason): {too_long}"
    for m, reason in LONG_MODULES_ALLOWED.items():
        assert m in modules, f"{m} is allowed to be long but does not exist: drop it from the list"
        assert reason.strip(), f"{m}: give the reason it may exceed {MAX_LINES} lines"
