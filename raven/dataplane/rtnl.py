"""Routes, rules, neighbours and FDB entries as rtnetlink messages, encoded and decoded leanly.

Rules kept:
- live objects are read with one dump per kind and returned as the same frozen dataclasses the
  planner uses (raven.desired), so a diff is plain set arithmetic;
- every route and rule we write carries protocol RTPROT_RAVEN, so `ip route` shows them as
  `proto 82` and cleanup can prove they are ours;
- only the attributes we own are decoded; anything else a foreign tool put on an object of ours
  is ignored, except where it changes behaviour (route next hop and MTU).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable

from raven import constants
from raven.dataplane.errors import DataplaneError
from raven.dataplane.netlink import (
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NetlinkSocket,
    Request,
    attr,
    attr_u32,
    nested,
    parse_attrs,
)
from raven.desired import FdbEntry, NeighEntry, Route, Rule

RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34

RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PREFSRC, RTA_METRICS = 1, 4, 5, 7, 8
RTA_TABLE, RTA_VIA = 15, 18
RTA_PRIORITY = 6
RTAX_LOCK, RTAX_MTU = 1, 2
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 0, 253, 255
RTNH_F_ONLINK = 4
RTPROT_RAVEN = constants.ROUTE_PROTOCOL

FRA_IIFNAME, FRA_PRIORITY, FRA_FWMARK, FRA_TABLE, FRA_FWMASK, FRA_PROTOCOL = 3, 6, 10, 15, 16, 21
FR_ACT_TO_TBL = 1

NDA_DST, NDA_LLADDR = 1, 2
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
AF_BRIDGE = 7

_RTMSG = struct.Struct("=BBBBBBBBI")
_NDMSG = struct.Struct("=BxxxiHBB")
_HDRLEN = 16
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}


def _family_of(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _addr_bytes(address: str) -> bytes:
    # inet_pton: ~20x faster than ipaddress, which matters at 10,000 routes per apply
    return socket.inet_pton(_family_of(address), address)


def _addr_str(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(raw) == 16 else socket.AF_INET, raw)


def _split_cidr(cidr: str) -> tuple[int, bytes, int]:
    """(family, packed network address, prefix length) of a canonical CIDR."""
    address, _, prefix = cidr.partition("/")
    family = _family_of(address)
    try:
        packed = socket.inet_pton(family, address)
    except OSError:
        packed = b""
    if not packed or not prefix.isdigit():
        net = ipaddress.ip_network(cidr, strict=False)  # raises a clear ValueError
        return (socket.AF_INET6 if net.version == 6 else socket.AF_INET,
                net.network_address.packed, net.prefixlen)
    return family, packed, int(prefix)


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def _mac_str(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


# --- routes -------------------------------------------------------------------------------


def route_request(route: Route, ifindex: int, delete: bool = False) -> Request:
    family, packed, prefixlen = _split_cidr(route.dst)
    table_attr = attr_u32(RTA_TABLE, route.table)
    dst = attr(RTA_DST, packed)
    # In main (shared with everyone) a route of ours is told apart by protocol and metric: a
    # delete names both, so it can never take another's route for the same prefix.
    main = route.table == constants.MAIN_TABLE
    metric = attr_u32(RTA_PRIORITY, constants.MAIN_ROUTE_METRIC) if main else b""
    if delete:
        # scope NOWHERE is the kernel's wildcard for deletes (matches link and global routes)
        body = _RTMSG.pack(family, prefixlen, 0, 0, 0, RTPROT_RAVEN if main else 0,
                           RT_SCOPE_NOWHERE, 0, 0)
        return Request(RTM_DELROUTE, 0, body + table_attr + dst + metric,
                       route_line(route.dst, route.table, delete=True), op="delete")
    scope = RT_SCOPE_UNIVERSE if route.gateway else RT_SCOPE_LINK
    flags = RTNH_F_ONLINK if route.gateway else 0
    body = _RTMSG.pack(family, prefixlen, 0, 0, 0, RTPROT_RAVEN, scope, RTN_UNICAST, flags)
    body += table_attr + dst + attr_u32(RTA_OIF, ifindex) + metric
    if route.gateway:
        via_family = _family_of(route.gateway)
        if via_family == family:
            body += attr(RTA_GATEWAY, _addr_bytes(route.gateway))
        elif family == socket.AF_INET:  # IPv4 via an IPv6 next hop: RTA_VIA names its family
            body += attr(RTA_VIA, struct.pack("=H", via_family) + _addr_bytes(route.gateway))
        else:
            raise DataplaneError(
                f"route {route.dst} table {route.table} via {route.gateway}: Linux cannot route "
                "an IPv6 subnet through an IPv4 next hop; the VTEPs need IPv6 addresses for "
                "IPv6 pod subnets")
    if route.src:
        if _family_of(route.src) != family:
            raise DataplaneError(
                f"route {route.dst} table {route.table} src {route.src}: the source address "
                "must have the destination's family")
        body += attr(RTA_PREFSRC, _addr_bytes(route.src))
    if route.mtu:
        body += nested(RTA_METRICS, attr_u32(RTAX_LOCK, 1 << RTAX_MTU),
                       attr_u32(RTAX_MTU, route.mtu))
    return Request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, body,
                   route_line(route.dst, route.table, route.dev, route.gateway, route.mtu,
                              route.src))


def route_line(dst: str, table: int, dev: str = "", gateway: str | None = None,
               mtu: int | None = None, src: str | None = None, delete: bool = False) -> str:
    """A route write as `ip route` would spell it (logs, dry runs, errors); fields, not a
    Route, so the routes applier's diff spells 10,000 keys without building Routes."""
    main = (f" proto {RTPROT_RAVEN} metric {constants.MAIN_ROUTE_METRIC}"
            if table == constants.MAIN_TABLE else "")
    if delete:
        return f"route del {dst} table {table}{main}"
    return (f"route replace {dst} table {table} dev {dev}" + (f" via {gateway}" if gateway else "")
            + (f" mtu {mtu}" if mtu else "") + (f" src {src}" if src else "") + main)


def dst_address(family: int, attrs: dict[int, bytes]) -> str:
    """A route message's destination address (a dump's or a notification's); none is the
    default route of its family."""
    dst = attrs.get(RTA_DST)
    if dst is None:
        return "::" if family == socket.AF_INET6 else "0.0.0.0"
    return _addr_str(dst)


def dump_routes(sock: NetlinkSocket, tables: Iterable[int], names: dict[int, str],
                families: Iterable[int] = (4, 6)) -> list[Route]:
    """Unicast routes in `tables`, one strict dump per (family, table); dev names from `names`."""
    out: list[Route] = []
    append = out.append
    unpack_rt = _RTMSG.unpack_from
    u32 = struct.Struct("=I").unpack_from

    for version in families:
        family = _FAMILY[version]
        for table in tables:

            def handle(data: bytes, start: int, end: int, table: int = table) -> None:
                fam, dst_len, _s, _t, _tb, proto, _sc, rtype, _f = unpack_rt(data, start)
                if rtype != RTN_UNICAST:
                    return
                a = parse_attrs(data, start + 12, end)
                if u32(a.get(RTA_TABLE, b"\0\0\0\0"))[0] != table:
                    return  # strict filtering unsupported: the kernel sent every table
                if table == constants.MAIN_TABLE and proto != RTPROT_RAVEN:
                    return  # main is everyone's: only our protocol's routes are ours
                prefix = dst_address(fam, a)
                oif = a.get(RTA_OIF)
                gw = a.get(RTA_GATEWAY)
                via = a.get(RTA_VIA)
                if gw is None and via is not None:
                    gw = via[2:]
                mtu = None
                metrics = a.get(RTA_METRICS)
                if metrics:
                    raw = parse_attrs(metrics).get(RTAX_MTU)
                    mtu = u32(raw)[0] if raw else None
                src = a.get(RTA_PREFSRC)
                append(Route(
                    dst=f"{prefix}/{dst_len}",
                    table=table,
                    dev=names.get(u32(oif)[0], "?") if oif else "?",
                    gateway=_addr_str(gw) if gw else None,
                    mtu=mtu,
                    src=_addr_str(src) if src else None,
                ))

            # The kernel filters a strict dump by protocol too: in main, only ours come back.
            wanted = RTPROT_RAVEN if table == constants.MAIN_TABLE else 0
            body = _RTMSG.pack(family, 0, 0, 0, table if table < 256 else 0, wanted, 0, 0, 0)
            sock.dump_raw(RTM_GETROUTE, body + attr_u32(RTA_TABLE, table), handle)
    return out


def foreign_main_prefixes(sock: NetlinkSocket, families: Iterable[int] = (4, 6)) -> list[str]:
    """The destinations of every route in the main table that is not ours (any protocol but
    ours, any type: a blackhole takes traffic as well as a unicast route), as CIDRs."""
    out: list[str] = []
    unpack_rt = _RTMSG.unpack_from
    u32 = struct.Struct("=I").unpack_from

    for version in families:
        family = _FAMILY[version]

        def handle(data: bytes, start: int, end: int) -> None:
            fam, dst_len, _s, _t, _tb, proto, _sc, _type, _f = unpack_rt(data, start)
            a = parse_attrs(data, start + 12, end)
            if proto == RTPROT_RAVEN or u32(a.get(RTA_TABLE, b"\0\0\0\0"))[0] != \
                    constants.MAIN_TABLE:
                return
            out.append(f"{dst_address(fam, a)}/{dst_len}")

        body = _RTMSG.pack(family, 0, 0, 0, constants.MAIN_TABLE, 0, 0, 0, 0)
        sock.dump_raw(RTM_GETROUTE, body + attr_u32(RTA_TABLE, constants.MAIN_TABLE), handle)
    return out


# --- rules ----------------------------------------------------------------------------------


def rule_text(rule: Rule) -> str:
    """The rule as `ip rule` spells it (without the verb)."""
    family = "-6 " if rule.family == 6 else ""
    iif = f"iif {rule.iif} " if rule.iif else ""
    mark = f"fwmark {rule.fwmark:#x}/{rule.fwmask:#x} " if rule.fwmark or rule.fwmask else ""
    return f"{family}{iif}{mark}lookup {rule.table} priority {rule.priority}"


def rule_request(rule: Rule, delete: bool = False) -> Request:
    """A rule without a mark is sent without FRA_FWMARK/FRA_FWMASK, one without iif without
    FRA_IIFNAME. Note that the kernel's delete treats every attribute left out as a wildcard:
    deleting `lookup T priority P` removes the first rule at (P, T), with selectors or not
    (the rules applier orders for that)."""
    family = _FAMILY[rule.family]
    body = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, FR_ACT_TO_TBL, 0)
    body += attr_u32(FRA_PRIORITY, rule.priority) + attr_u32(FRA_TABLE, rule.table)
    if rule.fwmark or rule.fwmask:
        body += attr_u32(FRA_FWMARK, rule.fwmark) + attr_u32(FRA_FWMASK, rule.fwmask)
    if rule.iif:
        body += attr(FRA_IIFNAME, rule.iif.encode() + b"\0")
    what = f"rule {'del' if delete else 'add'} {rule_text(rule)}"
    if delete:
        return Request(RTM_DELRULE, 0, body, what, op="delete")
    body += attr(FRA_PROTOCOL, bytes([RTPROT_RAVEN]))
    return Request(RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, body, what)


def dump_rules(sock: NetlinkSocket, tables: Iterable[int]) -> list[Rule]:
    """Rules pointing at any of `tables` (ours), both families, with their mark and iif if
    any."""
    wanted = set(tables)
    out: list[Rule] = []
    u32 = struct.Struct("=I").unpack_from
    for version, family in _FAMILY.items():

        def handle(data: bytes, start: int, end: int, version: int = version) -> None:
            a = parse_attrs(data, start + 12, end)
            table = u32(a[FRA_TABLE])[0] if FRA_TABLE in a else data[start + 4]
            if table not in wanted:
                return
            out.append(Rule(
                priority=u32(a[FRA_PRIORITY])[0] if FRA_PRIORITY in a else 0,
                table=table,
                fwmark=u32(a[FRA_FWMARK])[0] if FRA_FWMARK in a else 0,
                fwmask=u32(a[FRA_FWMASK])[0] if FRA_FWMASK in a else 0,
                family=version,
                iif=(a[FRA_IIFNAME].split(b"\0", 1)[0].decode(errors="replace")
                     if FRA_IIFNAME in a else ""),
            ))

        sock.dump_raw(RTM_GETRULE, _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0), handle)
    return out


# --- neighbours and FDB ---------------------------------------------------------------------


def neigh_request(entry: NeighEntry, ifindex: int, delete: bool = False) -> Request:
    body = _NDMSG.pack(_family_of(entry.ip), ifindex, NUD_PERMANENT, 0, 0)
    body += attr(NDA_DST, _addr_bytes(entry.ip))
    if delete:
        return Request(RTM_DELNEIGH, 0, body, f"neigh del {entry.ip} dev {ifindex}", op="delete")
    body += attr(NDA_LLADDR, _mac_bytes(entry.mac))
    return Request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, body,
                   f"neigh replace {entry.ip} lladdr {entry.mac}")


def fdb_request(entry: FdbEntry, ifindex: int, delete: bool = False) -> Request:
    body = _NDMSG.pack(AF_BRIDGE, ifindex, NUD_PERMANENT, NTF_SELF, 0)
    body += attr(NDA_LLADDR, _mac_bytes(entry.mac)) + attr(NDA_DST, _addr_bytes(entry.dst))
    if delete:
        return Request(RTM_DELNEIGH, 0, body, f"fdb del {entry.mac} dst {entry.dst}", op="delete")
    return Request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, body,
                   f"fdb replace {entry.mac} dst {entry.dst}")


def dump_neighbours(sock: NetlinkSocket, ifindex: int) -> list[NeighEntry]:
    """Permanent IPv4/IPv6 neighbours on one device."""
    out: list[NeighEntry] = []
    for family in (socket.AF_INET, socket.AF_INET6):

        def handle(data: bytes, start: int, end: int) -> None:
            _fam, index, state, _flags, _type = _NDMSG.unpack_from(data, start)
            if index != ifindex or not state & NUD_PERMANENT:
                return
            a = parse_attrs(data, start + 12, end)
            if NDA_DST in a and NDA_LLADDR in a:
                out.append(NeighEntry(ip=_addr_str(a[NDA_DST]), mac=_mac_str(a[NDA_LLADDR])))

        # ifindex 0: strict dumps filter by NDA_IFINDEX only; we filter here instead.
        sock.dump_raw(RTM_GETNEIGH, _NDMSG.pack(family, 0, 0, 0, 0), handle)
    return out


def dump_fdb(sock: NetlinkSocket, ifindex: int) -> list[FdbEntry]:
    """Unicast FDB entries with a remote destination on one VXLAN device."""
    out: list[FdbEntry] = []

    def handle(data: bytes, start: int, end: int) -> None:
        _fam, index, _state, _flags, _type = _NDMSG.unpack_from(data, start)
        if index != ifindex:
            return
        a = parse_attrs(data, start + 12, end)
        mac, dst = a.get(NDA_LLADDR), a.get(NDA_DST)
        if mac and dst and not mac[0] & 1:
            out.append(FdbEntry(mac=_mac_str(mac), dst=_addr_str(dst)))

    # ifindex 0: the FDB dump filters by bridge port, which a standalone VXLAN device is not.
    sock.dump_raw(RTM_GETNEIGH, _NDMSG.pack(AF_BRIDGE, 0, 0, 0, 0), handle)
    return out
