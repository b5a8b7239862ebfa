"""PURE: the tunnel-namespace shape of an active gateway (docs/tunnel-namespace.md).

Why: a gateway with members holds the rule `iif raven-wg0 lookup 9027` (what comes out of the
tunnel for a member goes over raven0, the gateway's own traffic to the same pods stays with the
CNI), and that one rule keeps its namespace in the kernel's policy-routing mode
(`fib_has_custom_rules`): about 10 % of the member path's data plane (docs/benchmarks.md,
"Where the last 8 % goes, and a tunnel namespace on gateways"). With raven-wg0 and raven0 in a
namespace of their own, joined to the node's by a veth pair, routing alone tells the two kinds
of traffic apart (they arrive in different namespaces) and neither namespace needs that rule.

`shape(state, options)` takes the plan of an active gateway (`raven.topology.plan_node`) and,
with `options.tunnel_namespace` on, returns it in two parts:
- `state.tunnel`, what goes inside the tunnel namespace: raven0 with its FDB and neighbour
  entries and raven-wg0, as planned (the data plane creates both in the node's namespace and
  moves them, so their UDP sockets stay on the node's underlay); the routes to the remote pools
  into raven-wg0 and the members' pod subnets to their VTEPs over raven0, both in that
  namespace's `main`, where nothing else routes (no rule); a default route back over the veth;
  forwarding; the source check off (the namespace is ours alone: WireGuard admits only its
  peers' allowed sources, raven0 is the pool's segment, the veth comes from the node, and a
  host's strict `all.rp_filter`, which a new namespace copies, would drop a member node's own
  packets, whose source routes back over the veth);
- the node's part: the veth pair, the routes to the remote pools via the veth's far end (table
  9028 behind its selector-less rule, as planned for any gateway; `raven.route_placement` then
  puts them in `main` when nothing contests them), the firewall and forwarding as before, and
  no delivery rule: nothing comes out of the tunnel in this namespace.
Members and nodes alone are returned unchanged, and so is a gateway that routes IPv6 or has an
IPv6 underlay, with a note: the veth carries IPv4 only so far (IPv6 next hops on it need
addresses of their own, not built yet).
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from raven.constants import MAIN_TABLE
from raven.desired import NodeState, Role, Route, VethPair
from raven.settings import OverlaySettings


def veth_pair(options: OverlaySettings) -> VethPair:
    """The pair's names and addresses: the first usable address of the subnet in the node's
    namespace, the second in the tunnel namespace."""
    net = ipaddress.ip_network(options.tunnel_veth_subnet, strict=True)
    first, second = list(net.hosts())[:2]
    return VethPair(name=options.tunnel_veth, peer=options.tunnel_veth_peer,
                    address=str(first), peer_address=str(second), prefixlen=net.prefixlen,
                    mtu=options.underlay_mtu)


def _ipv4_only(state: NodeState) -> bool:
    assert state.vxlan is not None  # an active gateway always has raven0
    texts = [state.vxlan.local_ip, *(r.dst for r in state.routes)]
    return state.vxlan.vtep_ip6 is None and all(":" not in t for t in texts)


def shape(state: NodeState, options: OverlaySettings) -> NodeState:
    """`state` in the tunnel-namespace shape (the module's rules), or unchanged."""
    if not options.tunnel_namespace or state.role is not Role.ACTIVE_GATEWAY:
        return state
    if not _ipv4_only(state):
        return replace(state, notes=(*state.notes, (
            f"node {state.node}: tunnel namespace not used: this gateway routes IPv6 or has an "
            "IPv6 underlay, and the veth carries IPv4 only so far; the delivery rule stays")))
    veth = veth_pair(options)
    into_tunnel = [r for r in state.routes if r.table == options.wireguard_table]
    delivery = [r for r in state.routes if r.table == options.vxlan_table]
    inside = replace(
        state,
        routes=(*(replace(r, table=MAIN_TABLE) for r in (*into_tunnel, *delivery)),
                Route("0.0.0.0/0", MAIN_TABLE, veth.peer, veth.address)),
        rules=(), firewall=None, veth=None, tunnel=None,
        sysctls=_inside_sysctls(state, options), notes=())
    node_ip = state.vxlan.local_ip if state.vxlan is not None else None
    mtu = state.wireguard.mtu if state.wireguard is not None else options.tunnel_mtu
    routes = tuple(Route(r.dst, options.wireguard_table, veth.name, veth.peer_address, mtu,
                         node_ip) for r in into_tunnel)
    return replace(
        state, vxlan=None, fdb=(), neighbours=(), wireguard=None, routes=routes,
        rules=tuple(r for r in state.rules if not r.iif),
        sysctls=_node_sysctls(state, options), veth=veth, tunnel=inside,
        notes=(*state.notes, (
            f"node {state.node}: {options.wireguard_device} and {options.vxlan_device} in the "
            f"tunnel namespace, joined by {veth.name} ({veth.address}) to {veth.peer} "
            f"({veth.peer_address}); {len(into_tunnel)} route(s) into the tunnel, "
            f"{len(delivery)} to members, no delivery rule")))


def _inside_sysctls(state: NodeState, options: OverlaySettings) -> tuple[tuple[str, str], ...]:
    keys = {("net.ipv4.ip_forward", "1"), ("net.ipv4.conf.all.rp_filter", "0")}
    for dev in (options.vxlan_device, options.wireguard_device, options.tunnel_veth_peer):
        keys |= {(f"net.ipv4.conf.{dev}.rp_filter", "0"),
                 (f"net.ipv4.conf.{dev}.accept_local", "1")}
    return tuple(sorted(keys))


def _node_sysctls(state: NodeState, options: OverlaySettings) -> tuple[tuple[str, str], ...]:
    """The gateway's own, less the settings of the devices that moved out, plus the source
    check of the veth (what returns from the tunnel arrives on it; in policy-routing mode, if a
    contested route keeps the selector-less rule, the check would cost a reverse lookup)."""
    moved = (f".{options.vxlan_device}.", f".{options.wireguard_device}.")
    kept = {kv for kv in state.sysctls if not any(m in kv[0] for m in moved)}
    kept |= {(f"net.ipv4.conf.{options.tunnel_veth}.rp_filter", "0"),
             (f"net.ipv4.conf.{options.tunnel_veth}.accept_local", "1")}
    return tuple(sorted(kept))


__all__ = ["shape", "veth_pair"]
