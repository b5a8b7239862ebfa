"""NAT kinds and nat-rebind proven with packets (raven.lab.nat), on a network-only lab.

A UDP program on the lab's internet (probe addresses) reports the source it saw and can send
unsolicited datagrams from a third address; a node socket with a fixed port is the LAN side.
- full-cone: once the node sent to one internet host, ANOTHER host reaches its public port;
- cone (port-restricted): that other host does not get in;
- an unsolicited datagram to the router's public address does not take the public port away
  from the LAN (the node's next mapping keeps its port);
- nat-rebind: the node's next packets leave with a new public port, still one port for every
  destination (cone), and the old mapping no longer lets answers in.
"""

from __future__ import annotations

import subprocess

import pytest
from kube_support import wait_for

from raven.lab import nat, runtime
from raven.lab.plan import INTERNET_PROBES, LabPlan

pytestmark = pytest.mark.root

NODE_PORT = 40123
ECHO_PORT = 7000

# Internet side. argv: mode, ... ; modes:
#   echo PORT ADDR...            answer every datagram with "ip port" of its source (forever)
#   send SRC DST_IP DST_PORT     one datagram from SRC:ECHO_PORT+1 to DST
INTERNET = r"""
import selectors, socket, sys
mode = sys.argv[1]
if mode == "echo":
    sel = selectors.DefaultSelector()
    for addr in sys.argv[3:]:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((addr, int(sys.argv[2])))
        sel.register(s, selectors.EVENT_READ)
    print("listening", flush=True)
    while True:
        for key, _ in sel.select():
            data, peer = key.fileobj.recvfrom(2048)
            key.fileobj.sendto(f"{peer[0]} {peer[1]}".encode(), peer)
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[2], 0))
    s.sendto(b"unsolicited", (sys.argv[3], int(sys.argv[4])))
"""

# Node side: ask each echo address who we are, then listen for `wait` seconds for anything else.
NODE = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(3)
for dst in sys.argv[4:]:
    s.sendto(b"who am i", (dst, int(sys.argv[2])))
    print("seen", dst, s.recvfrom(100)[0].decode(), flush=True)
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    s.settimeout(max(0.01, end - time.monotonic()))
    try:
        data, peer = s.recvfrom(100)
    except TimeoutError:
        break
    print("got", peer[0], data.decode(), flush=True)
"""


@pytest.fixture(scope="module")
def lab(module_lab_factory) -> LabPlan:
    plan = module_lab_factory("nat-kinds.yaml")
    runtime.start_process(plan.name, "internet", "udp-echo",
                          ["python3", "-c", INTERNET, "echo", str(ECHO_PORT), INTERNET_PROBES[0]])
    log = runtime.log_path(plan.name, "internet", "udp-echo")
    wait_for(lambda: "listening" in log.read_text(), what="the echo server listening")
    return plan


def pool(plan: LabPlan, nat_kind: str):
    return next(p for p in plan.pools if p.nat == nat_kind)


def internet_send(plan: LabPlan, src: str, dst: str, port: int) -> None:
    subprocess.run(["ip", "netns", "exec", plan.internet_netns, "python3", "-c", INTERNET,
                    "send", src, dst, str(port)], check=True, timeout=10)


def node_session(plan: LabPlan, node: str, wait: float, during=None) -> list[list[str]]:
    """Run the node program; `during(seen_port)` runs once the node printed "ready"."""
    proc = subprocess.Popen(
        [*runtime.node_exec_argv(plan.name, node), "python3", "-c", NODE, str(NODE_PORT),
         str(ECHO_PORT), str(wait), INTERNET_PROBES[0]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[list[str]] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.split())
        if lines[-1] == ["ready"] and during is not None:
            during(int(lines[0][3]))
    assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    return lines


def test_full_cone_lets_any_host_reach_a_mapping(lab: LabPlan) -> None:
    full = pool(lab, "full-cone")
    lines = node_session(lab, full.nodes[0].name, 2.0, lambda port: internet_send(
        lab, INTERNET_PROBES[1], full.wan_ip, port))
    assert lines[0][2] == full.wan_ip
    assert ["got", INTERNET_PROBES[1], "unsolicited"] in lines


def test_port_restricted_cone_drops_other_hosts(lab: LabPlan) -> None:
    cone = pool(lab, "cone")
    lines = node_session(lab, cone.nodes[0].name, 1.0, lambda port: internet_send(
        lab, INTERNET_PROBES[1], cone.wan_ip, port))
    assert lines[0][2] == cone.wan_ip
    assert not [line for line in lines if line[0] == "got"]


def test_unsolicited_packet_does_not_steal_the_public_port(lab: LabPlan) -> None:
    cone = pool(lab, "cone")
    port = NODE_PORT + 7  # a port no earlier test mapped
    internet_send(lab, INTERNET_PROBES[0], cone.wan_ip, port)
    proc = subprocess.run(
        [*runtime.node_exec_argv(lab.name, cone.nodes[0].name), "python3", "-c", NODE, str(port),
         str(ECHO_PORT), "0", INTERNET_PROBES[0]], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:4] == ["seen", INTERNET_PROBES[0], cone.wan_ip, str(port)]


def test_nat_rebind_gives_new_ports_and_keeps_the_kind(lab: LabPlan) -> None:
    for kind in ("cone", "full-cone", "symmetric"):
        p = pool(lab, kind)
        before = node_session(lab, p.nodes[0].name, 0)[0][3]
        generation = nat.rebind(lab.name, p.name)
        assert generation == nat.generation(lab.name, p.name) >= 1
        after = node_session(lab, p.nodes[0].name, 0)[0][3]
        assert after != before, f"{kind}: public port {before} kept after nat-rebind"
    # Still endpoint-independent after a rebind: the full-cone pool accepts another host.
    full = pool(lab, "full-cone")
    lines = node_session(lab, full.nodes[0].name, 2.0, lambda port: internet_send(
        lab, INTERNET_PROBES[1], full.wan_ip, port))
    assert ["got", INTERNET_PROBES[1], "unsolicited"] in lines


def test_rebind_refuses_a_public_pool(lab: LabPlan) -> None:
    from raven.errors import CommandError

    with pytest.raises(CommandError, match="nat: none"):
        nat.rebind(lab.name, pool(lab, "none").name)
