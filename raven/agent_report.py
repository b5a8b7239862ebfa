"""What the agent tells about itself: its Prometheus metrics and the status file `raven status`
(and the lab, tests and benchmarks) read.

Rules kept:
- the status file is written whole and renamed (0644), after every successful apply, when the
  paths change and at every stats refresh (the drift found by the last check); nothing is
  written before the first apply, so the file always describes a plan that was applied;
- a status file that cannot be written is one log line, never a failed reconcile;
- path and peer metrics are replaced as a whole each time (a pool or peer that went away
  leaves no stale series).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from raven.desired import NodeState
from raven.kube.cache import atomic_write_json

if TYPE_CHECKING:
    from raven.dataplane import DataplaneStatus

log = logging.getLogger(__name__)

STATUS_FILE = "agent-status.json"  # what `raven status` reads: the last plan and its inputs


class AgentMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.reconcile = Histogram(
            "raven_agent_reconcile_duration_seconds", "Plan + apply time of one reconcile",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r)
        self.errors = Counter("raven_agent_errors_total", "Errors by phase", ["phase"],
                              registry=r)
        self.applies = Counter("raven_agent_applies_total", "Successful applies", ["source"],
                               registry=r)
        self.kernel_writes = Counter("raven_agent_kernel_writes_total",
                                     "Kernel writes made by applies", registry=r)
        self.peers = Gauge("raven_agent_peers", "WireGuard peers configured", registry=r)
        self.handshake_age = Gauge("raven_agent_peer_handshake_age_seconds",
                                   "Seconds since the last handshake with a peer (-1: never)",
                                   ["peer", "pool"], registry=r)
        self.rx_bytes = Gauge("raven_agent_peer_rx_bytes", "Bytes received from a peer",
                              ["peer", "pool"], registry=r)
        self.tx_bytes = Gauge("raven_agent_peer_tx_bytes", "Bytes sent to a peer",
                              ["peer", "pool"], registry=r)
        self.role = Gauge("raven_agent_role", "1 for this node's current role", ["role"],
                          registry=r)
        self.cache_age = Gauge("raven_agent_cache_age_seconds",
                               "Age of the inputs in use (0 while the API is in sync)",
                               registry=r)
        self.ready = Gauge("raven_agent_ready", "1 after the first successful apply",
                           registry=r)
        self.direct_paths = Gauge("raven_agent_direct_paths", "Remote NAT'd pools reached "
                                  "over a direct (hole-punched) path", registry=r)
        self.path_mode = Gauge("raven_agent_path", "1 for the current path to each NAT'd pool "
                               "(mode: direct, probing, relayed)", ["pool", "mode"], registry=r)
        self.path_changes = Counter("raven_agent_path_changes_total", "Path mode changes, by "
                                    "the mode entered", ["pool", "mode"], registry=r)
        self.path_rtt = Gauge("raven_agent_path_rtt_ms", "RTT in ms of the path to each NAT'd "
                              "pool (docs/gateway.md 4a)", ["pool"], registry=r)
        self.path_loss = Gauge("raven_agent_path_loss_ratio", "Unanswered share of the echoes "
                               "on the path to each NAT'd pool", ["pool"], registry=r)
        self.drift = Gauge("raven_agent_drift", "Differences between plan and kernel found by "
                           "the last check (repaired by the next apply)", registry=r)


class AgentReport:
    def __init__(self, path: Path, metrics: AgentMetrics) -> None:
        self.path = path
        self.metrics = metrics
        self.doc: dict[str, Any] = {}
        self.paths: list[dict[str, Any]] = []

    def applied(self, doc: dict[str, Any]) -> None:
        """A plan was applied: `doc` describes it (the paths are added here)."""
        self.doc = {**doc, "paths": self.paths}
        self.flush()

    def flush(self) -> None:
        if not self.doc:
            return
        try:
            atomic_write_json(self.path, self.doc, mode=0o644)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.path.name, exc)

    def record_paths(self, report: list[dict[str, Any]]) -> None:
        """The path manager's view of each direct path (raven.path_agent)."""
        if report == self.paths:
            return
        before = {p["pool"]: p["mode"] for p in self.paths}
        self.paths = report
        m = self.metrics
        m.direct_paths.set(sum(p["mode"] == "direct" for p in report))
        m.path_mode.clear()
        m.path_rtt.clear()
        m.path_loss.clear()
        for path in report:
            m.path_mode.labels(path["pool"], path["mode"]).set(1)
            if "rttMs" in path:
                m.path_rtt.labels(path["pool"]).set(path["rttMs"])
            if "loss" in path:
                m.path_loss.labels(path["pool"]).set(path["loss"])
            if before.get(path["pool"]) != path["mode"]:
                m.path_changes.labels(path["pool"], path["mode"]).inc()
        if self.doc:
            self.doc["paths"] = report
            self.flush()

    def observed(self, observed: DataplaneStatus, state: NodeState | None, wall: float,
                 proxy: dict[str, Any] | None) -> None:
        """What `Dataplane.observe()` found (peers, drift) at `wall` (unix seconds); `proxy`:
        the proxy's status now (connections come and go between applies), None: disabled."""
        pools = {}
        wg = state.devices().wireguard if state is not None else None
        if wg is not None:
            pools = {p.public_key: p.pool for p in wg.peers}
        peers = list(observed.peers)
        m = self.metrics
        m.peers.set(len(peers))
        m.drift.set(len(observed.drift))
        if self.doc:  # `raven status` shows the drift found by the last check
            self.doc["observedAt"] = wall
            self.doc["drift"] = list(observed.drift)
            if proxy is not None:
                self.doc["proxy"] = proxy
            self.flush()
        for gauge in (m.handshake_age, m.rx_bytes, m.tx_bytes):
            gauge.clear()
        for peer in peers:
            labels = (peer.public_key, pools.get(peer.public_key, ""))
            age = peer.handshake_age_s
            m.handshake_age.labels(*labels).set(-1 if age is None else float(age))
            m.rx_bytes.labels(*labels).set(float(peer.rx_bytes))
            m.tx_bytes.labels(*labels).set(float(peer.tx_bytes))
