"""Settings and result types of the data plane (plain frozen dataclasses, no kernel objects).

`DataplaneSettings` is the data plane's section of the settings root (`raven.settings`), where
its defaults are written once; it is re-exported here, the same class. Rule kept there: the
overlay's names and numbers (device names, tables, nft table) are not redefined: they come from
`overlay` (raven.settings.OverlaySettings, shared with the planner), so `apply()` and
`cleanup()` can never disagree about which objects are ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raven.settings import DataplaneSettings

__all__ = ["ApplyResult", "DataplaneSettings", "DataplaneStatus", "PeerStatus"]


@dataclass(frozen=True)
class ApplyResult:
    writes: int  # kernel/daemon write operations performed (0 = everything was already right)
    changes: tuple[str, ...]  # one line per change, for logs and events
    # Desired objects that could not be applied (e.g. a WireGuard peer with a malformed key, or
    # the whole IPv6 half of a plan when IPv6 failed: then the IPv4 half was applied), one
    # message each naming the object, the reason and the fix; everything else was applied.
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class PeerStatus:
    public_key: str
    endpoint: str | None
    allowed_ips: int
    handshake_age_s: float | None  # None = never
    rx_bytes: int
    tx_bytes: int


@dataclass(frozen=True)
class DataplaneStatus:
    vxlan: bool  # our VXLAN device exists
    wireguard: bool
    wireguard_backend: str | None
    routes: int
    rules: int
    fdb: int
    neighbours: int
    firewall_elements: int
    peers: tuple[PeerStatus, ...] = ()
    drift: tuple[str, ...] = field(default=())  # what the next apply would change
    skipped: tuple[str, ...] = ()  # what the next apply would skip (see ApplyResult)
