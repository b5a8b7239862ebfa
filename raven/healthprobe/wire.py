"""The probe message: 16 bytes, "RVNP", a kind byte, a flags byte, 2 zero bytes, a 64-bit
sequence number; a reply may carry an advertisement after them.

A request (kind 1) is answered by the same 16 bytes with kind 2, from the address it was sent
to, through the device it arrived on. Anything else is ignored (never answered), so the
responder cannot be used to reflect traffic elsewhere or amplify it beyond the advertisement.
A request with flag ADVERTISE asks the responder to append its node's claim (what gateway its
pool uses, under which controller choice, for how long: `raven.pool_claims`), at most
`MAX_ADVERT` bytes. Older responders echo the 16 bytes (flags included) and append nothing;
older probers send no flag and get 16 bytes: both directions stay compatible.
"""

from __future__ import annotations

import struct

MAGIC = b"RVNP"
REQUEST = 1
REPLY = 2
ADVERTISE = 0x01  # flags: append the advertisement to the reply
MAX_ADVERT = 200
_FORMAT = struct.Struct("!4sBB2xQ")
SIZE = _FORMAT.size


def encode(kind: int, seq: int, flags: int = 0) -> bytes:
    return _FORMAT.pack(MAGIC, kind, flags, seq & 0xFFFFFFFFFFFFFFFF)


def decode(data: bytes) -> tuple[int, int] | None:
    """(kind, seq), or None for anything that is not a probe message (the advertisement of a
    reply is ignored here: `advert`)."""
    if len(data) < SIZE or len(data) > SIZE + MAX_ADVERT:
        return None
    magic, kind, _flags, seq = _FORMAT.unpack(data[:SIZE])
    if magic != MAGIC or kind not in (REQUEST, REPLY) or (kind == REQUEST and len(data) != SIZE):
        return None
    return kind, seq


def advert(data: bytes) -> str | None:
    """The advertisement a reply carries, or None (an older responder, or none given)."""
    if len(data) <= SIZE:
        return None
    try:
        return data[SIZE:].decode("ascii")
    except UnicodeDecodeError:
        return None
