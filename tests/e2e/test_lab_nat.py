"""NAT kinds proven with packets: a UDP echo on the lab's internet reports the source it saw.

From one node socket (fixed source port) we send to two internet destinations:
- public pool: both see the node's own address and port (no NAT);
- cone pool: both see the router's public address and the SAME, preserved port;
- symmetric pool: both see the router's public address and DIFFERENT ports.
Unsolicited traffic from the internet side into a NAT'd pool is dropped.
"""

from __future__ import annotations

import subprocess

import pytest
from kube_support import wait_for

from raven.lab import netns as nsutil
from raven.lab import runtime
from raven.lab.plan import INTERNET_PROBES, LabPlan

pytestmark = pytest.mark.root

ECHO_PORT = 7000
SOURCE_PORT = 40123

ECHO_SERVER = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
for addr in sys.argv[2:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, int(sys.argv[1])))
    sel.register(s, selectors.EVENT_READ)
print("listening", flush=True)
while True:
    for key, _ in sel.select():
        data, peer = key.fileobj.recvfrom(2048)
        key.fileobj.sendto(f"{peer[0]} {peer[1]}".encode(), peer)
"""

CLIENT = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(3)
for dst in sys.argv[3:]:
    s.sendto(b"who am i", (dst, int(sys.argv[2])))
    print(dst, s.recvfrom(100)[0].decode(), flush=True)
"""


@pytest.fixture(scope="module")
def nat_lab(module_lab_factory) -> LabPlan:
    plan = module_lab_factory("three-pools.yaml")
    runtime.start_process(plan.name, "internet", "udp-echo",
                          ["python3", "-c", ECHO_SERVER, str(ECHO_PORT), *INTERNET_PROBES])
    log = runtime.log_path(plan.name, "internet", "udp-echo")
    wait_for(lambda: "listening" in log.read_text(), what="the echo server listening")
    return plan


def seen_from(plan: LabPlan, node: str) -> list[tuple[str, int]]:
    """(source address, source port) the echo server saw for each probe destination."""
    result = subprocess.run(
        [*runtime.node_exec_argv(plan.name, node),
         "python3", "-c", CLIENT, str(SOURCE_PORT), str(ECHO_PORT), *INTERNET_PROBES],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    seen = []
    for line in result.stdout.splitlines():
        _, addr, port = line.split()
        seen.append((addr, int(port)))
    assert len(seen) == len(INTERNET_PROBES)
    return seen


def pool_of(plan: LabPlan, nat: str):
    return next(p for p in plan.pools if p.nat == nat)


def test_public_pool_is_not_translated(nat_lab: LabPlan) -> None:
    node = pool_of(nat_lab, "none").nodes[0]
    assert seen_from(nat_lab, node.name) == [(node.underlay_ip, SOURCE_PORT)] * 2


def test_cone_nat_keeps_one_port_for_every_destination(nat_lab: LabPlan) -> None:
    pool = pool_of(nat_lab, "cone")
    seen = seen_from(nat_lab, pool.nodes[0].name)
    assert {addr for addr, _ in seen} == {pool.wan_ip}
    assert [port for _, port in seen] == [SOURCE_PORT, SOURCE_PORT]  # same and preserved


def test_symmetric_nat_uses_a_new_port_per_destination(nat_lab: LabPlan) -> None:
    pool = pool_of(nat_lab, "symmetric")
    seen = seen_from(nat_lab, pool.nodes[0].name)
    assert {addr for addr, _ in seen} == {pool.wan_ip}
    first, second = (port for _, port in seen)
    assert first != second


def test_nat_pools_drop_unsolicited_inbound(nat_lab: LabPlan) -> None:
    inet = nat_lab.internet_netns
    public = pool_of(nat_lab, "none").nodes[0].underlay_ip
    for nat in ("cone", "symmetric"):
        pool = pool_of(nat_lab, nat)
        target = pool.nodes[0].underlay_ip
        # Even with a route to the private LAN, the NAT router lets no new connection in.
        route = [f"{target}/32", "via", pool.wan_ip, "dev", pool.internet_port]
        subprocess.run(["ip", "-n", inet, "route", "add", *route], check=True)
        try:
            # Both echoed in one round: the public node's answer is the positive control that
            # the round's echoes had time to come back (no fixed wait decides the negative).
            seen = wait_for(lambda t=target: (r := nsutil.icmp_probe(
                inet, [public, t], tries=2, timeout_s=2)).get(public) is not None and r,
                what="a probe round the public node answered (from the internet)")
        finally:
            subprocess.run(["ip", "-n", inet, "route", "del", *route], check=True)
        assert seen[target] is None, f"{nat}: {target} reachable from the internet"  # type: ignore[index]
