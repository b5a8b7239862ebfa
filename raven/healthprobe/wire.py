"""The probe message: 16 bytes, "RVNP", a kind byte, 3 zero bytes, a 64-bit sequence number.

A request (kind 1) is answered by the same 16 bytes with kind 2, from the address it was sent
to, through the device it arrived on. Anything else is ignored (never answered), so the
responder cannot be used to reflect traffic elsewhere or amplify it."""

from __future__ import annotations

import struct

MAGIC = b"RVNP"
REQUEST = 1
REPLY = 2
_FORMAT = struct.Struct("!4sB3xQ")
SIZE = _FORMAT.size


def encode(kind: int, seq: int) -> bytes:
    return _FORMAT.pack(MAGIC, kind, seq & 0xFFFFFFFFFFFFFFFF)


def decode(data: bytes) -> tuple[int, int] | None:
    """(kind, seq), or None for anything that is not a probe message."""
    if len(data) != SIZE:
        return None
    magic, kind, seq = _FORMAT.unpack(data)
    if magic != MAGIC or kind not in (REQUEST, REPLY):
        return None
    return kind, seq
