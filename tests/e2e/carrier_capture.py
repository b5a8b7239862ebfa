"""Packet capture inside one lab node: which packets cross its overlay devices, with kernel
timestamps (SO_TIMESTAMPNS), for the failover tests' overlap oracle.

Run inside a node's namespaces (`node_exec_argv(...) + [python, this file, OUT, TUNNEL_NETNS]`):
it opens an AF_PACKET socket on every interface (raven-wg0 may not exist yet when the capture
starts), and another in the node's tunnel namespace (docs/tunnel-namespace.md) whenever one is
mounted at /run/netns/TUNNEL_NETNS (the node is an active gateway: its raven0 and raven-wg0 are
there), closed as soon as the name goes (an open socket would keep the namespace, and the
devices in it, alive). It prints "ready" once it listens, and writes one JSON line per packet
of interest to OUT until SIGTERM:
- ICMP echo requests and replies crossing raven-wg0 (the tunnel: cross-pool traffic this node
  carries): {"t", "dev", "out", "src", "dst", "type", "id", "seq"};
- data-path probes (UDP to port 4473) arriving on raven0: {"t", "dev", "probe", "src"}.
Independent of the code under test: the kernel's packet taps, nothing read from the agent.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
from typing import TextIO

ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = 35
PACKET_OUTGOING = 4
PROBE_PORT = 4473
TUNNEL = "raven-wg0"
VXLAN = "raven0"
CLONE_NEWNET = 0x40000000
POLL = 0.05  # seconds between looks at the tunnel namespace's name


def _capture_socket() -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    return sock


def _namespace_id(path: str) -> int | None:
    """The inode of the namespace mounted at `path`, None when none is (nsfs is the device of
    our own /proc/self/ns/net)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino if st.st_dev == os.stat("/proc/self/ns/net").st_dev else None


def _socket_in(path: str) -> socket.socket | None:
    """A capture socket opened in the namespace at `path`, from a thread of its own (setns(2)
    switches only the calling thread; the socket stays in the namespace it was made in)."""
    made: list[socket.socket] = []

    def enter_and_open() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return
        try:
            if libc.setns(fd, CLONE_NEWNET) == 0:
                made.append(_capture_socket())
        finally:
            os.close(fd)

    thread = threading.Thread(target=enter_and_open)
    thread.start()
    thread.join()
    return made[0] if made else None


def _ipv4(frame: bytes, offset: int) -> tuple[str, str, int, bytes] | None:
    if len(frame) < offset + 20 or frame[offset] >> 4 != 4:
        return None
    ihl = (frame[offset] & 0x0F) * 4
    proto = frame[offset + 9]
    src = str(ipaddress.IPv4Address(frame[offset + 12:offset + 16]))
    dst = str(ipaddress.IPv4Address(frame[offset + 16:offset + 20]))
    return src, dst, proto, frame[offset + ihl:]


def main() -> int:
    out = open(sys.argv[1], "w", buffering=1)  # noqa: SIM115 (open for the process's life)
    tunnel_path = f"/run/netns/{sys.argv[2]}" if len(sys.argv) > 2 else None
    node = _capture_socket()
    tunnel: tuple[int, socket.socket] | None = None  # (namespace inode, socket in it)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    while True:
        if tunnel_path is not None:
            now = _namespace_id(tunnel_path)
            if tunnel is not None and tunnel[0] != now:
                tunnel[1].close()
                tunnel = None
            if tunnel is None and now is not None:
                sock = _socket_in(tunnel_path)
                tunnel = (now, sock) if sock is not None else None
        socks = [node] + ([tunnel[1]] if tunnel is not None else [])
        for sock in select.select(socks, [], [], POLL)[0]:
            _record(out, *sock.recvmsg(2048, socket.CMSG_SPACE(16)))


def _record(out: TextIO, frame: bytes, anc: list, _flags: int, addr: tuple) -> None:
    dev, _, pkttype, hatype = addr[0], addr[1], addr[2], addr[3]
    if dev not in (TUNNEL, VXLAN):
        return
    stamp = next((struct.unpack("qq", data[:16]) for level, kind, data in anc
                  if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS), None)
    if stamp is None:
        return
    t = stamp[0] + stamp[1] / 1e9
    # raven-wg0 is a tun device (no link header); raven0 carries Ethernet frames.
    offset = 0 if hatype == 65534 else 14
    if offset == 14 and frame[12:14] != b"\x08\x00":
        return
    parsed = _ipv4(frame, offset)
    if parsed is None:
        return
    src, dst, proto, payload = parsed
    if dev == TUNNEL and proto == 1 and len(payload) >= 8 and payload[0] in (0, 8):
        ident, seq = struct.unpack("!HH", payload[4:8])
        out.write(json.dumps({"t": t, "dev": dev, "out": pkttype == PACKET_OUTGOING,
                              "src": src, "dst": dst, "type": payload[0], "id": ident,
                              "seq": seq}) + "\n")
    elif dev == VXLAN and proto == 17 and len(payload) >= 8 \
            and pkttype != PACKET_OUTGOING \
            and struct.unpack("!H", payload[2:4])[0] == PROBE_PORT:
        out.write(json.dumps({"t": t, "dev": dev, "probe": True, "src": src}) + "\n")


if __name__ == "__main__":
    sys.exit(main())
