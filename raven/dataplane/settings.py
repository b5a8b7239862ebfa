"""Settings and result types of the data plane (plain frozen dataclasses, no kernel objects).

Rule kept: the overlay's names and numbers (device names, tables, nft table) are not redefined
here: they come from `overlay` (raven.settings.OverlaySettings, shared with the planner), so
`apply()` and `cleanup()` can never disagree about which objects are ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from raven.dataplane.errors import DataplaneError
from raven.settings import OverlaySettings

WIREGUARD_BACKENDS = ("auto", "kernel", "userspace")


@dataclass(frozen=True)
class DataplaneSettings:
    netns: str | None = None  # network namespace name (`ip netns`), None = the current one
    state_dir: Path = Path("/var/lib/raven")  # private key, wireguard-go pid file and log
    wireguard_backend: str = "auto"  # "auto" | "kernel" | "userspace"
    wireguard_go: str = "wireguard-go"
    # None: wireguard-go's socket is /var/run/wireguard/<dev>.sock of our mount namespace.
    # A directory: wireguard-go runs in a private mount namespace with this directory on
    # /var/run/wireguard, so tests and labs never share sockets.
    wireguard_run_dir: Path | None = None
    # The cluster-wide names and numbers: device names, tables (`overlay.tables`), nft table.
    overlay: OverlaySettings = field(default_factory=OverlaySettings)

    def __post_init__(self) -> None:
        if self.wireguard_backend not in WIREGUARD_BACKENDS:
            raise DataplaneError(
                f"DataplaneSettings.wireguard_backend: {self.wireguard_backend!r} is not valid; "
                f"use one of {', '.join(WIREGUARD_BACKENDS)}")
        if not isinstance(self.overlay, OverlaySettings):
            raise DataplaneError(
                f"DataplaneSettings.overlay: expected raven.settings.OverlaySettings, got "
                f"{type(self.overlay).__name__}; pass the OverlaySettings the planner uses")
        object.__setattr__(self, "state_dir", Path(self.state_dir))


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
