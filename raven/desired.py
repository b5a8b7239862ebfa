"""The desired data-plane state of one node: the contract between the planner and the appliers.

`raven.topology` computes a `NodeState` (pure); `raven.dataplane` diffs it against the live kernel
and writes only the difference. Rules this module keeps:
- every type is a frozen dataclass of plain values (str, int, bool, tuples), hashable and
  comparable, so two plans compare with `==` and collections are stored as sorted tuples;
- addresses are strings in canonical form (`str(ipaddress.ip_network(...))`), MACs lower-case;
- families never mix inside one object: a route's next hop has its destination's family, a
  neighbour's address has the family of a VTEP address on its device (`vtep_ip` is IPv4,
  `vtep_ip6` IPv6), and `Firewall` subnet lists may hold both families (the data plane keeps one
  nft set per family);
- fields are only ever added, with defaults, so older consumers keep working;
- nothing here imports pyroute2, kubernetes or touches the system.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Role(StrEnum):
    ACTIVE_GATEWAY = "active-gateway"  # terminates WireGuard tunnels for its pool
    MEMBER = "member"  # sends cross-pool traffic over VXLAN to its pool's active gateway
    ALONE = "alone"  # in no pool, or its pool has no active gateway: no overlay state


@dataclass(frozen=True, order=True)
class VxlanDevice:
    name: str
    vni: int
    port: int
    local_ip: str  # this node's underlay address (VXLAN source)
    vtep_ip: str  # address of the device itself, derived from local_ip
    vtep_prefixlen: int
    mac: str  # derived from local_ip: identical after any restart
    mtu: int
    # IPv6 VTEP address (derived from local_ip like vtep_ip), set only when this node routes IPv6
    # pod subnets over the overlay; None = the device carries no IPv6 of ours.
    vtep_ip6: str | None = None
    vtep6_prefixlen: int = 128


@dataclass(frozen=True, order=True)
class FdbEntry:
    """Permanent bridge FDB entry on the VXLAN device: remote VTEP MAC -> its underlay address."""

    mac: str
    dst: str


@dataclass(frozen=True, order=True)
class NeighEntry:
    """Permanent neighbour entry on the VXLAN device: remote VTEP address -> its VTEP MAC."""

    ip: str
    mac: str


@dataclass(frozen=True, order=True)
class Route:
    dst: str  # CIDR
    table: int
    dev: str
    gateway: str | None = None  # next hop (onlink) or None for a device route
    mtu: int | None = None  # path MTU locked on the route, so pods learn it without probing
    # Preferred source (`src`) for packets the node itself originates over this route: the
    # node's own address, so they leave with it and not the device's VTEP address. None = the
    # kernel chooses. Must be a local address when the route is written (the kernel refuses
    # it otherwise, and removes the route when the address goes).
    src: str | None = None


@dataclass(frozen=True, order=True)
class Rule:
    """`ip rule add priority P [iif DEV] [fwmark M/K] lookup T`. fwmark and fwmask 0 and no
    iif = no selector: every lookup consults the table, and one that finds no route there goes
    on to the next rule. `iif`: only lookups of packets that arrived on that device ("" = any)."""

    priority: int
    table: int
    fwmark: int = 0
    fwmask: int = 0
    family: int = 4  # 4 or 6
    iif: str = ""


@dataclass(frozen=True, order=True)
class WireGuardPeer:
    public_key: str  # base64
    endpoint: str | None  # "host:port"; None = learn it from the peer's handshake (peer under NAT)
    allowed_ips: tuple[str, ...]  # sorted CIDRs; includes relayed pools' subnets
    keepalive: int = 0  # seconds; 0 = off. Set when we are under NAT so the NAT stays open
    preshared_key: str | None = None
    pool: str = ""  # the Gateway (pool) this peer is the active gateway of, for explanations
    relays_for: tuple[str, ...] = ()  # Gateways whose subnets reach us through this peer


@dataclass(frozen=True)
class WireGuardDevice:
    name: str
    listen_port: int
    mtu: int
    peers: tuple[WireGuardPeer, ...]  # sorted by public_key


@dataclass(frozen=True)
class Firewall:
    """Our own nftables table: the remote pools' subnets; with `marks`, chains marking traffic
    to and from them for an fwmark rule; and the identity SNAT that keeps their traffic's
    source where another table on the node could masquerade it (raven.dataplane decides that
    from the node's ruleset; see docs/dataplane.md)."""

    table: str
    mark: int
    mark_mask: int
    local_subnets: tuple[str, ...]  # this pool's pod subnets, sorted
    remote_subnets: tuple[str, ...]  # every other pool's pod subnets, sorted
    # Mark chains (`prerouting`, `output`), evaluated for every packet of the node: what a
    # member's fwmark rule needs. An active gateway's rule has no selector and needs none.
    marks: bool = True


@dataclass(frozen=True)
class VethPair:
    """The veth pair that joins the node's namespace to its tunnel namespace: `name` and
    `address` in the node's, `peer` and `peer_address` in the tunnel namespace
    (docs/tunnel-namespace.md). Each end's address is the other end's next hop."""

    name: str
    peer: str
    address: str
    peer_address: str
    prefixlen: int
    mtu: int
    # Generic receive offload on both ends (ethtool's rx-gro; off by default on a veth, and on
    # it turns on the veth's NAPI path): the packets wireguard-go writes one by one are merged
    # before they are forwarded again, so the gateway's own pods do not pay the extra hop per
    # packet (docs/tunnel-namespace.md, "The veth's receive offload").
    gro: bool = True


@dataclass(frozen=True)
class NodeState:
    """Everything one node's agent must make true in the kernel. Empty collections mean 'none'."""

    node: str
    role: Role
    pool: str | None
    vxlan: VxlanDevice | None
    fdb: tuple[FdbEntry, ...] = ()
    neighbours: tuple[NeighEntry, ...] = ()
    routes: tuple[Route, ...] = ()
    rules: tuple[Rule, ...] = ()
    wireguard: WireGuardDevice | None = None
    firewall: Firewall | None = None
    sysctls: tuple[tuple[str, str], ...] = ()  # (key as in /proc/sys with dots, value), sorted
    # The tunnel-namespace shape of an active gateway (docs/tunnel-namespace.md; off unless
    # `OverlaySettings.tunnel_namespace`): `tunnel` is what goes inside the tunnel namespace
    # (raven0 and raven-wg0, created in the node's namespace and moved there, with their
    # routes in that namespace's `main`), and `veth` the pair that joins the two. None = the
    # node carries everything in its own namespace, as before.
    veth: VethPair | None = None
    tunnel: NodeState | None = None
    notes: tuple[str, ...] = field(default=(), compare=False)  # explanations for operators

    def devices(self) -> NodeState:
        """The part of the plan that holds raven0 and raven-wg0 (their peers, FDB and
        neighbours): the tunnel namespace's when there is one, else the plan itself."""
        return self.tunnel if self.tunnel is not None else self

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))
