"""PURE: where a node's routes to the remote pools go, `main` or their table behind a rule.

Why: the first policy rule in a network namespace puts its kernel in policy-routing mode for
good (`fib_has_custom_rules`): every route lookup of every packet the node handles then walks
the rules over separate tables, which costs 4-5 % of the CPU per Gbit (docs/benchmarks.md). A
member needs no rule when nothing else routes a remote pool's subnet: its routes to them can
go in `main`, where the longest prefix wins anyway. A rule is needed only when `main` holds a
foreign route (a CNI's, an operator's) as specific as one of ours or more (flannel host-gw, for
example, routes every node's pod subnet, the remote pools' included): then our route would
lose, and table 9027 with its rule before `main` is what makes it win, as before.

`place(state, foreign, options)` takes the plan of `raven.topology.plan_node` (a member's
routes in table 9027 and an active gateway's in table 9028, each behind a selector-less rule)
and, for a node whose routed subnets no foreign route contests, moves those routes to `main`
and drops that rule. `foreign` is what the data plane read from `main` (every route not written
by us: `Dataplane.foreign_main_routes`). The gateway's `iif raven-wg0` delivery rule and its
table 9027 stay: a gateway must tell the tunnel's traffic to its members from its own, and only
a rule can select on the input device (docs/dataplane.md, "Members without a rule; why a
gateway keeps one"). So a gateway with members stays in policy-routing mode, but its lookups no
longer visit 9028 first: what it sends into the tunnel, and every packet it originates, finds
its route in `main` after the `iif` rule's cheap device check (a small saving, 0.2-0.3 % of the
kernel's time per Gbit in the lab; the larger gain is the failover: docs/benchmarks.md,
"Gateways' tunnel routes in main"). Nodes alone are left as planned.

In `main` our routes carry a metric (`raven.constants.MAIN_ROUTE_METRIC`) above a CNI's usual
0, so a CNI that later adds the same prefix is not refused (EEXIST) and its route wins until
the agent's next plan sees it and goes back to the rule. All or nothing per node: one
contested subnet needs the rule, and with the rule in place its table serves every subnet at
no further cost. A member and a gateway write their routes to the remote pools under the same
key in `main` (prefix, metric), so a failover replaces each route in place (device and next hop
change) and no rule is written.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import replace
from functools import lru_cache

from raven.constants import MAIN_ROUTE_METRIC, MAIN_TABLE
from raven.desired import NodeState, Role, Route, Rule
from raven.settings import OverlaySettings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=65536)
def _network(cidr: str) -> Network | None:
    try:
        return ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return None


class Cover:
    """Our routed subnets, asked which of them holds a prefix: the same prefix or a wider one
    around it. A prefix is looked up by its supernets at the prefix lengths ours have (a few),
    not compared with each of ours: 10,000 subnets against a large main table stay cheap."""

    def __init__(self, ours: Iterable[str]) -> None:
        self._mine: dict[Network, str] = {}
        lengths: dict[int, set[int]] = {4: set(), 6: set()}
        for text in ours:
            net = _network(text)
            if net is not None:
                self._mine.setdefault(net, text)
                lengths[net.version].add(net.prefixlen)
        self._lengths = {version: sorted(found) for version, found in lengths.items()}

    def around(self, prefix: str) -> list[str]:
        """Our subnets that hold `prefix` (equal or wider), widest first."""
        net = _network(prefix)
        if net is None:
            return []
        found = []
        for length in self._lengths[net.version]:
            if length > net.prefixlen:
                break
            wider = net if length == net.prefixlen else net.supernet(new_prefix=length)
            if wider in self._mine:
                found.append(self._mine[wider])
        return found


def contested(ours: Iterable[str], foreign: Iterable[str]) -> list[tuple[str, str]]:
    """(our subnet, foreign route) pairs where the foreign route would take traffic for our
    subnet from a route of ours in `main`: the same prefix, or a more specific one inside it.
    A less specific foreign route (the default route, a /16 around a /24) loses to ours."""
    cover = Cover(ours)
    out = []
    for route in foreign:
        out += [(mine, str(_network(route))) for mine in cover.around(route)]
    return out


def place(state: NodeState, foreign: Sequence[str], options: OverlaySettings) -> NodeState:
    """The routes to the remote pools in `main` without their selector-less rule when no
    foreign route contests them (the module's rules): a member's (table 9027), an active
    gateway's (table 9028; its `iif` delivery rule and table 9027 stay). Otherwise `state`
    unchanged, with a note saying which route needs the rule."""
    table = {Role.MEMBER: options.vxlan_table,
             Role.ACTIVE_GATEWAY: options.wireguard_table}.get(state.role)
    if table is None:
        return state
    moving = [r for r in state.routes if r.table == table]
    if not moving:
        # Nothing to route yet (the first plan of a node, before the remote pools are known):
        # no rule either. One written now would keep the namespace in policy-routing mode for
        # good, long after the routes arrived in main.
        rules = tuple(r for r in state.rules if not _selectorless(r, table))
        if rules == state.rules:
            return state
        return replace(state, rules=rules, notes=(*state.notes, (
            f"node {state.node}: no routes to the remote pools yet, so no rule for them")))
    clashes = contested([r.dst for r in moving], foreign)
    if clashes:
        shown = ", ".join(f"{f} (ours {o})" for o, f in clashes[:3])
        more = f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""
        return replace(state, notes=(*state.notes, (
            f"node {state.node}: routes to the remote pools stay in table {table} behind a "
            f"policy rule: table main also routes {shown}{more}, which would win over ours "
            "there")))
    # Same order as planned; only the table changes.
    routes = tuple(Route(r.dst, MAIN_TABLE, r.dev, r.gateway, r.mtu, r.src)
                   if r.table == table else r for r in state.routes)
    rules = tuple(r for r in state.rules if not _selectorless(r, table))
    kept = (f"; the rule for traffic from {options.wireguard_device} stays"
            if any(r.iif for r in rules) else "")
    return replace(state, routes=routes, rules=rules, notes=(*state.notes, (
        f"node {state.node}: routes to the remote pools in table main (metric "
        f"{MAIN_ROUTE_METRIC}), no rule for them: no other route in main covers them{kept}")))


def _selectorless(rule: Rule, table: int) -> bool:
    return rule.table == table and not rule.iif and not rule.fwmark


__all__ = ["Cover", "contested", "place"]
