"""Our small client of the WireGuard cross-platform UAPI (`get=1` / `set=1` on a unix socket).

Protocol (wireguard.com/xplatform): a request is `get=1\\n\\n` or `set=1\\n` + `key=value` lines +
an empty line; the answer ends with `errno=N\\n\\n`. Keys are hex on the wire, base64 in our API.
Rules kept: one connection per operation, a whole device change in one `set` (the daemon applies
it under one lock), and a clear error naming the socket when the daemon is not there.
"""

from __future__ import annotations

import base64
import socket
from pathlib import Path

from raven.dataplane.errors import DataplaneError
from raven.dataplane.wireguard.model import (
    DeviceWrite,
    LiveDevice,
    LivePeer,
    canonical_cidr,
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


def parse_get(text: str) -> LiveDevice:
    private_key: str | None = None
    listen_port = 0
    peers: dict[str, LivePeer] = {}
    current: dict[str, object] | None = None

    def flush() -> None:
        if current is not None:
            peers[str(current["public_key"])] = LivePeer(
                public_key=str(current["public_key"]),
                endpoint=current.get("endpoint"),  # type: ignore[arg-type]
                allowed_ips=frozenset(current["allowed_ips"]),  # type: ignore[arg-type]
                keepalive=int(current.get("keepalive", 0)),  # type: ignore[call-overload]
                preshared_key=current.get("psk"),  # type: ignore[arg-type]
                last_handshake=float(current.get("hs", 0.0)),  # type: ignore[arg-type]
                rx_bytes=int(current.get("rx", 0)),  # type: ignore[call-overload]
                tx_bytes=int(current.get("tx", 0)),  # type: ignore[call-overload]
            )

    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "public_key":
            flush()
            current = {"public_key": _b64(value), "allowed_ips": set()}
        elif current is None:
            if key == "private_key" and value != ZERO_KEY_HEX:
                private_key = _b64(value)
            elif key == "listen_port":
                listen_port = int(value)
        elif key == "allowed_ip":
            current["allowed_ips"].add(canonical_cidr(value))  # type: ignore[attr-defined]
        elif key == "endpoint":
            current["endpoint"] = canonical_endpoint(value)
        elif key == "persistent_keepalive_interval":
            current["keepalive"] = int(value)
        elif key == "preshared_key" and value != ZERO_KEY_HEX:
            current["psk"] = _b64(value)
        elif key == "last_handshake_time_sec":
            current["hs"] = float(value)
        elif key == "last_handshake_time_nsec":
            current["hs"] = float(current.get("hs", 0.0)) + int(value) / 1e9  # type: ignore[arg-type]
        elif key == "rx_bytes":
            current["rx"] = int(value)
        elif key == "tx_bytes":
            current["tx"] = int(value)
    flush()
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
        try:
            self._exchange("get=1\n\n")
        except DataplaneError:
            return False
        return True
