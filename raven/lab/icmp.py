"""ICMP echo probe of the lab: one process echoes many addresses from many network namespaces.

Run as `python -I -S raven/lab/icmp.py` (standard library only, so it starts in milliseconds
and needs no site-packages) with a JSON request on stdin:
  {"tries": 2, "timeout": 1.0,
   "probes": [{"netns": "/run/netns/lab.pod-a", "addresses": ["10.244.1.2", ...]}, ...]}
It prints one JSON document and exits 0 whether or not the addresses answered (a silent pair is
data, not an error):
  {"results": [{"netns": ..., "address": ..., "rttMs": 0.123 | null}], "errors": [...]}
Why a probe of our own instead of `ping`: the lab reads no tool's text, and ping reports its
round-trip time only as text; one process for a whole ping matrix is also far cheaper than a
shell plus one ping per pair.
Rules kept:
- each source gets a raw ICMP socket made inside its namespace (setns(2) on this thread, then
  straight back), so echoes leave from that namespace; nothing is sent from ours;
- every request of every source is in flight at once: the matrix takes about one timeout per
  try; an address silent for `tries` rounds of `timeout` seconds is reported null;
- a reply counts only when it arrives on the source's socket and its source address, identifier
  and sequence number match a request we sent (other processes' echoes are ignored);
- a namespace that cannot be entered is reported in `errors`, its addresses null;
- IPv4 and IPv6 addresses may be mixed: a source gets one socket per family it probes (ICMPv6
  echo: the kernel fills in the checksum, which covers a pseudo-header with both addresses, and
  delivers the ICMPv6 message without its IPv6 header, the source address beside it).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import socket
import struct
import sys
import time

ECHO_REQUEST, ECHO_REPLY = 8, 0
ECHO_REQUEST6, ECHO_REPLY6 = 128, 129
CLONE_NEWNET = 0x40000000


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes = b"raven-lab-probe") -> bytes:
    header = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ECHO_REQUEST, 0, checksum(header + payload), ident, seq) + payload


def echo_request6(ident: int, seq: int, payload: bytes = b"raven-lab-probe") -> bytes:
    """An ICMPv6 echo request with a zero checksum: raw ICMPv6 sockets always have the kernel
    compute it (it covers the IPv6 pseudo-header, which only the kernel knows for sure)."""
    return struct.pack("!BBHHH", ECHO_REQUEST6, 0, 0, ident, seq) + payload


def parse_reply6(message: bytes, source: str) -> tuple[str, int, int] | None:
    """(source, identifier, sequence) of an ICMPv6 echo reply (no IPv6 header), else None."""
    if len(message) < 8 or message[0] != ECHO_REPLY6:
        return None
    _, _, _, ident, seq = struct.unpack("!BBHHH", message[:8])
    return canonical(source.split("%", 1)[0]), ident, seq


def canonical(address: str) -> str:
    """An address as inet_ntop writes it, so requests and replies compare equal."""
    if ":" in address:
        with contextlib.suppress(OSError):
            return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, address))
    return address


def parse_reply(packet: bytes) -> tuple[str, int, int] | None:
    """(source, identifier, sequence) of an IPv4 packet carrying an echo reply, else None."""
    if len(packet) < 20:
        return None
    header_len = (packet[0] & 0x0F) * 4
    icmp = packet[header_len:header_len + 8]
    if len(icmp) < 8 or icmp[0] != ECHO_REPLY:
        return None
    _, _, _, ident, seq = struct.unpack("!BBHHH", icmp)
    return socket.inet_ntoa(packet[12:16]), ident, seq


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def socket_in(netns_path: str, family: int = socket.AF_INET) -> socket.socket:
    """A raw ICMP (or, for AF_INET6, ICMPv6) socket that lives in the namespace bound at
    `netns_path`."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(netns_path, os.O_RDONLY)
        try:
            _setns(target)
            try:
                proto = socket.IPPROTO_ICMPV6 if family == socket.AF_INET6 else \
                    socket.IPPROTO_ICMP
                return socket.socket(family, socket.SOCK_RAW, proto)
            finally:
                _setns(home)  # back before anything else runs on this thread
        finally:
            os.close(target)
    finally:
        os.close(home)


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def probe(probes: list[tuple[str, list[str]]], tries: int, timeout: float
          ) -> tuple[dict[tuple[str, str], float | None], list[str]]:
    """(netns path, address) -> round-trip time in ms (None when silent), and the errors."""
    ident = os.getpid() & 0xFFFF
    rtt: dict[tuple[str, str], float | None] = {}
    errors: list[str] = []
    # fd -> (socket, netns, family, addresses of that family)
    sockets: dict[int, tuple[socket.socket, str, int, list[str]]] = {}
    try:
        for netns, addresses in probes:
            rtt.update({(netns, a): None for a in addresses})
            for family in dict.fromkeys(map(_family, addresses)):
                try:
                    sock = socket_in(netns, family)
                except OSError as exc:
                    kind = "ICMPv6" if family == socket.AF_INET6 else "ICMP"
                    errors.append(f"{netns}: cannot open an {kind} socket there: {exc.strerror}")
                    continue
                sockets[sock.fileno()] = (sock, netns, family,
                                          [a for a in addresses if _family(a) == family])
        sent: dict[tuple[int, int], tuple[str, int]] = {}  # (fd, seq) -> (address, ns time)
        seq = 0
        poller = select.poll()  # no fd-number limit, unlike select() (big labs, many pods)
        for fd in sockets:
            poller.register(fd, select.POLLIN)
        for _ in range(max(1, tries)):
            pending = 0
            for fd, (sock, netns, family, addresses) in sockets.items():
                for address in addresses:
                    if rtt[(netns, address)] is not None:
                        continue
                    seq = (seq + 1) & 0xFFFF
                    sent[(fd, seq)] = (address, time.monotonic_ns())
                    pending += 1
                    packet = (echo_request6 if family == socket.AF_INET6 else echo_request)(
                        ident, seq)
                    # e.g. no route: the address simply does not answer
                    with contextlib.suppress(OSError):
                        sock.sendto(packet, (address, 0))
            deadline = time.monotonic() + timeout
            while pending:
                left = deadline - time.monotonic()
                ready = poller.poll(max(1, int(left * 1000))) if left > 0 else []
                if not ready:
                    break
                for fd, _ in ready:
                    sock, netns, family, _ = sockets[fd]
                    data, source = sock.recvfrom(65535)
                    reply = (parse_reply6(data, source[0]) if family == socket.AF_INET6
                             else parse_reply(data))
                    now = time.monotonic_ns()
                    if reply is None or reply[1] != ident or (fd, reply[2]) not in sent:
                        continue
                    address, started = sent[(fd, reply[2])]
                    if reply[0] == canonical(address) and rtt[(netns, address)] is None:
                        rtt[(netns, address)] = (now - started) / 1e6
                        pending -= 1
    finally:
        for sock, _, _, _ in sockets.values():
            sock.close()
    return rtt, errors


def main() -> int:
    request = json.load(sys.stdin)
    probes = [(str(p["netns"]), list(dict.fromkeys(str(a) for a in p["addresses"])))
              for p in request["probes"]]
    rtt, errors = probe(probes, int(request.get("tries", 2)), float(request.get("timeout", 1)))
    json.dump({"results": [{"netns": ns, "address": a, "rttMs": None if r is None else
                            round(r, 3)} for (ns, a), r in rtt.items()], "errors": errors},
              sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
