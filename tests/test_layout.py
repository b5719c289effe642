"""The floor plan (issue 29): fastgru's modules import each other only downward, never another
module's underscore names, and none grows past 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fastgru"
MAX_LINES = 400


def modules() -> dict[str, Path]:
    """{dotted name: path} of every module of the package."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: dict) -> tuple[set[str], list[str]]:
    """(the package's modules `name` imports, the underscore names it takes from others)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets, private, aliases = set(), [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in known:  # a module
                    targets.add(full)
                    aliases[alias.asname or alias.name] = full
                elif base in known:
                    targets.add(base)
                    if alias.name.startswith("_") and not alias.name.startswith("__") \
                            and base != name:
                        private.append(f"{name} imports {full}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    targets.add(alias.name)
                    if alias.asname:
                        aliases[alias.asname] = alias.name
    for node in ast.walk(tree):  # module._name, for modules imported under a name
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                node.value.id in aliases and node.attr.startswith("_") and \
                not node.attr.startswith("__"):
            private.append(f"{name} uses {aliases[node.value.id]}.{node.attr}")
    return targets - {name}, private


def test_imports_form_no_cycle_and_take_no_private_names():
    known = modules()
    graph, private = {}, []
    for name, path in known.items():
        graph[name], taken = imports(name, path, known)
        private += taken
    cycles, state, stack = [], {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for other in sorted(graph[node]):
            if state.get(other) == 1:
                cycles.append(" -> ".join(stack[stack.index(other):] + [other]))
            elif other not in state:
                visit(other)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    # a package's __init__ re-exports its modules: importing the package from them is no cycle
    cycles = [c for c in cycles if not any(c.startswith(f"{p} ->") or f"-> {p} ->" in c
                                           for p in ("fastgru",))]
    assert not cycles, f"import cycles: {cycles}"
    assert not private, f"underscore names used across modules: {private}"


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
