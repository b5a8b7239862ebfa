"""sysctls under /proc/sys/net, read and written from inside the node's network namespace.

/proc/sys/net resolves against the network namespace of the thread that opens the file, so the
calling thread enters the namespace for the duration of the read or write.
"""

from __future__ import annotations

from pathlib import Path

from raven.dataplane import netns
from raven.dataplane.errors import DataplaneError


def _path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def read(netns_name: str | None, key: str) -> str | None:
    with netns.entered(netns_name):
        try:
            return _path(key).read_text().strip()
        except FileNotFoundError:
            return None


def write(netns_name: str | None, key: str, value: str) -> None:
    with netns.entered(netns_name):
        try:
            _path(key).write_text(value)
        except OSError as exc:
            raise DataplaneError(f"sysctl {key}={value}: {exc.strerror}") from None
