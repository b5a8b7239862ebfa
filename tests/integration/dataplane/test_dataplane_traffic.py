"""Real packets: a VXLAN pool (two members and a gateway, each a namespace on a shared bridge,
a pod namespace behind each member, a "pod" address on the gateways) whose gateway reaches a
remote pool's gateway over WireGuard (userspace backend). Maximum-size pings with DF set pass
and one byte more fails, so the MTUs are right; the pod source address survives a MASQUERADE
rule in a foreign table; every host filters reverse paths strictly, which the members' pods'
returning traffic must pass: the gateway delivers it from the tunnel over raven0 (not through
the pool's "CNI"), where the members' selector-less rule finds raven0 for its source."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from conftest import run
from dp_states import WG_MTU, gateway, member

from raven.desired import WireGuardPeer

pytestmark = [pytest.mark.root, pytest.mark.slow]

ICMP_IP_HEADERS = 28
MASQUERADE_ALL = ("table ip nat { chain post { type nat hook postrouting priority srcnat; "
                  "policy accept; masquerade; }; }\n")
COUNT_SOURCE = ("table inet probe { chain input { type filter hook input priority 0; "
                "policy accept; ip saddr 10.1.1.1 icmp type echo-request counter; }; }\n")


def ping(node, source: str, target: str, size: int = 56, count: int = 2):
    return node.exec("ping", "-n", "-q", "-c", str(count), "-W", "3", "-i", "0.2", "-M", "do",
                     "-s", str(size), "-I", source, target, check=False)


def pod(make_node, host, address: str):
    """A pod namespace behind `host`: eth0 <address>/24, the host's side .254 of that /24."""
    p = make_node()
    gateway = address.rsplit(".", 1)[0] + ".254"
    host.ip("link", "add", "pod0", "type", "veth", "peer", "name", "eth0", "netns", p.ns)
    host.ip("addr", "add", f"{gateway}/24", "dev", "pod0")
    host.ip("link", "set", "pod0", "up")
    p.ip("addr", "add", f"{address}/24", "dev", "eth0")
    p.ip("link", "set", "eth0", "up")
    p.ip("route", "add", "default", "via", gateway)
    return p


def wire(switch, node, ifname: str, address: str) -> None:
    """A veth from `node` into the switch's bridge."""
    port = f"p{node.ns[-6:]}"
    switch.ip("link", "add", port, "type", "veth", "peer", "name", ifname, "netns", node.ns)
    switch.ip("link", "set", port, "master", "br0", "up")
    node.ip("addr", "add", address, "dev", ifname)
    node.ip("link", "set", ifname, "up")


@dataclass
class PoolLab:
    """Pool A (members m1, m2 and gateway gwa on one bridge, a pod namespace behind each
    member) and pool B's gateway gwb, joined to gwa by a WAN veth; see the module docstring."""

    m1: Any
    m2: Any
    gwa: Any
    gwb: Any
    pods: dict
    pod_ns: dict


def pool_lab(make_node) -> PoolLab:
    switch, m1, m2, gwa, gwb = (make_node() for _ in range(5))
    switch.ip("link", "add", "br0", "type", "bridge")
    switch.ip("link", "set", "br0", "up")
    for n, node in ((1, m1), (2, m2), (3, gwa)):
        wire(switch, node, "u0", f"192.0.2.{n}/24")
    gwa.ip("link", "add", "w0", "type", "veth", "peer", "name", "w0", "netns", gwb.ns)
    for node, address in ((gwa, "198.51.100.1/24"), (gwb, "198.51.100.2/24")):
        node.ip("addr", "add", address, "dev", "w0")
        node.ip("link", "set", "w0", "up")
    # Like real nodes, each has a default route. On a member, the strict reverse-path check of
    # a packet from a remote pod finds raven0 (the member's rule has no selector); the gateway
    # delivers such packets over raven0, not over u0 (the pool's "CNI", which `main` uses).
    for node, dev in ((m1, "u0"), (m2, "u0"), (gwa, "w0"), (gwb, "w0")):
        node.ip("route", "add", "default", "dev", dev)
        # Hosts often default to strict reverse-path filtering; the overlay must cope.
        node.exec("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1")
    # Members' pods are namespaces (their traffic is forwarded, as a real pod's is); the
    # gateways' "pods" are addresses of their own.
    pods = {m1: "10.1.1.1", m2: "10.1.2.1", gwa: "10.1.0.1", gwb: "10.2.0.1"}
    for node in (gwa, gwb):
        node.ip("addr", "add", f"{pods[node]}/32", "dev", "lo")
    pod_ns = {m1: pod(make_node, m1, pods[m1]), m2: pod(make_node, m2, pods[m2])}
    # Pool A's own "CNI": its gateway reaches the members' pod subnets over the underlay.
    gwa.ip("route", "add", "10.1.1.0/24", "via", "192.0.2.1")
    gwa.ip("route", "add", "10.1.2.0/24", "via", "192.0.2.2")
    # A foreign table masquerading everything that leaves the gateway (a CNI's or kube-proxy's).
    run("ip", "netns", "exec", gwa.ns, "nft", "-f", "-", input=MASQUERADE_ALL)
    return PoolLab(m1, m2, gwa, gwb, pods, pod_ns)


def test_pods_reach_a_remote_pool_through_vxlan_and_wireguard(make_node, wait) -> None:
    lab = pool_lab(make_node)
    m1, m2, gwa, gwb, pods, pod_ns = lab.m1, lab.m2, lab.gwa, lab.gwb, lab.pods, lab.pod_ns
    run("ip", "netns", "exec", gwb.ns, "nft", "-f", "-", input=COUNT_SOURCE)

    dps = {node: node.dataplane() for node in (m1, m2, gwa, gwb)}
    key_a, key_b = dps[gwa].public_key(), dps[gwb].public_key()
    states = {
        m1: member(1, gateway=3, marked=False, src="192.0.2.1"),
        m2: member(2, gateway=3, marked=False, src="192.0.2.2"),
        gwa: gateway(3, members=(1, 2), deliver={1: "10.1.1.0/24", 2: "10.1.2.0/24"},
                     peers=(WireGuardPeer(
            public_key=key_b, endpoint="198.51.100.2:4500", allowed_ips=("10.2.0.0/16",)),)),
        gwb: gateway(None, members=(), remote=("10.1.0.0/16",), local=("10.2.0.0/16",),
                     peers=(WireGuardPeer(public_key=key_a, endpoint="198.51.100.1:4500",
                                          allowed_ips=("10.1.0.0/16",)),)),
    }
    for node, state in states.items():
        dps[node].apply(state)

    # First packets wait for the WireGuard handshake: poll with a generous bound.
    assert wait(lambda: ping(pod_ns[m1], "10.1.1.1", "10.2.0.1", count=1).returncode == 0,
                timeout=60)
    payload = WG_MTU - ICMP_IP_HEADERS  # the route MTU members lock for cross-pool traffic
    for node in (m1, m2):
        ok = ping(pod_ns[node], pods[node], "10.2.0.1", size=payload)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        too_big = ping(pod_ns[node], pods[node], "10.2.0.1", size=payload + 1, count=1)
        assert too_big.returncode != 0
    # The members' pods' packets went over raven0 (VXLAN), not the underlay.
    for node in (m1, m2):
        (stats,) = node.ip_json("-s", "link", "show", "raven0")
        assert stats["stats64"]["tx"]["packets"] >= 2  # the ok pings (too big ones never leave)
    back = ping(gwb, "10.2.0.1", "10.1.2.1", size=payload)
    assert back.returncode == 0, back.stdout + back.stderr
    # ...and the returning traffic reached the members over raven0, not u0 (the CNI).
    for node in (m1, m2):
        (stats,) = node.ip_json("-s", "link", "show", "raven0")
        assert stats["stats64"]["rx"]["packets"] >= 2
    # No chain of ours looks at the members' packets, and no mark either.
    for node in (m1, m2):
        assert not [o for o in node.nft("list", "table", "inet", "raven") if "chain" in o]
        assert [r.get("fwmark") for r in node.rules() if r.get("table") == "9027"] == [None]

    # The source address crossed the pools unchanged despite the foreign MASQUERADE.
    counters = [o["rule"]["expr"] for o in gwb.nft("list", "table", "inet", "probe")
                if "rule" in o]
    packets = [e["counter"]["packets"] for expr in counters for e in expr if "counter" in e]
    assert packets and packets[0] >= 3

    # Real WireGuard state, read with `wg`: one peer each, handshake done, traffic counted.
    peer = gwa.wg_dump()[key_b]
    assert peer["endpoint"] == "198.51.100.2:4500" and peer["allowed_ips"] == "10.2.0.0/16"
    assert int(peer["handshake"]) > 0 and int(peer["rx"]) > 0
    # Nothing left to do anywhere.
    for node, state in states.items():
        assert dps[node].apply(state).writes == 0
