"""The IPv4 half of a plan: what a node still applies when its IPv6 objects cannot be written.

A host may have IPv6 off (ipv6.disable=1 on the kernel command line, or a sysctl we are not
allowed to change). A dual-stack plan must then still give the node its IPv4 overlay: the data
plane applies the plan, and when that fails and the plan has IPv6 parts it applies this half and
reports why IPv6 was left out (`ApplyResult.skipped`). Pure: no I/O.

What the half keeps: the VXLAN device without its IPv6 VTEP, IPv4 neighbours, routes, rules and
firewall subnets, the sysctls outside net.ipv6, every FDB entry (underlay, whatever its family)
and WireGuard unchanged (allowed IPs are WireGuard's own crypto routing and need no kernel IPv6;
dropping them would only churn the peers).
"""

from __future__ import annotations

from dataclasses import replace

from raven.desired import NodeState


def _v6(text: str) -> bool:
    return ":" in text  # canonical addresses and CIDRs: only IPv6 text has a colon


def ipv4_half(state: NodeState) -> NodeState:
    """`state` without its IPv6 overlay objects (equal to `state` when it has none)."""
    vxlan = state.vxlan
    if vxlan is not None and vxlan.vtep_ip6 is not None:
        vxlan = replace(vxlan, vtep_ip6=None)
    firewall = state.firewall
    if firewall is not None:
        firewall = replace(
            firewall,
            local_subnets=tuple(s for s in firewall.local_subnets if not _v6(s)),
            remote_subnets=tuple(s for s in firewall.remote_subnets if not _v6(s)))
    return replace(
        state, vxlan=vxlan, firewall=firewall,
        neighbours=tuple(n for n in state.neighbours if not _v6(n.ip)),
        routes=tuple(r for r in state.routes if not _v6(r.dst)),
        rules=tuple(r for r in state.rules if r.family != 6),
        sysctls=tuple(kv for kv in state.sysctls if not kv[0].startswith("net.ipv6.")),
    )
