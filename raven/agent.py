"""Node agent: Gateways + its own Node -> raven.topology.plan_node -> raven.dataplane.

Rules kept:
- the agent watches every Gateway and ONLY its own Node (field selector metadata.name), never
  the list of all Nodes: everything about other nodes comes from Gateway status (scales to 10k);
- it publishes per-node facts (its WireGuard public key) as annotations on its own Node, never
  in the user-owned Gateway spec; it renews its heartbeat Lease while it is a gateway candidate
  (named as an endpoint in some Gateway spec);
- every decision (when to apply, coalescing, backoff, cache writes, publishing, the start from
  the offline cache) is the pure `raven.agent_step`; this module is the runner: it owns the
  threads, the informers, the kernel and the monotonic clock, carries out the step's actions
  and reports their outcomes. The wall clock is read only for what leaves the process (Lease
  renewTime, the cache's savedAt, timestamps in the status file and Events) and passed in;
- API trouble never touches the data plane: informers back off and keep their last copy; the
  last good inputs are cached on disk (atomic writes, schema-checked on load), so a start with
  the API unreachable applies from the cache at once, and a damaged cache is never applied;
- a peer the data plane cannot build (`ApplyResult.skipped`, e.g. a malformed public key of
  another pool's gateway) is skipped, not fatal: the agent records a Warning Event on its own
  Node naming the peer and the reason (the Gateway condition is the controller's, see
  raven.gateway_status);
- SIGTERM stops the loops and leaves the kernel state in place (hitless restart); only
  `raven agent cleanup` removes it;
- planning is the pure `raven.topology.plan_node`, on the Gateways as this node sees them:
  `raven.failover.effective_gateways` replaces a pool's active gateway when data-path probes
  (`raven.healthprobe`, their own thread) see it DOWN, with no API call, and `raven.standby.warm`
  keeps the standby paths ready. A change of a probe verdict re-plans at once (like drift).
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from raven import (
    agent_step,
    constants,
    failover,
    nat_discovery,
    pool_claims,
    relay_choice,
    standby,
)
from raven.agent_step import Apply, Inputs, Observation, PublishKey, RefreshStats, SaveCache
from raven.dataplane import Dataplane, DataplaneSettings
from raven.desired import NodeState, Role
from raven.errors import ValidationError
from raven.health import HealthServer
from raven.kube.cache import JSON, CachedInputs, InputCache, atomic_write_json
from raven.kube.errors import Conflict, KubeError
from raven.model import TUNNEL, Gateway, Node
from raven.path_agent import PathManager
from raven.paths import PathPlan
from raven.proxy.metrics import ProxyMetrics
from raven.proxy.plan import plan_proxy
from raven.settings import AgentSettings
from raven.topology import plan_node, vtep_for

if TYPE_CHECKING:  # imported at connect(): the kubernetes client costs ~1 s and ~30 MiB
    from raven.healthprobe.prober import Prober
    from raven.kube.client import Kube
    from raven.kube.events import EventRecorder
    from raven.kube.informer import Informer
    from raven.kube.lease import Heartbeat
    from raven.proxy.certs import CA
    from raven.proxy.component import ProxyComponent

log = logging.getLogger(__name__)

STATUS_FILE = "agent-status.json"  # what `raven status` reads: the last plan and its inputs
CACHE_FILE = "inputs.json"


EVENT_PEER_SKIPPED = "PeerSkipped"
# A pool decision the API server did not take within this many seconds was taken while cut off
# from the control plane: it is published flagged (raven.pool_decision, cause "partition").
DECISION_PUBLISH_TIMEOUT = 2.0

__all__ = ["Agent", "AgentSettings", "Inputs", "gateway_candidate", "parse_inputs"]


def _read_claim(path: Path) -> tuple[str, str, float] | None:
    """The claim a previous agent wrote (pool_claims.render), or None."""
    try:
        gateway, head, since = path.read_text().split()
        return gateway, "" if head == "-" else head, float(since)
    except (OSError, ValueError):
        return None


def gateway_candidate(node: str, gateways: list[Gateway]) -> bool:
    """True when `node` is named as a tunnel or proxy endpoint in some Gateway spec (both are
    elected on the agent's heartbeat)."""
    return any(ep.node_name == node for gw in gateways for ep in gw.spec.endpoints)


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


class Agent:
    def __init__(self, settings: AgentSettings, kube: Kube | None = None) -> None:
        self.settings = settings
        self.kube: Kube | None = kube  # created by connect(), after the cached plan is applied
        self.metrics = AgentMetrics()
        self.cache = InputCache(settings.state_dir / CACHE_FILE)
        # The data plane's section gains the overlay section (names, tables, marks) on the
        # data plane branch; hand it ours then, so apply() and cleanup() use what we plan with.
        shared = ({"overlay": settings.overlay}
                  if "overlay" in {f.name for f in fields(DataplaneSettings)} else {})
        self.dataplane = Dataplane(DataplaneSettings(
            netns=settings.netns, state_dir=settings.state_dir,
            wireguard_backend=settings.wireguard_backend, wireguard_go=settings.wireguard_go,
            **shared,
        ))
        self._wake = threading.Event()
        self._drift = threading.Event()  # the netlink monitor saw a foreign change to our objects
        self.gateways: Informer | None = None
        self.node: Informer | None = None
        self.heartbeat: Heartbeat | None = None
        self.events: EventRecorder | None = None
        self.public_key = ""
        self.ready = False
        self.state: NodeState | None = None
        self.inputs: Inputs | None = None
        self.inputs_time = 0.0  # unix seconds: when the inputs in use were last confirmed
        self.reconciles = 0
        self.last_error: str | None = None
        self.candidate = False
        self.skipped: tuple[str, ...] = ()  # peers the last apply could not build, and why
        self._skipped_reported: tuple[str, ...] = ()
        self.loop_time = time.monotonic()  # last turn of the main loop, for /healthz
        self._status_doc: dict[str, Any] = {}
        # Direct paths to other NAT'd pools, decided by the path manager's thread (raven.paths)
        # and planned with every reconcile; the lock keeps its applies and the loop's apart.
        self.path_plans: dict[str, PathPlan] = {}
        self.path_report: list[dict[str, Any]] = []
        self._reconcile_lock = threading.RLock()
        self._adopted = False
        self.paths = PathManager(self)
        self.prober: Prober | None = None  # started by run() when probes are enabled
        self.switches: tuple[str, ...] = ()  # pools whose active gateway this node replaced
        self.pool_gateway: str | None = None  # our pool's gateway as we use it, for the Node
        self._decision = threading.Event()  # pool_gateway changed: publish it
        self._cut_off = False  # the last attempt to publish pool_gateway failed (API unreachable)
        # Our claim (raven.pool_claims): (gateway we use, controller's choice, since unix s),
        # advertised by the probe responder; the controller's choice per pool, as last read.
        self._claim: tuple[str, str, float] | None = None
        self._heads: dict[str, str] = {}
        self.proxy_metrics = ProxyMetrics(self.metrics.registry)
        self.proxy: ProxyComponent | None = None  # started by run() (docs/proxy.md)

    # -- API side ------------------------------------------------------------------------------

    def connect(self) -> None:
        """Create the API client, informers and heartbeat (raises ConfigError on a bad
        kubeconfig). Imported here, not at module load, so that a start from the cache does not
        wait for the kubernetes client to import."""
        from raven.kube.client import GATEWAYS, NODES, Kube
        from raven.kube.events import EventRecorder
        from raven.kube.informer import Informer
        from raven.kube.lease import Heartbeat

        s = self.settings
        if self.kube is None:
            self.kube = Kube(s.kube)
        self.gateways = Informer(self.kube, GATEWAYS, on_change=self._changed, name="gateways")
        self.node = Informer(self.kube, NODES, field_selector=f"metadata.name={s.node}",
                             on_change=self._changed, name=f"node-{s.node}")
        self.heartbeat = Heartbeat(self.kube, s.node, s.namespace, s.heartbeat_duration)
        self.events = EventRecorder(self.kube, "raven-agent", s.node)

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

    def load_cache(self) -> Inputs | None:
        """The cached inputs, or None (missing, or damaged: `InputCache.load` says which)."""
        cached = self.cache.load()
        if cached is None:
            return None
        self.inputs_time = cached.saved_at
        return Inputs(cached.node, cached.gateways, "cache")

    def save_cache(self, inputs: Inputs, wall: float) -> bool:
        try:
            self.cache.save(CachedInputs(wall, inputs.node, inputs.gateways))
            return True
        except OSError as exc:
            log.warning("cannot write input cache %s: %s", self.cache.path, exc)
            self.metrics.errors.labels("cache").inc()
            return False

    # -- reconcile -----------------------------------------------------------------------------

    def reconcile(self, inputs: Inputs, wall: float) -> bool:
        """Plan from `inputs` and apply; True on success. Never raises. `wall` (unix seconds)
        only stamps the status file and Events."""
        with self._reconcile_lock:
            return self._reconcile(inputs, wall)

    def apply_paths(self, plans: dict[str, PathPlan]) -> bool:
        """The path manager changed the direct paths: plan and apply now with the last inputs."""
        with self._reconcile_lock:
            self.path_plans = dict(plans)
            if self.inputs is None:
                return False
            return self._reconcile(self.inputs, time.time())

    def path_switch(self) -> threading.RLock:
        """The lock every plan + apply holds. The path manager holds it across a scheduled
        move (the take-over write, then the plan with the path direct), so a reconcile planned
        with the old paths cannot apply between the two and give the subnets back."""
        return self._reconcile_lock

    def peer_subnets(self, plans: dict[str, PathPlan]) -> dict[str, tuple[str, ...]]:
        """Allowed IPs of every peer in the plan these paths would give (prepared ahead of a
        scheduled take-over, so the instant itself costs one WireGuard write)."""
        if self.inputs is None:
            return {}
        gateways, me, _ = parse_inputs(self.inputs, self.settings.node)
        state = plan_node(gateways, me, self.settings.overlay, plans)
        return {p.public_key: p.allowed_ips for p in (state.wireguard.peers
                                                      if state.wireguard else ())}

    def record_paths(self, report: list[dict[str, Any]]) -> None:
        if report == self.path_report:
            return
        before = {p["pool"]: p["mode"] for p in self.path_report}
        self.path_report = report
        self.metrics.direct_paths.set(sum(p["mode"] == "direct" for p in report))
        self.metrics.path_mode.clear()
        self.metrics.path_rtt.clear()
        self.metrics.path_loss.clear()
        for path in report:
            self.metrics.path_mode.labels(path["pool"], path["mode"]).set(1)
            if "rttMs" in path:
                self.metrics.path_rtt.labels(path["pool"]).set(path["rttMs"])
            if "loss" in path:
                self.metrics.path_loss.labels(path["pool"]).set(path["loss"])
            if before.get(path["pool"]) != path["mode"]:
                self.metrics.path_changes.labels(path["pool"], path["mode"]).inc()
        if self._status_doc:
            self._status_doc["paths"] = report
            self._flush_status()

    def _reconcile(self, inputs: Inputs, wall: float) -> bool:
        start = time.monotonic()
        self.reconciles += 1
        try:
            gateways, me, problems = parse_inputs(inputs, self.settings.node)
            for problem in problems:
                log.warning("ignored: %s", problem)
            if not self._adopted:  # the first plan keeps the previous agent's direct paths
                self._adopted = True
                try:
                    self.path_plans = self.paths.adopt(gateways, time.monotonic(), time.time())
                except Exception as exc:  # then they are probed again, nothing worse
                    log.warning("direct paths of the previous agent not adopted: %s", exc)
            gateways = self._failover(gateways)
            state = plan_node(gateways, me, self.settings.overlay, self.path_plans)
            state = standby.warm(state, gateways, self.settings.node, self.settings.overlay)
        except Exception as exc:
            self.metrics.errors.labels("plan").inc()
            self.last_error = f"plan: {exc}"
            log.exception("planning failed; data plane left as it is")
            return False
        if inputs.source == "cache":
            refusal = agent_step.cache_refusal(problems, me, state)
            if refusal is not None:
                self.metrics.errors.labels("cache").inc()
                self.last_error = f"cache not applied: {refusal}"
                log.warning("input cache %s not applied: %s; the data plane is left as it is "
                            "until the API server answers", self.cache.path, refusal)
                return False
        self.candidate = gateway_candidate(self.settings.node, gateways)
        if self.proxy is not None:  # the proxy follows the same inputs; it never blocks here
            self.proxy.apply(plan_proxy(gateways, self.settings.node))
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
        self.skipped = result.skipped
        self._report_skipped(wall)
        for role in Role:
            self.metrics.role.labels(role.value).set(1 if state.role == role else 0)
        self.state = state
        self.inputs = inputs
        self.last_error = None
        self._retarget(gateways, state)
        self._note_pool_gateway(gateways, state)
        if not self.ready:
            self.ready = True
            self.metrics.ready.set(1)
        self._write_status(gateways, state, inputs, wall, elapsed)
        self.paths.wake.set()  # new inputs may hold new candidates: look at once
        return True

    def _failover(self, gateways: list[Gateway]) -> list[Gateway]:
        """The Gateways as this node's probes see them (raven.failover), logging each change
        of the decision."""
        if self.prober is None:
            return gateways
        me = self.settings.node
        self._heads = {g.name: next((e.node_name for e in g.status.active_endpoints
                                     if e.type == TUNNEL), "") for g in gateways}
        mine_pool = next((g.name for g in gateways
                          if me in {n.node_name for n in g.status.nodes}), None)
        claim = self._claim
        mine = None if claim is None else pool_claims.Claim(
            claim[0], claim[1], max(0.0, time.time() - claim[2]))
        # Back after being down (no standing claim of our own): count ourselves only once
        # every other candidate of our pool was heard from (raven.pool_claims).
        o = self.settings.overlay
        heard = self.prober.heard()
        others = [(t.pool, t.node) for t in failover.probe_targets(
            gateways, me, lambda ip: vtep_for(ip)[0], o.vxlan_device, o.wireguard_device)
            if t.pool == mine_pool]
        self_alive = (claim is not None and claim[0] == me) or all(
            heard.get(key, False) for key in others)
        effective, switches = failover.effective_gateways(
            gateways, self.prober.verdicts(), me, self.prober.claims(), mine, self_alive)
        described = tuple(str(s) for s in switches)
        if described != self.switches:
            for text in described:
                log.warning("failover without the API: %s", text)
            if not described:
                log.info("failover: every pool follows the controller's choice again")
            self.switches = described
        return effective

    def _retarget(self, gateways: list[Gateway], state: NodeState) -> None:
        if self.prober is None:
            return
        o = self.settings.overlay
        source = state.vxlan.vtep_ip if state.vxlan is not None else None
        targets = failover.probe_targets(gateways, self.settings.node,
                                         lambda ip: vtep_for(ip)[0], o.vxlan_device,
                                         o.wireguard_device) if source else ()
        self.prober.set_targets(targets, source)

    def _note_pool_gateway(self, gateways: list[Gateway], state: NodeState) -> None:
        pool = next((g for g in gateways if g.name == state.pool), None)
        active = [e.node_name for e in pool.status.active_endpoints
                  if e.type == TUNNEL] if pool else []
        chosen = active[0] if active else None
        if chosen != self.pool_gateway:
            self.pool_gateway = chosen
            self._decision.set()
        head = self._heads.get(state.pool or "", "")
        if chosen and self.prober is not None and (
                self._claim is None or self._claim[:2] != (chosen, head)):
            self._claim = (chosen, head, time.time())
            self._write_claim()

    def _write_claim(self) -> None:
        """Our claim for the probe responder to advertise (written whole, then renamed)."""
        from raven.healthprobe import responder

        if self._claim is None:
            return
        path = self.settings.state_dir / responder.ADVERT_FILE
        try:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(pool_claims.render(*self._claim))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc)

    def publish_pool_gateway(self) -> bool:
        """Make our Node's annotation name the gateway our pool uses as we decided it, so the
        controller can adopt the pool's decision (raven.pool_decision); True when it does.
        When the API server did not take an attempt since the last success, the decision was
        taken while cut off: flagged beside it. Each write is conditional on the Node's
        resourceVersion as we last saw it: an attempt that timed out while the pool was cut off
        may still reach the API server after the partition heals, after our retry, and must
        not overwrite the retry's flag with its own (it gets a Conflict instead)."""
        if self.node is None or self.kube is None or self.pool_gateway is None:
            return self.pool_gateway is None
        from raven.kube.client import NODES

        node = self.node.get(self.settings.node)
        if node is None:
            return False
        meta = node.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        want = {constants.ANNOTATION_POOL_GATEWAY: self.pool_gateway,
                constants.ANNOTATION_POOL_GATEWAY_OFFLINE: "true" if self._cut_off else "false"}
        if all(annotations.get(k) == v for k, v in want.items()):
            return True
        patch: dict[str, Any] = {"metadata": {"annotations": want}}
        if meta.get("resourceVersion"):
            patch["metadata"]["resourceVersion"] = meta["resourceVersion"]
        try:
            self.kube.merge_patch(NODES, self.settings.node, patch,
                                  timeout=DECISION_PUBLISH_TIMEOUT)
        except Conflict:
            # Our view of the Node is older than the API server's (the API server answered:
            # not cut off); the informer brings the newer one, try again after a backoff.
            log.info("node %s: publishing the pool's gateway: the Node changed meanwhile; "
                     "trying again", self.settings.node)
            return False
        except KubeError as exc:
            self._cut_off = True
            self.metrics.errors.labels("publish").inc()
            log.warning("node %s: cannot publish the pool's gateway: %s", self.settings.node, exc)
            return False
        self._cut_off = False
        return True

    def _decision_loop(self, stop: threading.Event) -> None:
        """Publish the pool's gateway on its own thread: while the pool is cut off from the API
        server, a blocked write must never delay a reconcile (that is when failover happens)."""
        s = self.settings
        failures = 0
        while not stop.is_set():
            self._decision.wait(timeout=s.resync_period)
            self._decision.clear()
            if stop.is_set():
                return
            if self.publish_pool_gateway():
                failures = 0
                continue
            failures += 1
            stop.wait(s.backoff.delay(failures, random.random))
            self._decision.set()  # try again

    def _on_health(self) -> None:
        """A probe target became or stopped being DOWN: plan again now (the drift path, so
        it works from the offline cache too)."""
        self._drift.set()
        self._wake.set()

    def _report_skipped(self, wall: float) -> None:
        """One Warning Event on our Node per new set of skipped peers (not one per resync)."""
        if self.skipped == self._skipped_reported:
            return
        for reason in self.skipped:
            log.warning("node %s: peer skipped: %s", self.settings.node, reason)
        node = self.node.get(self.settings.node) if self.node is not None else None
        if not self.skipped or self.events is None or node is None:
            self._skipped_reported = self.skipped if not self.skipped else ()
            return  # no API yet: reported by the first apply from live inputs
        self.events.record(node, EVENT_PEER_SKIPPED, (
            f"node {self.settings.node} skipped {len(self.skipped)} peer(s), the rest of the "
            f"overlay is built: {'; '.join(self.skipped)}")[:1000], wall, "Warning")
        self._skipped_reported = self.skipped

    def _write_status(self, gateways: list[Gateway], state: NodeState, inputs: Inputs,
                      wall: float, elapsed: float) -> None:
        pool = next((g for g in gateways if g.name == state.pool), None)
        self._status_doc = {
            "node": self.settings.node,
            "role": str(state.role),
            "pool": state.pool,
            "activeGateways": [e.node_name for e in pool.status.active_endpoints] if pool else [],
            "candidate": self.candidate,
            "source": inputs.source,
            "appliedAt": wall,
            "inputsConfirmedAt": self.inputs_time,
            "reconcileSeconds": elapsed,
            "publicKey": self.public_key,
            "skipped": list(self.skipped),
            "paths": self.path_report,
            "failover": list(self.switches),
            "probes": self.prober.report() if self.prober is not None else [],
            # What this plan was made from: tests and operators can wait for "every agent has
            # acted on Gateway X at resourceVersion R" instead of sleeping.
            "gateways": {g.name: g.metadata.get("resourceVersion") for g in gateways},
            "plan": state.to_json(),
            "proxy": self.proxy.status() if self.proxy is not None else {"role": "disabled"},
        }
        self._flush_status()

    def _flush_status(self) -> None:
        if not self._status_doc:
            return
        try:
            atomic_write_json(self.settings.state_dir / STATUS_FILE, self._status_doc, mode=0o644)
        except OSError as exc:
            log.warning("cannot write %s: %s", STATUS_FILE, exc)

    def refresh_peer_metrics(self, wall: float) -> None:
        if self.prober is not None:  # a responder that died is started again
            from raven.healthprobe import responder

            try:
                responder.ensure(self.settings.state_dir, self.settings.probe.port,
                                 self.settings.netns)
            except OSError as exc:
                log.warning("probe responder not started: %s", exc)
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
            self._status_doc["observedAt"] = wall
            self._status_doc["drift"] = list(observed.drift)
            if self.proxy is not None:  # connections come and go between applies
                self._status_doc["proxy"] = self.proxy.status()
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

    def publish_observed(self, observed: dict[str, str]) -> bool:
        """Our Node's observed-endpoints annotation = `observed` (removed when empty)."""
        value = nat_discovery.encode(observed) if observed else None
        return self._annotate(nat_discovery.ANNOTATION_OBSERVED, value, "observed endpoints")

    def publish_paths(self, paths: dict[str, Any]) -> bool:
        """Our Node's paths annotation (removed when empty): the controller's status.paths."""
        value = nat_discovery.encode(paths) if paths else None
        return self._annotate(nat_discovery.ANNOTATION_PATHS, value, "paths")

    def publish_relay_rtts(self, rtts: dict[str, float]) -> bool:
        """Our Node's relay-rtt annotation: RTT in ms to each public pool's gateway."""
        value = json.dumps(dict(sorted(rtts.items())), separators=(",", ":")) if rtts else None
        return self._annotate(relay_choice.ANNOTATION_RELAY_RTT, value, "relay RTTs")

    def _annotate(self, name: str, value: str | None, what: str) -> bool:
        """Make one annotation of our Node `value` (None: absent); True when it is."""
        if self.node is None or self.kube is None:
            return False
        from raven.kube.client import NODES

        node = self.node.get(self.settings.node)
        if node is None:
            return False
        annotations = (node.get("metadata") or {}).get("annotations") or {}
        if annotations.get(name) == value:
            return True
        try:
            self.kube.merge_patch(NODES, self.settings.node,
                                  {"metadata": {"annotations": {name: value}}})
        except KubeError as exc:
            self.metrics.errors.labels("publish").inc()
            log.warning("node %s: cannot publish %s: %s", self.settings.node, what, exc)
            return False
        log.info("node %s: published %s", self.settings.node, what)
        return True

    # -- the runner ----------------------------------------------------------------------------

    def turn(self, state: agent_step.AgentState, seen: Observation
             ) -> tuple[agent_step.AgentState, float]:
        """One step of the pure core and its actions; returns the next state and deadline."""
        s = self.settings
        decided = agent_step.step(state, seen, time.monotonic(), s)
        state = decided.state
        for action in decided.actions:
            if isinstance(action, SaveCache):
                if self.save_cache(action.inputs, time.time()):
                    state = agent_step.saved(state, action.inputs)
            elif isinstance(action, Apply):
                ok = self.reconcile(action.inputs, time.time())
                state = agent_step.applied(state, action.inputs, ok, time.monotonic(), s,
                                           random.random())
            elif isinstance(action, PublishKey):
                ok = self.publish_public_key()
                state = agent_step.published(state, ok, time.monotonic(), s, random.random())
            elif isinstance(action, RefreshStats):
                self.refresh_peer_metrics(time.time())
        return state, decided.deadline

    def run(self, stop: threading.Event) -> None:
        s = self.settings
        s.state_dir.mkdir(parents=True, exist_ok=True)
        self.public_key = self.dataplane.public_key()
        self._start_prober()
        self._start_proxy()
        cached = self.load_cache()
        state = self._start_from_cache(cached)  # before connect(): the client takes a second
        beating = self._start_api(stop)
        assert self.gateways is not None and self.node is not None
        try:
            while not stop.is_set():
                self.loop_time = time.monotonic()
                woke, drifted = self._wake.is_set(), self._drift.is_set()
                self._wake.clear()
                self._drift.clear()
                live = self._live_inputs()
                self._note_confirmation(time.time())
                seen = Observation(live, woke, drifted, cached if state.applied is None else None)
                state, deadline = self.turn(state, seen)
                self._wake.wait(max(0.0, deadline - time.monotonic()))
        finally:
            stop.set()  # also ends the heartbeat thread
            self.gateways.stop()
            self.node.stop()
            beating.join(timeout=s.kube.request_timeout + 1)
            if self.prober is not None:
                self.prober.stop()
            if self.proxy is not None:
                self.proxy.stop()  # closes every proxy socket; the data plane stays
            self.dataplane.close()  # leaves every kernel object (and wireguard-go) in place

    def _start_prober(self) -> None:
        if not self.settings.probe.enabled:
            return
        from raven.healthprobe import responder
        from raven.healthprobe.prober import Prober

        s = self.settings
        try:
            # Its own process, left running like wireguard-go: a restart of this agent must
            # not silence the probes others send to this node (they would fail over). When
            # it survived, so does our claim (raven.pool_claims); a new one voids it.
            if responder.ensure(s.state_dir, s.probe.port, s.netns, forget_claim=True) is None:
                self._claim = _read_claim(s.state_dir / responder.ADVERT_FILE)
        except OSError as exc:
            log.warning("probe responder not started: %s; other nodes cannot probe this one",
                        exc)
        prober = Prober(s.probe, self._on_health, s.netns)
        prober.start()
        self.prober = prober

    def _start_proxy(self) -> None:
        if not self.settings.proxy.enabled:
            return
        from raven.proxy.component import ProxyComponent

        self.proxy = ProxyComponent(self.settings.node, self.settings.proxy, self.proxy_metrics,
                                    self.load_proxy_ca)
        self.proxy.start()

    def load_proxy_ca(self) -> CA:
        """The cluster proxy CA: the files of --proxy-ca-file/--proxy-ca-key-file, else the
        Secret kube-system/raven-proxy-ca (read when a proxy role needs it, on the proxy's
        thread). Raises CertError or KubeError naming the source."""
        from raven.proxy import certs

        s = self.settings.proxy
        if s.ca_file is not None and s.ca_key_file is not None:
            return certs.load_ca_files(s.ca_file, s.ca_key_file)
        if self.kube is None:
            raise certs.CertError("no CA files given and no API client yet")
        from raven.kube.client import SECRETS

        obj = self.kube.get(SECRETS, certs.CA_SECRET_NAME, certs.CA_SECRET_NAMESPACE)
        return certs.ca_from_secret(obj)

    def _start_from_cache(self, cached: Inputs | None) -> agent_step.AgentState:
        state = agent_step.AgentState()
        if cached is None:
            return state
        started = time.monotonic()
        log.info("applying cached inputs from %.0fs ago", time.time() - self.inputs_time)
        state, _ = self.turn(state, Observation(live=None, cached=cached))
        if state.applied is not None:
            log.info("cached plan applied in %.2fs", time.monotonic() - started)
        return state

    def _start_api(self, stop: threading.Event) -> threading.Thread:
        """Connect, start the informers, the drift monitor and the heartbeat thread."""
        self.connect()
        assert self.gateways is not None and self.node is not None
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
        threading.Thread(target=self.paths.run, args=(stop,), name="paths", daemon=True).start()
        threading.Thread(target=self._decision_loop, args=(stop,), name="pool-gateway",
                         daemon=True).start()
        threading.Thread(target=self.paths.measure_loop, args=(stop,), name="relay-rtt",
                         daemon=True).start()
        # The loop sleeps on _wake, not on stop: wake it when stop is set (SIGTERM), or a stop
        # would wait for the next deadline (up to 10 s, longer than a heartbeat).
        threading.Thread(target=lambda: (stop.wait(), self._wake.set(), self._decision.set()),
                         name="stop-waker",
                         daemon=True).start()
        return beating

    def _note_confirmation(self, wall: float) -> None:
        """Cache age is wall time: it compares with the savedAt a previous process wrote."""
        if self._api_in_sync():
            self.inputs_time = wall
        self.metrics.cache_age.set(max(0.0, wall - self.inputs_time) if self.inputs_time
                                   else 0.0)

    def _heartbeat_loop(self, stop: threading.Event) -> None:
        """Renew the heartbeat Lease while we are a gateway candidate, on its own thread: a slow
        or unreachable API server must never delay a reconcile, and a long reconcile must
        never make the controller think this gateway died."""
        s = self.settings
        beat = agent_step.HeartbeatState()
        while not stop.is_set():
            delay = agent_step.heartbeat_poll(s)
            if self.candidate and self.heartbeat is not None:
                try:
                    self.heartbeat.renew(time.time())  # renewTime goes to the API: wall clock
                    ok = True
                except KubeError as exc:
                    ok = False
                    self.metrics.errors.labels("heartbeat").inc()
                    log.warning("heartbeat lease: %s", exc)
                beat, delay = agent_step.heartbeat_result(beat, ok, s, random.random())
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
            "skipped": list(self.skipped),
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
