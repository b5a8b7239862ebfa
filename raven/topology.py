"""PURE planner: the Gateways and the local node -> that node's desired data-plane state.

Rules this module keeps (docs/gateway.md explains them for operators):
- Pure and deterministic: no sockets, clock or files; the same inputs in any order give an equal
  `NodeState` (everything is sorted; ties are broken by name).
- A pool is a Gateway; its members are its `status.nodes`, its active gateway is the first tunnel
  endpoint of `status.activeEndpoints` (further ones are standbys for now). A node in no pool, or
  in a pool without an active gateway, is ALONE: nothing of ours is installed.
- VTEP MAC and address are functions of the node's underlay address only (`vtep_for`), so they are
  identical after any restart, with or without the API server. Collisions inside a pool are
  reported in the plan's notes.
- Every reachable remote pool subnet is routed exactly once (the first pool by name wins a
  duplicate); a subnet that overlaps one of our own pool's subnets is never routed into a tunnel.
- Two pools whose gateways are both undialable (under NAT, or no public address) reach each other
  through one relay: the dialable pool whose Gateway was created first (creationTimestamp, then
  name). A Gateway added later can never become the relay of an existing pair.
- Keepalive is set when WE are under NAT (keeps our NAT mapping open, we make the first
  handshake); a peer under NAT has no endpoint: it is learned from its handshake.
- MTUs: VXLAN device = underlay - VXLAN overhead; WireGuard device and cross-pool routes =
  underlay - WireGuard overhead (the cross-pool path is limited by the tunnel on the gateway).
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import NamedTuple

from raven import constants
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
from raven.settings import OverlaySettings

VTEP_NETWORK = ipaddress.IPv4Network("240.0.0.0/4")  # reserved (class E): never on an underlay
VTEP_PREFIXLEN = 32  # the device address only; neighbours and onlink routes need no subnet
VTEP_MAC_PREFIX_V4 = (0x0E, 0x52)  # locally administered, unicast; + the 4 IPv4 bytes
VTEP_MAC_PREFIX_V6 = (0x0E, 0x56)  # + 4 bytes of a hash of the IPv6 address


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


def vtep_collisions(members: Iterable[tuple[str, str]]) -> list[str]:
    """Problems among (node name, underlay IP) pairs of one pool: shared VTEP addresses or MACs,
    and addresses that are unusable as a VTEP (the broadcast address)."""
    by_vtep: dict[str, list[str]] = {}
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
        by_mac.setdefault(mac, []).append(f"{name} ({ip})")
    for vtep, names in sorted(by_vtep.items()):
        if len(set(names)) > 1:
            problems.append(f"VTEP address collision: {', '.join(names)} all map to {vtep}; "
                            "their addresses differ only in the top 4 bits (or the hash); "
                            "renumber one of them")
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

    @property
    def dial_address(self) -> str | None:
        """'host:port' a remote gateway can dial, None when the gateway cannot be dialed."""
        ep = self.active
        if ep is None or ep.under_nat or not _is_ip(ep.public_ip):
            return None
        port = ep.public_port or ep.port or constants.WIREGUARD_PORT
        host = f"[{ep.public_ip}]" if ":" in ep.public_ip else ep.public_ip
        return f"{host}:{port}"

    def relay_key(self) -> tuple[int, str, str]:
        # Gateways without a timestamp (files) sort after every real one, then by name.
        return (0 if self.created else 1, self.created, self.name)


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
    tunnels = [e for e in gw.status.active_endpoints if e.type == TUNNEL and e.node_name]
    created = gw.metadata.get("creationTimestamp")
    return _Pool(
        name=gw.name,
        created=created if isinstance(created, str) else "",
        members=tuple(members[n] for n in sorted(members)),
        member_names=frozenset(members),
        subnets=tuple(sorted(subnets)),
        active=tunnels[0] if tunnels else None,
        standby=tuple(e.node_name for e in tunnels[1:]),
    )


def relay_for(pools: Sequence[_Pool]) -> _Pool | None:
    """The relay of every pair of undialable pools: the oldest dialable pool with a key."""
    candidates = [p for p in pools if p.dial_address and p.active and p.active.public_key]
    return min(candidates, key=_Pool.relay_key) if candidates else None


# --------------------------------------------------------------------------------------------
# The plan


def _alone(name: str, pool: str | None, notes: list[str]) -> NodeState:
    return NodeState(node=name, role=Role.ALONE, pool=pool, vxlan=None, notes=tuple(notes))


def plan_node(
    gateways: Sequence[Gateway], me: Node | str, options: PlanOptions = _DEFAULT_OPTIONS
) -> NodeState:
    """The complete desired data-plane state of node `me` (a Node, or a name whose facts then
    come from Gateway status)."""
    name = me if isinstance(me, str) else me.name
    notes: list[str] = []
    ordered = sorted(gateways, key=lambda g: g.name)
    names_seen: set[str] = set()
    unique: list[Gateway] = []
    for gw in ordered:
        if gw.name in names_seen:
            notes.append(f"Gateway {gw.name} is listed twice; the first copy is used")
            continue
        names_seen.add(gw.name)
        unique.append(gw)
    pools = [_pool(gw) for gw in unique]

    # Which pool am I in? status.nodes decides; a Node's label is the fallback before the
    # controller has listed it.
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
    gw_name = pool.active.node_name
    gw_info = next((m for m in pool.members if m.node_name == gw_name), None)
    gw_ip = my_ip if gw_name == name else (gw_info.private_ip if gw_info else "")
    if not _is_ip(gw_ip):
        notes.append(f"Gateway {pool.name}: active endpoint {gw_name} is not in status.nodes "
                     "with a privateIP; no overlay state until it is")
        return _alone(name, pool.name, notes)
    if pool.standby:
        notes.append(f"Gateway {pool.name}: {', '.join(pool.standby)} are standby endpoints; "
                     f"{gw_name} carries the traffic")

    # Local subnets: the pool's (plus my own podCIDRs); never routed into a tunnel.
    local = set(pool.subnets)
    if isinstance(me, Node):
        local.update(c for s in me.pod_cidrs if (c := _cidr(s)))
    local_set = _RangeSet(local)

    # Remote pools and the subnets each one owns (exact duplicates: first pool by name wins).
    owner: dict[str, str] = {}
    remote_subnets: dict[str, list[str]] = {}
    reachable = [p for p in pools if p.name != pool.name]
    for p in reachable:
        if p.active is None:
            if p.subnets:
                notes.append(f"Gateway {p.name} has no active endpoint: its subnets are not "
                             "routed")
            continue
        kept: list[str] = []
        for c in p.subnets:
            if local_set.overlaps(c):
                notes.append(f"Gateway {p.name}: subnet {c.text} overlaps pool {pool.name}; "
                             "not routed into the tunnel")
            elif c.text in owner:
                notes.append(f"Gateway {p.name}: subnet {c.text} is already routed to "
                             f"{owner[c.text]}; skipped")
            else:
                owner[c.text] = p.name
                kept.append(c.text)
        remote_subnets[p.name] = kept

    collisions = vtep_collisions((m.node_name, m.private_ip) for m in pool.members
                                 if _is_ip(m.private_ip))
    notes.extend(f"Gateway {pool.name}: {c}" for c in collisions)

    # The pool's tunnel peers decide what is reachable; members route exactly the same subnets
    # to their gateway as the gateway routes into the tunnel.
    peers = _peers(pool, pools, remote_subnets, options, notes)
    routed = sorted(s for peer in peers for s in peer.allowed_ips)
    unreachable = sum(len(v) for v in remote_subnets.values()) - len(routed)
    if unreachable:
        notes.append(f"{unreachable} remote subnet(s) have no tunnel peer and are not routed")
    families = _families(routed)
    my_vtep, my_mac = vtep_for(my_ip)
    vxlan = VxlanDevice(
        name=options.vxlan_device, vni=options.vxlan_vni, port=options.vxlan_port,
        local_ip=my_ip, vtep_ip=my_vtep, vtep_prefixlen=VTEP_PREFIXLEN, mac=my_mac,
        mtu=options.vxlan_mtu,
    )
    firewall = Firewall(
        table=options.nft_table, mark=options.fwmark, mark_mask=options.fwmark,
        local_subnets=tuple(sorted({c.text for c in local})), remote_subnets=tuple(routed),
    )

    if name != gw_name:
        gw_vtep, gw_mac = vtep_for(gw_ip)
        routes = _routes(routed, options.vxlan_table, options.vxlan_device, gw_vtep,
                         options.tunnel_mtu)
        rules = tuple(Rule(options.rule_priority, options.vxlan_table, options.fwmark,
                           options.fwmark, family) for family in families)
        notes.append(f"node {name} is a member of {pool.name}: cross-pool traffic goes over "
                     f"{options.vxlan_device} to the active gateway {gw_name} ({gw_ip}); "
                     f"{len(routed)} remote subnet(s)")
        return NodeState(
            node=name, role=Role.MEMBER, pool=pool.name, vxlan=vxlan,
            fdb=(FdbEntry(mac=gw_mac, dst=gw_ip),),
            neighbours=(NeighEntry(ip=gw_vtep, mac=gw_mac),),
            routes=routes, rules=rules, firewall=firewall,
            sysctls=tuple(sorted([(f"net.ipv4.conf.{options.vxlan_device}.rp_filter", "2"),
                                  ("net.ipv4.ip_forward", "1")])),
            notes=tuple(notes),
        )

    # I am the active gateway of my pool.
    fdb: list[FdbEntry] = []
    neighbours: list[NeighEntry] = []
    for m in pool.members:
        if m.node_name == name or not _is_ip(m.private_ip):
            continue
        vtep, mac = vtep_for(m.private_ip)
        fdb.append(FdbEntry(mac=mac, dst=m.private_ip))
        neighbours.append(NeighEntry(ip=vtep, mac=mac))
    wg_routes = _routes(routed, options.wireguard_table, options.wireguard_device)
    notes.append(f"node {name} is the active gateway of {pool.name}: {len(peers)} WireGuard "
                 f"peer(s), {len(wg_routes)} remote subnet(s)")
    sysctls = sorted([
        ("net.ipv4.ip_forward", "1"),
        (f"net.ipv4.conf.{options.vxlan_device}.rp_filter", "2"),
        # 0, not loose: the WireGuard device has no address, and the kernel's source validation
        # drops every packet arriving on an address-less device when rp_filter is 1 or 2.
        (f"net.ipv4.conf.{options.wireguard_device}.rp_filter", "0"),
    ])
    return NodeState(
        node=name, role=Role.ACTIVE_GATEWAY, pool=pool.name, vxlan=vxlan,
        fdb=tuple(sorted(fdb)), neighbours=tuple(sorted(neighbours)),
        routes=wg_routes,
        rules=tuple(Rule(options.rule_priority, options.wireguard_table, options.fwmark,
                         options.fwmark, family) for family in families),
        wireguard=WireGuardDevice(
            name=options.wireguard_device, listen_port=options.wireguard_port,
            mtu=options.tunnel_mtu, peers=peers,
        ),
        firewall=firewall,
        sysctls=tuple(sorted(sysctls)),
        notes=tuple(notes),
    )


# Route is a plain frozen dataclass: filling its __dict__ directly gives an object equal in
# every way to Route(...) at a third of the cost (the frozen __init__ goes through
# object.__setattr__ per field), which is ~18 ms of a 10,000-subnet plan. Only while Route
# stays that shape (no slots, no __post_init__, these fields in this order); else the constructor.
_ROUTE_DICT_OK = (not hasattr(Route, "__slots__") and not hasattr(Route, "__post_init__")
                  and [f.name for f in fields(Route)] == ["dst", "table", "dev", "gateway", "mtu"])


def _routes(dsts: Iterable[str], table: int, dev: str, gateway: str | None = None,
            mtu: int | None = None) -> tuple[Route, ...]:
    if not _ROUTE_DICT_OK:
        return tuple(Route(dst, table, dev, gateway, mtu) for dst in dsts)
    new = object.__new__
    out = []
    for dst in dsts:
        route = new(Route)
        route.__dict__.update(dst=dst, table=table, dev=dev, gateway=gateway, mtu=mtu)
        out.append(route)
    return tuple(out)


@lru_cache(maxsize=65536)
def _is_ip(text: str) -> bool:
    """A bare IP address (not a CIDR, not empty): usable as a VXLAN underlay address."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _families(subnets: Iterable[str]) -> list[int]:
    """IP families needing a policy rule: always 4, plus 6 when an IPv6 subnet is routed."""
    return sorted({c.version for s in subnets if (c := _cidr(s)) is not None} | {4})


def _peers(
    pool: _Pool,
    pools: Sequence[_Pool],
    remote_subnets: dict[str, list[str]],
    options: PlanOptions,
    notes: list[str],
) -> tuple[WireGuardPeer, ...]:
    """One peer per remote pool we can talk to directly; undialable pairs go via the relay."""
    assert pool.active is not None
    we_dialable = pool.dial_address is not None
    keepalive = options.keepalive if pool.active.under_nat else 0
    relay = relay_for(pools)
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
    for p, subnets in relayed:
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
    for p, subnets, via in direct.values():
        assert p.active is not None
        key = p.active.public_key
        if key in peers or key == pool.active.public_key:
            notes.append(f"Gateway {p.name}: public key {key[:8]}... is already used by "
                         f"{peers[key].pool if key in peers else pool.name}; skipped")
            continue
        peers[key] = WireGuardPeer(
            public_key=key,
            endpoint=p.dial_address,
            allowed_ips=tuple(sorted(subnets)),
            keepalive=keepalive,
            pool=p.name,
            relays_for=tuple(sorted(via)),
        )
    return tuple(peers[k] for k in sorted(peers))
