"""Closes two holes of test_layering's tool check (issue 10, deliverables 4 and 6).

test_layering finds argument vectors whose FIRST item names a network tool. A vector built
behind a prefix (`[*netns_exec_argv(ns), "iperf3", ...]`) slipped through, and so did a module
that starts processes of its own instead of going through the data plane or the lab adapter.
Here:
- a tool named right after a starred prefix counts as running that tool;
- every place that starts a process is either a tool runner or listed below with its reason,
  so a new one has to say why it may bypass the adapter.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from test_layering import NETWORK_TOOLS, TOOL_RUNNERS

ROOT = Path(__file__).resolve().parents[2]

SPAWN_CALLS = frozenset({
    "subprocess.run", "subprocess.Popen", "subprocess.call", "subprocess.check_call",
    "subprocess.check_output", "asyncio.create_subprocess_exec",
    "asyncio.create_subprocess_shell", "os.system", "os.execv", "os.execvp", "os.execvpe",
    "os.execve", "os.spawnv", "os.posix_spawn", "os.posix_spawnp",
})
# Modules that start processes without going through a tool runner, and why that is right.
OWN_PROCESSES = {
    "raven/lab/vmguest.py": "the command server inside a VM guest: standard library only, it "
    "runs what the host's lab adapter sends",
    "raven/lab/vmbundle.py": "compiles Python modules with sys.executable (no tool)",
    "raven/lab/kubelet_exec.py": "the kubelet stand-in runs `kubectl exec` commands in a pod, "
    "behind the adapter's pod_exec_argv prefix (asyncio, so not netns.spawn)",
    "raven/healthprobe/responder.py": "starts the probe responder, a Python script of its own",
    "raven/commands/lab.py": "`raven lab exec` replaces itself (execvp) with the user's "
    "command behind the lab's exec prefix",
    "raven/commands/graph.py": "Graphviz `dot` renders the SVG",
}


def sources() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted((ROOT / "raven").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        yield rel, ast.parse(path.read_text(), filename=rel)


def prefixed_tools(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """Argument vectors `[*prefix, "tool", ...]`: a network tool right after a starred prefix."""
    for node in ast.walk(tree):
        if isinstance(node, ast.List | ast.Tuple) and len(node.elts) > 1:
            first, second = node.elts[0], node.elts[1]
            if (isinstance(first, ast.Starred) and isinstance(second, ast.Constant)
                    and isinstance(second.value, str)
                    and second.value.rsplit("/", 1)[-1] in NETWORK_TOOLS):
                yield node.lineno, second.value


def spawns(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """Calls that start a process: `subprocess.run(...)`, `asyncio.create_subprocess_exec(...)`,
    `os.execvp(...)`, ..."""
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)):
            name = f"{node.func.value.id}.{node.func.attr}"
            if name in SPAWN_CALLS:
                yield node.lineno, name


def test_no_tool_is_run_behind_a_prefix_outside_the_runners() -> None:
    offenders = [f"{rel}:{line} runs {tool}" for rel, tree in sources()
                 if not rel.startswith(TOOL_RUNNERS)
                 for line, tool in prefixed_tools(tree)]
    assert offenders == [], ("build the command line in raven/lab/netns.py (the lab's adapter) "
                             f"or raven/dataplane/: {offenders}")


def test_processes_are_started_only_by_the_runners_and_the_listed_modules() -> None:
    offenders = [f"{rel}:{line} {call}" for rel, tree in sources()
                 if not rel.startswith(TOOL_RUNNERS) and rel not in OWN_PROCESSES
                 for line, call in spawns(tree)]
    assert offenders == [], ("start it through raven.lab.netns (run, spawn) or the data plane, "
                             f"or list the module in OWN_PROCESSES with its reason: {offenders}")


def test_every_listed_module_still_starts_a_process() -> None:
    starting = {rel for rel, tree in sources() if any(spawns(tree))}
    stale = sorted(set(OWN_PROCESSES) - starting)
    assert stale == [], f"no longer start processes; drop them from OWN_PROCESSES: {stale}"


def test_the_checks_can_fail() -> None:
    tree = ast.parse("import subprocess, asyncio\n"
                     "subprocess.run([*prefix('ns'), 'iperf3', '-c', ip])\n"
                     "asyncio.create_subprocess_exec(*argv)\n"
                     "x = [*a, 'kubectl', 'get']\n")
    assert list(prefixed_tools(tree)) == [(2, "iperf3")]
    assert list(spawns(tree)) == [(2, "subprocess.run"), (3, "asyncio.create_subprocess_exec")]
