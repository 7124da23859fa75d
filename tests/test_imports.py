"""The project's import graph (irlvla_jax/ and the TFDS builder package data/) has no cycle, and
no module under irlvla_jax/ is longer than MAX_LINES.

The graph is static (``ast``): ``import a.b``, ``from a import b`` (an edge to the submodule
``a.b`` when there is one, else to ``a``), relative imports, imports inside functions (a lazy
import closes a cycle as surely as a top-level one) and ``importlib.import_module("a.b")`` /
``__import__("a.b")`` with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("irlvla_jax", "data")
MAX_LINES = 700


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages. Only folders with
    an ``__init__.py`` are packages (``data/`` also holds built data, which is not walked)."""
    mods: dict[str, Path] = {}
    for top in PACKAGES:
        todo = [REPO / top]
        while todo:
            folder = todo.pop()
            if not (folder / "__init__.py").is_file():
                continue
            for path in sorted(folder.iterdir()):
                if path.is_dir():
                    todo.append(path)
                elif path.suffix == ".py":
                    parts = path.relative_to(REPO).with_suffix("").parts
                    if parts[-1] == "__init__":
                        parts = parts[:-1]
                    mods[".".join(parts)] = path
    return mods


def _imported_names(tree: ast.AST, module: str, is_package: bool):
    """Yield (dotted name, line) of everything a module imports, anywhere in it. For
    ``from a import b`` both ``a.b`` and ``a`` are yielded (``a.b`` first): the caller keeps
    the first that is a project module."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield [alias.name], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                yield [f"{base}.{alias.name}", base], node.lineno
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and node.args and \
                    isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                yield [node.args[0].value], node.lineno


def import_graph(mods: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {imported project module: line of the (first) import}."""
    graph: dict[str, dict[str, int]] = {m: {} for m in mods}
    for module, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        for candidates, line in _imported_names(tree, module, path.name == "__init__.py"):
            for name in candidates:
                # ``import a.b.c`` of a non-module attribute path: its deepest project module
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                if name:
                    break
            if name and name != module:
                graph[module].setdefault(name, line)
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle [a, b, ..., a] per strongly connected component with more than one module
    (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        components.append(sorted(comp))
    return [_cycle_through(graph, comp) for comp in components]


def _cycle_through(graph: dict[str, dict[str, int]], comp: list[str]) -> list[str]:
    """A shortest cycle from comp[0] back to itself inside the component (breadth first)."""
    inside, start = set(comp), comp[0]
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start] + path[::-1][1:] + [start]
                if w in inside and w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {comp}")


def describe(cycle: list[str], graph: dict[str, dict[str, int]], mods: dict[str, Path],
             root: Path = REPO) -> str:
    steps = [f"  {a} ({mods[a].relative_to(root)}:{graph[a][b]}) imports {b}"
             for a, b in zip(cycle, cycle[1:])]
    return " -> ".join(cycle) + "\n" + "\n".join(steps)


def test_no_import_cycles():
    mods = project_modules()
    assert "irlvla_jax.data.prepare" in mods and "data.navsim_tfds.navsim_tfds" in mods
    graph = import_graph(mods)
    cycles = find_cycles(graph)
    report = "\n\n".join(describe(c, graph, mods) for c in cycles)
    print(report)
    assert not cycles, f"{len(cycles)} import cycle(s):\n{report}"


def test_no_module_over_the_line_limit():
    too_long = {}
    for path in sorted((REPO / "irlvla_jax").rglob("*.py")):
        n = len(path.read_text().splitlines())
        if n > MAX_LINES:
            too_long[str(path.relative_to(REPO))] = n
    assert not too_long, f"modules over {MAX_LINES} lines (split them by concept): {too_long}"


def test_the_cycle_finder_finds_a_lazy_import_cycle(tmp_path):
    """The checker itself: a function-level import closing a loop is reported, with its lines."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("import importlib\n\ndef f():\n    from .c import g\n")
    (pkg / "c.py").write_text("def g():\n    import pkg.a\n")
    (pkg / "d.py").write_text("from pkg.a import x\nimport importlib\n"
                              "importlib.import_module('pkg.c')\n")
    mods = {f"pkg.{n}": pkg / f"{n}.py" for n in "abcd"} | {"pkg": pkg / "__init__.py"}
    graph = import_graph(mods)
    assert graph["pkg.b"] == {"pkg.c": 4} and graph["pkg.d"] == {"pkg.a": 1, "pkg.c": 3}
    cycles = find_cycles(graph)
    assert cycles == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    assert "(pkg/b.py:4) imports pkg.c" in describe(cycles[0], graph, mods, tmp_path)
