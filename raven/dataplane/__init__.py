"""The agent data plane: the ONLY package that imports pyroute2 or runs ip/nft/wg/wireguard-go.

Public API (see docs/dataplane.md):
- `DataplaneSettings(netns=None, state_dir=..., wireguard_backend="auto", wireguard_go=...,
  wireguard_run_dir=None, vxlan_device=..., wireguard_device=..., tables=..., nft_table=...)`
- `Dataplane(settings)`: context manager with `apply(state) -> ApplyResult`, `repair()`,
  `cleanup() -> list[str]`, `public_key() -> str`, `observe() -> DataplaneStatus`,
  `watch_drift(callback)`, `close()`.
"""

from raven.dataplane.dataplane import Dataplane
from raven.dataplane.errors import DataplaneError
from raven.dataplane.settings import (
    ApplyResult,
    DataplaneSettings,
    DataplaneStatus,
    PeerStatus,
)

__all__ = [
    "ApplyResult",
    "Dataplane",
    "DataplaneError",
    "DataplaneSettings",
    "DataplaneStatus",
    "PeerStatus",
]
