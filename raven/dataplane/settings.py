"""Settings and result types of the data plane (plain frozen dataclasses, no kernel objects)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from raven import constants
from raven.dataplane.errors import DataplaneError

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
    vxlan_device: str = constants.VXLAN_DEVICE
    wireguard_device: str = constants.WIREGUARD_DEVICE
    tables: tuple[int, ...] = (constants.VXLAN_TABLE, constants.WIREGUARD_TABLE)
    nft_table: str = constants.NFT_TABLE

    def __post_init__(self) -> None:
        if self.wireguard_backend not in WIREGUARD_BACKENDS:
            raise DataplaneError(
                f"DataplaneSettings.wireguard_backend: {self.wireguard_backend!r} is not valid; "
                f"use one of {', '.join(WIREGUARD_BACKENDS)}")
        object.__setattr__(self, "state_dir", Path(self.state_dir))


@dataclass(frozen=True)
class ApplyResult:
    writes: int  # kernel/daemon write operations performed (0 = everything was already right)
    changes: tuple[str, ...]  # one line per change, for logs and events


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
