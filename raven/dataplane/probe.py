"""ICMP echo round trips from the node (its network namespace), for the relay choice.

Rules kept: one raw ICMP socket per measurement, an identifier of our own so replies to other
programs' pings are ignored, a deadline per echo; a host that does not answer gives None, never
an exception (the relay choice then keeps what it has).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import time

from raven.dataplane import netns

_ECHO_REQUEST, _ECHO_REPLY = 8, 0


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def rtt_ms(netns_name: str | None, address: str, tries: int = 3,
           timeout: float = 1.0) -> float | None:
    """The smallest RTT in ms of `tries` echoes to an IPv4 address, None when none came back."""
    return echo(netns_name, address, tries, timeout)[0]


def echo(netns_name: str | None, address: str, tries: int = 3, timeout: float = 1.0,
         source: str | None = None) -> tuple[float | None, int]:
    """(the smallest RTT in ms or None, how many of `tries` echoes came back); from `source`
    when given ((None, 0) when it is not an address of this host)."""
    with netns.entered(netns_name):
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             socket.IPPROTO_ICMP)
    if source is not None:
        try:
            sock.bind((source, 0))
        except OSError:
            sock.close()
            return None, 0
    ident = os.getpid() & 0xFFFF
    best: float | None = None
    answered = 0
    with sock:
        for seq in range(tries):
            header = struct.pack("!BBHHH", _ECHO_REQUEST, 0, 0, ident, seq)
            payload = b"raven-relay-rtt"
            packet = struct.pack("!BBHHH", _ECHO_REQUEST, 0, _checksum(header + payload), ident,
                                 seq) + payload
            sent = time.monotonic()
            with contextlib.suppress(OSError):
                sock.sendto(packet, (address, 0))
            deadline = sent + timeout
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([sock], [], [], left)
                if not ready:
                    break
                data, (src, _) = sock.recvfrom(2048)
                ihl = (data[0] & 0x0F) * 4
                kind, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
                if kind == _ECHO_REPLY and rid == ident and rseq == seq and src == address:
                    rtt = (time.monotonic() - sent) * 1000
                    best = rtt if best is None else min(best, rtt)
                    answered += 1
                    break
    return best, answered
