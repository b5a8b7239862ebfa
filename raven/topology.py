"""PURE planner: the Gateways and the local node -> that node's desired data-plane state.

Rules this module keeps (docs/gateway.md explains them for operators):
- Pure and deterministic: no sockets, clock or files; the same inputs in any order give an equal
  `NodeState` (everything is sorted; ties are broken by name).
- A pool is a Gateway; its members are its `status.nodes`, its active gateway is the first tunnel
  endpoint of `status.activeEndpoints`. A further one that is a member with an address and a key
  is active too (active-active, raven.shards): each active gateway carries the members of its
  share, and remote gateways give each one a peer allowing its share's pod subnets, so both
  directions of a pair take the same gateways. A node in no pool, or in a pool without an
  active gateway, is ALONE: nothing of ours is installed.
- VTEP MAC and addresses (IPv4 `vtep_for`, IPv6 `vtep6_for`) are functions of the node's
  underlay address only, so they are identical after any restart, with or without the API
  server. Collisions inside a pool are reported in the plan's notes.
- Families never mix: an IPv4 subnet goes via the gateway's IPv4 VTEP, an IPv6 one via its IPv6
  VTEP; raven0 gets an IPv6 VTEP address (and IPv6 neighbours, rule and forwarding) only when the
  node routes IPv6, so an IPv4-only node never needs IPv6 at all.
- A family is routed only where it can work: the pool has pod subnets of it (a relay also
  forwards a family that two undialable pools share), the overlay MTU carries it (IPv6 >= 1280)
  and, on a member, the gateway's VTEP of it is usable. Whatever is not routed is named in a note
  per (pool, family) with the reason and the fix; it never fails the plan or touches other
  families or pools. One VXLAN device has one underlay family: a member whose underlay family
  differs from its gateway's is ALONE, with a note.
- Every reachable remote pool subnet is routed exactly once (the first pool by name wins a
  duplicate) or named in a note; a subnet that overlaps one of our own pool's subnets is never
  routed into a tunnel.
- Two pools whose gateways are both undialable (under NAT, or no public address) reach each other
  through one relay: the dialable pool the controller chose by measured RTT (`status.relay`,
  raven.relay_choice), else the one whose Gateway was created first (creationTimestamp, then
  name). A Gateway added later can never become the relay of an existing pair by age.
- Two undialable pools may get a direct path (`paths`, raven.paths: hole punching decided by
  the agent): a peer aimed at the other gateway's mapped endpoint, holding no allowed IPs
  while it is probed and the other pool's subnets (taken from the relay) once it answers.
  Direct paths join the first active endpoints of the two pools only: of an active-active
  pool the direct peer takes the first endpoint's share, the other shares stay on the relay,
  and path plans handed to another active gateway are ignored (its share stays relayed), so
  a pair and its reply still cross the same gateways.
- Keepalive is set when WE are under NAT (keeps our NAT mapping open, we make the first
  handshake); a peer under NAT has no endpoint: it is learned from its handshake.
- MTUs: VXLAN device = underlay - VXLAN overhead (20 bytes more over an IPv6 underlay);
  WireGuard device and cross-pool routes = underlay - WireGuard overhead (the cross-pool path is
  limited by the tunnel on the gateway).
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from operator import attrgetter
from typing import NamedTuple

from raven import constants, shards, tunnel_shape
from raven.desired import (
    FdbEntry,
    Firewall,
    NeighEntry,
    NodeState,
    Role,
    Route,
    Rule,
    VxlanDevice,
    WireGuardDevice,
    WireGuardPeer,
)
from raven.model import TUNNEL, Endpoint, Gateway, Node, NodeInfo
from raven.paths import DIRECT_KEEPALIVE, PathPlan
from raven.settings import OverlaySettings

VTEP_NETWORK = ipaddress.IPv4Network("240.0.0.0/4")  # reserved (class E): never on an underlay
VTEP_PREFIXLEN = 32  # the device address only; neighbours and onlink routes need no subnet
VTEP_MAC_PREFIX_V4 = (0x0E, 0x52)  # locally administered, unicast; + the 4 IPv4 bytes
VTEP_MAC_PREFIX_V6 = (0x0E, 0x56)  # + 4 bytes of a hash of the IPv6 address
# IPv6 VTEPs live in a ULA /48 reserved for them (global ID 72:6176:656e spells "raven"), one /64
# per underlay family so the two derivations can never produce the same address.
VTEP6_NETWORK = ipaddress.IPv6Network("fd72:6176:656e::/48")
VTEP6_FROM_V4 = ipaddress.IPv6Network("fd72:6176:656e:4::/64")  # + the 32-bit IPv4 address
VTEP6_FROM_V6 = ipaddress.IPv6Network("fd72:6176:656e:6::/64")  # + 64 bits of a SHA-256
VTEP6_PREFIXLEN = 128
IPV6_MIN_MTU = 1280  # Linux turns IPv6 off on a device with a smaller MTU
IPV6_OUTER_EXTRA = 20  # an IPv6 outer header is 20 bytes longer than the IPv4 one VXLAN assumes
FAMILIES = (4, 6)

# The planner's knobs are the overlay section of the settings root (one definition, shared with
# the data plane). The old name stays for callers.
PlanOptions = OverlaySettings
_DEFAULT_OPTIONS = OverlaySettings()


# --------------------------------------------------------------------------------------------
# VTEP identity


@lru_cache(maxsize=65536)
def vtep_for(node_ip: str) -> tuple[str, str]:
    """(VTEP address, VTEP MAC) of a node, derived from its underlay address only.

    IPv4: MAC = 0e:52 + the four address bytes (injective); address = 240.0.0.0/4 + the low 28
    bits of the node address, so two nodes collide only if their addresses differ solely in the
    top four bits (Raven's 240 + last three octets collides as soon as the first octet differs).
    IPv6: both come from a SHA-256 of the address; collisions are possible and are reported by
    `vtep_collisions`. Raises ValueError for a string that is not an IP address.
    """
    ip = ipaddress.ip_address(node_ip)
    if isinstance(ip, ipaddress.IPv4Address):
        value = int(ip)
        mac_bytes = bytes(VTEP_MAC_PREFIX_V4) + ip.packed
    else:
        digest = hashlib.sha256(ip.packed).digest()
        value = int.from_bytes(digest[:4], "big")
        mac_bytes = bytes(VTEP_MAC_PREFIX_V6) + digest[4:8]
    vtep = ipaddress.IPv4Address(int(VTEP_NETWORK.network_address) | (value & 0x0FFFFFFF))
    return str(vtep), ":".join(f"{b:02x}" for b in mac_bytes)


@lru_cache(maxsize=65536)
def vtep6_for(node_ip: str) -> str:
    """IPv6 VTEP address of a node, derived from its underlay address only.

    IPv4 underlay: fd72:6176:656e:4:: + the 32-bit address (injective). IPv6 underlay:
    fd72:6176:656e:6:: + 64 bits of a SHA-256 of the address (a collision needs 2**32 nodes in
    one pool to become likely; `vtep_collisions` reports one anyway). Raises ValueError for a
    string that is not an IP address.
    """
    ip = ipaddress.ip_address(node_ip)
    if isinstance(ip, ipaddress.IPv4Address):
        base, low = VTEP6_FROM_V4, int(ip)
    else:
        base = VTEP6_FROM_V6
        low = int.from_bytes(hashlib.sha256(ip.packed).digest()[8:16], "big")
    return str(ipaddress.IPv6Address(int(base.network_address) | low))


def vtep_collisions(members: Iterable[tuple[str, str]]) -> list[str]:
    """Problems among (node name, underlay IP) pairs of one pool: shared VTEP addresses (either
    family) or MACs, and addresses that are unusable as a VTEP (the broadcast address)."""
    by_vtep: dict[str, list[str]] = {}
    by_vtep6: dict[str, list[str]] = {}
    by_mac: dict[str, list[str]] = {}
    problems: list[str] = []
    for name, ip in sorted(members):
        try:
            vtep, mac = vtep_for(ip)
        except ValueError:
            problems.append(f"node {name}: underlay address {ip!r} is not an IP address")
            continue
        if vtep == "255.255.255.255":
            problems.append(f"node {name}: underlay address {ip} maps to the broadcast VTEP "
                            "address 255.255.255.255; give the node another InternalIP")
        by_vtep.setdefault(vtep, []).append(f"{name} ({ip})")
        by_vtep6.setdefault(vtep6_for(ip), []).append(f"{name} ({ip})")
        by_mac.setdefault(mac, []).append(f"{name} ({ip})")
    for vtep, names in sorted(by_vtep.items()):
        if len(set(names)) > 1:
            problems.append(f"VTEP address collision: {', '.join(names)} all map to {vtep}; "
                            "their addresses differ only in the top 4 bits (or the hash); "
                            "renumber one of them")
    for vtep, names in sorted(by_vtep6.items()):
        if len(set(names)) > 1:
            problems.append(f"IPv6 VTEP address collision: {', '.join(names)} all map to "
                            f"{vtep}; give each node its own InternalIP")
    for mac, names in sorted(by_mac.items()):
        if len(set(names)) > 1:
            problems.append(f"VTEP MAC collision: {', '.join(names)} all map to {mac}")
    return problems


# --------------------------------------------------------------------------------------------
# Subnets as integer ranges (fast, exact overlap checks over thousands of subnets)


class _Cidr(NamedTuple):
    """A subnet as integers (a tuple: sorting thousands of them stays in C)."""

    version: int
    start: int
    end: int
    text: str  # canonical


@lru_cache(maxsize=1 << 17)
def _cidr(text: str) -> _Cidr | None:
    """Parse a CIDR (or a bare address) leniently: host bits are masked, as the kernel does."""
    fast = _cidr_v4(text)
    if fast is not None:
        return fast
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    return _Cidr(net.version, int(net.network_address), int(net.broadcast_address), str(net))


# Canonical decimal spellings only ("0".."255", "0".."32"): a dict lookup both converts and
# validates (no leading zeros, no signs/spaces/non-ASCII digits), with no regex or int() per
# octet -- this parse is most of a cold plan at 10,000 subnets.
_OCTETS = {str(i): i for i in range(256)}
_PREFIXES = {str(p): (p, (1 << (32 - p)) - 1) for p in range(33)}
_new_cidr = tuple.__new__  # _Cidr's own __new__ is a Python-level lambda


def _cidr_v4(text: str) -> _Cidr | None:
    """Fast path for dotted-quad IPv4 CIDRs in canonical decimal; None = use ipaddress, which
    then decides (it accepts what this refuses, e.g. a /08 prefix, or rejects it)."""
    addr, slash, plen_text = text.partition("/")
    parts = addr.split(".")
    if len(parts) != 4:
        return None
    octet = _OCTETS.get
    a, b, c, d = octet(parts[0]), octet(parts[1]), octet(parts[2]), octet(parts[3])
    if a is None or b is None or c is None or d is None:
        return None
    value = (a << 24) | (b << 16) | (c << 8) | d
    if not slash:
        return _new_cidr(_Cidr, (4, value, value, f"{addr}/32"))
    prefix = _PREFIXES.get(plen_text)
    if prefix is None:
        return None
    plen, host_bits = prefix
    start = value & ~host_bits
    if start != value:  # host bits set: masked, as the kernel does
        text = f"{start >> 24}.{(start >> 16) & 255}.{(start >> 8) & 255}.{start & 255}/{plen}"
    return _new_cidr(_Cidr, (4, start, start | host_bits, text))


class _RangeSet:
    """Sorted disjoint-ish ranges; answers 'does this CIDR overlap any of them' in O(log n)."""

    def __init__(self, cidrs: Iterable[_Cidr]) -> None:
        merged: list[tuple[int, int, int]] = []
        for c in sorted(cidrs):
            if merged and merged[-1][0] == c.version and c.start <= merged[-1][2] + 1:
                v, s, e = merged[-1]
                merged[-1] = (v, s, max(e, c.end))
            else:
                merged.append((c.version, c.start, c.end))
        self._ranges = merged

    def overlaps(self, c: _Cidr) -> bool:
        i = bisect.bisect_right(self._ranges, (c.version, c.end, 1 << 129))
        if i == 0:
            return False
        v, _s, e = self._ranges[i - 1]
        return v == c.version and e >= c.start


# --------------------------------------------------------------------------------------------
# Pools


@dataclass(frozen=True)
class _Pool:
    name: str
    created: str  # creationTimestamp, "" when unknown (hand-written files)
    members: tuple[NodeInfo, ...]  # sorted by name, unique names
    member_names: frozenset[str]
    subnets: tuple[_Cidr, ...]  # sorted, unique
    active: Endpoint | None  # first tunnel endpoint of status.activeEndpoints
    standby: tuple[str, ...]
    chosen_relay: bool = False  # status.relay: the controller chose it by RTT (relay_choice)
    # Active-active (raven.shards): the active gateways that carry a share of the pool's
    # members, the first active endpoint first; subnet -> the member that owns it.
    actives: tuple[Endpoint, ...] = ()
    owner: Mapping[str, str] | None = None

    @property
    def shard_names(self) -> tuple[str, ...]:
        return tuple(e.node_name for e in self.actives)

    def gateway_for_subnet(self, subnet: str) -> str | None:
        """The active gateway carrying `subnet` (its owning member's shard)."""
        member = (self.owner or {}).get(subnet)
        if member is None or len(self.actives) < 2:
            return self.active.node_name if self.active else None
        return shards.gateway_of(member, self.shard_names)

    @property
    def dial_address(self) -> str | None:
        """'host:port' a remote gateway can dial, None when the gateway cannot be dialed."""
        return _dial_address(self.active)

    def relay_key(self) -> tuple[int, str, str]:
        # Gateways without a timestamp (files) sort after every real one, then by name.
        return (0 if self.created else 1, self.created, self.name)


def _dial_address(ep: Endpoint | None) -> str | None:
    """'host:port' of a gateway endpoint a remote gateway can dial, None when it cannot."""
    if ep is None or ep.under_nat or not _is_ip(ep.public_ip):
        return None
    port = ep.public_port or ep.port or constants.WIREGUARD_PORT
    # host:port with an IPv6 host in brackets, as WireGuard and every dialer expect.
    return f"{_dial_host(ep.public_ip)}:{port}"


def _pool(gw: Gateway) -> _Pool:
    members: dict[str, NodeInfo] = {}
    for info in gw.status.nodes:
        if not info.node_name:
            continue
        seen = members.get(info.node_name)
        # A node listed twice: keep the smaller entry, so the input order never matters.
        if seen is None or (info.private_ip, info.subnets) < (seen.private_ip, seen.subnets):
            members[info.node_name] = info
    subnets = {c for info in members.values() for s in info.subnets if (c := _cidr(s))}
    owner: dict[str, str] = {}
    for node in sorted(members):  # a subnet listed by two members belongs to the first by name
        for s in members[node].subnets:
            if (c := _cidr(s)) is not None:
                owner.setdefault(c.text, node)
    tunnels: list[Endpoint] = []
    for e in gw.status.active_endpoints:  # unique by node, first occurrence, in status order
        if e.type == TUNNEL and e.node_name and all(t.node_name != e.node_name for t in tunnels):
            tunnels.append(e)
    usable = {n for n, info in members.items() if _is_ip(info.private_ip)}
    # The first active endpoint always carries (as before active-active); a further one shares
    # the members only when it is a member with an address (reachable over VXLAN) and a key
    # (remote pools can build its peer). Every node reads the same status, so all agree.
    actives = tuple(tunnels[:1]) + tuple(
        e for e in tunnels[1:] if e.node_name in usable and e.public_key)
    created = gw.metadata.get("creationTimestamp")
    return _Pool(
        name=gw.name,
        created=created if isinstance(created, str) else "",
        members=tuple(members[n] for n in sorted(members)),
        member_names=frozenset(members),
        subnets=tuple(sorted(subnets)),
        active=tunnels[0] if tunnels else None,
        standby=tuple(e.node_name for e in tunnels[1:] if e not in actives),
        chosen_relay=gw.status.extra.get("relay") is True,
        actives=actives,
        owner=owner,
    )


def relay_for(pools: Sequence[_Pool]) -> _Pool | None:
    """The relay of every pair of undialable pools: the dialable pool with a key that the
    controller chose by RTT (`status.relay`, raven.relay_choice), else the oldest one."""
    candidates = [p for p in pools if p.dial_address and p.active and p.active.public_key]
    chosen = [p for p in candidates if p.chosen_relay]
    return min(chosen or candidates, key=_Pool.relay_key) if candidates else None


def relay_candidates(gateways: Sequence[Gateway]) -> tuple[list[str], str | None]:
    """(the pools that could relay, the relay the planner uses now) for the controller."""
    pools = [_pool(gw) for gw in gateways]
    relay = relay_for(pools)
    return ([p.name for p in pools if p.dial_address and p.active and p.active.public_key],
            relay.name if relay else None)


# --------------------------------------------------------------------------------------------
# The plan


def _alone(name: str, pool: str | None, notes: list[str]) -> NodeState:
    return NodeState(node=name, role=Role.ALONE, pool=pool, vxlan=None, notes=tuple(notes))


def _version(cidr_text: str) -> int:
    """Family of a canonical CIDR (cheap: only IPv6 text has a colon)."""
    return 6 if ":" in cidr_text else 4


def _routes_ipv6(routed: Sequence[str]) -> bool:
    return 6 in _families_in(routed)


def _ip_version(address: str) -> int:
    return ipaddress.ip_address(address).version


def _listing(subnets: Sequence[str]) -> str:
    return ", ".join(subnets)


def _families_in(subnets: Iterable[str]) -> set[int]:
    """Families that may occur among canonical CIDRs, found by one C-level scan (an IPv4 CIDR
    always has a dot and no colon, an IPv6 one always a colon): a superset, never missing one.
    This keeps IPv4-only fleets of 10,000 subnets from paying a Python loop per subnet."""
    text = "\0".join(subnets)
    return {f for f, mark in ((4, "."), (6, ":")) if mark in text}


def _withhold(by_pool: dict[str, list[str]], blocked: dict[int, str], notes: list[str],
              where: str) -> dict[str, list[str]]:
    """Drop the subnets of each blocked family, one note per (pool, family) naming every subnet
    dropped and why: a family that cannot be carried never blocks the other family or pool."""
    if not blocked or not blocked.keys() & _families_in(
            s for subnets in by_pool.values() for s in subnets):
        return by_pool
    kept: dict[str, list[str]] = {}
    for pool_name in sorted(by_pool):
        subnets = by_pool[pool_name]
        if not blocked.keys() & _families_in(subnets):
            kept[pool_name] = subnets
            continue
        kept[pool_name] = [s for s in subnets if _version(s) not in blocked]
        for family in FAMILIES:
            dropped = [s for s in subnets if _version(s) == family]
            if family in blocked and dropped:
                notes.append(f"Gateway {pool_name}: IPv{family} subnet(s) {_listing(dropped)} "
                             f"not routed {where}: {blocked[family]}")
    return kept


def _pod_blocks(pool: _Pool, local_families: set[int]) -> dict[int, str]:
    """Families of which this pool has no pod subnet: no pod here could use such a route."""
    return {family: (f"pool {pool.name} has no IPv{family} pod subnet, so no pod of it has an "
                     f"IPv{family} address; give its nodes IPv{family} podCIDRs (Node "
                     "spec.podCIDRs) to route them")
            for family in FAMILIES if family not in local_families}


def _mtu_blocks(inner_mtu: int) -> dict[int, str]:
    """Families the overlay MTU cannot carry (Linux turns IPv6 off below 1280)."""
    if inner_mtu < IPV6_MIN_MTU:
        return {6: f"the overlay MTU {inner_mtu} is below IPv6's minimum {IPV6_MIN_MTU}; "
                   "raise --underlay-mtu"}
    return {}


def _relayed_families(pools: Sequence[_Pool], relay: _Pool, wanted: set[int]) -> set[int]:
    """Of `wanted`, the families the relay gateway forwards wg->wg for pools that are not its
    own: those that at least two undialable pools have (only such a pair can use one)."""
    undialable = [p for p in pools if p.active and p.dial_address is None and p.name != relay.name]
    out: set[int] = set()
    for family in wanted & _families_in(c.text for p in undialable for c in p.subnets):
        having = (p for p in undialable if family in _families_in(c.text for c in p.subnets))
        if next(having, None) is not None and next(having, None) is not None:
            out.add(family)
    return out


def _gateway_subnets(pools: Sequence[_Pool], relay: _Pool | None, me: _Me,
                     pool_blocks: dict[int, str], forwardable: set[int], notes: list[str]
                     ) -> tuple[dict[str, list[str]], dict[int, str]]:
    """The remote subnets my pool's gateway routes into the tunnel, per remote pool, and the
    families it blocks for every pool. The relay does not block, for undialable pools, a
    family it forwards between two of them: it needs no pod of that family itself."""
    remote = _remote_subnets(pools, me, notes)
    where = f"by pool {me.pool.name}"
    if relay is None or relay.name != me.pool.name:
        return _withhold(remote, pool_blocks, notes, where), pool_blocks
    forwarded = _relayed_families(pools, relay, forwardable)
    relay_blocks = {f: r for f, r in pool_blocks.items() if f not in forwarded}
    undialable = {p.name for p in pools if p.dial_address is None}
    kept = {**_withhold({k: v for k, v in remote.items() if k not in undialable},
                        pool_blocks, notes, where),
            **_withhold({k: v for k, v in remote.items() if k in undialable},
                        relay_blocks, notes, where)}
    return kept, relay_blocks


def _vtep_blocks(name: str, my_ip: str, gw_name: str, gw_ip: str) -> dict[int, str]:
    """Families a member cannot send to its gateway's VTEP (a VTEP it cannot route through)."""
    blocked: dict[int, str] = {}
    gw_vteps = {4: vtep_for(gw_ip)[0], 6: vtep6_for(gw_ip)}
    my_vteps = {4: vtep_for(my_ip)[0], 6: vtep6_for(my_ip)}
    if gw_vteps[4] == "255.255.255.255":
        blocked[4] = (f"the active gateway {gw_name} ({gw_ip}) maps to the broadcast IPv4 VTEP "
                      "address; give it another InternalIP")
    for family in FAMILIES:
        if gw_vteps[family] == my_vteps[family] and gw_ip != my_ip:
            blocked[family] = (f"node {name} ({my_ip}) and the active gateway {gw_name} "
                               f"({gw_ip}) share the IPv{family} VTEP {gw_vteps[family]}; "
                               "renumber one of them")
    return blocked


@dataclass(frozen=True)
class _Me:
    """The local node's facts the plan hangs on."""

    name: str
    pool: _Pool
    ip: str  # canonical underlay address
    gw_name: str
    gw_ip: str  # canonical underlay address of the pool's active gateway
    local: tuple[_Cidr, ...]  # the pool's subnets plus my own podCIDRs

    @property
    def is_gateway(self) -> bool:
        return self.name == self.gw_name


def _locate(pools: Sequence[_Pool], name: str, me: Node | str,
            notes: list[str]) -> _Me | NodeState:
    """Find my pool, my underlay address and my pool's active gateway, or the ALONE plan."""
    mine = [p for p in pools if name in p.member_names]
    if len(mine) > 1:
        notes.append(f"node {name} is listed by Gateways {', '.join(p.name for p in mine)}; "
                     f"using {mine[0].name} (a node belongs to one pool)")
    pool = mine[0] if mine else None
    if pool is None and isinstance(me, Node) and me.gateway:
        pool = next((p for p in pools if p.name == me.gateway), None)
    if pool is None:
        notes.append(f"node {name} is in no pool (no Gateway lists it in status.nodes): "
                     "no overlay state")
        return _alone(name, None, notes)
    my_info = next((m for m in pool.members if m.node_name == name), None)
    my_ip = (me.internal_ip if isinstance(me, Node) else "") or (my_info.private_ip if my_info
                                                                 else "")
    if not _is_ip(my_ip):
        notes.append(f"node {name}: no usable InternalIP (got {my_ip!r}); no overlay state")
        return _alone(name, pool.name, notes)
    if pool.active is None:
        notes.append(f"Gateway {pool.name} has no active tunnel endpoint yet: no overlay state")
        return _alone(name, pool.name, notes)
    # Active-active: an active gateway carries itself, a member goes to its shard's gateway.
    gw_name = (shards.gateway_of(name, pool.shard_names) or pool.active.node_name
               if len(pool.actives) > 1 else pool.active.node_name)
    gw_info = next((m for m in pool.members if m.node_name == gw_name), None)
    gw_ip = my_ip if gw_name == name else (gw_info.private_ip if gw_info else "")
    if not _is_ip(gw_ip):
        notes.append(f"Gateway {pool.name}: active endpoint {gw_name} is not in status.nodes "
                     "with a privateIP; no overlay state until it is")
        return _alone(name, pool.name, notes)
    my_ip, gw_ip = str(ipaddress.ip_address(my_ip)), str(ipaddress.ip_address(gw_ip))
    if _ip_version(my_ip) != _ip_version(gw_ip) and isinstance(me, Node):
        # A dual-stack node reaches an IPv6-only gateway through its own IPv6 InternalIP.
        my_ip = next((str(ipaddress.ip_address(ip)) for ip in me.internal_ips
                      if _is_ip(ip) and _ip_version(ip) == _ip_version(gw_ip)), my_ip)
    if _ip_version(my_ip) != _ip_version(gw_ip):
        # One VXLAN device has one underlay family: it cannot reach a VTEP of the other one.
        notes.append(f"Gateway {pool.name}: node {name} has an IPv{_ip_version(my_ip)} underlay "
                     f"address ({my_ip}) and the active gateway {gw_name} an "
                     f"IPv{_ip_version(gw_ip)} one ({gw_ip}); VXLAN cannot join them; give the "
                     "pool's nodes InternalIPs of one family. No overlay state")
        return _alone(name, pool.name, notes)
    if len(pool.actives) > 1:
        notes.append(f"Gateway {pool.name}: active-active over {', '.join(pool.shard_names)}; "
                     f"{gw_name} carries node {name}'s share")
    if pool.standby:
        notes.append(f"Gateway {pool.name}: {', '.join(pool.standby)} are standby endpoints; "
                     f"{gw_name} carries the traffic")
    local = set(pool.subnets)
    if isinstance(me, Node):
        local.update(c for s in me.pod_cidrs if (c := _cidr(s)))
    return _Me(name, pool, my_ip, gw_name, gw_ip, tuple(sorted(local)))


def _remote_subnets(pools: Sequence[_Pool], me: _Me, notes: list[str]) -> dict[str, list[str]]:
    """Remote pools and the subnets each one owns (exact duplicates: first pool by name wins)."""
    local_set = _RangeSet(me.local)
    owner: dict[str, str] = {}
    remote: dict[str, list[str]] = {}
    for p in pools:
        if p.name == me.pool.name:
            continue
        if p.active is None:
            if p.subnets:
                notes.append(f"Gateway {p.name} has no active endpoint: its subnets are not "
                             "routed")
            continue
        kept: list[str] = []
        for c in p.subnets:
            if local_set.overlaps(c):
                notes.append(f"Gateway {p.name}: subnet {c.text} overlaps pool {me.pool.name}; "
                             "not routed into the tunnel")
            elif c.text in owner:
                notes.append(f"Gateway {p.name}: subnet {c.text} is already routed to "
                             f"{owner[c.text]}; skipped")
            else:
                owner[c.text] = p.name
                kept.append(c.text)
        remote[p.name] = kept
    return remote


def _by_pool(peers: Sequence[WireGuardPeer],
             remote: dict[str, list[str]]) -> dict[str, list[str]]:
    """The routed subnets grouped by the pool that owns them."""
    owner = {s: name for name, subnets in remote.items() for s in subnets}
    out: dict[str, list[str]] = {}
    for peer in peers:
        for s in peer.allowed_ips:
            out.setdefault(owner.get(s, peer.pool), []).append(s)
    return out


def plan_node(
    gateways: Sequence[Gateway], me: Node | str, options: PlanOptions = _DEFAULT_OPTIONS,
    paths: Mapping[str, PathPlan] | None = None,
) -> NodeState:
    """The complete desired data-plane state of node `me` (a Node, or a name whose facts then
    come from Gateway status). `paths`: direct paths to undialable pools that this gateway
    probes or uses (raven.paths, decided by the agent from what WireGuard reports)."""
    name = me if isinstance(me, str) else me.name
    notes: list[str] = []
    names_seen: set[str] = set()
    unique: list[Gateway] = []
    for gw in sorted(gateways, key=lambda g: g.name):
        if gw.name in names_seen:
            notes.append(f"Gateway {gw.name} is listed twice; the first copy is used")
            continue
        names_seen.add(gw.name)
        unique.append(gw)
    pools = [_pool(gw) for gw in unique]
    found = _locate(pools, name, me, notes)
    if isinstance(found, NodeState):
        return found
    pool = found.pool

    collisions = vtep_collisions((m.node_name, m.private_ip) for m in pool.members
                                 if _is_ip(m.private_ip))
    notes.extend(f"Gateway {pool.name}: {c}" for c in collisions)

    # Families: the gateway routes into the tunnel the families its pool carries (a relay also
    # those it forwards wg->wg for others); a member routes the part of that which it can also
    # send to the gateway's VTEP. Members compute the gateway's view first, so they never send
    # the gateway a subnet it would drop.
    vxlan_mtu = options.vxlan_mtu - (IPV6_OUTER_EXTRA if _ip_version(found.ip) == 6 else 0)
    # From status.nodes only, which the gateway and every member read alike (a Node's own
    # podCIDRs not yet listed there would make a member route what its gateway drops).
    pod_blocks = _pod_blocks(pool, {_version(c.text) for c in pool.subnets} or {4})
    mtu_blocks = _mtu_blocks(min(vxlan_mtu, options.tunnel_mtu))
    pool_blocks = {**pod_blocks, **mtu_blocks}
    relay = relay_for(pools)
    forwardable = set(pod_blocks) - set(mtu_blocks)
    remote, gw_blocks = _gateway_subnets(pools, relay, found, pool_blocks, forwardable, notes)
    # Direct paths are probed and used by our pool's first active endpoint only (the one the
    # remote side probes, raven.paths): another active gateway's share stays on the relay.
    punch = paths or {}
    if punch and found.name != pool.active.node_name:
        notes.append(f"Gateway {pool.name}: active-active; only {pool.active.node_name} takes "
                     f"direct paths, {found.name}'s share stays relayed")
        punch = {}
    peers = _peers(pool, pools, relay, remote, options, notes, punch)
    routed = sorted(s for peer in peers for s in peer.allowed_ips)
    unreachable = sum(len(v) for v in remote.values()) - len(routed)
    if unreachable:
        notes.append(f"{unreachable} remote subnet(s) have no tunnel peer and are not routed")
    if found.is_gateway:
        return tunnel_shape.shape(
            _gateway_plan(found, peers, routed, vxlan_mtu, options, notes), options)
    member_blocks = {**pool_blocks, **_vtep_blocks(name, found.ip, found.gw_name, found.gw_ip)}
    member_blocks = {f: r for f, r in member_blocks.items() if f not in gw_blocks}
    if member_blocks:
        kept = _withhold(_by_pool(peers, remote), member_blocks, notes, f"on node {name}")
        routed = sorted(s for subnets in kept.values() for s in subnets)
    return _member_plan(found, routed, vxlan_mtu, options, notes)


def _vxlan(me: _Me, routed: Sequence[str], mtu: int, options: PlanOptions) -> VxlanDevice:
    vtep, mac = vtep_for(me.ip)
    # The IPv6 VTEP only when IPv6 is routed: an IPv4-only node never needs IPv6 on raven0
    # (which fails on hosts with IPv6 disabled).
    vtep6 = vtep6_for(me.ip) if _routes_ipv6(routed) else None
    return VxlanDevice(
        name=options.vxlan_device, vni=options.vxlan_vni, port=options.vxlan_port,
        local_ip=me.ip, vtep_ip=vtep, vtep_prefixlen=VTEP_PREFIXLEN, mac=mac, mtu=mtu,
        vtep_ip6=vtep6, vtep6_prefixlen=VTEP6_PREFIXLEN,
    )


def _firewall(me: _Me, routed: Sequence[str], options: PlanOptions, *,
              marks: bool) -> Firewall:
    return Firewall(
        table=options.nft_table, mark=options.fwmark, mark_mask=options.fwmark,
        local_subnets=tuple(sorted({c.text for c in me.local})), remote_subnets=tuple(routed),
        marks=marks,
    )


def source_check(*devices: str) -> list[tuple[str, str]]:
    """The reverse-path settings of our devices: `rp_filter=0` and `accept_local=1`.

    Why: our rules put the node's kernel in policy-routing mode (`fib_has_custom_rules`, set
    by the first IPv4 rule and never reset), and in that mode `fib_validate_source`
    (net/ipv4/fib_frontend.c, 6.1 and later) does a full reverse FIB lookup, rule walk
    included, for every packet that arrives, even with rp_filter off, unless the input device
    has accept_local: then, with rp_filter 0 there, it skips the lookup as a node without
    rules does. That lookup is a large part of what policy routing costs per packet
    (docs/benchmarks.md, "The data plane's own share", measured with perf).
    What it gives up: the check only ever refused, with rp_filter 0, sources that route to a
    local address or to no unicast route. On raven-wg0 WireGuard admits only sources inside
    the sending peer's allowed IPs (remote pod subnets) anyway; raven0 is the pool's VXLAN
    segment, whose senders could already claim any other source. The host's own
    `all.rp_filter` still applies (the kernel takes the larger of `all` and the device's
    value): on a strict host (1) the check runs and passes, since replies come back on the
    device our tables route their source to (`_member_rules`); raven-wg0 has no address,
    which a check at 1 or 2 drops, so it never gets more than 0 from us."""
    out = []
    for dev in devices:
        out += [(f"net.ipv4.conf.{dev}.rp_filter", "0"),
                (f"net.ipv4.conf.{dev}.accept_local", "1")]
    return out


def _sysctls(routed: Sequence[str], extra: Iterable[tuple[str, str]]) -> tuple[tuple[str, str],
                                                                               ...]:
    out = {("net.ipv4.ip_forward", "1"), *extra}
    if _routes_ipv6(routed):
        out.add(("net.ipv6.conf.all.forwarding", "1"))
    return tuple(sorted(out))


def _member_plan(me: _Me, routed: list[str], vxlan_mtu: int, options: PlanOptions,
                 notes: list[str]) -> NodeState:
    vxlan = _vxlan(me, routed, vxlan_mtu, options)
    gw_vtep, gw_mac = vtep_for(me.gw_ip)
    gw_vteps = {4: gw_vtep, 6: vtep6_for(me.gw_ip)}
    # Each family via the gateway's VTEP of that family: Linux cannot route an IPv6 subnet
    # through an IPv4 next hop.
    # The node's own address as the preferred source of its family's routes: the selector-less
    # rule also takes the node's own packets to remote pods, which would otherwise leave with
    # raven0's VTEP address (the mark chains used to reroute them keeping the node address).
    src = {_ip_version(me.ip): me.ip}
    routes = _routes(routed if not vxlan.vtep_ip6 else [s for s in routed if _version(s) == 4],
                     options.vxlan_table, options.vxlan_device, gw_vteps[4], options.tunnel_mtu,
                     src.get(4))
    if vxlan.vtep_ip6:
        routes = tuple(sorted(
            routes + _routes([s for s in routed if _version(s) == 6], options.vxlan_table,
                             options.vxlan_device, gw_vteps[6], options.tunnel_mtu, src.get(6)),
            key=attrgetter("dst")))
    # A neighbour for each VTEP family the device has.
    neighbours = tuple(sorted(NeighEntry(ip=gw_vteps[f], mac=gw_mac)
                              for f in ([4, 6] if vxlan.vtep_ip6 else [4])))
    notes.append(f"node {me.name} is a member of {me.pool.name}: cross-pool traffic goes over "
                 f"{options.vxlan_device} to the active gateway {me.gw_name} ({me.gw_ip}); "
                 f"{len(routed)} remote subnet(s)")
    return NodeState(
        node=me.name, role=Role.MEMBER, pool=me.pool.name, vxlan=vxlan,
        fdb=(FdbEntry(mac=gw_mac, dst=me.gw_ip),),
        neighbours=neighbours,
        routes=routes,
        rules=_member_rules(routed, options),
        firewall=_firewall(me, routed, options, marks=False),
        sysctls=_sysctls(routed, source_check(options.vxlan_device)),
        notes=tuple(notes),
    )


def _gateway_plan(me: _Me, peers: tuple[WireGuardPeer, ...], routed: list[str], vxlan_mtu: int,
                  options: PlanOptions, notes: list[str]) -> NodeState:
    vxlan = _vxlan(me, routed, vxlan_mtu, options)
    my_family = _ip_version(me.ip)
    fdb: list[FdbEntry] = []
    neighbours: list[NeighEntry] = []
    for m in me.pool.members:
        if m.node_name == me.name or not _is_ip(m.private_ip):
            continue
        ip = str(ipaddress.ip_address(m.private_ip))
        if _ip_version(ip) != my_family:
            notes.append(f"Gateway {me.pool.name}: member {m.node_name} has an "
                         f"IPv{_ip_version(ip)} underlay address ({ip}) and this gateway an "
                         f"IPv{my_family} one; VXLAN cannot reach it; give the pool's nodes "
                         "InternalIPs of one family")
            continue
        vtep, mac = vtep_for(ip)
        fdb.append(FdbEntry(mac=mac, dst=ip))
        neighbours.append(NeighEntry(ip=vtep, mac=mac))
        if vxlan.vtep_ip6:
            neighbours.append(NeighEntry(ip=vtep6_for(ip), mac=mac))
    wg_routes = _routes(routed, options.wireguard_table, options.wireguard_device)
    delivery = _delivery_routes(me, vxlan, _families_in(routed), options, notes)
    notes.append(f"node {me.name} is the active gateway of {me.pool.name}: {len(peers)} "
                 f"WireGuard peer(s), {len(wg_routes)} remote subnet(s)")
    return NodeState(
        node=me.name, role=Role.ACTIVE_GATEWAY, pool=me.pool.name, vxlan=vxlan,
        fdb=tuple(sorted(fdb)), neighbours=tuple(sorted(neighbours)),
        routes=wg_routes + delivery,
        rules=_gateway_rules(routed, options) + _delivery_rules(delivery, options),
        wireguard=WireGuardDevice(
            name=options.wireguard_device, listen_port=options.wireguard_port,
            mtu=options.tunnel_mtu, peers=peers,
        ),
        firewall=_firewall(me, routed, options, marks=False),
        sysctls=_sysctls(routed, source_check(options.vxlan_device, options.wireguard_device)),
        notes=tuple(notes),
    )


# Route is a plain frozen dataclass: filling its __dict__ directly gives an object equal in
# every way to Route(...) at a third of the cost (the frozen __init__ goes through
# object.__setattr__ per field), which is ~18 ms of a 10,000-subnet plan. Only while Route
# stays that shape (no slots, no __post_init__, these fields in this order); else the constructor.
_ROUTE_DICT_OK = (not hasattr(Route, "__slots__") and not hasattr(Route, "__post_init__")
                  and [f.name for f in fields(Route)] == ["dst", "table", "dev", "gateway", "mtu",
                                                          "src"])


def _routes(dsts: Iterable[str], table: int, dev: str, gateway: str | None = None,
            mtu: int | None = None, src: str | None = None) -> tuple[Route, ...]:
    if not _ROUTE_DICT_OK:
        return tuple(Route(dst, table, dev, gateway, mtu, src) for dst in dsts)
    new = object.__new__
    out = []
    for dst in dsts:
        route = new(Route)
        route.__dict__.update(dst=dst, table=table, dev=dev, gateway=gateway, mtu=mtu, src=src)
        out.append(route)
    return tuple(out)


@lru_cache(maxsize=65536)
def _dial_host(address: str) -> str:
    """A valid address in canonical form, an IPv6 one in brackets."""
    ip = ipaddress.ip_address(address)
    return f"[{ip}]" if ip.version == 6 else str(ip)


@lru_cache(maxsize=65536)
def _is_ip(text: str) -> bool:
    """A bare IP address (not a CIDR, not empty): usable as a VXLAN underlay address."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _member_rules(routed: Sequence[str], options: PlanOptions) -> tuple[Rule, ...]:
    """A member's rule has no selector: every lookup consults table 9027, which holds only
    remote pools' pod subnets, so one that finds nothing there goes on to `main` as before. No
    mark, so no chain has to look at every packet the member forwards (the mark chains cost
    about 10 % of the cross-pool throughput, docs/benchmarks.md).

    Strict rp_filter stays satisfied because the active gateway delivers traffic from the
    tunnel to members over raven0 (`_delivery_rules`): the kernel checks a packet from a
    remote pod with a lookup whose flow equals the one of the local pod's own packets to that
    pod (input device = the pod's side, addresses swapped), which finds raven0 in this table,
    and raven0 is where the packet arrived. (Delivered through the CNI, it would fail that
    check; that is what the fwmark rule of earlier versions was for.)"""
    return tuple(Rule(options.rule_priority, options.vxlan_table, family=family)
                 for family in _families(routed))


def _gateway_rules(routed: Sequence[str], options: PlanOptions) -> tuple[Rule, ...]:
    """The active gateway's rule has no selector: every lookup consults table 9028, which holds
    only remote pools' pod subnets, so one that finds nothing there goes on to `main` as
    before. Packets from remote pods arrive on raven-wg0 and their reverse-path check finds
    raven-wg0 there. No mark, so no chain has to look at every packet the gateway forwards
    (the mark chains cost about 10 % of the cross-pool throughput, docs/benchmarks.md)."""
    return tuple(Rule(options.rule_priority, options.wireguard_table, family=family)
                 for family in _families(routed))


def _delivery_routes(me: _Me, vxlan: VxlanDevice, families: set[int], options: PlanOptions,
                     notes: list[str]) -> tuple[Route, ...]:
    """On the active gateway, table 9027 holds the members' pod subnets (from status.nodes)
    via each member's VTEP on raven0: what arrives from the tunnel reaches a member over
    VXLAN, where the member's selector-less rule expects it (`_member_rules`). Subnets of the
    gateway itself are left to `main`; one listed by two members goes to the first by name.
    Only the `families` routed into the tunnel: no other traffic comes out of it."""
    mine = {c for m in me.pool.members if m.node_name == me.name
            for s in m.subnets if (c := _cidr(s))}
    taken = _RangeSet(mine)
    owner: dict[str, str] = {}
    out: list[Route] = []
    family = _ip_version(me.ip)
    for m in me.pool.members:
        if m.node_name == me.name or not _is_ip(m.private_ip):
            continue
        ip = str(ipaddress.ip_address(m.private_ip))
        if _ip_version(ip) != family:
            continue  # no VXLAN to it (noted with its FDB entry)
        vteps = {4: vtep_for(ip)[0] if 4 in families else None,
                 6: vtep6_for(ip) if vxlan.vtep_ip6 and 6 in families else None}
        for text in m.subnets:
            c = _cidr(text)
            via = vteps.get(_version(c.text)) if c else None
            if c is None or via is None or taken.overlaps(c):
                continue
            if c.text in owner:
                notes.append(f"Gateway {me.pool.name}: subnet {c.text} is listed by members "
                             f"{owner[c.text]} and {m.node_name}; traffic from the tunnel to "
                             f"it goes to {owner[c.text]}")
                continue
            owner[c.text] = m.node_name
            out.extend(_routes([c.text], options.vxlan_table, options.vxlan_device, via))
    return tuple(sorted(out, key=attrgetter("dst")))


def _delivery_rules(delivery: Sequence[Route], options: PlanOptions) -> tuple[Rule, ...]:
    """`iif raven-wg0 lookup 9027`: only packets from the tunnel take the members' VTEP
    routes; the pool's own traffic to its members stays with the CNI (`main`)."""
    return tuple(Rule(options.rule_priority, options.vxlan_table, family=family,
                      iif=options.wireguard_device)
                 for family in sorted({_version(r.dst) for r in delivery}))


def _families(subnets: Iterable[str]) -> list[int]:
    """IP families needing a policy rule: always 4, plus 6 when an IPv6 subnet is routed."""
    return sorted(_families_in(subnets) | {4})  # canonical CIDRs: a colon means IPv6


def _peers(
    pool: _Pool,
    pools: Sequence[_Pool],
    relay: _Pool | None,
    remote_subnets: dict[str, list[str]],
    options: PlanOptions,
    notes: list[str],
    paths: Mapping[str, PathPlan],
) -> tuple[WireGuardPeer, ...]:
    """One peer per remote pool we can talk to directly; undialable pairs go via the relay,
    unless a punched path (`paths`) carries them: then a peer of their own, with no allowed IPs
    while probing (traffic stays on the relay) and their subnets once direct."""
    assert pool.active is not None
    we_dialable = pool.dial_address is not None
    keepalive = options.keepalive if pool.active.under_nat else 0
    direct: dict[str, tuple[_Pool, list[str], list[str]]] = {}  # name -> (pool, subnets, via)
    relayed: list[tuple[_Pool, list[str]]] = []
    for p in pools:
        if p.name == pool.name or p.active is None or p.name not in remote_subnets:
            continue
        if not p.active.public_key:
            notes.append(f"Gateway {p.name}: active endpoint {p.active.node_name} has no "
                         f"public key in config[{constants.ENDPOINT_CONFIG_PUBLIC_KEY!r}] yet; "
                         "no tunnel to it")
            continue
        if we_dialable or p.dial_address is not None:
            direct[p.name] = (p, list(remote_subnets[p.name]), [])
        else:
            relayed.append((p, remote_subnets[p.name]))
    punched: dict[str, PathPlan] = {}
    for p, subnets in relayed:
        path = paths.get(p.name)
        if path is not None and p.active is not None and path.public_key == p.active.public_key:
            punched[p.name] = path
            if path.direct:
                # Active-active there: the direct peer is p's first active endpoint and takes
                # only its share; the other shares stay on the relay, which reaches their own
                # gateways (their traffic to us leaves through them, and so the replies go).
                taken, subnets = _direct_share(p, subnets)
                direct[p.name] = (p, taken, [])
                notes.append(f"Gateway {p.name}: both it and {pool.name} are undialable; "
                             "direct path through both NATs (hole punched)"
                             + (f" to {p.active.node_name}'s share" if subnets else ""))
                if not subnets:
                    continue
            else:
                direct[p.name] = (p, [], [])
                notes.append(f"Gateway {p.name}: probing a direct path to {path.endpoint}; "
                             "traffic stays on the relay until it answers")
        if relay is None or relay.name not in direct:
            notes.append(f"Gateway {p.name}: both it and {pool.name} are undialable (under NAT "
                         "or no public address) and no public relay gateway exists; "
                         "unreachable")
            continue
        notes.append(f"Gateway {p.name}: both it and {pool.name} are undialable; relayed "
                     f"through {relay.name}")
        _, relay_subnets, via = direct[relay.name]
        relay_subnets.extend(subnets)
        via.append(p.name)
    if pool is relay or (relay is not None and relay.name == pool.name):
        nat_pools = [p.name for p in pools if p.active and p.dial_address is None
                     and p.name != pool.name]
        if len(nat_pools) > 1:
            notes.append(f"Gateway {pool.name} relays between the undialable pools "
                         f"{', '.join(nat_pools)} (forwarding {options.wireguard_device} to "
                         f"{options.wireguard_device})")
    peers: dict[str, WireGuardPeer] = {}
    own_keys = {e.public_key for e in (pool.active, *pool.actives)}
    for p, subnets, via in direct.values():
        assert p.active is not None
        path = punched.get(p.name)
        for ep, allowed, relays in _shard_peers(p, subnets, via, path is not None):
            key = ep.public_key
            if key in peers or key in own_keys:
                notes.append(f"Gateway {p.name}: public key {key[:8]}... is already used by "
                             f"{peers[key].pool if key in peers else pool.name}; skipped")
                continue
            peers[key] = WireGuardPeer(
                public_key=key,
                endpoint=_dial_address(ep) if path is None else path.endpoint,
                allowed_ips=tuple(sorted(allowed)),
                keepalive=keepalive if path is None else DIRECT_KEEPALIVE,
                pool=p.name,
                relays_for=tuple(sorted(relays)),
            )
    return tuple(peers[k] for k in sorted(peers))


def _direct_share(p: _Pool, subnets: list[str]) -> tuple[list[str], list[str]]:
    """(the subnets a direct path to `p`'s first active endpoint carries, the rest): all of
    them, unless `p` is active-active; then the first endpoint's share (raven.shards, the same
    split as the relay's peers) and the other active gateways' shares stay relayed."""
    assert p.active is not None
    if len(p.actives) < 2:
        return list(subnets), []
    first = p.active.node_name
    taken = [s for s in subnets if (p.gateway_for_subnet(s) or first) == first]
    return taken, [s for s in subnets if s not in set(taken)]


def _shard_peers(p: _Pool, subnets: list[str], via: list[str], punched: bool
                 ) -> list[tuple[Endpoint, list[str], list[str]]]:
    """(endpoint, allowed IPs, pools relayed) of each peer for remote pool `p`: one per active
    gateway of an active-active pool, each allowing the pod subnets of its shard
    (raven.shards), so a packet to a member enters the remote pool at the gateway that member
    sends through: both directions take the same gateways. Subnets no member owns (relayed
    for other pools) stay on the first active endpoint's peer, the relay. A punched direct
    path (raven.paths) is one peer to the first active endpoint, as before."""
    assert p.active is not None
    if punched or len(p.actives) < 2:
        return [(p.active, subnets, via)]
    share: dict[str, list[str]] = {}
    for s in subnets:
        share.setdefault(p.gateway_for_subnet(s) or p.active.node_name, []).append(s)
    return [(ep, share.get(ep.node_name, []), via if ep is p.active else [])
            for ep in p.actives]
