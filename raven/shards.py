"""PURE active-active sharding: which of a pool's active gateways carries each member's
cross-pool traffic (docs/gateway.md, "Active-active gateways").

Rules this module keeps:
- Every member of a pool has exactly one gateway: an active gateway carries itself, every other
  member goes to the active gateway of highest rendezvous score (highest random weight hashing,
  SHA-256 of gateway name and member name), ties broken by gateway name.
- Removing a gateway from the active set moves only the members it carried (each member's
  score for every other gateway is unchanged, so their maximum is too); adding one moves
  members only onto the new gateway. Nothing depends on the order of the inputs.
- Both ends compute the same shard from the same inputs (the Gateway status every node reads,
  and the active set after the node's own data-path probes, raven.failover): a remote gateway
  gives each of our active gateways a WireGuard peer whose allowed IPs are the pod subnets of
  that gateway's shard, so traffic and its return take the same two gateways.
- Pure: no I/O, no clock, no randomness (the hash is a function of the names only).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from functools import lru_cache


@lru_cache(maxsize=1 << 16)
def score(gateway: str, member: str) -> int:
    """The rendezvous weight of `member` on `gateway`."""
    digest = hashlib.sha256(f"{gateway}\0{member}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def gateway_of(member: str, active: Iterable[str]) -> str | None:
    """The active gateway that carries `member` (None when there is no active gateway)."""
    gateways = sorted(set(active))
    if not gateways:
        return None
    if member in gateways:
        return member
    return max(gateways, key=lambda g: (score(g, member), g))


def assign(members: Iterable[str], active: Iterable[str]) -> dict[str, str]:
    """member -> its gateway, for every member (gateways included, each carrying itself)."""
    gateways = sorted(set(active))
    if not gateways:
        return {}
    out: dict[str, str] = {}
    for member in sorted(set(members)):
        gw = gateway_of(member, gateways)
        assert gw is not None
        out[member] = gw
    return out


def shares(assignment: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """gateway -> the members it carries (sorted), from `assign`."""
    out: dict[str, list[str]] = {}
    for member, gw in sorted(assignment.items()):
        out.setdefault(gw, []).append(member)
    return {gw: tuple(ms) for gw, ms in sorted(out.items())}
