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

DISCARD_PORT = 9  # RFC 863: nobody should be listening, and nothing ever gets there anyway


def nudge(netns_name: str | None, source: str, destinations: Iterable[str], mark: int) -> int:
    """Send one datagram to each IPv4 destination; returns how many were sent."""
    with netns.entered(netns_name):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sent = 0
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        with contextlib.suppress(OSError):
            sock.bind((source, 0))
        for dst in destinations:
            with contextlib.suppress(OSError):
                sock.sendto(b"raven", (dst, DISCARD_PORT))
                sent += 1
    return sent
