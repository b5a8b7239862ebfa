"""Netlink monitor that notices changes to our kernel objects made by someone else.

Rules kept: the monitor only reads; it reports (it never writes) and the callback decides; our
own netlink writes are recognised by the sender port id carried in the notification and ignored;
bursts are coalesced (100 ms) so a flush of 10,000 routes costs one callback, well within 1 s.
"""

from __future__ import annotations

import inspect
import logging
import select
import struct
import threading
import time
from collections.abc import Callable

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
_COALESCE_S = 0.1


class DriftWatcher:
    def __init__(self, *, netns_name: str | None, own_ports: Callable[[], set[int]],
                 devices: Callable[[], set[str]], tables: Callable[[], set[int]],
                 callback: Callable[..., object]) -> None:
        self.sock = NetlinkSocket(NETLINK_ROUTE, netns_name, groups=GROUPS)
        self._dump_sock = NetlinkSocket(NETLINK_ROUTE, netns_name)
        self.own_ports = own_ports
        self.devices = devices
        self.tables = tables
        self.callback = callback
        try:
            self._wants_reasons = bool(inspect.signature(callback).parameters)
        except (TypeError, ValueError):
            self._wants_reasons = True
        self._indexes: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="raven-drift", daemon=True)

    def start(self) -> None:
        self._refresh_indexes()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.sock.close()
        self._dump_sock.close()

    def _refresh_indexes(self) -> None:
        wanted = self.devices()
        found: dict[int, str] = {}

        def handle(data: bytes, start: int, end: int) -> None:
            index = _IFINFO.unpack_from(data, start)[2]
            name = parse_attrs(data, start + _IFINFO.size, end).get(IFLA_IFNAME, b"")
            name_s = name.rstrip(b"\0").decode()
            if name_s in wanted:
                found[index] = name_s

        self._dump_sock.dump_raw(RTM_GETLINK, _IFINFO.pack(0, 0, 0, 0, 0), handle)
        self._indexes = found

    def _reason(self, data: bytes, offset: int, length: int, msg_type: int) -> str | None:
        start, end = offset + 16, offset + length
        if msg_type in (RTM_NEWLINK, RTM_DELLINK):
            index = _IFINFO.unpack_from(data, start)[2]
            name = parse_attrs(data, start + 16, end).get(IFLA_IFNAME, b"").rstrip(b"\0").decode()
            if name in self.devices() or index in self._indexes:
                if msg_type == RTM_NEWLINK:
                    self._indexes[index] = name
                return f"link {name} {'changed' if msg_type == RTM_NEWLINK else 'deleted'}"
            return None
        if msg_type in (20, 21):  # addresses
            index = struct.unpack_from("=I", data, start + 4)[0]
            return f"address on {self._indexes[index]} changed" if index in self._indexes else None
        if msg_type in (24, 25, 32, 33):  # routes, rules: table attribute (or the u8 field)
            attrs = parse_attrs(data, start + 12, end)
            raw = attrs.get(RTA_TABLE if msg_type < 32 else FRA_TABLE)
            table = struct.unpack("=I", raw[:4])[0] if raw else data[start + 4]
            if table in self.tables():
                kind = "route" if msg_type < 32 else "rule"
                verb = "added/changed" if msg_type in (24, 32) else "deleted"
                return f"{kind} in table {table} {verb}"
            return None
        if msg_type in (28, 29):  # neighbours and FDB
            index = struct.unpack_from("=i", data, start + 4)[0]
            if index in self._indexes:
                return f"neighbour/fdb on {self._indexes[index]} changed"
        return None

    def _drain(self, timeout: float) -> list[str]:
        reasons: list[str] = []
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return reasons
        try:
            data = self.sock.sock.recv(1 << 20)
        except OSError as exc:  # ENOBUFS: we lost events; assume drift
            return [f"netlink monitor overrun ({exc.strerror})"]
        own = self.own_ports()
        offset = 0
        while offset + 16 <= len(data):
            length, msg_type, _flags, _seq, port = _HDR.unpack_from(data, offset)
            if length < 16:
                break
            if port not in own:
                reason = self._reason(data, offset, length, msg_type)
                if reason:
                    reasons.append(reason)
            offset += (length + 3) & ~3
        return reasons

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                reasons = self._drain(0.2)
                if not reasons:
                    continue
                deadline = time.monotonic() + _COALESCE_S
                while time.monotonic() < deadline:
                    reasons += self._drain(max(0.0, deadline - time.monotonic()))
                unique = tuple(dict.fromkeys(reasons))
                if self._wants_reasons:
                    self.callback(unique)
                else:
                    self.callback()
            except Exception:  # the watcher must survive a failing callback
                if self._stop.is_set():
                    return
                log.exception("drift callback failed")
