"""Active-active gateways seen from the kernels of a lab (docs/gateway.md, "Active-active
gateways"): which gateway each node sends through, which subnets each remote gateway sends
to which of them, and the bytes each gateway's WireGuard device moves under an all-pairs
iperf3 load. Everything is read from the nodes' kernels (`ip -j route`, `wg show`), never from
the agents, so tests and bench/active_active.py use it as an independent oracle.

Rules kept: tools run through the lab's adapter (raven.lab.netns) inside each node's network
and mount namespace; the load runs one pair at a time (each pair's bytes are attributed to the
gateway whose counters moved while it ran).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from raven import constants
from raven.lab import netns as nsutil
from raven.lab import runtime
from raven.lab.iperf import iperf
from raven.lab.plan import LabPlan, NodePlan, PodPlan
from raven.settings import OverlaySettings
from raven.topology import vtep_for

_OVERLAY = OverlaySettings()


def _in_node(lab: str, node: str, *argv: str, devices: bool = False) -> str:
    """`argv` in the node, or (`devices`) where its raven0 and raven-wg0 are (its tunnel
    namespace while it is an active gateway: the kernel WireGuard backend answers only there)."""
    prefix = runtime.devices_exec_argv(lab, node) if devices else runtime.node_exec_argv(lab, node)
    proc = nsutil.run([*prefix, *argv], check=False, timeout=30)
    return proc.stdout if proc.returncode == 0 else ""  # no device/table: nothing of ours


def _nodes(plan: LabPlan, pool: str) -> list[NodePlan]:
    return [n for p in plan.pools if p.name == pool for n in p.nodes]


# `ip route show` selectors of a node's routes to the remote pools, in its table behind the rule
# or in main as routes of our protocol where nothing there contests them
# (raven.route_placement): a member's go over raven0 (table 9027), a gateway's into the tunnel
# (table 9028; in main, those via the WireGuard device).
MEMBER_ROUTES = (("table", str(_OVERLAY.vxlan_table)),
                 ("table", "main", "proto", str(constants.ROUTE_PROTOCOL)))
TUNNEL_ROUTES = (("table", str(_OVERLAY.wireguard_table)),
                 ("table", "main", "proto", str(constants.ROUTE_PROTOCOL), "dev",
                  _OVERLAY.wireguard_device),
                 # a gateway with a tunnel namespace (docs/tunnel-namespace.md): via its veth
                 ("table", "main", "proto", str(constants.ROUTE_PROTOCOL), "dev",
                  _OVERLAY.tunnel_veth))


def _routes(lab: str, node: str, selectors: tuple[tuple[str, ...], ...],
            prefix: tuple[str, ...]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for where in selectors:
        out += json.loads(_in_node(lab, node, "ip", "-j", "route", "show", *where, *prefix)
                          or "[]")
    return out


def member_routes(lab: str, node: str) -> list[dict[str, Any]]:
    """A member's routes to the remote pools (`ip -j`), wherever they are (MEMBER_ROUTES)."""
    return _routes(lab, node, MEMBER_ROUTES, ())


def tunnel_routes(lab: str, node: str, *prefix: str) -> list[dict[str, Any]]:
    """The node's routes into the tunnel (`ip -j`, TUNNEL_ROUTES), of `prefix` only when
    given."""
    return _routes(lab, node, TUNNEL_ROUTES, prefix)


def carries_itself(lab: str, node: str) -> bool:
    """An active gateway: it routes remote pod subnets into the tunnel."""
    return bool(tunnel_routes(lab, node))


def gateway_of_nodes(plan: LabPlan, pool: str) -> dict[str, str]:
    """node -> the node its cross-pool traffic leaves the pool through ("" when none or mixed):
    itself for an active gateway, else the owner of the VTEP its routes to the remote pools go
    via (`member_routes`)."""
    nodes = _nodes(plan, pool)
    by_vtep = {vtep_for(n.underlay_ip)[0]: n.name for n in nodes if n.underlay_ip}
    out = {}
    for n in nodes:
        if carries_itself(plan.name, n.name):
            out[n.name] = n.name
            continue
        routes = member_routes(plan.name, n.name)
        hops = {by_vtep.get(r.get("gateway", ""), "") for r in routes}
        out[n.name] = hops.pop() if len(hops) == 1 else ""
    return out


def public_key(lab: str, node: str) -> str:
    return _in_node(lab, node, "wg", "show", _OVERLAY.wireguard_device, "public-key",
                    devices=True).strip()


def peer_subnets(lab: str, node: str) -> dict[str, set[str]]:
    """public key -> the allowed IPs of that peer on `node` (`wg show ... allowed-ips`)."""
    out: dict[str, set[str]] = {}
    text = _in_node(lab, node, "wg", "show", _OVERLAY.wireguard_device, "allowed-ips",
                    devices=True)
    for line in text.splitlines():
        key, *ips = line.split()
        out[key] = {ip for ip in ips if ip != "(none)"}
    return out


def wg_bytes(lab: str, node: str) -> int:
    """Bytes received plus sent by every peer of `node`'s WireGuard device (0 without one)."""
    total = 0
    for line in _in_node(lab, node, "wg", "show", _OVERLAY.wireguard_device, "transfer",
                         devices=True).splitlines():
        parts = line.split()
        if len(parts) == 3:
            total += int(parts[1]) + int(parts[2])
    return total


@dataclass(frozen=True)
class PairLoad:
    src_node: str
    dst_node: str
    bytes: int  # what iperf3's receiver counted
    moved: dict[str, int]  # gateway -> bytes its WireGuard device moved while the pair ran


def all_pairs_load(plan: LabPlan, src_pool: str, dst_pool: str, gateways: list[str],
                   seconds: float = 1.0, skip: tuple[str, ...] = ()) -> list[PairLoad]:
    """iperf3 from every pod of `src_pool` to every pod of `dst_pool`, one pair at a time,
    with the WireGuard byte counters of `gateways` read around each pair. Nodes in `skip`
    (powered off) take part neither as a source nor as a gateway."""
    gws = [g for g in gateways if g not in skip]
    pods: list[tuple[str, PodPlan, str, PodPlan]] = [
        (s.name, sp, d.name, dp)
        for s in _nodes(plan, src_pool) if s.name not in skip for sp in s.pods
        for d in _nodes(plan, dst_pool) if d.name not in skip for dp in d.pods]
    out = []
    for src_node, src, dst_node, dst in pods:
        before = {g: wg_bytes(plan.name, g) for g in gws}
        result = iperf(dst.netns, dst.ip, src.netns, seconds)
        after = {g: wg_bytes(plan.name, g) for g in gws}
        out.append(PairLoad(src_node, dst_node, int(result.bits_per_second * result.seconds / 8),
                            {g: after[g] - before[g] for g in gws}))
    return out


def split(loads: list[PairLoad], carrier: dict[str, str]) -> dict[str, int]:
    """gateway -> iperf3 bytes of the pairs whose source it carries."""
    out: dict[str, int] = {}
    for load in loads:
        gw = carrier.get(load.src_node, "")
        out[gw] = out.get(gw, 0) + load.bytes
    return out
