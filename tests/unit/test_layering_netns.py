"""Who may enter a network namespace (docs/tunnel-namespace.md, "Layering").

Entering a namespace (setns(2)) changes which network the calling thread sees: every socket it
opens there stays bound to that namespace's devices, addresses and routes. That is the data
plane's business, for three reasons:
- which namespace holds which device is the data plane's knowledge (with a tunnel namespace,
  raven0 and raven-wg0 live in one, the node's routes and the veth's other end in another);
  a module that entered namespaces on its own would act on a network the data plane did not
  choose, and would go stale the day a device moves;
- ifindex numbers repeat across namespaces, so whatever binds to a device (a socket bound to
  it, an ifindex-keyed cache) must know its namespace, which is what the data plane tracks;
- creating, deleting and entering namespaces need CAP_SYS_ADMIN; keeping the calls in one place
  keeps the privilege decision in one place too.

So `raven.dataplane.netns` is imported only by the data plane and by the two programs that
must open their sockets next to the devices they watch (the health prober and the probe
responder, listed below with their reasons); and setns(2) itself is called only by that module
and by the few programs that cannot import it, each listed with its reason. A new entry has to
say why it may enter a namespace.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator

from test_layering import imported, module_name, sources

NETNS_MODULE = "raven.dataplane.netns"
DATA_PLANE = "raven/dataplane/"
# Importers of raven.dataplane.netns outside the data plane, and why.
NETNS_IMPORTERS = {
    "raven/healthprobe/prober.py": "opens each probe socket bound to its device in the namespace "
    "that holds it: the agent's (labs and tests run an agent in another one) or its tunnel "
    "namespace (docs/tunnel-namespace.md)",
    "raven/healthprobe/responder.py": "the agent's side asks the responder over loopback in the "
    "namespace it serves (the agent's or its tunnel namespace), checks that namespace exists, "
    "and hands its path to the responder it starts",
}
# Callers of setns(2) other than raven.dataplane.netns, and why they cannot use it.
SETNS_CALLERS = {
    "raven/dataplane/netns.py": "the one entry point of the product",
    "raven/healthprobe/responder.py": "the responder script runs as `python -I -S` (no raven "
    "import) and enters the namespace it answers in",
    "raven/lab/icmp.py": "the lab's ICMP probe opens a raw socket in each source namespace; the "
    "lab is a test harness with a kernel adapter of its own (raven/lab/netns.py)",
    "raven/lab/vmguest.py": "the command server inside a VM guest: standard library only",
}
SETNS_NAMES = frozenset({"setns", "pushns"})  # libc's, and pyroute2.netns's (setns on a stack)


def netns_importers(modules: Iterable[tuple[str, ast.Module]]) -> list[str]:
    """Modules outside the data plane and the list that import raven.dataplane.netns."""
    return [rel for rel, tree in modules
            if not rel.startswith(DATA_PLANE) and rel not in NETNS_IMPORTERS
            and NETNS_MODULE in imported(tree, module_name(rel))]


def setns_calls(tree: ast.Module) -> Iterator[int]:
    """Lines calling something named setns or pushns (`libc.setns(...)`, `_libc.setns(...)`)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = (func.id if isinstance(func, ast.Name)
                    else func.attr if isinstance(func, ast.Attribute) else None)
            if name in SETNS_NAMES:
                yield node.lineno


def setns_offenders(modules: Iterable[tuple[str, ast.Module]]) -> list[str]:
    return [f"{rel}:{line} calls setns" for rel, tree in modules if rel not in SETNS_CALLERS
            for line in setns_calls(tree)]


def product() -> list[tuple[str, ast.Module]]:
    return [(rel, tree) for rel, _, tree in sources()]


def test_only_the_data_plane_and_the_listed_modules_import_the_netns_module() -> None:
    offenders = netns_importers(product())
    assert offenders == [], (
        f"{offenders} import {NETNS_MODULE}: entering a namespace is the data plane's job; go "
        "through raven.dataplane, or add the module to NETNS_IMPORTERS with its reason")


def test_only_the_listed_modules_call_setns() -> None:
    offenders = setns_offenders(product())
    assert offenders == [], (
        f"{offenders}: enter namespaces through raven.dataplane.netns.entered, or add the "
        "module to SETNS_CALLERS with its reason")


def test_the_lists_are_the_current_truth() -> None:
    """Every listed module still does what it is listed for (a stale entry would let a new
    use in unnoticed)."""
    modules = dict(product())
    for rel in NETNS_IMPORTERS:
        assert NETNS_MODULE in imported(modules[rel], module_name(rel)), rel
    for rel in SETNS_CALLERS:
        assert list(setns_calls(modules[rel])), rel


def test_the_netns_checks_can_fail() -> None:
    fake = [
        ("raven/agent.py", ast.parse("from raven.dataplane.netns import entered\n")),
        ("raven/paths.py", ast.parse("from raven.dataplane import netns\n")),
        ("raven/lab/x.py", ast.parse("import raven.dataplane.netns\n")),
        ("raven/dataplane/links.py", ast.parse("from raven.dataplane import netns\n")),
        ("raven/controller.py", ast.parse("x = 1\nlibc.setns(fd, 0x40000000)\n")),
        ("raven/dataplane/rtnl.py", ast.parse("pyroute2.netns.pushns('x')\n")),
    ]
    assert netns_importers(fake) == ["raven/agent.py", "raven/paths.py", "raven/lab/x.py"]
    assert setns_offenders(fake) == ["raven/controller.py:2 calls setns",
                                     "raven/dataplane/rtnl.py:1 calls setns"]
