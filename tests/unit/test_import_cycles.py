"""No import cycle among raven's modules (issue 10, deliverable 5, for the whole package).

Counted: the imports a module runs when it is imported (module level, also inside if/try/with
blocks). Not counted: imports under `if TYPE_CHECKING:` (never run), imports inside functions
(run later, on purpose: they break start-up costs, not cycles), and a module's import of its
own parent packages (Python initialises those first anyway). AST only; nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def module_sources() -> dict[str, tuple[ast.Module, bool]]:
    """module name -> (tree, is a package)."""
    out = {}
    for path in sorted((ROOT / "raven").rglob("*.py")):
        name = path.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
        package = name.endswith(".__init__")
        out[name.removesuffix(".__init__")] = (ast.parse(path.read_text()), package)
    return out


def _runtime_statements(body: list[ast.stmt]) -> list[ast.stmt]:
    found: list[ast.stmt] = []
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            found += _runtime_statements(node.orelse)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If | ast.Try | ast.With):
            found += _runtime_statements(node.body)
            found += _runtime_statements(getattr(node, "orelse", []))
            found += _runtime_statements(getattr(node, "finalbody", []))
            for handler in getattr(node, "handlers", []):
                found += _runtime_statements(handler.body)
    return found


def graph(sources: dict[str, tuple[ast.Module, bool]]) -> dict[str, set[str]]:
    """module -> the raven modules importing it runs."""
    out: dict[str, set[str]] = {}
    for module, (tree, is_package) in sources.items():
        package = module if is_package else module.rpartition(".")[0]
        names: set[str] = set()
        for node in _runtime_statements(tree.body):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
                continue
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base]) if base else ".".join(parts)
            subs = {f"{base}.{a.name}" for a in node.names} & set(sources)
            names |= subs
            if len(subs) < len(node.names):
                names.add(base)  # `from raven.x import name`: the module raven.x
        deps = set()
        for name in names:
            while name and name not in sources:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                deps.add(name)
        out[module] = deps
    return out


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(g):
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(g.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_raven_has_no_import_cycle() -> None:
    found = cycles(graph(module_sources()))
    assert found == [], ("modules that import each other when imported: "
                         f"{found}; move what both need into a third module, or import it "
                         "under TYPE_CHECKING when only a type is needed")


def test_the_cycle_check_can_fail() -> None:
    def src(text: str, package: bool = False) -> tuple[ast.Module, bool]:
        return ast.parse(text), package

    sources = {
        "raven": src("", True),
        "raven.a": src("from raven.b import thing\n"),
        "raven.b": src("try:\n    import raven.a\nexcept ImportError:\n    pass\n"),
        "raven.c": src("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                       "    from raven.d import D\n"),
        "raven.d": src("import raven.c\ndef f():\n    from raven.e import x\n"),
        "raven.e": src("from raven import d\n"),
        "raven.pkg": src("from raven.pkg import sub\n", True),
        "raven.pkg.sub": src("from raven.pkg import other\n"),
        "raven.pkg.other": src("x = 1\n"),
    }
    g = graph(sources)
    assert g["raven.pkg.sub"] == {"raven.pkg.other"}  # its parent package is not an edge
    assert cycles(g) == [["raven.a", "raven.b"]]
