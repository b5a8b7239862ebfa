"""Our small client of the WireGuard cross-platform UAPI (`get=1` / `set=1` on a unix socket).

Protocol (wireguard.com/xplatform): a request is `get=1\\n\\n` or `set=1\\n` + `key=value` lines +
an empty line; the answer ends with `errno=N\\n\\n`. Keys are hex on the wire, base64 in our API.
Rules kept: one connection per operation, a whole device change in one `set` (the daemon applies
it under one lock), and a clear error naming the socket when the daemon is not there.
"""

from __future__ import annotations

import base64
import re
import secrets
import socket
from pathlib import Path

from raven.dataplane.errors import DataplaneError
from raven.dataplane.wireguard import keys
from raven.dataplane.wireguard.model import (
    DeviceWrite,
    LiveDevice,
    LivePeer,
    canonical_endpoint,
)

ZERO_KEY_HEX = "0" * 64


def _hex(b64key: str) -> str:
    return base64.b64decode(b64key).hex()


def _b64(hexkey: str) -> str:
    return base64.b64encode(bytes.fromhex(hexkey)).decode()


def encode_set(write: DeviceWrite) -> str:
    lines = ["set=1"]
    if write.private_key is not None:
        lines.append(f"private_key={_hex(write.private_key)}")
    if write.listen_port is not None:
        lines.append(f"listen_port={write.listen_port}")
    removed = [cidr for peer in write.peers for cidr in peer.removed_allowed_ips]
    if removed:
        # No single-IP removal in the UAPI: an allowed IP belongs to one peer, so giving it to
        # a throwaway peer (a fresh random key, no endpoint: it never handshakes) takes it from
        # its owner, and deleting that peer in the same request drops it. One daemon lock.
        # Before the peers: an IP that moves to another peer in this write (a gateway
        # failover) must be taken from its old owner first, or the throwaway would take it
        # from the new one and drop it.
        throwaway = keys.public_key_of(secrets.token_bytes(32)).hex()
        lines.append(f"public_key={throwaway}")
        lines.extend(f"allowed_ip={cidr}" for cidr in removed)
        lines += [f"public_key={throwaway}", "remove=true"]
    for peer in write.peers:
        lines.append(f"public_key={_hex(peer.public_key)}")
        if peer.remove:
            lines.append("remove=true")
            continue
        if peer.preshared_key is not None:
            psk = _hex(peer.preshared_key) if peer.preshared_key else ZERO_KEY_HEX
            lines.append(f"preshared_key={psk}")
        if peer.endpoint is not None:
            lines.append(f"endpoint={peer.endpoint}")
        if peer.keepalive is not None:
            lines.append(f"persistent_keepalive_interval={peer.keepalive}")
        if peer.replace_allowed_ips:
            lines.append("replace_allowed_ips=true")
        lines.extend(f"allowed_ip={cidr}" for cidr in peer.allowed_ips)
    return "\n".join(lines) + "\n\n"


_ALLOWED = re.compile(r"^allowed_ip=(.*)$", re.M)


def _peer(block: str) -> LivePeer:
    """One peer block (starting with its public_key line)."""
    fields: dict[str, str] = {}
    for line in block.split("\n", 12)[:12]:  # the scalar fields precede the allowed IPs
        key, sep, value = line.partition("=")
        if sep and key != "allowed_ip":
            fields[key] = value
    handshake = float(fields.get("last_handshake_time_sec", "0")) + int(
        fields.get("last_handshake_time_nsec", "0")) / 1e9
    psk = fields.get("preshared_key", ZERO_KEY_HEX)
    endpoint = fields.get("endpoint")
    return LivePeer(
        public_key=_b64(fields["public_key"]),
        endpoint=canonical_endpoint(endpoint) if endpoint else None,
        # wireguard-go prints canonical CIDRs; a regex over the block keeps 10,000 cheap
        allowed_ips=frozenset(_ALLOWED.findall(block)),
        keepalive=int(fields.get("persistent_keepalive_interval", "0")),
        preshared_key=None if psk == ZERO_KEY_HEX else _b64(psk),
        last_handshake=handshake,
        rx_bytes=int(fields.get("rx_bytes", "0")),
        tx_bytes=int(fields.get("tx_bytes", "0")),
    )


def parse_get(text: str) -> LiveDevice:
    head, *blocks = re.split(r"^(?=public_key=)", text, flags=re.M)
    private_key: str | None = None
    listen_port = 0
    for line in head.splitlines():
        key, _, value = line.partition("=")
        if key == "private_key" and value != ZERO_KEY_HEX:
            private_key = _b64(value)
        elif key == "listen_port":
            listen_port = int(value)
    peers = {p.public_key: p for p in map(_peer, blocks)}
    return LiveDevice(private_key=private_key, listen_port=listen_port, peers=peers)


class UapiClient:
    def __init__(self, socket_path: Path) -> None:
        self.path = socket_path

    def _exchange(self, request: str) -> str:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(10)
                sock.connect(str(self.path))
                sock.sendall(request.encode())
                chunks: list[bytes] = []
                while True:
                    chunk = sock.recv(1 << 20)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    if b"".join(chunks[-2:]).endswith(b"\n\n"):
                        break
        except OSError as exc:
            raise DataplaneError(
                f"WireGuard UAPI socket {self.path}: {exc.strerror or exc}; is wireguard-go "
                "running for this device (and in this mount namespace)?"
            ) from None
        text = b"".join(chunks).decode()
        body, _, tail = text.rstrip("\n").rpartition("\n")
        errno_line = tail if tail.startswith("errno=") else ""
        if errno_line != "errno=0":
            raise DataplaneError(
                f"WireGuard UAPI {self.path}: request failed ({errno_line or text!r})")
        return body

    def get(self) -> LiveDevice:
        return parse_get(self._exchange("get=1\n\n"))

    def set(self, write: DeviceWrite) -> None:
        self._exchange(encode_set(write))

    def alive(self) -> bool:
        """A daemon listens on the socket (connect only: a `get` of 10,000 allowed IPs is not
        free, and the reconcile reads the device right after anyway)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(2)
                sock.connect(str(self.path))
        except OSError:
            return False
        return True
