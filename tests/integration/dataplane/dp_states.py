"""Hand-written NodeState values for data-plane tests (independent of the planner)."""

from __future__ import annotations

from dataclasses import replace

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

UNDERLAY_MTU = 1500
VXLAN_MTU = UNDERLAY_MTU - 50
WG_MTU = UNDERLAY_MTU - 80


def source_check(dev: str) -> list[tuple[str, str]]:
    """What the planner asks of our devices (raven.topology `_source_check`): no reverse-path
    check of their own, and accept_local, so the kernel skips the full reverse lookup that a
    namespace with policy rules otherwise makes for every packet arriving on them."""
    return [(f"net.ipv4.conf.{dev}.accept_local", "1"), (f"net.ipv4.conf.{dev}.rp_filter", "0")]


def vtep(n: int) -> tuple[str, str]:
    """(VTEP address, MAC) of underlay host 192.0.2.n."""
    return f"100.96.0.{n}", f"02:52:00:00:02:{n:02x}"


def vxlan(n: int, **changes: object) -> VxlanDevice:
    address, mac = vtep(n)
    dev = VxlanDevice(name="raven0", vni=200, port=4472, local_ip=f"192.0.2.{n}",
                      vtep_ip=address, vtep_prefixlen=24, mac=mac, mtu=VXLAN_MTU)
    return replace(dev, **changes)  # type: ignore[arg-type]


def member(n: int, gateway: int, remote: tuple[str, ...] = ("10.2.0.0/16",),
           local: tuple[str, ...] = ("10.1.0.0/16",), src: str | None = None,
           marked: bool = True) -> NodeState:
    """A pool member at 192.0.2.n whose active gateway is 192.0.2.<gateway>; `src` is the
    routes' preferred source (the planner's node address; it must be local). `marked`: the
    fwmark rule and mark chains of agents before 2026-12 (the appliers still handle them);
    False: the planner's shape now (a selector-less rule, no chains)."""
    gw_ip, gw_mac = vtep(gateway)
    return NodeState(
        node=f"m{n}", role=Role.MEMBER, pool="a", vxlan=vxlan(n),
        fdb=(FdbEntry(mac=gw_mac, dst=f"192.0.2.{gateway}"),),
        neighbours=(NeighEntry(ip=gw_ip, mac=gw_mac),),
        routes=tuple(Route(dst=d, table=9027, dev="raven0", gateway=gw_ip, mtu=WG_MTU, src=src)
                     for d in sorted(remote)),
        rules=((Rule(priority=100, table=9027, fwmark=0x40, fwmask=0x40),) if marked
               else (Rule(priority=100, table=9027),)),
        firewall=Firewall(table="raven", mark=0x40, mark_mask=0x40,
                          local_subnets=tuple(sorted(local)), remote_subnets=tuple(sorted(remote)),
                          marks=marked),
        sysctls=(*source_check("raven0"), ("net.ipv4.ip_forward", "1")),
    )


def gateway(n: int | None, members: tuple[int, ...], peers: tuple[WireGuardPeer, ...],
            remote: tuple[str, ...] = ("10.2.0.0/16",), local: tuple[str, ...] = ("10.1.0.0/16",),
            listen_port: int = 4500, deliver: dict[int, str] | None = None) -> NodeState:
    """An active gateway (VXLAN to `members` when n is given) with WireGuard `peers`.
    `deliver`: member n -> its pod subnet, reached from the tunnel over VXLAN (table 9027
    via the member's VTEP, `iif raven-wg0 lookup 9027`), as the planner makes it."""
    fdb, neigh = [], []
    for m in members:
        ip, mac = vtep(m)
        fdb.append(FdbEntry(mac=mac, dst=f"192.0.2.{m}"))
        neigh.append(NeighEntry(ip=ip, mac=mac))
    sysctls = [*source_check("raven-wg0"), ("net.ipv4.ip_forward", "1")]
    if n is not None:
        sysctls += source_check("raven0")
    return NodeState(
        node=f"gw{n}", role=Role.ACTIVE_GATEWAY, pool="a",
        vxlan=vxlan(n) if n is not None else None,
        fdb=tuple(sorted(fdb)), neighbours=tuple(sorted(neigh)),
        routes=tuple(Route(dst=d, table=9028, dev="raven-wg0") for d in sorted(remote)) + tuple(
            Route(dst=d, table=9027, dev="raven0", gateway=vtep(m)[0])
            for m, d in sorted((deliver or {}).items())),
        rules=(Rule(priority=100, table=9028),) + (
            (Rule(priority=100, table=9027, iif="raven-wg0"),) if deliver else ()),
        wireguard=WireGuardDevice(name="raven-wg0", listen_port=listen_port, mtu=WG_MTU,
                                  peers=tuple(sorted(peers))),
        firewall=Firewall(table="raven", mark=0x40, mark_mask=0x40,
                          local_subnets=tuple(sorted(local)), remote_subnets=tuple(sorted(remote)),
                          marks=False),
        sysctls=tuple(sorted(sysctls)),
    )


def alone(name: str = "x") -> NodeState:
    return NodeState(node=name, role=Role.ALONE, pool=None, vxlan=None)
