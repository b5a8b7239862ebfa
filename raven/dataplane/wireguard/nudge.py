"""Liveness traffic for direct WireGuard paths: one tiny datagram per path, from us.

Why: a path is judged alive by the bytes its peer RECEIVES (raven.paths). WireGuard's persistent
keepalive is postponed by every packet received, so of two sides with the same interval one can
keep the other silent forever, and an idle path would look dead from one end. Each side
therefore sends its own small datagram through the tunnel every tick: the other side's
WireGuard counts it when it decrypts it and then drops it, because its source (our underlay
address) is not one of our pool's allowed IPs. So it never reaches the other host's stack.
Rules kept: marked with the overlay fwmark so our policy rule routes it into the WireGuard
device; sent from our underlay address; errors are swallowed (a failed nudge shows up as the
silence it is meant to detect).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable

from raven.dataplane import netns

IP_FREEBIND = 15  # linux/in.h (not exported by Python's socket module)
DISCARD_PORT = 9  # RFC 863: nobody should be listening, and nothing ever gets there anyway


class Nudger:
    """One UDP socket (so one conntrack entry per path, not one per datagram), opened in the
    namespace on first use and closed with the data plane."""

    def __init__(self, netns_name: str | None, mark: int) -> None:
        self.netns = netns_name
        self.mark = mark
        self._sock: socket.socket | None = None
        self._source: str | None = None

    def _socket(self, source: str) -> socket.socket:
        if self._sock is None or self._source != source:
            self.close()
            with netns.entered(self.netns):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)
            # In a tunnel namespace the underlay address is not local: bind it anyway, so the
            # datagram still carries it (and the far side's WireGuard still drops it).
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
            with contextlib.suppress(OSError):
                sock.bind((source, 0))
            self._sock, self._source = sock, source
        return self._sock

    def send(self, source: str, destinations: Iterable[str]) -> int:
        """One datagram to each IPv4 destination; returns how many were sent."""
        sock = self._socket(source)
        sent = 0
        for dst in destinations:
            with contextlib.suppress(OSError):
                sock.sendto(b"raven", (dst, DISCARD_PORT))
                sent += 1
        return sent

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
