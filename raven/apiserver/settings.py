"""Settings of the embedded API server: one frozen dataclass, passed in by the entry points."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ApiServerSettings:
    """Everything the API server needs to start.

    `port` 0 asks the kernel for a free port; the bound port is reported by the running server.
    `plain_http` serves without TLS and is refused unless `host` is a loopback address.
    """

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 6443
    plain_http: bool = False
    extra_sans: tuple[str, ...] = ()
    # Events kept in memory so that watches can resume; older resourceVersions get 410 Expired.
    watch_history: int = 20000
    # Interval between BOOKMARK events for watches that asked for them.
    bookmark_interval: float = 60.0
    # Watches without timeoutSeconds end after a random time in this range (like kube-apiserver).
    default_watch_timeout: tuple[float, float] = field(default=(1800.0, 3600.0))
    # A watcher with this many unsent bytes is disconnected (it re-watches or re-lists).
    watcher_backlog_bytes: int = 64 << 20
