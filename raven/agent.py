"""Node agent: Gateways + its own Node -> raven.topology.plan_node -> raven.dataplane.

Rules kept:
- the agent watches every Gateway and ONLY its own Node (field selector metadata.name), never
  the list of all Nodes: everything about other nodes comes from Gateway status (scales to 10k);
- it publishes per-node facts (its WireGuard public key) as annotations on its own Node, never
  in the user-owned Gateway spec; it renews its heartbeat Lease while it is a gateway candidate
  (named as an endpoint in some Gateway spec);
- a reconcile plans from the inputs and applies the plan; events are coalesced (a burst becomes
  one reconcile) and a resync period re-applies so drift is repaired even without events;
- API trouble never touches the data plane: informers back off and keep their last copy; the
  last good inputs are cached on disk (atomic writes), so a start with the API unreachable
  applies from the cache at once;
- SIGTERM stops the loops and leaves the kernel state in place (hitless restart); only
  `raven agent cleanup` removes it;
- time is read only in the loop; planning is the pure `raven.topology.plan_node`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from raven import constants
from raven.dataplane import Dataplane, DataplaneSettings
from raven.desired import NodeState, Role
from raven.errors import ValidationError
from raven.health import HealthServer
from raven.kube.backoff import BackoffSettings
from raven.kube.cache import JSON, CachedInputs, InputCache, atomic_write_json
from raven.kube.errors import KubeError
from raven.kube.settings import KubeSettings
from raven.model import Gateway, Node
from raven.topology import PlanOptions, plan_node

if TYPE_CHECKING:  # imported at connect(): the kubernetes client costs ~1 s and ~30 MiB
    from raven.kube.client import Kube
    from raven.kube.informer import Informer
    from raven.kube.lease import Heartbeat

log = logging.getLogger(__name__)

STATUS_FILE = "agent-status.json"  # what `raven status` reads: the last plan and its inputs
CACHE_FILE = "inputs.json"


@dataclass(frozen=True)
class AgentSettings:
    node: str
    state_dir: Path
    kube: KubeSettings = field(default_factory=KubeSettings)
    netns: str | None = None  # None: the agent's own network namespace (host network)
    wireguard_backend: str = "auto"
    wireguard_go: str = "wireguard-go"
    plan: PlanOptions = field(default_factory=PlanOptions)
    resync_period: float = 30.0  # re-apply this often even without events (repairs drift)
    coalesce: float = 0.05  # wait this long after an event so a burst becomes one reconcile
    heartbeat_period: float = 5.0
    heartbeat_duration: int = 15
    stats_period: float = 10.0  # refresh per-peer metrics (handshake age, bytes)
    metrics_listen: str | None = None
    namespace: str = constants.RAVEN_NAMESPACE
    backoff: BackoffSettings = field(default_factory=BackoffSettings)


@dataclass(frozen=True)
class Inputs:
    node: JSON | None
    gateways: tuple[JSON, ...]
    source: str  # "api" or "cache"


def gateway_candidate(node: str, gateways: list[Gateway]) -> bool:
    """True when `node` is named as a tunnel endpoint in some Gateway spec."""
    return any(ep.node_name == node for gw in gateways for ep in gw.spec.tunnel_endpoints)


def parse_inputs(inputs: Inputs, node: str) -> tuple[list[Gateway], Node | str, list[str]]:
    """Model objects for the planner; unreadable objects are skipped and named in problems."""
    problems: list[str] = []
    gateways: list[Gateway] = []
    for obj in inputs.gateways:
        try:
            gateways.append(Gateway.from_k8s(obj))
        except ValidationError as exc:
            problems.extend(exc.problems)
    me: Node | str = node
    if inputs.node is not None:
        try:
            me = Node.from_k8s(inputs.node)
        except ValidationError as exc:
            problems.extend(exc.problems)
    return sorted(gateways, key=lambda g: g.name), me, problems


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
        self.drift = Gauge("raven_agent_drift", "Differences between plan and kernel found by "
                           "the last check (repaired by the next apply)", registry=r)


class Agent:
    def __init__(self, settings: AgentSettings, kube: Kube | None = None) -> None:
        self.settings = settings
        self.kube: Kube | None = kube  # created by connect(), after the cached plan is applied
        self.metrics = AgentMetrics()
        self.cache = InputCache(settings.state_dir / CACHE_FILE)
        self.dataplane = Dataplane(DataplaneSettings(
            netns=settings.netns, state_dir=settings.state_dir,
            wireguard_backend=settings.wireguard_backend, wireguard_go=settings.wireguard_go,
            overlay=settings.plan,
        ))
        self._wake = threading.Event()
        self._drift = threading.Event()  # the netlink monitor saw a foreign change to our objects
        self.gateways: Informer | None = None
        self.node: Informer | None = None
        self.heartbeat: Heartbeat | None = None
        self.public_key = ""
        self.ready = False
        self.state: NodeState | None = None
        self.inputs: Inputs | None = None
        self.inputs_time = 0.0  # when the inputs in use were last confirmed by the API
        self.reconciles = 0
        self.last_error: str | None = None
        self.candidate = False
        self._saved: tuple[JSON | None, tuple[JSON, ...]] | None = None
        self.loop_time = time.monotonic()  # last turn of the main loop, for /healthz
        self._status_doc: dict[str, Any] = {}

    # -- API side ------------------------------------------------------------------------------

    def connect(self) -> None:
        """Create the API client, informers and heartbeat (raises ConfigError on a bad
        kubeconfig). Imported here, not at module load, so that a start from the cache does not
        wait for the kubernetes client to import."""
        from raven.kube.client import GATEWAYS, NODES, Kube
        from raven.kube.informer import Informer
        from raven.kube.lease import Heartbeat

        s = self.settings
        if self.kube is None:
            self.kube = Kube(s.kube)
        self.gateways = Informer(self.kube, GATEWAYS, on_change=self._changed, name="gateways")
        self.node = Informer(self.kube, NODES, field_selector=f"metadata.name={s.node}",
                             on_change=self._changed, name=f"node-{s.node}")
        self.heartbeat = Heartbeat(self.kube, s.node, s.namespace, s.heartbeat_duration)

    def _synced(self) -> bool:
        return (self.gateways is not None and self.node is not None
                and self.gateways.synced.is_set() and self.node.synced.is_set())

    # -- inputs --------------------------------------------------------------------------------

    def _changed(self, kind: str, obj: JSON) -> None:
        self._wake.set()

    def _on_drift(self) -> None:
        self._drift.set()
        self._wake.set()

    def _live_inputs(self) -> Inputs | None:
        if not self._synced():
            return None
        assert self.gateways is not None and self.node is not None
        node = self.node.get(self.settings.node)
        return Inputs(node, tuple(self.gateways.items()), "api")

    def _api_in_sync(self) -> bool:
        return (self._synced() and self.gateways is not None and self.node is not None
                and not self.gateways.last_error and not self.node.last_error)

    def _save_cache(self, inputs: Inputs, now: float) -> None:
        key = (inputs.node, inputs.gateways)
        if key == self._saved:
            return
        try:
            self.cache.save(CachedInputs(now, inputs.node, inputs.gateways))
            self._saved = key
        except OSError as exc:
            log.warning("cannot write input cache %s: %s", self.cache.path, exc)
            self.metrics.errors.labels("cache").inc()

    # -- reconcile -----------------------------------------------------------------------------

    def reconcile(self, inputs: Inputs, now: float) -> bool:
        """Plan from `inputs` and apply; True on success. Never raises."""
        start = time.monotonic()
        self.reconciles += 1
        try:
            gateways, me, problems = parse_inputs(inputs, self.settings.node)
            for problem in problems:
                log.warning("ignored: %s", problem)
            self.candidate = gateway_candidate(self.settings.node, gateways)
            state = plan_node(gateways, me, self.settings.plan)
        except Exception as exc:
            self.metrics.errors.labels("plan").inc()
            self.last_error = f"plan: {exc}"
            log.exception("planning failed; data plane left as it is")
            return False
        try:
            result = self.dataplane.apply(state)
        except Exception as exc:
            self.metrics.errors.labels("apply").inc()
            self.last_error = f"apply: {exc}"
            log.exception("apply failed; will retry")
            return False
        elapsed = time.monotonic() - start
        self.metrics.reconcile.observe(elapsed)
        self.metrics.applies.labels(inputs.source).inc()
        self.metrics.kernel_writes.inc(result.writes)
        if result.writes:
            log.info("applied %s plan from %s: %d writes (%s) in %.3fs", state.role,
                     inputs.source, result.writes, ", ".join(result.changes[:8]), elapsed)
        for role in Role:
            self.metrics.role.labels(role.value).set(1 if state.role == role else 0)
        self.state = state
        self.inputs = inputs
        self.last_error = None
        if not self.ready:
            self.ready = True
            self.metrics.ready.set(1)
        self._write_status(gateways, state, inputs, now, elapsed)
        return True

    def _write_status(self, gateways: list[Gateway], state: NodeState, inputs: Inputs,
                      now: float, elapsed: float) -> None:
        pool = next((g for g in gateways if g.name == state.pool), None)
        self._status_doc = {
            "node": self.settings.node,
            "role": str(state.role),
            "pool": state.pool,
            "activeGateways": [e.node_name for e in pool.status.active_endpoints] if pool else [],
            "candidate": self.candidate,
            "source": inputs.source,
            "appliedAt": now,
            "inputsConfirmedAt": self.inputs_time,
            "reconcileSeconds": elapsed,
            "publicKey": self.public_key,
            "plan": state.to_json(),
        }
        self._flush_status()

    def _flush_status(self) -> None:
        if not self._status_doc:
            return
        try:
            atomic_write_json(self.settings.state_dir / STATUS_FILE, self._status_doc, mode=0o644)
        except OSError as exc:
            log.warning("cannot write %s: %s", STATUS_FILE, exc)

    def refresh_peer_metrics(self) -> None:
        try:
            observed = self.dataplane.observe()
        except Exception as exc:
            self.metrics.errors.labels("observe").inc()
            log.warning("observe failed: %s", exc)
            return
        pools = {}
        if self.state is not None and self.state.wireguard is not None:
            pools = {p.public_key: p.pool for p in self.state.wireguard.peers}
        peers = list(observed.peers)
        self.metrics.peers.set(len(peers))
        self.metrics.drift.set(len(observed.drift))
        if self._status_doc:  # `raven status` shows the drift found by the last check
            self._status_doc["observedAt"] = time.time()
            self._status_doc["drift"] = list(observed.drift)
            self._flush_status()
        for gauge in (self.metrics.handshake_age, self.metrics.rx_bytes, self.metrics.tx_bytes):
            gauge.clear()
        for peer in peers:
            labels = (peer.public_key, pools.get(peer.public_key, ""))
            age = peer.handshake_age_s
            self.metrics.handshake_age.labels(*labels).set(-1 if age is None else float(age))
            self.metrics.rx_bytes.labels(*labels).set(float(peer.rx_bytes))
            self.metrics.tx_bytes.labels(*labels).set(float(peer.tx_bytes))

    # -- API writes ----------------------------------------------------------------------------

    def publish_public_key(self) -> bool:
        """Make our Node's annotation carry our key; True when it already does or now does."""
        if self.node is None or self.kube is None:
            return False
        from raven.kube.client import NODES

        node = self.node.get(self.settings.node)
        if node is None:
            return False
        annotations = (node.get("metadata") or {}).get("annotations") or {}
        if annotations.get(constants.ANNOTATION_PUBLIC_KEY) == self.public_key:
            return True
        patch = {"metadata": {"annotations": {constants.ANNOTATION_PUBLIC_KEY: self.public_key}}}
        try:
            self.kube.merge_patch(NODES, self.settings.node, patch)
        except KubeError as exc:
            self.metrics.errors.labels("publish").inc()
            log.warning("node %s: cannot publish public key: %s", self.settings.node, exc)
            return False
        log.info("node %s: published WireGuard public key", self.settings.node)
        return True

    # -- main loop -----------------------------------------------------------------------------

    def start_from_cache(self, now: float) -> bool:
        cached = self.cache.load()
        if cached is None:
            return False
        self.inputs_time = cached.saved_at
        log.info("applying cached inputs from %.0fs ago", now - cached.saved_at)
        return self.reconcile(Inputs(cached.node, cached.gateways, "cache"), now)

    def run(self, stop: threading.Event) -> None:
        s = self.settings
        s.state_dir.mkdir(parents=True, exist_ok=True)
        self.public_key = self.dataplane.public_key()
        started = time.monotonic()
        if self.start_from_cache(time.time()):
            log.info("cached plan applied %.2fs after the agent started",
                     time.monotonic() - started)
        self.connect()
        assert self.gateways is not None and self.node is not None
        assert self.heartbeat is not None
        self.gateways.start()
        self.node.start()
        watch_drift = getattr(self.dataplane, "watch_drift", None)
        if watch_drift is not None:
            try:
                watch_drift(self._on_drift)
            except Exception as exc:  # drift repair then relies on the resync period
                log.warning("drift monitor unavailable: %s", exc)
        beating = threading.Thread(target=self._heartbeat_loop, args=(stop,), name="heartbeat",
                                   daemon=True)
        beating.start()
        # The loop sleeps on _wake, not on stop: wake it when stop is set (SIGTERM), or a stop
        # would wait for the next resync/stats deadline (up to 10 s, longer than a heartbeat).
        threading.Thread(target=lambda: (stop.wait(), self._wake.set()), name="stop-waker",
                         daemon=True).start()
        next_resync = next_stats = next_publish = 0.0
        applied_key: tuple[JSON | None, tuple[JSON, ...]] | None = None
        failures = 0
        try:
            while not stop.is_set():
                deadline = min(next_resync, next_stats, next_publish)
                if not self._synced():
                    deadline = min(deadline, time.time() + 0.2)  # first lists may emit nothing
                woke = self._wake.wait(max(0.0, deadline - time.time()))
                self.loop_time = time.monotonic()
                if stop.is_set():
                    break
                if woke:
                    stop.wait(s.coalesce)  # coalesce the rest of a burst
                    self._wake.clear()
                now = time.time()
                live = self._live_inputs()
                if self._api_in_sync():
                    self.inputs_time = now
                self.metrics.cache_age.set(max(0.0, now - self.inputs_time)
                                           if self.inputs_time else 0.0)
                if live is not None:
                    self._save_cache(live, now)
                    key = (live.node, live.gateways)
                    drifted = self._drift.is_set()
                    self._drift.clear()
                    if key != applied_key or now >= next_resync or drifted:
                        if self.reconcile(live, now):
                            applied_key, failures = key, 0
                            next_resync = now + s.resync_period
                            next_stats = 0.0  # peers, counts and drift right after a change
                        else:  # retry with backoff, data plane stays as it was
                            failures += 1
                            next_resync = now + s.backoff.delay(failures)
                    if now >= next_publish:
                        ok = self.publish_public_key()
                        next_publish = now + (s.resync_period if ok else s.backoff.delay(3))
                elif now >= next_resync or self._drift.is_set():
                    self._drift.clear()
                    next_resync = now + s.resync_period
                    if self.inputs is not None:  # offline: keep re-applying the cached plan
                        self.reconcile(self.inputs, now)
                if now >= next_stats:
                    self.refresh_peer_metrics()
                    next_stats = now + s.stats_period
        finally:
            stop.set()  # also ends the heartbeat thread
            self.gateways.stop()
            self.node.stop()
            beating.join(timeout=s.kube.request_timeout + 1)
            self.dataplane.close()  # leaves every kernel object (and wireguard-go) in place

    def _heartbeat_loop(self, stop: threading.Event) -> None:
        """Renew the heartbeat Lease while we are a gateway candidate, on its own thread: a slow
        or unreachable API server must never delay a reconcile, and a long reconcile must
        never make the controller think this gateway died."""
        s = self.settings
        failures = 0
        while not stop.is_set():
            delay = min(0.5, s.heartbeat_period)  # notice soon when we become a candidate
            if self.candidate and self.heartbeat is not None:
                delay = s.heartbeat_period
                try:
                    self.heartbeat.renew(time.time())
                    failures = 0
                except KubeError as exc:
                    failures += 1
                    self.metrics.errors.labels("heartbeat").inc()
                    log.warning("heartbeat lease: %s", exc)
                    delay = min(s.heartbeat_period, s.backoff.delay(failures))
            stop.wait(delay)

    # -- health --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "node": self.settings.node,
            "ready": self.ready,
            "role": str(self.state.role) if self.state else None,
            "pool": self.state.pool if self.state else None,
            "source": self.inputs.source if self.inputs else None,
            "candidate": self.candidate,
            "reconciles": self.reconciles,
            "lastError": self.last_error,
            "apiErrors": [i.last_error for i in (self.gateways, self.node)
                          if i is not None and i.last_error],
        }

    def health_server(self, listen: str) -> HealthServer:
        def healthy() -> tuple[bool, str]:
            # Unhealthy only when the loop itself is stuck; API or apply errors are reported in
            # the text and in metrics, but a restart would not fix them.
            stuck = time.monotonic() - self.loop_time
            limit = 3 * max(self.settings.resync_period, self.settings.stats_period)
            if stuck > limit:
                return False, f"main loop stuck for {stuck:.0f}s"
            return True, self.last_error or "ok"

        def ready() -> tuple[bool, str]:
            return (self.ready, "applied" if self.ready else "no successful apply yet")

        return HealthServer(listen, self.metrics.registry, healthy, ready, self.status)
