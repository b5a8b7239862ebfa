"""The layering rules of docs/architecture.md, enforced on the source (AST, no imports run).

- pyroute2 is imported only under raven/dataplane/; kubernetes only under raven/kube/;
- network tools (ip, nft, wg, wireguard-go, sysctl, ...) are run only by the data plane and the
  lab's kernel adapter;
- the pure modules (planner, election, Gateway status, settings, model) import nothing that does
  I/O, directly or through another raven module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "raven"

NETWORK_TOOLS = frozenset({
    "ip", "nft", "wg", "wireguard-go", "sysctl", "tc", "bridge", "iptables", "ip6tables",
    "ping", "iperf3", "sh", "bash", "ethtool", "conntrack", "nsenter", "unshare", "tcpdump",
    "setsid", "kill", "pkill",
})
TOOL_RUNNERS = ("raven/dataplane/", "raven/lab/netns.py")
# `raven version` runs each tool's --version to report it; it changes nothing.
TOOL_VERSION_REPORT = "raven/commands/version.py"
PURE_MODULES = (
    "raven.topology", "raven.election", "raven.gateway_status", "raven.settings",
    "raven.model", "raven.desired", "raven.constants", "raven.errors", "raven.timefmt",
    "raven.agent_step", "raven.controller_step", "raven.proxy.plan", "raven.nat_discovery",
    "raven.paths", "raven.relay_choice", "raven.failover", "raven.standby", "raven.pool_decision",
    "raven.pool_claims", "raven.publisher", "raven.route_placement",
    "raven.shards", "raven.tunnel_shape",
)
# Modules that touch sockets, processes, files, threads, randomness or the clock. (pathlib and
# datetime are allowed as value types: Path fields in settings, RFC 3339 conversions; the calls
# that would do I/O with them are refused by IO_CALLS below.)
IO_MODULES = frozenset({
    "socket", "subprocess", "threading", "time", "os", "shutil", "ssl", "http", "urllib",
    "select", "selectors", "asyncio", "sqlite3", "tempfile", "signal", "multiprocessing",
    "logging", "io", "random", "secrets", "pyroute2", "kubernetes", "requests", "urllib3",
})
IO_CALLS = frozenset({
    "open", "read_text", "read_bytes", "write_text", "write_bytes", "exists", "mkdir", "unlink",
    "stat", "iterdir", "glob", "rglob", "now", "utcnow", "today", "resolve", "chmod", "touch",
})


def sources() -> Iterator[tuple[str, Path, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        yield rel, path, ast.parse(path.read_text(), filename=rel)


def module_name(rel: str) -> str:
    name = rel.removesuffix(".py").replace("/", ".")
    return name.removesuffix(".__init__")


def imported(tree: ast.Module, module: str) -> set[str]:
    """Every module an import statement anywhere in the file names (lazy imports included)."""
    names: set[str] = set()
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base]) if base else ".".join(parts)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def top(name: str) -> str:
    return name.split(".", 1)[0]


@pytest.mark.parametrize(("library", "home"), [("pyroute2", "raven/dataplane/"),
                                               ("kubernetes", "raven/kube/")])
def test_a_library_is_imported_only_in_its_package(library: str, home: str) -> None:
    offenders = [rel for rel, _, tree in sources()
                 if not rel.startswith(home)
                 and any(top(n) == library for n in imported(tree, module_name(rel)))]
    assert offenders == [], f"{library} imported outside {home}: {offenders}"


def tool_calls(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """Argument vectors written as list/tuple literals whose first item names a network tool."""
    for node in ast.walk(tree):
        if isinstance(node, ast.List | ast.Tuple) and node.elts:
            first = node.elts[0]
            if (isinstance(first, ast.Constant) and isinstance(first.value, str)
                    and first.value.rsplit("/", 1)[-1] in NETWORK_TOOLS
                    and len(node.elts) > 1
                    and not all(isinstance(e, ast.Constant) and e.value in NETWORK_TOOLS
                                for e in node.elts)):  # a list of tool names, not a command
                yield node.lineno, first.value


def test_network_tools_are_run_only_by_the_data_plane_and_the_lab_adapter() -> None:
    offenders = [f"{rel}:{line} runs {tool}" for rel, _, tree in sources()
                 if not rel.startswith(TOOL_RUNNERS) and rel != TOOL_VERSION_REPORT
                 for line, tool in tool_calls(tree)]
    assert offenders == []


def test_the_layering_checks_can_fail() -> None:
    """The detectors find what they look for (so an empty offender list means something)."""
    tree = ast.parse("import pyroute2\nfrom kubernetes import client\n"
                     "subprocess.run(['ip', '-j', 'link'])\n")
    assert {"pyroute2", "kubernetes"} <= {top(n) for n in imported(tree, "raven.x")}
    assert list(tool_calls(tree)) == [(3, "ip")]


def raven_graph() -> dict[str, set[str]]:
    return {module_name(rel): imported(tree, module_name(rel)) for rel, _, tree in sources()}


@pytest.mark.parametrize("pure", PURE_MODULES)
def test_pure_modules_import_nothing_that_does_io(pure: str) -> None:
    graph = raven_graph()
    assert pure in graph, f"{pure} is listed as pure but does not exist; update PURE_MODULES"
    seen: set[str] = set()
    stack = [pure]
    problems = []
    while stack:
        module = stack.pop()
        if module in seen:
            continue
        seen.add(module)
        for name in graph.get(module, ()):
            if top(name) in IO_MODULES:
                problems.append(f"{module} imports {name}")
            elif name in graph:
                stack.append(name)
            elif top(name) == "raven" and name.rsplit(".", 1)[0] in graph:
                stack.append(name.rsplit(".", 1)[0])  # `from raven.x import name`
    assert problems == [], f"{pure} is not pure: {problems}"


def io_calls(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """Calls that do I/O or read the clock: open(...), path.read_text(), datetime.now(), ..."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = (func.id if isinstance(func, ast.Name)
                    else func.attr if isinstance(func, ast.Attribute) else None)
            if name in IO_CALLS:
                yield node.lineno, name


@pytest.mark.parametrize("pure", PURE_MODULES)
def test_pure_modules_make_no_io_calls(pure: str) -> None:
    path = ROOT / (pure.replace(".", "/") + ".py")
    found = list(io_calls(ast.parse(path.read_text())))
    assert found == [], f"{pure} calls {found}"


def test_the_io_call_check_can_fail() -> None:
    tree = ast.parse("Path('x').read_text()\ndatetime.now(UTC)\nopen('f')\n")
    assert [name for _, name in io_calls(tree)] == ["read_text", "now", "open"]
