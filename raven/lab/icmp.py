"""ICMP echo probe run inside a lab namespace: `python -m raven.lab.icmp [--tries N] ADDR...`.

Why a probe of our own instead of `ping`: the lab reads no tool's text, and ping reports its
round-trip time only as text. This probe prints one JSON document,
  {"results": [{"address": "10.244.1.2", "rttMs": 0.123}, {"address": ..., "rttMs": null}]}
and exits 0 whether or not the addresses answered (a failed pair is data, not an error).
Rules kept:
- one raw ICMP socket (root in the lab) echoes every address at once, so a whole row of the
  ping matrix takes about one timeout per try, like the parallel pings it replaces;
- a reply counts only when its source, identifier and sequence number match a request we sent:
  other processes' echoes in the same namespace are ignored;
- an address that stays silent for `tries` rounds of `timeout` seconds is reported null;
- imports nothing of raven beyond this module (it starts once per source namespace).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import select
import socket
import struct
import sys
import time

ECHO_REQUEST, ECHO_REPLY = 8, 0


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


def probe(addresses: list[str], tries: int, timeout: float) -> dict[str, float | None]:
    """Address -> round-trip time in milliseconds (None when it never answered)."""
    ident = os.getpid() & 0xFFFF
    rtt: dict[str, float | None] = dict.fromkeys(addresses)
    sent: dict[int, tuple[str, int]] = {}  # sequence -> (address, send time in ns)
    seq = 0
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        for _ in range(tries):
            pending = [a for a in addresses if rtt[a] is None]
            if not pending:
                break
            for address in pending:
                seq = (seq + 1) & 0xFFFF
                sent[seq] = (address, time.monotonic_ns())
                try:
                    sock.sendto(echo_request(ident, seq), (address, 0))
                except OSError:  # e.g. no route: the address simply does not answer
                    continue
            deadline = time.monotonic() + timeout
            while any(rtt[a] is None for a in pending):
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([sock], [], [], left)[0]:
                    break
                reply = parse_reply(sock.recv(65535))
                now = time.monotonic_ns()
                if reply is None or reply[1] != ident or reply[2] not in sent:
                    continue
                address, started = sent[reply[2]]
                if reply[0] == address and rtt[address] is None:
                    rtt[address] = (now - started) / 1e6
    return rtt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raven.lab.icmp",
                                     description="ICMP echo every address; print JSON")
    parser.add_argument("--tries", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds per try")
    parser.add_argument("addresses", nargs="+")
    args = parser.parse_args(argv)
    for address in args.addresses:
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            parser.error(f"{address!r} is not an IPv4 address")
    results = probe(args.addresses, max(1, args.tries), args.timeout)
    json.dump({"results": [{"address": a, "rttMs": None if r is None else round(r, 3)}
                           for a, r in results.items()]}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
