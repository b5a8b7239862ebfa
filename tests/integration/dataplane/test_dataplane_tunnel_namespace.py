"""The tunnel-namespace shape of a gateway (docs/tunnel-namespace.md), applied by the data plane
on real namespaces: the topology of test_dataplane_traffic.py (a VXLAN pool of two members and a
gateway with a "CNI" route to each member's pods, a remote pool's gateway over WireGuard, strict
reverse-path filtering everywhere, a foreign MASQUERADE on the gateway), with the gateway's plan
in the shape (`raven.tunnel_shape`) and placed (`raven.route_placement`) as the agent would.
Checked with independent oracles: pings crossing at the tunnel's MTU and one byte over it
failing, `ip rule` in both of the gateway's namespaces (no rule but the kernel's three: neither
is in policy-routing mode), `ip -d link` (the devices in the tunnel namespace, moved in from the
node's: link-netnsid), `wg show`, `ip netns list`. Then back to the one-namespace shape, and the
tunnel namespace is gone."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
from conftest import run
from dp_states import WG_MTU, gateway, member
from test_dataplane_traffic import ICMP_IP_HEADERS, ping, pool_lab

from raven import route_placement, tunnel_shape
from raven.desired import WireGuardPeer
from raven.settings import OverlaySettings

pytestmark = [pytest.mark.root, pytest.mark.slow]

ON = replace(OverlaySettings(), tunnel_namespace=True)
KERNEL_RULES = {0, 32766, 32767}  # local, main, default: what a namespace without rules holds


def rule_priorities(ns: str) -> set[int]:
    import json
    out = run("ip", "-n", ns, "-json", "rule", "show").stdout
    return {r["priority"] for r in json.loads(out)}


def namespaces() -> set[str]:
    import json
    out = run("ip", "-json", "netns", "list").stdout.strip()
    return {n["name"] for n in json.loads(out or "[]")}


def gro_of(ns: str, name: str) -> str:
    """ethtool's word for the device's generic receive offload ("on", "off")."""
    out = run("ip", "netns", "exec", ns, "ethtool", "-k", name).stdout
    return next(line.split(":", 1)[1].split()[0] for line in out.splitlines()
                if line.startswith("generic-receive-offload:"))


def link_in(ns: str, name: str) -> dict | None:
    import json
    proc = run("ip", "-n", ns, "-json", "-details", "link", "show", name, check=False)
    return json.loads(proc.stdout)[0] if proc.returncode == 0 else None


@pytest.fixture
def tunnel_names() -> Iterator[list[str]]:
    """Tunnel namespaces a test hands to a data plane: deleted after it, also after a failure
    (the nodes' own cleanup makes a data plane without a tunnel name)."""
    names: list[str] = []
    yield names
    for name in names:
        run("ip", "netns", "del", name, check=False)


def test_gateway_in_a_tunnel_namespace_carries_the_pool_without_any_rule(
        make_node, wait, tunnel_names) -> None:
    lab = pool_lab(make_node)
    m1, m2, gwa, gwb, pods, pod_ns = lab.m1, lab.m2, lab.gwa, lab.gwb, lab.pods, lab.pod_ns
    tun = f"{gwa.ns}-tun"
    tunnel_names.append(tun)
    dps = {m1: m1.dataplane(), m2: m2.dataplane(), gwa: gwa.dataplane(tunnel_netns=tun),
           gwb: gwb.dataplane()}
    key_a, key_b = dps[gwa].public_key(), dps[gwb].public_key()
    one_namespace = gateway(3, members=(1, 2), deliver={1: "10.1.1.0/24", 2: "10.1.2.0/24"},
                            peers=(WireGuardPeer(public_key=key_b, endpoint="198.51.100.2:4500",
                                                 allowed_ips=("10.2.0.0/16",)),))
    shaped = route_placement.place(tunnel_shape.shape(one_namespace, ON),
                                   dps[gwa].foreign_main_routes(), ON)
    assert shaped.tunnel is not None and shaped.rules == ()
    states = {
        m1: member(1, gateway=3, marked=False, src="192.0.2.1"),
        m2: member(2, gateway=3, marked=False, src="192.0.2.2"),
        gwa: shaped,
        gwb: gateway(None, members=(), remote=("10.1.0.0/16",), local=("10.2.0.0/16",),
                     peers=(WireGuardPeer(public_key=key_a, endpoint="198.51.100.1:4500",
                                          allowed_ips=("10.1.0.0/16",)),)),
    }
    for node, state in states.items():
        dps[node].apply(state)

    # The devices live in the tunnel namespace, made in the node's (link-netnsid: their
    # sockets are there), and the node's namespace has only its end of the veth.
    assert tun in namespaces()
    for dev in ("raven0", "raven-wg0"):
        assert link_in(gwa.ns, dev) is None
        assert link_in(tun, dev) is not None
    assert "link_netnsid" in link_in(tun, "raven0")
    assert link_in(gwa.ns, "raven-tun0")["link_type"] == "ether"
    assert link_in(tun, "raven-tun1") is not None
    # Receive offload on both ends (off by default on a veth): wireguard-go's packets are
    # merged before they are forwarded again.
    assert gro_of(gwa.ns, "raven-tun0") == gro_of(tun, "raven-tun1") == "on"
    # Neither namespace holds a rule: neither is in the kernel's policy-routing mode.
    assert rule_priorities(gwa.ns) == KERNEL_RULES
    assert rule_priorities(tun) == KERNEL_RULES

    assert wait(lambda: ping(pod_ns[m1], "10.1.1.1", "10.2.0.1", count=1).returncode == 0,
                timeout=60)
    payload = WG_MTU - ICMP_IP_HEADERS
    for node in (m1, m2):
        ok = ping(pod_ns[node], pods[node], "10.2.0.1", size=payload)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        too_big = ping(pod_ns[node], pods[node], "10.2.0.1", size=payload + 1, count=1)
        assert too_big.returncode != 0
    back = ping(gwb, "10.2.0.1", "10.1.2.1", size=payload)
    assert back.returncode == 0, back.stdout + back.stderr
    # The gateway's own "pod" crosses the veth both ways; so does the remote side's to it.
    own = ping(gwa, "10.1.0.1", "10.2.0.1", size=payload)
    assert own.returncode == 0, own.stdout + own.stderr
    assert ping(gwb, "10.2.0.1", "10.1.0.1").returncode == 0
    # Members' returning traffic reached them over raven0 (the tunnel namespace's delivery
    # routes), not the pool's "CNI".
    for node in (m1, m2):
        (stats,) = node.ip_json("-s", "link", "show", "raven0")
        assert stats["stats64"]["rx"]["packets"] >= 2
    peer = gwa.wg_dump()[key_b]
    assert int(peer["handshake"]) > 0 and int(peer["rx"]) > 0

    # Steady: nothing to write, nothing drifted.
    assert dps[gwa].apply(shaped).writes == 0
    assert dps[gwa].observe().drift == ()
    # Receive offload turned off by hand is turned on again by the next apply.
    run("ip", "netns", "exec", gwa.ns, "ethtool", "-K", "raven-tun0", "gro", "off")
    assert gro_of(gwa.ns, "raven-tun0") == "off"
    assert dps[gwa].apply(shaped).writes == 1
    assert gro_of(gwa.ns, "raven-tun0") == "on"

    # Back to one namespace: the tunnel namespace goes, the devices are made in the node's.
    dps[gwa].apply(one_namespace)
    assert tun not in namespaces()
    assert link_in(gwa.ns, "raven0") is not None and link_in(gwa.ns, "raven-tun0") is None
    assert wait(lambda: ping(pod_ns[m2], "10.1.2.1", "10.2.0.1", count=1).returncode == 0,
                timeout=60)
    assert dps[gwa].apply(one_namespace).writes == 0


def test_a_restarted_data_plane_adopts_the_tunnel_namespace(make_node, tunnel_names) -> None:
    """A new data plane (an agent restart) finds the namespace and the moved devices and writes
    nothing: no device is made again or moved, no address renumbered."""
    node = make_node()
    node.ip("link", "add", "u0", "type", "veth", "peer", "name", "u1")
    node.ip("addr", "add", "192.0.2.3/24", "dev", "u0")
    node.ip("link", "set", "u0", "up")
    tun = f"{node.ns}-tun"
    tunnel_names.append(tun)
    state = tunnel_shape.shape(gateway(3, members=(1,), deliver={1: "10.1.1.0/24"}, peers=()),
                               ON)
    first = node.dataplane(tunnel_netns=tun)
    assert first.apply(state).writes > 0
    before = {dev: link_in(tun, dev)["ifindex"] for dev in ("raven0", "raven-wg0", "raven-tun1")}
    first.close()
    again = node.dataplane(tunnel_netns=tun)
    assert again.apply(state).writes == 0
    assert {dev: link_in(tun, dev)["ifindex"] for dev in before} == before
    # cleanup removes the namespace with everything in it
    again.cleanup()
    assert tun not in namespaces()
    assert link_in(node.ns, "raven-tun0") is None


def underlay_node(make_node):
    node = make_node()
    node.ip("link", "add", "u0", "type", "veth", "peer", "name", "u1")
    node.ip("addr", "add", "192.0.2.3/24", "dev", "u0")
    node.ip("link", "set", "u0", "up")
    return node


def test_switch_turned_off_takes_the_namespace_down(make_node, tunnel_names) -> None:
    """An agent started without the tunnel namespace's name (the switch turned off) finds the
    name the last run recorded and takes that namespace down before it makes raven0 in the
    node's own: else the moved raven0 would keep the VNI taken there."""
    node = underlay_node(make_node)
    tun = f"{node.ns}-tun"
    tunnel_names.append(tun)
    plain = gateway(3, members=(1,), deliver={1: "10.1.1.0/24"}, peers=())
    first = node.dataplane(tunnel_netns=tun)
    first.apply(tunnel_shape.shape(plain, ON))
    first.close()
    assert tun in namespaces()
    off = node.dataplane()  # no tunnel_netns
    off.apply(plain)
    assert tun not in namespaces()
    assert link_in(node.ns, "raven0") is not None and link_in(node.ns, "raven-wg0") is not None
    assert "link_netnsid" not in link_in(node.ns, "raven0")  # made here, not a moved one
    assert off.apply(plain).writes == 0


def test_cleanup_without_the_name_and_a_namespace_deleted_under_us(make_node,
                                                                    tunnel_names) -> None:
    node = underlay_node(make_node)
    tun = f"{node.ns}-tun"
    tunnel_names.append(tun)
    state = tunnel_shape.shape(gateway(3, members=(1,), deliver={1: "10.1.1.0/24"},
                                       peers=()), ON)
    dp = node.dataplane(tunnel_netns=tun)
    dp.apply(state)
    # Someone deletes the name: the next apply tears down what it held (raven0 kept the VNI
    # taken in the node's namespace) and makes everything again.
    run("ip", "netns", "del", tun)
    assert dp.apply(state).writes > 0
    assert tun in namespaces() and link_in(tun, "raven0") is not None
    assert "link_netnsid" in link_in(tun, "raven0")
    assert dp.apply(state).writes == 0
    dp.close()
    # `raven agent cleanup` without --tunnel-netns: the recorded name is enough.
    with node.dataplane() as plain:
        removed = plain.cleanup()
    assert tun not in namespaces()
    assert any("delete network namespace" in line for line in removed)
    assert link_in(node.ns, "raven-tun0") is None and link_in(node.ns, "raven0") is None
