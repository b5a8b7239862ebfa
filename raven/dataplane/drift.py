"""Netlink monitoring of our kernel objects: change events, and the drift watcher thread.

Rules kept: monitoring only reads, it never writes; the callback decides. Our own netlink writes
are recognised by the sender port id the kernel puts in each notification and ignored (kernel-
originated notifications, e.g. VXLAN FDB changes, carry port 0 and count as foreign: the cost is
one cheap no-op reconcile). `main` is a table we share: a route event there is ours when it
carries our protocol, or when its destination lies inside a subnet we route (a foreign route
that may now contest ours, or stopped contesting: raven.route_placement); a CNI adding a route
per pod elsewhere in main wakes nothing. Bursts are coalesced (100 ms): a flush of 10,000
routes costs one callback, well within the 1 s promise. A receive-buffer overrun (ENOBUFS)
means events were lost and is reported as a change, never ignored.
"""

from __future__ import annotations

import inspect
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable

from raven.constants import MAIN_TABLE, ROUTE_PROTOCOL
from raven.dataplane import rtnl
from raven.dataplane.netlink import NETLINK_ROUTE, NetlinkSocket, parse_attrs

log = logging.getLogger(__name__)

RTNLGRP_LINK, RTNLGRP_NEIGH, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV4_ROUTE = 1, 3, 5, 7
RTNLGRP_IPV4_RULE, RTNLGRP_IPV6_IFADDR, RTNLGRP_IPV6_ROUTE, RTNLGRP_IPV6_RULE = 8, 9, 11, 19
GROUPS = (RTNLGRP_LINK, RTNLGRP_NEIGH, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV4_ROUTE,
          RTNLGRP_IPV4_RULE, RTNLGRP_IPV6_IFADDR, RTNLGRP_IPV6_ROUTE, RTNLGRP_IPV6_RULE)

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
IFLA_IFNAME = 3
RTA_TABLE = 15
FRA_TABLE = 15
_HDR = struct.Struct("=LHHLL")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_NDMSG = struct.Struct("=BxxxiHBB")
NUD_FAILED, NUD_PERMANENT = 0x20, 0x80
_COALESCE_S = 0.1

# Event kinds, for callers that keep caches per kind.
LINK, ADDRESS, ROUTE, RULE, NEIGH, OVERRUN = "link", "address", "route", "rule", "neigh", "overrun"


class EventStream:
    """Notifications about our devices, our tables' routes and rules, as (kind, reason).
    `inside_ours(prefix)` says whether a foreign route in main concerns us (module rules)."""

    def __init__(self, *, netns_name: str | None, own_ports: Callable[[], set[int]],
                 devices: Callable[[], set[str]], tables: Callable[[], set[int]],
                 inside_ours: Callable[[str], bool]) -> None:
        self.sock = NetlinkSocket(NETLINK_ROUTE, netns_name, groups=GROUPS)
        self.sock.sock.setblocking(False)
        self._dump_sock = NetlinkSocket(NETLINK_ROUTE, netns_name)
        self.own_ports = own_ports
        self.devices = devices
        self.tables = tables
        self.inside_ours = inside_ours
        self._indexes: dict[int, str] = {}
        self.refresh_indexes()

    def close(self) -> None:
        self.sock.close()
        self._dump_sock.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def refresh_indexes(self) -> None:
        wanted = self.devices()
        found: dict[int, str] = {}

        def handle(data: bytes, start: int, end: int) -> None:
            index = _IFINFO.unpack_from(data, start)[2]
            raw = parse_attrs(data, start + _IFINFO.size, end).get(IFLA_IFNAME, b"")
            name = raw.rstrip(b"\0").decode()
            if name in wanted:
                found[index] = name

        self._dump_sock.dump_raw(RTM_GETLINK, _IFINFO.pack(0, 0, 0, 0, 0), handle)
        self._indexes = found

    def _classify(self, data: bytes, offset: int, length: int,
                  msg_type: int) -> tuple[str, str] | None:
        start, end = offset + 16, offset + length
        if msg_type in (RTM_NEWLINK, RTM_DELLINK):
            family, _type, index, _flags, _change = _IFINFO.unpack_from(data, start)
            if family != 0:
                return None  # per-protocol link info (IPv6 addrconf, bridge ports), not ours
            raw = parse_attrs(data, start + _IFINFO.size, end).get(IFLA_IFNAME, b"")
            name = raw.rstrip(b"\0").decode()
            if name in self.devices() or index in self._indexes:
                if msg_type == RTM_NEWLINK:
                    self._indexes[index] = name
                else:
                    self._indexes.pop(index, None)
                verb = "changed" if msg_type == RTM_NEWLINK else "deleted"
                return LINK, f"link {name} {verb}"
            return None
        if msg_type in (20, 21):  # addresses: only global ones are ours (not IPv6 link-local)
            _family, _prefix, _flags, scope, index = _IFADDR.unpack_from(data, start)
            if scope == 0 and index in self._indexes:
                return ADDRESS, f"address on {self._indexes[index]} changed"
            return None
        if msg_type in (24, 25, 32, 33):  # routes, rules: table attribute (or the u8 field)
            attrs = parse_attrs(data, start + 12, end)
            raw = attrs.get(RTA_TABLE if msg_type < 32 else FRA_TABLE)
            table = struct.unpack("=I", raw[:4])[0] if raw else data[start + 4]
            if table == MAIN_TABLE and not (msg_type < 32 and self._ours_in_main(data, start,
                                                                                   attrs)):
                return None  # rules to main are never ours (the rules applier's rules)
            if table in self.tables():
                kind = ROUTE if msg_type < 32 else RULE
                verb = "added/changed" if msg_type in (24, 32) else "deleted"
                return kind, f"{kind} in table {table} {verb}"
            return None
        if msg_type in (28, 29):  # neighbours and FDB: ours are permanent; a deleted one is
            # reported as FAILED, so changes to learned (reachable/stale...) entries are skipped
            _family, index, state, _flags, _type = _NDMSG.unpack_from(data, start)
            mine = state & (NUD_PERMANENT | NUD_FAILED) or msg_type == 29
            if mine and index in self._indexes:
                return NEIGH, f"neighbour/fdb on {self._indexes[index]} changed"
        return None

    def _ours_in_main(self, data: bytes, start: int, attrs: dict[int, bytes]) -> bool:
        family, dst_len, protocol = data[start], data[start + 1], data[start + 5]
        if protocol == ROUTE_PROTOCOL:
            return True
        if family not in (socket.AF_INET, socket.AF_INET6):
            return False
        return self.inside_ours(f"{rtnl.dst_address(family, attrs)}/{dst_len}")

    def drain(self, timeout: float = 0.0) -> list[tuple[str, str]]:
        """Everything pending (waiting up to `timeout` for the first message)."""
        events: list[tuple[str, str]] = []
        if timeout > 0:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if not ready:
                return events
        own = self.own_ports()
        while True:
            try:
                data = self.sock.sock.recv(1 << 20)
            except BlockingIOError:
                return events
            except OSError as exc:  # ENOBUFS: events were lost
                events.append((OVERRUN, f"netlink monitor overrun ({exc.strerror})"))
                continue
            offset = 0
            while offset + 16 <= len(data):
                length, msg_type, _flags, _seq, port = _HDR.unpack_from(data, offset)
                if length < 16:
                    break
                if port not in own:
                    event = self._classify(data, offset, length, msg_type)
                    if event:
                        events.append(event)
                offset += (length + 3) & ~3


class DriftWatcher:
    """A daemon thread calling `callback(reasons)` (or `callback()`) after foreign changes."""

    def __init__(self, *, netns_name: str | None, own_ports: Callable[[], set[int]],
                 devices: Callable[[], set[str]], tables: Callable[[], set[int]],
                 inside_ours: Callable[[str], bool], callback: Callable[..., object]) -> None:
        self.events = EventStream(netns_name=netns_name, own_ports=own_ports, devices=devices,
                                  tables=tables, inside_ours=inside_ours)
        self.callback = callback
        try:
            self._wants_reasons = bool(inspect.signature(callback).parameters)
        except (TypeError, ValueError):
            self._wants_reasons = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="raven-drift", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.events.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                events = self.events.drain(0.2)
                if not events:
                    continue
                deadline = time.monotonic() + _COALESCE_S
                while time.monotonic() < deadline:
                    events += self.events.drain(max(0.001, deadline - time.monotonic()))
                reasons = tuple(dict.fromkeys(reason for _kind, reason in events))
                if self._wants_reasons:
                    self.callback(reasons)
                else:
                    self.callback()
            except Exception:  # the watcher must survive a failing callback
                if self._stop.is_set():
                    return
                log.exception("drift callback failed")
