"""Kernel WireGuard through generic netlink family "wireguard", messages built by us.

Attribute numbers are the kernel's uapi/linux/wireguard.h. Rules kept: device reads are one
WG_CMD_GET_DEVICE dump; a device change is as few WG_CMD_SET_DEVICE messages as fit the 16-bit
netlink lengths (the kernel applies each atomically; see `encode_set` for the split); message
building is pure (`encode_set`, `decode_get`) so it is unit-tested on machines without the
module, and proven against a real kernel in tests/vm.
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
    NLA_F_NESTED,
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
    PeerWrite,
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


# Splitting (the design of wg(8)'s ipc-linux.h): every netlink attribute length is 16 bits, so
# one message cannot carry a device with thousands of allowed IPs. A change is sent as several
# WG_CMD_SET_DEVICE messages of at most MESSAGE_LIMIT bytes each. The device-level attributes
# (private key, listen port) go in the first message only; a peer whose allowed IPs do not fit
# continues in the next message under its public key again, and only its first chunk carries
# WGPEER_F_REPLACE_ALLOWEDIPS (later chunks add to the list that chunk replaced) and its
# pre-shared key, endpoint and keepalive. The kernel applies each message atomically, so the
# larger the messages the fewer the intermediate states: 32 KiB is 8x wg's page-size messages,
# far below the 65,535 bytes any nest may hold and below default netlink socket buffers.
NLMSG_HDRLEN = 16
MESSAGE_LIMIT = 32 * 1024
_ATTR_MAX = 0xFFFF
_KEY_LEN = 32
IFNAMSIZ = 16


def _checked_attr(kind: int, payload: bytes, what: str) -> bytes:
    """attr() with its 16-bit length checked: a clear error instead of struct.error."""
    if 4 + len(payload) > _ATTR_MAX:
        raise DataplaneError(f"kernel WireGuard: {what} is {len(payload)} bytes, more than one "
                             f"netlink attribute holds ({_ATTR_MAX - 4})")
    return attr(kind, payload)


def _key(value: str, what: str, fix: str) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True)
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != _KEY_LEN:
        raise DataplaneError(f"{what} is not a WireGuard key (32 bytes in base64, 44 "
                             f"characters): {value!r}; {fix}")
    return raw


def _u16(value: int, what: str) -> int:
    if not 0 <= value <= 0xFFFF:
        raise DataplaneError(f"{what} {value} is out of range 0-65535")
    return value


def _allowed_ip(cidr: str, who: str) -> bytes:
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except (ValueError, TypeError):
        raise DataplaneError(f"{who}: allowed IP {cidr!r} is not an IP network (e.g. "
                             "10.2.0.0/16); fix the peer's allowed IPs") from None
    family = socket.AF_INET6 if net.version == 6 else socket.AF_INET
    return nested(0, attr_u16(WGALLOWEDIP_A_FAMILY, family),
                  attr(WGALLOWEDIP_A_IPADDR, net.network_address.packed),
                  attr(WGALLOWEDIP_A_CIDR_MASK, bytes([net.prefixlen])))


def _peer_parts(peer: PeerWrite) -> tuple[bytes, bytes, list[bytes]]:
    """(attributes of the peer's first chunk, of its continuation chunks, allowed-IP attrs)."""
    who = f"wireguard peer {peer.public_key}"
    if peer.removed_allowed_ips:  # the applier asks this of wireguard-go only
        raise DataplaneError(f"kernel WireGuard, {who}: single allowed-IP removal is not "
                             "encoded; diff with move_removed=False")
    key = attr(WGPEER_A_PUBLIC_KEY, _key(peer.public_key, f"{who}: public key",
                                         "fix the peer's public key"))
    keep = WGPEER_F_REMOVE_ME if peer.remove else 0
    flags = keep | (WGPEER_F_REPLACE_ALLOWEDIPS if peer.replace_allowed_ips else 0)
    first = key + (attr_u32(WGPEER_A_FLAGS, flags) if flags else b"")
    later = key + (attr_u32(WGPEER_A_FLAGS, keep) if keep else b"")
    if peer.remove:
        return first, later, []
    if peer.preshared_key is not None:
        psk = (_key(peer.preshared_key, f"{who}: pre-shared key", "fix or remove it")
               if peer.preshared_key else b"\0" * _KEY_LEN)
        first += attr(WGPEER_A_PRESHARED_KEY, psk)
    if peer.endpoint is not None:
        try:
            first += attr(WGPEER_A_ENDPOINT, encode_sockaddr(peer.endpoint))
        except (ValueError, struct.error):
            raise DataplaneError(f"{who}: endpoint {peer.endpoint!r} is not ADDRESS:PORT (e.g. "
                                 "198.51.100.2:4500 or [2001:db8::2]:4500)") from None
    if peer.keepalive is not None:
        first += attr_u16(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL,
                          _u16(peer.keepalive, f"{who}: persistent keepalive"))
    return first, later, [_allowed_ip(c, who) for c in peer.allowed_ips]


def encode_set(ifname: str, write: DeviceWrite, limit: int = MESSAGE_LIMIT) -> list[bytes]:
    """Bodies (genl header + attributes) of the WG_CMD_SET_DEVICE messages for one change, in
    the order they must be sent; every whole message (netlink header included) <= limit."""
    if not 512 <= limit <= _ATTR_MAX:  # 512: a peer header plus one allowed IP always fits
        raise ValueError(f"message limit {limit} is outside 512-{_ATTR_MAX}")
    name = ifname.encode()
    if not 0 < len(name) < IFNAMSIZ:
        raise DataplaneError(f"wireguard device name {ifname!r} must be 1-{IFNAMSIZ - 1} bytes")
    head = genl_header(WG_CMD_SET_DEVICE) + attr_str(WGDEVICE_A_IFNAME, ifname)
    device = b""
    if write.private_key is not None:
        device += attr(WGDEVICE_A_PRIVATE_KEY, _key(
            write.private_key, f"wireguard {ifname}: private key",
            "fix or delete the agent's wireguard.key"))
    if write.listen_port is not None:
        device += attr_u16(WGDEVICE_A_LISTEN_PORT,
                           _u16(write.listen_port, f"wireguard {ifname}: listen port"))
    budget = limit - NLMSG_HDRLEN
    messages: list[bytes] = []
    fixed = head + device  # what the message being built carries besides its peers
    peers: list[bytes] = []  # peer nests of the message being built
    used = len(fixed)

    def flush() -> None:
        nonlocal fixed, peers, used
        body = fixed + (_checked_attr(WGDEVICE_A_PEERS | NLA_F_NESTED, b"".join(peers),
                                      "peer list") if peers else b"")
        assert len(body) <= budget, (len(body), budget)  # guaranteed by the accounting below
        messages.append(body)
        fixed, peers, used = head, [], len(head)

    for peer in write.peers:
        first, later, ips = _peer_parts(peer)
        done, started = 0, False
        while True:
            parts = later if started else first
            # Room left for this peer's allowed IPs: the peers nest header (once per message),
            # the peer nest header, the peer's own attributes, the allowed-IPs nest header.
            room = budget - used - (0 if peers else 4) - 4 - len(parts) - 4
            take, size = 0, 0
            while done + take < len(ips) and size + len(ips[done + take]) <= room:
                size += len(ips[done + take])
                take += 1
            if room < 0 or (take == 0 and done < len(ips)):
                if not peers and fixed is head:  # an empty message and still no room
                    raise DataplaneError(f"kernel WireGuard, wireguard peer "
                                         f"{peer.public_key}: does not fit one netlink "
                                         f"message of {limit} bytes")
                flush()
                continue
            chunk = parts
            if take:
                chunk += _checked_attr(WGPEER_A_ALLOWEDIPS | NLA_F_NESTED,
                                       b"".join(ips[done:done + take]), "allowed IP list")
            item = _checked_attr(NLA_F_NESTED, chunk, f"wireguard peer {peer.public_key}")
            used += len(item) + (0 if peers else 4)
            peers.append(item)
            done += take
            started = True
            if done == len(ips):
                break
            flush()
    if peers or not messages:
        flush()
    return messages


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
        messages = encode_set(self.ifname, write)
        for index, body in enumerate(messages, 1):
            try:
                self.sock.request(self.family, NLM_F_ACK, body)
            except NetlinkError as exc:
                # The messages before this one are applied: the caller must read the device
                # back (the applier forgets its written-state cache on any failed write).
                raise DataplaneError(
                    f"kernel WireGuard {self.ifname}: WG_CMD_SET_DEVICE message {index} of "
                    f"{len(messages)} failed: {exc.strerror}") from None
