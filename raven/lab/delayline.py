"""A userspace delay stage between two interfaces of a lab router: `raven lab delay` (no netem).

This kernel has no netem, no nft `queue` expression and no tc classifiers, so a delay cannot be
asked of the kernel. Instead raven.lab.faults takes a node's port off the pool bridge and puts
this process between it and a new veth pair whose other end takes its place on the bridge:

    node eth0 ═ <port> ──[delayline: hold DELAY, then send]── <port>-dl ═ <port>-db ─ br0

Every Ethernet frame that enters one side (AF_PACKET, ETH_P_ALL, outgoing copies ignored) leaves
the other side DELAY after it arrived, in order: a real one-way delay in each direction, so a
round trip through the node's uplink takes 2 x DELAY longer. It is a pure FIFO (no jitter, no
reordering); what would queue beyond QUEUE_LIMIT bytes per direction is dropped (a tail drop,
as a full router queue would). Checksum and segmentation offload state travels with each frame
(PACKET_VNET_HDR), so TCP and UDP with partial checksums from the veth arrive intact.
Rules kept:
- standard library only; it runs inside the router's namespace as a supervised lab process
  (raven.lab.runtime), so `raven lab down` ends it with the lab;
- it prints READY once both sockets are bound, so the caller switches the port only then;
- SIGTERM/SIGINT end it at once; frames still held are dropped, as a cut would drop them.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import select
import signal
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_VNET_HDR = 15
PACKET_OUTGOING = 4
FRAME_MAX = 65536 + 10  # a GSO frame plus the virtio-net header
QUEUE_LIMIT = 8 << 20  # bytes held per direction
BATCH = 256  # frames read from one socket before looking at the clock again
READY = "READY"


def open_port(ifname: str) -> socket.socket:
    """A raw packet socket on `ifname` only, promiscuous while it is open (the membership
    goes with the socket), carrying the virtio-net header (offload state) with each frame."""
    # Protocol 0 at creation: the socket receives nothing until it is bound to the interface.
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_CLOEXEC
                         | socket.SOCK_NONBLOCK, 0)
    try:
        sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.bind((ifname, ETH_P_ALL))  # (host order: Python swaps it)
        mreq = struct.pack("iHH8s", socket.if_nametoindex(ifname), PACKET_MR_PROMISC, 0, b"")
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
    except BaseException:
        sock.close()
        raise
    return sock


class DelayLine:
    """Two ports, one FIFO per direction; `step()` sends what is due, then waits for frames or
    for the next due time."""

    def __init__(self, a: socket.socket, b: socket.socket, delay: float) -> None:
        self.delay = delay
        self.other = {a: b, b: a}
        self.queues: dict[socket.socket, collections.deque[tuple[float, bytes]]] = {
            a: collections.deque(), b: collections.deque()}  # keyed by the socket to send on
        self.held = {a: 0, b: 0}
        self.forwarded = 0
        self.dropped = 0

    def _send_due(self, now: float) -> float | None:
        """Send every frame that is due; the seconds until the next one (None: none held)."""
        wait: float | None = None
        for out, queue in self.queues.items():
            while queue and queue[0][0] <= now:
                _, frame = queue.popleft()
                self.held[out] -= len(frame)
                try:
                    out.send(frame)
                    self.forwarded += 1
                except OSError:  # a full device queue or a port down: lost, as on a wire
                    self.dropped += 1
            if queue:
                left = queue[0][0] - now
                wait = left if wait is None else min(wait, left)
        return wait

    def _receive(self, sock: socket.socket) -> None:
        out = self.other[sock]
        for _ in range(BATCH):
            try:
                frame, address = sock.recvfrom(FRAME_MAX)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ENETDOWN once when a port went down (node-down); it comes back
                return
            if address[2] == PACKET_OUTGOING:
                continue  # our own send on this port, seen again
            if self.held[out] + len(frame) > QUEUE_LIMIT:
                self.dropped += 1
                continue
            self.queues[out].append((time.monotonic() + self.delay, frame))
            self.held[out] += len(frame)

    def step(self) -> None:
        wait = self._send_due(time.monotonic())
        ready, _, _ = select.select(list(self.other), [], [], wait)
        for sock in ready:
            self._receive(sock)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raven.lab.delayline",
                                     description="hold every frame between two interfaces")
    parser.add_argument("a", help="one interface (e.g. the node's port)")
    parser.add_argument("b", help="the other interface (e.g. the bridge side's veth)")
    parser.add_argument("delay_ms", type=float, help="one-way delay in each direction, ms")
    args = parser.parse_args(argv)
    if not 0 < args.delay_ms <= 60000:
        parser.error(f"delay {args.delay_ms:g} ms: use more than 0 and at most 60000 ms")

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    a, b = open_port(args.a), open_port(args.b)
    line = DelayLine(a, b, args.delay_ms / 1000.0)
    print(f"{READY} {args.a} <-> {args.b}: {args.delay_ms:g} ms each way", flush=True)
    try:
        while True:
            line.step()
    finally:
        with contextlib.suppress(Exception):
            print(f"stopped: {line.forwarded} frames forwarded, {line.dropped} dropped",
                  flush=True)
        a.close()
        b.close()


if __name__ == "__main__":
    sys.exit(main())
