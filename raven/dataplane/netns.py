"""Network-namespace plumbing: enter a named namespace for one thread, or prefix a command.

Rules kept:
- `entered(name)` switches only the calling thread (setns(2) is per thread) and always switches
  back, so sockets opened inside stay bound to the namespace while the rest of the process is
  untouched;
- `None` means "the namespace we are already in": no switch, no prefix;
- commands run in a namespace through `nsenter --net=...` (no new mount namespace), so a tool
  sees the caller's mounts (e.g. a private /var/run/wireguard).
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from raven.dataplane.errors import DataplaneError

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = Path("/var/run/netns")

_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(name: str) -> Path:
    return NETNS_RUN_DIR / name


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the body with the calling thread inside network namespace `name`."""
    if name is None:
        yield
        return
    path = netns_path(name)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DataplaneError(
            f"network namespace {name!r} does not exist ({path}); create it with "
            f"`ip netns add {name}` or pass the right --netns"
        ) from None
    own = f"/proc/self/task/{threading.get_native_id()}/ns/net"
    original = os.open(own, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(original)
    finally:
        os.close(target)
        os.close(original)


def command_prefix(name: str | None) -> list[str]:
    """argv prefix that runs a program inside network namespace `name`."""
    if name is None:
        return []
    return ["nsenter", f"--net={netns_path(name)}", "--"]
