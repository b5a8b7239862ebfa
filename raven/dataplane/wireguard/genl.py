"""Kernel WireGuard through generic netlink family "wireguard", messages built by us.

Attribute numbers are the kernel's uapi/linux/wireguard.h. Rules kept: device reads are one
WG_CMD_GET_DEVICE dump; a device change is one WG_CMD_SET_DEVICE message (the kernel applies it
atomically per message); message building is pure (`encode_set`, `decode_get`) so it is
unit-tested on machines without the module.
"""

from __future__ import annotations

import base64
import ipaddress
import socket
import struct
from collections.abc import Sequence

from raven.dataplane.errors import DataplaneError
from raven.dataplane.netlink import (
    NETLINK_GENERIC,
    NLM_F_ACK,
    NLM_F_DUMP,
    NetlinkError,
    NetlinkSocket,
    attr,
    attr_str,
    attr_u16,
    attr_u32,
    iter_attrs,
    nested,
    parse_attrs,
)
from raven.dataplane.wireguard.model import (
    DeviceWrite,
    LiveDevice,
    LivePeer,
    canonical_endpoint,
)

GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 1, 2

WG_GENL_NAME = "wireguard"
WG_GENL_VERSION = 1
WG_CMD_GET_DEVICE, WG_CMD_SET_DEVICE = 0, 1

WGDEVICE_A_IFINDEX, WGDEVICE_A_IFNAME, WGDEVICE_A_PRIVATE_KEY = 1, 2, 3
WGDEVICE_A_PUBLIC_KEY, WGDEVICE_A_FLAGS, WGDEVICE_A_LISTEN_PORT = 4, 5, 6
WGDEVICE_A_FWMARK, WGDEVICE_A_PEERS = 7, 8

WGPEER_A_PUBLIC_KEY, WGPEER_A_PRESHARED_KEY, WGPEER_A_FLAGS, WGPEER_A_ENDPOINT = 1, 2, 3, 4
WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, WGPEER_A_LAST_HANDSHAKE_TIME = 5, 6
WGPEER_A_RX_BYTES, WGPEER_A_TX_BYTES, WGPEER_A_ALLOWEDIPS = 7, 8, 9
WGPEER_F_REMOVE_ME, WGPEER_F_REPLACE_ALLOWEDIPS = 1, 2

WGALLOWEDIP_A_FAMILY, WGALLOWEDIP_A_IPADDR, WGALLOWEDIP_A_CIDR_MASK = 1, 2, 3

_GENLHDR = struct.Struct("=BBH")


def genl_header(cmd: int, version: int = WG_GENL_VERSION) -> bytes:
    return _GENLHDR.pack(cmd, version, 0)


def encode_sockaddr(endpoint: str) -> bytes:
    host, _, port = canonical_endpoint(endpoint).rpartition(":")
    addr = ipaddress.ip_address(host.strip("[]"))
    if addr.version == 4:
        return (struct.pack("=H", socket.AF_INET) + struct.pack("!H", int(port)) + addr.packed
                + b"\0" * 8)
    return (struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", int(port), 0) + addr.packed
            + struct.pack("=I", 0))


def decode_sockaddr(raw: bytes) -> str | None:
    family = struct.unpack_from("=H", raw)[0]
    if family == socket.AF_INET:
        port = struct.unpack_from("!H", raw, 2)[0]
        return f"{ipaddress.IPv4Address(raw[4:8])}:{port}"
    if family == socket.AF_INET6:
        port = struct.unpack_from("!H", raw, 2)[0]
        return f"[{ipaddress.IPv6Address(raw[8:24])}]:{port}"
    return None


def _allowed_ip(cidr: str) -> bytes:
    net = ipaddress.ip_network(cidr, strict=False)
    family = socket.AF_INET6 if net.version == 6 else socket.AF_INET
    return nested(0, attr_u16(WGALLOWEDIP_A_FAMILY, family),
                  attr(WGALLOWEDIP_A_IPADDR, net.network_address.packed),
                  attr(WGALLOWEDIP_A_CIDR_MASK, bytes([net.prefixlen])))


def encode_set(ifname: str, write: DeviceWrite) -> bytes:
    """Body (genl header + attributes) of one WG_CMD_SET_DEVICE message."""
    body = genl_header(WG_CMD_SET_DEVICE) + attr_str(WGDEVICE_A_IFNAME, ifname)
    if write.private_key is not None:
        body += attr(WGDEVICE_A_PRIVATE_KEY, base64.b64decode(write.private_key))
    if write.listen_port is not None:
        body += attr_u16(WGDEVICE_A_LISTEN_PORT, write.listen_port)
    peers: list[bytes] = []
    for peer in write.peers:
        if peer.removed_allowed_ips:  # the applier asks this of wireguard-go only
            raise DataplaneError("kernel WireGuard: single allowed-IP removal is not encoded; "
                                 "diff with move_removed=False")
        parts = [attr(WGPEER_A_PUBLIC_KEY, base64.b64decode(peer.public_key))]
        flags = 0
        if peer.remove:
            flags |= WGPEER_F_REMOVE_ME
        if peer.replace_allowed_ips:
            flags |= WGPEER_F_REPLACE_ALLOWEDIPS
        if flags:
            parts.append(attr_u32(WGPEER_A_FLAGS, flags))
        if not peer.remove:
            if peer.preshared_key is not None:
                psk = base64.b64decode(peer.preshared_key) if peer.preshared_key else b"\0" * 32
                parts.append(attr(WGPEER_A_PRESHARED_KEY, psk))
            if peer.endpoint is not None:
                parts.append(attr(WGPEER_A_ENDPOINT, encode_sockaddr(peer.endpoint)))
            if peer.keepalive is not None:
                parts.append(attr_u16(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, peer.keepalive))
            if peer.allowed_ips:
                parts.append(nested(WGPEER_A_ALLOWEDIPS,
                                    *(_allowed_ip(c) for c in peer.allowed_ips)))
        peers.append(nested(0, *parts))
    if peers:
        body += nested(WGDEVICE_A_PEERS, *peers)
    return body


def decode_get(messages: Sequence[bytes]) -> LiveDevice:
    """A WG_CMD_GET_DEVICE dump (possibly split over several messages) as one LiveDevice."""
    private_key: str | None = None
    listen_port = 0
    peers: dict[str, dict[str, object]] = {}
    for msg in messages:
        top = parse_attrs(msg, _GENLHDR.size)
        if WGDEVICE_A_PRIVATE_KEY in top and any(top[WGDEVICE_A_PRIVATE_KEY]):
            private_key = base64.b64encode(top[WGDEVICE_A_PRIVATE_KEY]).decode()
        if WGDEVICE_A_LISTEN_PORT in top:
            listen_port = struct.unpack("=H", top[WGDEVICE_A_LISTEN_PORT][:2])[0]
        for _, raw_peer in iter_attrs(top.get(WGDEVICE_A_PEERS, b"")):
            p = parse_attrs(raw_peer)
            key = base64.b64encode(p[WGPEER_A_PUBLIC_KEY]).decode()
            entry = peers.setdefault(key, {"allowed": set()})
            if WGPEER_A_ENDPOINT in p:
                entry["endpoint"] = decode_sockaddr(p[WGPEER_A_ENDPOINT])
            if WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL in p:
                entry["keepalive"] = struct.unpack(
                    "=H", p[WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL][:2])[0]
            if WGPEER_A_PRESHARED_KEY in p and any(p[WGPEER_A_PRESHARED_KEY]):
                entry["psk"] = base64.b64encode(p[WGPEER_A_PRESHARED_KEY]).decode()
            if WGPEER_A_LAST_HANDSHAKE_TIME in p:
                sec, nsec = struct.unpack("=qq", p[WGPEER_A_LAST_HANDSHAKE_TIME][:16])
                entry["hs"] = sec + nsec / 1e9
            for name, kind in (("rx", WGPEER_A_RX_BYTES), ("tx", WGPEER_A_TX_BYTES)):
                if kind in p:
                    entry[name] = struct.unpack("=Q", p[kind][:8])[0]
            for _, raw_ip in iter_attrs(p.get(WGPEER_A_ALLOWEDIPS, b"")):
                a = parse_attrs(raw_ip)
                raw = a[WGALLOWEDIP_A_IPADDR]
                ip = socket.inet_ntop(socket.AF_INET6 if len(raw) == 16 else socket.AF_INET, raw)
                entry["allowed"].add(f"{ip}/{a[WGALLOWEDIP_A_CIDR_MASK][0]}")  # type: ignore[attr-defined]
    return LiveDevice(private_key, listen_port, {
        key: LivePeer(
            public_key=key, endpoint=e.get("endpoint"),  # type: ignore[arg-type]
            allowed_ips=frozenset(e["allowed"]),  # type: ignore[arg-type]
            keepalive=int(e.get("keepalive", 0)),  # type: ignore[call-overload]
            preshared_key=e.get("psk"),  # type: ignore[arg-type]
            last_handshake=float(e.get("hs", 0.0)),  # type: ignore[arg-type]
            rx_bytes=int(e.get("rx", 0)), tx_bytes=int(e.get("tx", 0)),  # type: ignore[call-overload]
        ) for key, e in peers.items()
    })


def family_request_body(name: str = WG_GENL_NAME) -> bytes:
    return _GENLHDR.pack(CTRL_CMD_GETFAMILY, 1, 0) + attr_str(CTRL_ATTR_FAMILY_NAME, name)


class KernelWireGuard:
    """WG_CMD_GET/SET_DEVICE on the generic netlink family "wireguard" of one namespace."""

    def __init__(self, netns_name: str | None, ifname: str) -> None:
        self.ifname = ifname
        self.sock = NetlinkSocket(NETLINK_GENERIC, netns_name)
        try:
            reply = self.sock.request(GENL_ID_CTRL, NLM_F_ACK, family_request_body())
        except NetlinkError as exc:
            self.sock.close()
            raise DataplaneError(
                "kernel WireGuard unavailable (generic netlink family 'wireguard': "
                f"{exc.strerror}); "
                " load the wireguard module or use --wireguard-backend userspace"
            ) from None
        attrs = parse_attrs(reply[0], _GENLHDR.size)
        self.family = struct.unpack("=H", attrs[CTRL_ATTR_FAMILY_ID][:2])[0]

    def close(self) -> None:
        self.sock.close()

    def get(self) -> LiveDevice:
        body = genl_header(WG_CMD_GET_DEVICE) + attr_str(WGDEVICE_A_IFNAME, self.ifname)
        return decode_get(self.sock.request(self.family, NLM_F_DUMP | NLM_F_ACK, body))

    def set(self, write: DeviceWrite) -> None:
        self.sock.request(self.family, NLM_F_ACK, encode_set(self.ifname, write))
