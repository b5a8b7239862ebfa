"""Node agent: Gateways + its own Node -> raven.topology.plan_node -> raven.dataplane.

Rules kept:
- the agent watches every Gateway and ONLY its own Node (field selector metadata.name), never
  the list of all Nodes: everything about other nodes comes from Gateway status (scales to 10k);
- it publishes per-node facts (its WireGuard public key) as annotations on its own Node, never
  in the user-owned Gateway spec; it renews its heartbeat Lease while it is a gateway candidate
  (named as an endpoint in some Gateway spec);
- every decision (when to apply, coalescing, backoff, cache writes, the start from the offline
  cache, when to publish and renew) is pure: `raven.agent_step` and the one publish schedule
  `raven.publisher`; this module is the runner: it owns the threads, the informers, the kernel
  and the monotonic clock, observes, calls the step, carries out its actions, reports their
  outcomes and sleeps until the deadline or an event. The writes on its own threads (heartbeat,
  pool gateway) share one runner, `raven.schedule_runner.run_schedule`. The wall clock is
  read only for what leaves the process (Lease renewTime, the cache's savedAt, timestamps in
  the status file and Events) and passed in;
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
  (`raven.agent_failover`, their own thread) see it DOWN, with no API call, and
  `raven.standby.warm` keeps the standby paths ready. A change of a probe verdict re-plans at
  once (like drift);
- its Node annotations are written by `raven.node_annotations`, its metrics and status file by
  `raven.agent_report`.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any

from raven import (
    agent_step,
    constants,
    nat_discovery,
    pool_decision,
    publisher,
    relay_choice,
    route_placement,
    standby,
)
from raven.agent_failover import ProbeFailover
from raven.agent_report import STATUS_FILE, AgentMetrics, AgentReport
from raven.agent_step import Apply, Inputs, Observation, PublishKey, RefreshStats, SaveCache
from raven.dataplane import Dataplane, DataplaneSettings
from raven.desired import NodeState, Role
from raven.errors import ValidationError
from raven.health import HealthServer
from raven.kube.cache import JSON, CachedInputs, InputCache
from raven.kube.errors import KubeError
from raven.model import Gateway, Node
from raven.node_annotations import NodeAnnotations, Write
from raven.path_agent import PathManager
from raven.paths import PathPlan
from raven.proxy.metrics import ProxyMetrics
from raven.proxy.plan import plan_proxy
from raven.schedule_runner import run_schedule
from raven.settings import AgentSettings, OverlaySettings
from raven.topology import plan_node

if TYPE_CHECKING:  # imported at connect(): the kubernetes client costs ~1 s and ~30 MiB
    from raven.kube.client import Kube
    from raven.kube.events import EventRecorder
    from raven.kube.informer import Informer
    from raven.kube.lease import Heartbeat
    from raven.proxy.certs import CA
    from raven.proxy.component import ProxyComponent

log = logging.getLogger(__name__)

CACHE_FILE = "inputs.json"


EVENT_PEER_SKIPPED = "PeerSkipped"
# A pool decision the API server did not take within this many seconds was taken while cut off
# from the control plane: it is published flagged (raven.pool_decision, cause "partition").
DECISION_PUBLISH_TIMEOUT = 2.0

__all__ = ["STATUS_FILE", "Agent", "AgentMetrics", "AgentSettings", "Inputs", "gateway_candidate",
           "parse_inputs"]


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


def warm(state: NodeState, gateways: list[Gateway], settings: AgentSettings) -> NodeState:
    """`raven.standby.warm` on the part of the plan that holds the devices (a tunnel
    namespace's, if any)."""
    if state.tunnel is None:
        return standby.warm(state, gateways, settings.node, settings.overlay)
    return replace(state, tunnel=standby.warm(state.tunnel, gateways, settings.node,
                                              settings.overlay))


def placed(dataplane: Any, state: NodeState, overlay: OverlaySettings) -> NodeState:
    """A member's or gateway's routes to the remote pools in main without their rule where
    nothing there contests them (raven.route_placement); where main cannot be read, the rule
    stays (as planned)."""
    read = getattr(dataplane, "foreign_main_routes", None)
    if state.role not in (Role.MEMBER, Role.ACTIVE_GATEWAY) or read is None:
        return state
    try:
        foreign = read()
    except Exception as exc:
        log.warning("main table not read (%s); the routes to the remote pools stay behind "
                    "the rule", exc)
        return state
    return route_placement.place(state, foreign, overlay)


class Agent:
    def __init__(self, settings: AgentSettings, kube: Kube | None = None) -> None:
        self.settings = settings
        self.kube: Kube | None = kube  # created by connect(), after the cached plan is applied
        self.metrics = AgentMetrics()
        self.report = AgentReport(settings.state_dir / STATUS_FILE, self.metrics)
        self.annotations = NodeAnnotations(settings.node, self.metrics.errors)
        self.cache = InputCache(settings.state_dir / CACHE_FILE)
        # The data plane's section gains the overlay section (names, tables, marks) on the
        # data plane branch; hand it ours then, so apply() and cleanup() use what we plan with.
        shared = ({"overlay": settings.overlay}
                  if "overlay" in {f.name for f in fields(DataplaneSettings)} else {})
        self.dataplane = Dataplane(DataplaneSettings(
            netns=settings.netns, state_dir=settings.state_dir,
            tunnel_netns=settings.tunnel_netns if settings.overlay.tunnel_namespace else None,
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
        # Direct paths to other NAT'd pools, decided by the path manager's thread (raven.paths)
        # and planned with every reconcile; the lock keeps its applies and the loop's apart.
        self.path_plans: dict[str, PathPlan] = {}
        self._reconcile_lock = threading.RLock()
        self._adopted = False
        self.paths = PathManager(self)
        self.probes: ProbeFailover | None = None  # started by run() when probes are enabled
        self.pool_gateway: str | None = None  # our pool's gateway as we use it, for the Node
        self.pool_gateways: tuple[str, ...] = ()  # and our vote on its active set (with probes)
        self._decision = threading.Event()  # pool_gateway changed: publish it
        self._candidacy = threading.Event()  # `candidate` changed: the heartbeat looks
        self._cut_off = False  # the last attempt to publish pool_gateway failed (API unreachable)
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
        self.annotations.kube, self.annotations.informer = self.kube, self.node
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
        wg = state.devices().wireguard
        return {p.public_key: p.allowed_ips for p in (wg.peers if wg else ())}

    def record_paths(self, report: list[dict[str, Any]]) -> None:
        self.report.record_paths(report)

    def _plan(self, inputs: Inputs) -> tuple[list[Gateway], NodeState] | None:
        """The Gateways as this node sees them and its plan, or None (logged, counted) when
        planning failed or a plan from the cache is refused."""
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
            if self.probes is not None:
                gateways = self.probes.effective(gateways, time.time())
            state = plan_node(gateways, me, self.settings.overlay, self.path_plans)
            state = warm(state, gateways, self.settings)
            state = placed(self.dataplane, state, self.settings.overlay)
        except Exception as exc:
            self.metrics.errors.labels("plan").inc()
            self.last_error = f"plan: {exc}"
            log.exception("planning failed; data plane left as it is")
            return None
        refusal = agent_step.cache_refusal(problems, me, state) if inputs.source == "cache" \
            else None
        if refusal is not None:
            self.metrics.errors.labels("cache").inc()
            self.last_error = f"cache not applied: {refusal}"
            log.warning("input cache %s not applied: %s; the data plane is left as it is "
                        "until the API server answers", self.cache.path, refusal)
            return None
        return gateways, state

    def _reconcile(self, inputs: Inputs, wall: float) -> bool:
        start = time.monotonic()
        self.reconciles += 1
        planned = self._plan(inputs)
        if planned is None:
            return False
        gateways, state = planned
        candidate = gateway_candidate(self.settings.node, gateways)
        if candidate != self.candidate:
            self.candidate = candidate
            self._candidacy.set()  # the heartbeat starts (or stops) at once
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
        if self.probes is not None:
            self.probes.retarget(gateways, state)
        self._note_pool_gateway(gateways, state)
        if not self.ready:
            self.ready = True
            self.metrics.ready.set(1)
        self._write_status(gateways, state, inputs, wall, elapsed)
        self.paths.wake.set()  # new inputs may hold new candidates: look at once
        return True

    def _note_pool_gateway(self, gateways: list[Gateway], state: NodeState) -> None:
        pool = next((g for g in gateways if g.name == state.pool), None)
        active = pool.status.tunnel_names if pool else ()
        chosen = active[0] if active else None
        ballot = pool_decision.ballot(pool, self.probes.down(pool.name), self.settings.node) \
            if pool is not None and self.probes is not None else ()
        if (chosen, ballot) != (self.pool_gateway, self.pool_gateways):
            self.pool_gateway, self.pool_gateways = chosen, ballot
            self._decision.set()
        if self.probes is not None:
            self.probes.note(chosen, state.pool, time.time())

    def publish_pool_gateway(self) -> bool:
        """Make our Node's annotations name the gateway our pool uses as we decided it and our
        vote on its active set (raven.pool_decision.ballot), so the controller can adopt the
        pool's decision (raven.pool_decision); True when they do.
        When the API server did not take an attempt since the last success, the decision was
        taken while cut off: flagged beside it. Each write is conditional on the Node's
        resourceVersion as we last saw it: an attempt that timed out while the pool was cut off
        may still reach the API server after the partition heals, after our retry, and must
        not overwrite the retry's flag with its own (it gets a Conflict instead; the API server
        answered, so that is no sign of being cut off)."""
        if self.pool_gateway is None:
            return True
        want: dict[str, str | None] = {
            constants.ANNOTATION_POOL_GATEWAY: self.pool_gateway,  # (as older controllers read it)
            constants.ANNOTATION_POOL_GATEWAYS: ",".join(self.pool_gateways) or None,
            constants.ANNOTATION_POOL_GATEWAY_OFFLINE: "true" if self._cut_off else "false"}
        outcome = self.annotations.ensure(want, "the pool's gateway", DECISION_PUBLISH_TIMEOUT,
                                           conditional=True)
        if outcome in (Write.WRITTEN, Write.FAILED):
            self._cut_off = outcome is Write.FAILED
        return outcome.ok

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
        self.report.applied({
            "node": self.settings.node,
            "role": str(state.role),
            "pool": state.pool,
            "activeGateways": list(pool.status.tunnel_names) if pool else [],
            "candidate": self.candidate,
            "source": inputs.source,
            "appliedAt": wall,
            "inputsConfirmedAt": self.inputs_time,
            "reconcileSeconds": elapsed,
            "publicKey": self.public_key,
            "skipped": list(self.skipped),
            "failover": list(self.probes.switches) if self.probes is not None else [],
            "probes": self.probes.report() if self.probes is not None else [],
            # What this plan was made from: tests and operators can wait for "every agent has
            # acted on Gateway X at resourceVersion R" instead of sleeping.
            "gateways": {g.name: g.metadata.get("resourceVersion") for g in gateways},
            "plan": state.to_json(),
            "proxy": self.proxy.status() if self.proxy is not None else {"role": "disabled"},
        })

    def refresh_peer_metrics(self, wall: float) -> None:
        if self.probes is not None:  # a responder that died is started again
            self.probes.ensure_responder()
        try:
            observed = self.dataplane.observe()
        except Exception as exc:
            self.metrics.errors.labels("observe").inc()
            log.warning("observe failed: %s", exc)
            return
        self.report.observed(observed, self.state, wall,
                             self.proxy.status() if self.proxy is not None else None)

    # -- API writes ----------------------------------------------------------------------------

    def publish_public_key(self) -> Write:
        """Make our Node's annotation carry our key (the outcome: `Write.ok` when it already
        does or now does)."""
        return self.annotations.ensure({constants.ANNOTATION_PUBLIC_KEY: self.public_key},
                                       "WireGuard public key")

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
        return self.annotations.ensure({name: value}, what).ok

    # -- the runner ----------------------------------------------------------------------------

    def turn(self, state: agent_step.AgentState, seen: Observation
             ) -> tuple[agent_step.AgentState, float]:
        """One step of the pure core and its actions; returns the next state and deadline."""
        s = self.settings
        if state.publish.due is None and seen.live is not None and seen.live.node is not None:
            # Our Node arrived after an attempt found none: publish the key now (below).
            state = replace(state, publish=publisher.ask(state.publish, time.monotonic()))
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
                outcome = self.publish_public_key()
                if outcome is Write.NO_NODE:  # started before its Node: no backoff, wait
                    state = replace(state, publish=publisher.absent(state.publish))
                else:
                    state = agent_step.published(state, outcome.ok, time.monotonic(), s,
                                                 random.random())
            elif isinstance(action, RefreshStats):
                self.refresh_peer_metrics(time.time())
        return state, decided.deadline

    def run(self, stop: threading.Event) -> None:
        s = self.settings
        s.state_dir.mkdir(parents=True, exist_ok=True)
        self.public_key = self.dataplane.public_key()
        if s.probe.enabled:
            self.probes = ProbeFailover.start(s, self._on_health)
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
                seen = Observation(live, woke, drifted, cached)
                state, deadline = self.turn(state, seen)
                self._wake.wait(max(0.0, deadline - time.monotonic()))
        finally:
            stop.set()  # also ends the heartbeat thread
            self.gateways.stop()
            self.node.stop()
            beating.join(timeout=s.kube.request_timeout + 1)
            if self.probes is not None:
                self.probes.stop()
            if self.proxy is not None:
                self.proxy.stop()  # closes every proxy socket; the data plane stays
            self.dataplane.close()  # leaves every kernel object (and wireguard-go) in place

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
        s = self.settings
        beating = threading.Thread(
            target=run_schedule, name="heartbeat", daemon=True,
            args=(stop, self._candidacy, agent_step.heartbeat_schedule(s), self._renew_heartbeat,
                  lambda: self.candidate))
        beating.start()
        threading.Thread(target=self.paths.run, args=(stop,), name="paths", daemon=True).start()
        threading.Thread(
            target=run_schedule, name="pool-gateway", daemon=True,
            args=(stop, self._decision, agent_step.pool_gateway_schedule(s),
                  self.publish_pool_gateway)).start()
        threading.Thread(target=self.paths.measure_loop, args=(stop,), name="relay-rtt",
                         daemon=True).start()
        # The loops sleep on their events, not on stop: wake them when stop is set (SIGTERM),
        # or a stop would wait for the next deadline (up to 10 s, longer than a heartbeat).
        threading.Thread(target=lambda: (stop.wait(), self._wake.set(), self._decision.set(),
                                         self._candidacy.set()),
                         name="stop-waker", daemon=True).start()
        return beating

    def _note_confirmation(self, wall: float) -> None:
        """Cache age is wall time: it compares with the savedAt a previous process wrote."""
        if self._api_in_sync():
            self.inputs_time = wall
        self.metrics.cache_age.set(max(0.0, wall - self.inputs_time) if self.inputs_time
                                   else 0.0)

    def _renew_heartbeat(self) -> bool:
        assert self.heartbeat is not None
        try:
            self.heartbeat.renew(time.time())  # renewTime goes to the API: wall clock
            return True
        except KubeError as exc:
            self.metrics.errors.labels("heartbeat").inc()
            log.warning("heartbeat lease: %s", exc)
            return False


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
