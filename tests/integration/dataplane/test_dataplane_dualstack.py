"""Dual stack (issue 15), planned by the real planner and applied to throwaway namespaces.

Pool A (member m1 and gateway gwa on a bridge, IPv4 underlay) and pool B (gateway gwb, reached
over WireGuard), every node with an IPv4 and an IPv6 podCIDR, and a "pod" namespace behind m1
and behind gwb. Oracles: `ip -json` (addresses, routes, neighbours, rules, `route get`),
`bridge -json fdb`, `nft -j`, and pings of both families between the pods. Also: IPv6
disabled on our device (by `default` inheritance and by hand) is turned back on; a kernel that
cannot do IPv6 keeps the IPv4 half; VXLAN over an IPv6 underlay.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from conftest import Node, run

from raven.constants import ENDPOINT_CONFIG_PUBLIC_KEY
from raven.dataplane.appliers import vxlan as vxlan_applier
from raven.desired import NodeState
from raven.model import (
    Endpoint,
    FrozenMap,
    Gateway,
    GatewaySpec,
    GatewayStatus,
    NodeInfo,
)
from raven.topology import plan_node, vtep6_for, vtep_for

pytestmark = [pytest.mark.root, pytest.mark.slow]

M1, GWA, GWB = "192.0.2.1", "192.0.2.3", "198.51.100.2"
SUBNETS = {"m1": ("10.1.1.0/24", "fd00:1:1::/64"), "gwa": ("10.1.0.0/24", "fd00:1::/64"),
           "gwb": ("10.2.0.0/24", "fd00:2::/64")}
TUNNEL_MTU = 1500 - 80  # what the planner locks on members' routes (default OverlaySettings)
ICMP6_HEADERS = 40 + 8
MASQUERADE6_ALL = ("table ip6 nat { chain post { type nat hook postrouting priority srcnat; "
                   "policy accept; masquerade; }; }\n")
COUNT_SOURCE6 = ("table inet probe { chain input { type filter hook forward priority 0; "
                 "policy accept; ip6 saddr fd00:1:1::2 icmpv6 type echo-request counter; }; }\n")


def gateways(key_a: str, key_b: str, ips: dict[str, str] | None = None) -> list[Gateway]:
    """Gateway objects as the controller would have written them (both active, dialable)."""
    ips = ips or {"m1": M1, "gwa": GWA, "gwb": GWB}

    def gateway(name: str, nodes: tuple[str, ...], public: str, key: str) -> Gateway:
        active = Endpoint(nodes[-1], port=4500, public_ip=public,
                          config=FrozenMap({ENDPOINT_CONFIG_PUBLIC_KEY: key}))
        return Gateway(name, spec=GatewaySpec(endpoints=(active,)), status=GatewayStatus(
            nodes=tuple(NodeInfo(n, ips[n], SUBNETS[n]) for n in nodes),
            active_endpoints=(active,)), metadata=FrozenMap({"name": name}))

    return [gateway("gw-a", ("m1", "gwa"), "198.51.100.1", key_a),
            gateway("gw-b", ("gwb",), GWB, key_b)]


def pod(make_node: Any, host: Node, v4: str, v6: str) -> Node:
    """A pod namespace with a veth into `host`: pod .2, host .1 of both podCIDRs."""
    p = make_node()
    host.ip("link", "add", "pod0", "type", "veth", "peer", "name", "eth0", "netns", p.ns)
    net4, net6 = ipaddress.ip_network(v4), ipaddress.ip_network(v6)
    host.ip("addr", "add", f"{net4[1]}/{net4.prefixlen}", "dev", "pod0")
    host.ip("-6", "addr", "add", f"{net6[1]}/{net6.prefixlen}", "dev", "pod0", "nodad")
    host.ip("link", "set", "pod0", "up")
    p.ip("addr", "add", f"{net4[2]}/{net4.prefixlen}", "dev", "eth0")
    p.ip("-6", "addr", "add", f"{net6[2]}/{net6.prefixlen}", "dev", "eth0", "nodad")
    p.ip("link", "set", "eth0", "up")
    p.ip("route", "add", "default", "via", str(net4[1]))
    p.ip("-6", "route", "add", "default", "via", str(net6[1]))
    return p


def wire(switch: Node, node: Node, *addresses: str) -> None:
    port = f"p{node.ns[-6:]}"
    switch.ip("link", "add", port, "type", "veth", "peer", "name", "u0", "netns", node.ns)
    switch.ip("link", "set", port, "master", "br0", "up")
    for address in addresses:
        node.ip("addr", "add", address, "dev", "u0", *(("nodad",) if ":" in address else ()))
    node.ip("link", "set", "u0", "up")


def ping(node: Node, target: str, size: int = 56, count: int = 2) -> Any:
    return node.exec("ping", "-n", "-q", "-c", str(count), "-W", "3", "-i", "0.2", "-M", "do",
                     "-s", str(size), target, check=False)


def routes6(node: Node, table: int) -> list[dict[str, Any]]:
    proc = node.exec("ip", "-json", "-6", "route", "show", "table", str(table), check=False)
    if proc.returncode != 0 and "does not exist" in proc.stderr:
        return []  # the kernel drops an empty table
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout or "[]")


def global6(node: Node, dev: str) -> set[str]:
    return {f"{a['local']}/{a['prefixlen']}" for i in node.ip_json("-6", "addr", "show", dev)
            for a in i["addr_info"] if a.get("scope") == "global"}


def test_dual_stack_pools_apply_and_carry_both_families(make_node, wait) -> None:
    switch, m1, gwa, gwb = (make_node() for _ in range(4))
    switch.ip("link", "add", "br0", "type", "bridge")
    switch.ip("link", "set", "br0", "up")
    # The IPv6 underlay addresses serve only pool A's own "CNI" routes below; the overlay
    # underlay is IPv4 (the InternalIPs in status.nodes).
    wire(switch, m1, f"{M1}/24", "2001:db8:a::1/64")
    wire(switch, gwa, f"{GWA}/24", "2001:db8:a::3/64")
    gwa.ip("link", "add", "w0", "type", "veth", "peer", "name", "w0", "netns", gwb.ns)
    for node, address in ((gwa, "198.51.100.1/24"), (gwb, f"{GWB}/24")):
        node.ip("addr", "add", address, "dev", "w0")
        node.ip("link", "set", "w0", "up")
    pod_a = pod(make_node, m1, *SUBNETS["m1"])
    pod_b = pod(make_node, gwb, *SUBNETS["gwb"])
    gwa.ip("route", "add", SUBNETS["m1"][0], "via", M1)
    gwa.ip("-6", "route", "add", SUBNETS["m1"][1], "via", "2001:db8:a::1")
    # A foreign table masquerading all IPv6 that leaves the gateway (a CNI's), and a counter of
    # what reaches pool B with pod A's own source address.
    run("ip", "netns", "exec", gwa.ns, "nft", "-f", "-", input=MASQUERADE6_ALL)
    run("ip", "netns", "exec", gwb.ns, "nft", "-f", "-", input=COUNT_SOURCE6)

    dps = {node: node.dataplane() for node in (m1, gwa, gwb)}
    fleet = gateways(dps[gwa].public_key(), dps[gwb].public_key())
    states: dict[Node, NodeState] = {node: plan_node(fleet, name)
                                     for node, name in ((m1, "m1"), (gwa, "gwa"), (gwb, "gwb"))}
    assert states[m1].vxlan is not None and states[m1].vxlan.vtep_ip6 == vtep6_for(M1)
    for node, state in states.items():
        result = dps[node].apply(state)
        assert result.writes > 0 and result.skipped == (), result

    # The member, read with ip/bridge/nft: IPv6 VTEP, IPv6 route via the gateway's IPv6 VTEP
    # (onlink, MTU locked), permanent IPv6 neighbour, FDB to the gateway, IPv6 rule, nft set.
    gw_vtep6, gw_mac = vtep6_for(GWA), vtep_for(GWA)[1]
    assert f"{vtep6_for(M1)}/128" in global6(m1, "raven0")
    (route6,) = routes6(m1, 9027)
    assert route6["dst"] == SUBNETS["gwb"][1] and route6["gateway"] == gw_vtep6
    assert route6["dev"] == "raven0" and "onlink" in route6["flags"]
    assert {"mtu": TUNNEL_MTU} in route6["metrics"]
    assert f"mtu lock {TUNNEL_MTU}" in m1.ip("-6", "route", "show", "table", "9027")
    neigh6 = {(n["dst"], n["lladdr"]) for n in m1.ip_json("-6", "neigh", "show", "dev", "raven0",
                                                          "nud", "permanent")}
    assert neigh6 == {(gw_vtep6, gw_mac)}
    assert {(e["mac"], e["dst"]) for e in m1.fdb("raven0")} == {(gw_mac, GWA)}
    rules6 = [r for r in m1.ip_json("-6", "rule", "show") if r.get("table") == "9027"]
    assert [(r["priority"], r.get("fwmark"), r.get("iif")) for r in rules6] == [
        (100, None, None)]
    (set6,) = [o["set"] for o in m1.nft("list", "set", "inet", "raven", "remote6") if "set" in o]
    assert set6["elem"] == [{"prefix": {"addr": "fd00:2::", "len": 64}}]
    assert m1.sysctl("net.ipv6.conf.all.forwarding") == "1"
    # The member's rule has no selector: pod traffic, unmarked, is routed by the IPv6 rule
    # into our table (kernel's own lookup).
    (got,) = m1.ip_json("-6", "route", "get", "fd00:2::2", "from", "fd00:1:1::2", "iif", "pod0")
    assert got["dev"] == "raven0" and got["gateway"] == gw_vtep6 and got["table"] == "9027"
    # The active gateway's rule has no selector: an unmarked lookup finds table 9028 (IPv6
    # and IPv4), and one for a local destination goes on to main.
    rules_gw = [(r["priority"], r.get("fwmark")) for fam in ("-4", "-6")
                for r in gwa.ip_json(fam, "rule", "show") if r.get("table") == "9028"]
    assert rules_gw == [(100, None), (100, None)]
    (via_wg,) = gwa.ip_json("-6", "route", "get", "fd00:2::2", "from", "fd00:1:1::2", "iif",
                            "raven0")
    assert (via_wg["dev"], via_wg["table"]) == ("raven-wg0", "9028")
    # What comes out of the tunnel for the member's pods goes to it over raven0, each family
    # via its VTEP of that family (`iif raven-wg0 lookup 9027`); the gateway's own traffic to
    # them stays with the pool's "CNI" in main.
    for fam, dst, src, via in (("-4", "10.1.1.2", "10.2.0.2", vtep_for(M1)[0]),
                               ("-6", "fd00:1:1::2", "fd00:2::2", vtep6_for(M1))):
        (delivered,) = gwa.ip_json(fam, "route", "get", dst, "from", src, "iif", "raven-wg0")
        assert (delivered["dev"], delivered["gateway"], delivered["table"]) == (
            "raven0", via, "9027"), delivered
        (local,) = gwa.ip_json(fam, "route", "get", dst)
        assert local["dev"] == "u0" and local.get("table", "main") == "main", local
    # No mark chains; the identity SNAT chain only where another table could masquerade: gwa
    # has the foreign IPv6 MASQUERADE, gwb only a filter table, m1 no NAT (no chain of ours
    # looks at their packets).
    assert chains(m1) == set()
    assert chains(gwb) == set()
    assert chains(gwa) == {("postrouting", "nat", "postrouting")}
    # The gateway: an IPv6 neighbour per member, IPv6 routes into WireGuard, both families
    # allowed on the peer.
    gw_neigh6 = {n["dst"] for n in gwa.ip_json("-6", "neigh", "show", "dev", "raven0", "nud",
                                               "permanent")}
    assert gw_neigh6 == {vtep6_for(M1)}
    assert {r["dst"] for r in routes6(gwa, 9028)} == {
        "fd00:2::/64"}
    (peer,) = gwa.wg_dump().values()
    assert set(peer["allowed_ips"].split(",")) == {"10.2.0.0/24", "fd00:2::/64"}

    # Packets of both families, pod to pod across VXLAN and WireGuard (the first waits for the
    # handshake). DF pings of the route MTU pass, one byte more does not.
    assert wait(lambda: ping(pod_a, "fd00:2::2", count=1).returncode == 0, timeout=60)
    ok6 = ping(pod_a, "fd00:2::2", size=TUNNEL_MTU - ICMP6_HEADERS)
    assert ok6.returncode == 0, ok6.stdout + ok6.stderr
    assert ping(pod_a, "fd00:2::2", size=TUNNEL_MTU - ICMP6_HEADERS + 1, count=1).returncode != 0
    back6 = ping(pod_b, "fd00:1:1::2")
    assert back6.returncode == 0, back6.stdout + back6.stderr
    # Pod A's IPv6 source crossed the pools unchanged despite the foreign IPv6 MASQUERADE
    # (our identity SNAT in `inet raven`, there because of that nat chain, binds it first).
    probe = [o["rule"]["expr"] for o in gwb.nft("list", "table", "inet", "probe") if "rule" in o]
    packets = [e["counter"]["packets"] for expr in probe for e in expr if "counter" in e]
    assert packets and packets[0] >= 3, packets
    ok4 = ping(pod_a, "10.2.0.2")
    assert ok4.returncode == 0, ok4.stdout + ok4.stderr

    for node, state in states.items():
        again = dps[node].apply(state)
        assert (again.writes, again.changes) == (0, ()), again


def chains(node: Node) -> set[tuple[str, str, str]]:
    """(name, type, hook) of the chains of our table, from `nft -j`."""
    return {(c["chain"]["name"], c["chain"].get("type"), c["chain"].get("hook"))
            for c in node.nft("list", "table", "inet", "raven") if "chain" in c}


def member_state(make_node: Any) -> tuple[Node, NodeState]:
    node = make_node()
    node.ip("link", "add", "u0", "type", "veth", "peer", "name", "u1")
    node.ip("addr", "add", f"{M1}/24", "dev", "u0")
    node.ip("link", "set", "u0", "up")
    state = plan_node(gateways("A" * 43 + "=", "B" * 43 + "="), "m1")
    assert state.vxlan is not None and state.vxlan.vtep_ip6 is not None
    return node, state


def test_ipv6_disabled_on_our_device_is_turned_back_on(make_node) -> None:
    node, state = member_state(make_node)
    # New devices inherit `default`: raven0 is created with IPv6 off.
    node.exec("sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
    dp = node.dataplane()
    result = dp.apply(state)
    assert result.skipped == (), result
    assert node.sysctl("net.ipv6.conf.raven0.disable_ipv6") == "0"
    assert node.sysctl("net.ipv6.conf.default.disable_ipv6") == "1"  # the host's, untouched
    assert f"{vtep6_for(M1)}/128" in global6(node, "raven0")
    assert dp.apply(state).writes == 0

    # By hand on the live device: the kernel drops its IPv6 addresses, routes and neighbours.
    node.exec("sysctl", "-qw", "net.ipv6.conf.raven0.disable_ipv6=1")
    assert global6(node, "raven0") == set()
    assert "sysctl net.ipv6.conf.raven0.disable_ipv6 1 -> 0" in dp.observe().drift
    repaired = dp.apply(state)
    assert repaired.writes > 0 and repaired.skipped == ()
    assert f"{vtep6_for(M1)}/128" in global6(node, "raven0")
    assert {r["dst"] for r in routes6(node, 9027)} == {
        "fd00:2::/64"}
    assert len(node.ip_json("-6", "neigh", "show", "dev", "raven0", "nud", "permanent")) == 1
    assert dp.apply(state).writes == 0

    # Through `all`, which the kernel copies to every device: raven0 alone is turned back on.
    node.exec("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
    assert node.sysctl("net.ipv6.conf.raven0.disable_ipv6") == "1"
    again = dp.apply(state)
    assert again.writes > 0 and again.skipped == (), again
    assert node.sysctl("net.ipv6.conf.raven0.disable_ipv6") == "0"
    assert node.sysctl("net.ipv6.conf.u0.disable_ipv6") == "1"  # not ours: untouched
    assert f"{vtep6_for(M1)}/128" in global6(node, "raven0")
    assert {r["dst"] for r in routes6(node, 9027)} == {"fd00:2::/64"}
    assert dp.apply(state).writes == 0


class _NoIpv6Kernel:
    """sysctl as on a kernel booted with ipv6.disable=1 (no net.ipv6 tree): this machine's
    kernel cannot be rebooted that way, so only this one read is faked; every write and every
    check below goes to the real kernel."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def read(self, netns_name: str | None, key: str) -> str | None:
        return None if key.startswith("net.ipv6.") else self.real.read(netns_name, key)

    def write(self, netns_name: str | None, key: str, value: str) -> None:
        self.real.write(netns_name, key, value)


def test_a_kernel_without_ipv6_keeps_the_ipv4_half(make_node, monkeypatch) -> None:
    node, state = member_state(make_node)
    monkeypatch.setattr(vxlan_applier, "sysctl", _NoIpv6Kernel(vxlan_applier.sysctl))
    dp = node.dataplane()
    result = dp.apply(state)
    (reason,) = result.skipped
    assert "raven0" in reason and "net.ipv6.conf.raven0.disable_ipv6" in reason, reason
    assert "IPv4 applied" in reason
    # IPv4 complete, IPv6 absent (ip -json is the oracle).
    assert {r["dst"] for r in node.routes(9027)} == {"10.2.0.0/24"}
    assert routes6(node, 9027) == []
    assert [r for r in node.ip_json("-6", "rule", "show") if r.get("table") == "9027"] == []
    assert [r["priority"] for r in node.rules() if r.get("table") == "9027"] == [100]
    assert {a["local"] for i in node.ip_json("-4", "addr", "show", "raven0")
            for a in i["addr_info"]} == {vtep_for(M1)[0]}
    assert global6(node, "raven0") == set()
    assert len(node.neighbours("raven0")) == 1
    # Steady: nothing written, no change reported, the reason still given; no drift.
    again = dp.apply(state)
    assert (again.writes, again.changes, again.skipped) == (0, (), (reason,))
    status = dp.observe()
    assert status.drift == () and status.skipped == (reason,)


def test_vxlan_over_an_ipv6_underlay(make_node, wait) -> None:
    switch, m1, gwa = (make_node() for _ in range(3))
    switch.ip("link", "add", "br0", "type", "bridge")
    switch.ip("link", "set", "br0", "up")
    ips = {"m1": "2001:db8:a::1", "gwa": "2001:db8:a::3", "gwb": "2001:db8:b::2"}
    wire(switch, m1, f"{ips['m1']}/64")
    wire(switch, gwa, f"{ips['gwa']}/64")
    fleet = gateways("A" * 43 + "=", "B" * 43 + "=", ips)
    states = {node: plan_node(fleet, name) for node, name in ((m1, "m1"), (gwa, "gwa"))}
    dps = {node: node.dataplane() for node in states}
    for node, state in states.items():
        assert state.vxlan is not None and state.vxlan.local_ip == ips[
            "m1" if node is m1 else "gwa"]
        result = dps[node].apply(state)
        assert result.skipped == (), result
    link = m1.link("raven0")
    assert link is not None
    data = link["linkinfo"]["info_data"]
    assert data["local6"] == ips["m1"] and data["id"] == 200 and data["port"] == 4472
    assert data["learning"] is False
    assert {(e["mac"], e["dst"]) for e in m1.fdb("raven0")} == {(vtep_for(ips["gwa"])[1],
                                                                  ips["gwa"])}
    # Both VTEP families answer across the VXLAN, whose packets travel over IPv6. VTEPs have
    # no common prefix (the overlay only routes pod subnets via them, onlink), so the test
    # adds host routes to the peer's VTEPs in the main table.
    for node, peer in ((m1, "gwa"), (gwa, "m1")):
        node.ip("route", "add", vtep_for(ips[peer])[0], "dev", "raven0")
        node.ip("-6", "route", "add", vtep6_for(ips[peer]), "dev", "raven0")
    for target in (vtep_for(ips["gwa"])[0], vtep6_for(ips["gwa"])):
        assert wait(lambda t=target: ping(m1, t, count=1).returncode == 0, timeout=60), target
    for node, state in states.items():
        assert dps[node].apply(state).writes == 0
    # Recreated in place when the plan moves the device to an IPv4 underlay (local changed).
    m1.ip("addr", "add", f"{M1}/24", "dev", "u0")
    v4 = plan_node(gateways("A" * 43 + "=", "B" * 43 + "=",
                            {"m1": M1, "gwa": GWA, "gwb": GWB}), "m1")
    changes = dps[m1].apply(v4).changes
    assert any(f"local {ips['m1']} -> {M1}" in line for line in changes), changes
    link = m1.link("raven0")
    assert link is not None and link["linkinfo"]["info_data"]["local"] == M1
