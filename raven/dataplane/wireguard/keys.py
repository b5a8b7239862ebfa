"""The node's WireGuard key pair: created once in the state directory, reused for ever.

Rules kept: the private key file is created with O_EXCL and mode 0600 (never world-readable, not
even for an instant) and is never rewritten; a malformed key file is an error naming the file,
never silently replaced (that would change the node's identity under its peers).
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from raven.dataplane.errors import DataplaneError

KEY_FILE = "wireguard.key"


def _raw_private(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


KEY_FILE_MAX_BYTES = 256  # a key file is 45 bytes; never read more (a symlink to /dev/zero)


def load_or_create_private_key(state_dir: Path) -> bytes:
    """The 32-byte private key, created on first use. Every failure is a DataplaneError naming
    the file and the fix (a directory, an unreadable file, a device), never an OSError."""
    path = state_dir / KEY_FILE
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(b64(_raw_private(X25519PrivateKey.generate())) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        with open(path, "rb") as fh:
            text = fh.read(KEY_FILE_MAX_BYTES + 1)
    except OSError as exc:
        raise DataplaneError(
            f"{path}: cannot read or create the WireGuard private key: "
            f"{exc.strerror or exc}; make it a regular file readable by root (or remove it to "
            "make a new key; peers will then need the new public key)") from exc
    try:
        raw = (base64.b64decode(text.strip(), validate=True)
               if len(text) <= KEY_FILE_MAX_BYTES else b"")
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise DataplaneError(
            f"{path}: not a base64 WireGuard private key; restore it from backup, or remove it "
            "to make a new key (peers will need the new public key)"
        )
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return raw


def public_key_of(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw
    )


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def from_b64(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise DataplaneError(f"{what}: {text!r} is not a base64 32-byte WireGuard key")
    return raw
