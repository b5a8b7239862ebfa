"""The agent data plane: the ONLY package that imports pyroute2 or runs ip/nft/wg/wireguard-go.

Public API (see docs/dataplane.md):
- `DataplaneSettings(netns=None, state_dir=..., wireguard_backend=..., wireguard_go=...,
  wireguard_run_dir=None, overlay=OverlaySettings())`: the data-plane section of the settings
  root (raven.settings, where its defaults are written); device names, tables and the nft
  table come from `overlay`, the same settings the planner uses;
- `Dataplane(settings)`: context manager with `apply(state) -> ApplyResult` (with `skipped`:
  desired objects it could not apply, e.g. a WireGuard peer with a malformed key), `repair()`,
  `cleanup() -> list[str]`, `public_key() -> str`, `observe() -> DataplaneStatus` (reads only),
  `watch_drift(callback)`, `close()`;
- `tunnel_namespace_problem()`: why this process cannot make the tunnel namespace, or None.
Inside: one applier per kind of kernel object (raven/dataplane/appliers/, wireguard/device.py).
"""

from raven.dataplane.dataplane import Dataplane
from raven.dataplane.errors import DataplaneError
from raven.dataplane.netns import privilege_problem as tunnel_namespace_problem
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
    "tunnel_namespace_problem",
]
