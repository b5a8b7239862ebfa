"""Gateway controller: Nodes + Gateways + heartbeat Leases -> Gateway status (one leader).

Rules kept:
- pool membership is the node label `raven.openyurt.io/gateway=<gateway>`; `status.nodes` lists
  every member with its InternalIP and all of its podCIDRs, sorted by node name;
- `status.activeEndpoints` comes from `raven.election.elect`; each elected endpoint gets the node's
  WireGuard public key (node annotation) in `config["public-key"]` and a public address: the
  spec's publicIP, else the node's ExternalIP, else (not under NAT) its InternalIP, else empty;
- status is written only when it differs from what is stored (PUT /status with the object's
  resourceVersion; a conflict just means "look again"); events ActiveEndpointElected /
  ActiveEndpointLost follow a successful write;
- a Gateway that fails validation keeps its last status (nodes and active endpoints) and gets
  the condition SpecValid=False naming every problem; a pool without an active endpoint gets
  Ready=False with the election's reasons. Nothing in an object can crash the loop;
- only the holder of the Lease `raven-gateway-controller` writes; standbys keep warm informers
  so a handover costs one lease period, not a relist;
- `compute_status` is pure (time is an argument), the loop owns the clock.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from raven import constants
from raven.election import ElectionOptions, elect
from raven.errors import ValidationError
from raven.health import HealthServer
from raven.kube.client import GATEWAYS, JSON, LEASES, NODES, Kube, KubeSettings
from raven.kube.errors import Conflict, KubeError, NotFound
from raven.kube.events import EventRecorder
from raven.kube.informer import Informer
from raven.kube.lease import LeaderElector, LeaderSettings
from raven.kube.timefmt import parse_time, to_time
from raven.model import (
    Condition,
    Endpoint,
    FrozenMap,
    Gateway,
    GatewayStatus,
    Node,
    NodeInfo,
    fleet_problems,
    gateway_problems,
)

log = logging.getLogger(__name__)

CONDITION_READY = "Ready"
CONDITION_SPEC_VALID = "SpecValid"
EVENT_ELECTED = "ActiveEndpointElected"
EVENT_LOST = "ActiveEndpointLost"


@dataclass(frozen=True)
class ControllerSettings:
    kube: KubeSettings = field(default_factory=KubeSettings)
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    leader: LeaderSettings = field(default_factory=LeaderSettings)
    election: ElectionOptions = field(default_factory=ElectionOptions)
    resync_period: float = 5.0  # re-run election this often: heartbeats go stale without events
    coalesce: float = 0.05  # wait this long after an event so a burst becomes one reconcile
    metrics_listen: str | None = None  # HOST:PORT for /healthz /readyz /metrics


@dataclass(frozen=True)
class StatusPlan:
    """What the controller wants stored for one Gateway, and what changed in the election."""

    status: JSON  # the full status object to store
    elected: tuple[str, ...]  # nodes that became active endpoints
    lost: tuple[str, ...]  # nodes that stopped being active endpoints
    reasons: tuple[str, ...]


# ---------------------------------------------------------------------------------------------
# Pure part


def _condition(
    old: Sequence[Condition], ctype: str, status: str, reason: str, message: str, now: float
) -> Condition:
    previous = next((c for c in old if c.type == ctype), None)
    since = to_time(now)
    if previous is not None and previous.status == status and previous.last_transition_time:
        since = previous.last_transition_time  # a condition's time is when its status flipped
    return Condition(ctype, status, reason, message, since)


def public_address(endpoint: Endpoint, node: Node | None) -> str:
    if endpoint.public_ip:
        return endpoint.public_ip
    if node is not None and node.external_ip:
        return node.external_ip
    if node is not None and not endpoint.under_nat:
        return node.internal_ip
    return ""


def members_by_pool(nodes: Mapping[str, Node]) -> dict[str, tuple[NodeInfo, ...]]:
    """Every pool's status.nodes entries, sorted by node name: one pass over all Nodes (a
    reconcile of 1,000 pools must not scan 10,000 Nodes once per pool)."""
    out: dict[str, list[NodeInfo]] = {}
    for n in sorted(nodes.values(), key=lambda n: n.name):
        if n.gateway:
            out.setdefault(n.gateway, []).append(NodeInfo(
                node_name=n.name, private_ip=n.internal_ip, subnets=tuple(n.pod_cidrs)))
    return {pool: tuple(infos) for pool, infos in out.items()}


def _old_active(obj: JSON) -> tuple[str, ...]:
    status = obj.get("status") if isinstance(obj.get("status"), dict) else {}
    active = status.get("activeEndpoints") if isinstance(status, dict) else None
    if not isinstance(active, list):
        return ()
    return tuple(str(e.get("nodeName")) for e in active if isinstance(e, dict))


def _raw_conditions(obj: JSON) -> tuple[Condition, ...]:
    status = obj.get("status") if isinstance(obj.get("status"), dict) else {}
    out = []
    for c in (status or {}).get("conditions") or ():
        if isinstance(c, dict) and isinstance(c.get("type"), str):
            out.append(Condition(c["type"], str(c.get("status", "")), str(c.get("reason", "")),
                                 str(c.get("message", "")), str(c.get("lastTransitionTime", ""))))
    return tuple(out)


def _invalid_status(obj: JSON, problems: Sequence[str], now: float) -> JSON:
    """Keep every stored status field; only the SpecValid and Ready conditions change."""
    old_conditions = _raw_conditions(obj)
    status = copy.deepcopy(obj.get("status")) if isinstance(obj.get("status"), dict) else {}
    keep = [c.to_k8s() for c in old_conditions
            if c.type not in (CONDITION_SPEC_VALID, CONDITION_READY)]
    spec_valid = _condition(old_conditions, CONDITION_SPEC_VALID, "False", "InvalidSpec",
                            "; ".join(problems), now)
    had_active = bool(_old_active(obj))
    ready = _condition(
        old_conditions, CONDITION_READY, "True" if had_active else "False", "InvalidSpec",
        "spec is invalid: keeping the last elected endpoints until it is fixed"
        if had_active else "spec is invalid: no endpoint can be elected until it is fixed", now,
    )
    status["conditions"] = [*keep, spec_valid.to_k8s(), ready.to_k8s()]
    return status


def why_no_endpoint(
    gateway: Gateway,
    nodes: Mapping[str, Node],
    heartbeats: Mapping[str, float],
    now: float,
    options: ElectionOptions,
) -> str:
    """A stable explanation (no ages, so the stored status does not change every resync)."""
    tunnels = list(dict.fromkeys(e.node_name for e in gateway.spec.tunnel_endpoints))
    if not tunnels:
        return (f"Gateway {gateway.name}: spec.endpoints has no tunnel endpoint; add one "
                "(type: tunnel) to elect an active gateway")
    parts = []
    for name in tunnels:
        node = nodes.get(name)
        last = heartbeats.get(name)
        if node is None:
            parts.append(f"{name}: no such node")
        elif options.require_ready and not node.ready:
            parts.append(f"{name}: node is not Ready")
        elif last is None:
            parts.append(f"{name}: no agent heartbeat (Lease {constants.RAVEN_NAMESPACE}/"
                         f"{constants.AGENT_LEASE_PREFIX}{name}); is the agent running?")
        elif now - last > options.heartbeat_timeout:
            parts.append(f"{name}: agent heartbeat older than {options.heartbeat_timeout:g}s")
        else:
            parts.append(f"{name}: eligible")
    return "no healthy tunnel endpoint: " + "; ".join(parts)


def compute_status(
    obj: JSON,
    nodes: Mapping[str, Node],
    heartbeats: Mapping[str, float],
    now: float,
    fleet: Sequence[str] = (),
    options: ElectionOptions | None = None,
    pools: Mapping[str, tuple[NodeInfo, ...]] | None = None,
) -> StatusPlan:
    """The status one Gateway object should have. Never raises for bad objects.
    `pools` is `members_by_pool(nodes)`, computed once by a caller handling many Gateways."""
    old_active = _old_active(obj)
    problems = gateway_problems(obj)
    name = str((obj.get("metadata") or {}).get("name", "?"))
    mine = [p for p in fleet if p.startswith(f"Gateway {name}:")]
    if problems:
        status = _invalid_status(obj, problems + mine, now)
        return StatusPlan(status, (), (), tuple(problems))
    try:
        gateway = Gateway.from_k8s(obj)
    except ValidationError as exc:  # gateway_problems should have caught it; be safe anyway
        return StatusPlan(_invalid_status(obj, exc.problems, now), (), (), tuple(exc.problems))
    pool = (pools if pools is not None else members_by_pool(nodes)).get(gateway.name, ())
    election = elect(gateway, nodes, heartbeats, now, options or ElectionOptions())
    active: list[Endpoint] = []
    for ep in election.active:
        node = nodes.get(ep.node_name)
        config = dict(ep.config)
        key = node.public_key if node is not None else ""
        if key:
            config[constants.ENDPOINT_CONFIG_PUBLIC_KEY] = key
        else:
            config.pop(constants.ENDPOINT_CONFIG_PUBLIC_KEY, None)
        active.append(replace(ep, public_ip=public_address(ep, node), config=FrozenMap(config)))
    old_conditions = gateway.status.conditions
    others = tuple(c for c in old_conditions
                   if c.type not in (CONDITION_READY, CONDITION_SPEC_VALID))
    if mine:
        spec_valid = _condition(old_conditions, CONDITION_SPEC_VALID, "False", "FleetConflict",
                                "; ".join(mine), now)
    else:
        spec_valid = _condition(old_conditions, CONDITION_SPEC_VALID, "True", "Valid",
                                "spec is valid", now)
    names = ", ".join(e.node_name for e in active)
    keyless = [e.node_name for e in active if not e.public_key]
    if keyless:
        ready = _condition(old_conditions, CONDITION_READY, "False", "PublicKeyMissing",
                           f"elected {', '.join(keyless)} but its Node has no annotation "
                           f"{constants.ANNOTATION_PUBLIC_KEY} yet (is its agent running?); "
                           "no tunnel can be built to it", now)
    elif active and election.kept_stale:
        ready = _condition(old_conditions, CONDITION_READY, "True", "KeptWithoutHeartbeat",
                           f"every candidate's heartbeat is stale (control plane lost?); "
                           f"keeping {names} active", now)
    elif active:
        ready = _condition(old_conditions, CONDITION_READY, "True", "ActiveEndpointElected",
                           f"active endpoint(s): {names}", now)
    else:
        why = why_no_endpoint(gateway, nodes, heartbeats, now, options or ElectionOptions())
        ready = _condition(old_conditions, CONDITION_READY, "False", "NoActiveEndpoint", why,
                           now)
    new_status = GatewayStatus(
        nodes=pool,
        active_endpoints=tuple(active),
        conditions=(*others, spec_valid, ready),
        node_count=len(pool),  # CRD printer column "Nodes" (gateway/crd.yaml)
        extra=gateway.status.extra,
    )
    rendered = replace(gateway, status=new_status).to_k8s().get("status", {})
    new_active = tuple(e.node_name for e in active)
    return StatusPlan(
        status=rendered,
        elected=tuple(n for n in new_active if n not in old_active),
        lost=tuple(n for n in old_active if n not in new_active),
        reasons=tuple(election.reasons),
    )


def heartbeats_from_leases(leases: Sequence[JSON]) -> dict[str, float]:
    """node name -> unix seconds of the last renewal of its `raven-agent-<node>` Lease."""
    out: dict[str, float] = {}
    for lease in leases:
        name = str((lease.get("metadata") or {}).get("name", ""))
        if not name.startswith(constants.AGENT_LEASE_PREFIX):
            continue
        spec = lease.get("spec") or {}
        when = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime"))
        if when is not None:
            out[name.removeprefix(constants.AGENT_LEASE_PREFIX)] = when
    return out


# ---------------------------------------------------------------------------------------------
# The loop


class ControllerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconcile = Histogram("raven_controller_reconcile_duration_seconds",
                                   "Time to reconcile every Gateway once",
                                   registry=self.registry)
        self.writes = Counter("raven_controller_status_writes_total",
                              "Gateway status writes", registry=self.registry)
        self.errors = Counter("raven_controller_errors_total", "Errors by phase", ["phase"],
                              registry=self.registry)
        self.leader = Gauge("raven_controller_leader", "1 while this replica is the leader",
                            registry=self.registry)
        self.pools = Gauge("raven_controller_pools_without_endpoint",
                           "Gateways with no active endpoint", registry=self.registry)


class GatewayController:
    def __init__(self, settings: ControllerSettings, kube: Kube | None = None) -> None:
        self.settings = settings
        self.kube = kube or Kube(settings.kube)
        self.metrics = ControllerMetrics()
        self._wake = threading.Event()
        self.gateways = Informer(self.kube, GATEWAYS, on_change=self._changed, name="gateways")
        self.nodes = Informer(self.kube, NODES, on_change=self._changed, name="nodes")
        self.leases = Informer(self.kube, LEASES, namespace=constants.RAVEN_NAMESPACE,
                               on_change=self._lease_changed, name="leases")
        self.elector = LeaderElector(self.kube, settings.identity, settings.leader)
        self.events = EventRecorder(self.kube, "raven-gateway-controller", settings.identity)
        self.writes = 0
        self.reconciles = 0
        self._heartbeat_seen: dict[str, float] = {}  # node -> last renewTime seen (for wakes)
        self._node_cache: dict[str, tuple[str, Node]] = {}  # name -> (resourceVersion, parsed)

    def _changed(self, kind: str, obj: JSON) -> None:
        self._wake.set()

    def _lease_changed(self, kind: str, obj: JSON) -> None:
        """Wake only when a heartbeat can change an election: a Lease that appears, disappears
        or comes back after being stale. A routine renewal of a fresh heartbeat (every agent,
        every few seconds) changes nothing; going stale is caught by the resync period."""
        name = str((obj.get("metadata") or {}).get("name", ""))
        if not name.startswith(constants.AGENT_LEASE_PREFIX):
            return
        beats = heartbeats_from_leases([obj])
        node = name.removeprefix(constants.AGENT_LEASE_PREFIX)
        previous = self._heartbeat_seen.get(node)
        if kind == "DELETED" or node not in beats:
            self._heartbeat_seen.pop(node, None)
            self._wake.set()
            return
        self._heartbeat_seen[node] = beats[node]
        timeout = self.settings.election.heartbeat_timeout
        if previous is None or beats[node] - previous > timeout or time.time() - previous > (
                timeout):
            self._wake.set()

    def _nodes(self) -> dict[str, Node]:
        """Parsed Nodes; a Node is parsed again only when its resourceVersion changed."""
        out: dict[str, Node] = {}
        cache: dict[str, tuple[str, Node]] = {}
        for obj in self.nodes.items():
            meta = obj.get("metadata") or {}
            key, rv = str(meta.get("name")), str(meta.get("resourceVersion", ""))
            hit = self._node_cache.get(key)
            if hit is not None and hit[0] == rv and rv:
                node = hit[1]
            else:
                try:
                    node = Node.from_k8s(obj)
                except ValidationError as exc:
                    log.warning("ignoring unreadable Node: %s", exc)
                    self.metrics.errors.labels("parse").inc()
                    continue
            cache[key] = (rv, node)
            out[node.name] = node
        self._node_cache = cache
        return out

    def reconcile(self, now: float) -> int:
        """Bring every Gateway's status up to date; returns the number of status writes."""
        start = time.monotonic()
        nodes = self._nodes()
        heartbeats = heartbeats_from_leases(self.leases.items())
        objects = self.gateways.items()
        parsed = []
        for obj in objects:
            try:
                parsed.append(Gateway.from_k8s(obj))
            except ValidationError:
                continue  # reported on the object itself by compute_status
        pools = members_by_pool(nodes)
        # Judge the fleet by the membership we are about to write, not by the stored
        # status.nodes: a node that just moved pools is otherwise "in two pools" until our own
        # write lands, and the condition would flap (two extra writes per move).
        upcoming = [replace(g, status=replace(g.status, nodes=pools.get(g.name, ())))
                    for g in parsed]
        fleet = fleet_problems(upcoming, list(nodes.values()))
        writes, without = 0, 0
        for obj in objects:
            try:
                plan = compute_status(obj, nodes, heartbeats, now, fleet,
                                      self.settings.election, pools)
            except Exception:  # a planner bug for one Gateway must not stop the others
                log.exception("Gateway %s: computing status failed",
                              (obj.get("metadata") or {}).get("name"))
                self.metrics.errors.labels("plan").inc()
                continue
            if not plan.status.get("activeEndpoints"):
                without += 1
            if plan.status == (obj.get("status") or {}):
                continue
            if self._write(obj, plan, now):
                writes += 1
        self.metrics.pools.set(without)
        self.metrics.reconcile.observe(time.monotonic() - start)
        self.reconciles += 1
        return writes

    def _write(self, obj: JSON, plan: StatusPlan, now: float) -> bool:
        name = obj["metadata"]["name"]
        body = copy.deepcopy(obj)
        body["status"] = plan.status
        try:
            stored = self.kube.replace_status(GATEWAYS, body)
        except (Conflict, NotFound):
            self._wake.set()  # the informer will bring the newer object; look again
            return False
        except KubeError as exc:
            log.warning("Gateway %s: status write failed: %s", name, exc)
            self.metrics.errors.labels("write").inc()
            self._wake.set()
            return False
        self.writes += 1
        self.metrics.writes.inc()
        for node in plan.elected:
            self.events.record(stored, EVENT_ELECTED,
                               f"node {node} elected active tunnel endpoint of Gateway {name}",
                               now)
        for node in plan.lost:
            why = "; ".join(plan.reasons) or "no longer elected"
            self.events.record(stored, EVENT_LOST,
                               f"node {node} is no longer an active endpoint of Gateway {name}: "
                               f"{why}", now, "Warning")
        log.info("Gateway %s: status written (elected %s, lost %s)", name,
                 list(plan.elected), list(plan.lost))
        return True

    def synced(self) -> bool:
        return all(i.synced.is_set() for i in (self.gateways, self.nodes, self.leases))

    def run(self, stop: threading.Event) -> None:
        s = self.settings
        for informer in (self.gateways, self.nodes, self.leases):
            informer.start()
        next_election = 0.0
        next_resync = 0.0
        try:
            while not stop.is_set():
                now = time.time()
                if now >= next_election:
                    was = self.elector.is_leader
                    leader = self.elector.try_acquire_or_renew(now)
                    self.metrics.leader.set(1 if leader else 0)
                    if leader != was:
                        log.info("%s %s leadership", s.identity, "acquired" if leader else "lost")
                        self._wake.set()
                    next_election = now + (s.leader.renew_period if leader
                                           else s.leader.retry_period)
                if self.elector.is_leader and self.synced() and (
                    self._wake.is_set() or now >= next_resync
                ):
                    if self._wake.is_set():
                        stop.wait(s.coalesce)  # let the rest of a burst arrive
                    self._wake.clear()
                    try:
                        self.reconcile(time.time())
                    except Exception:
                        log.exception("reconcile failed")
                        self.metrics.errors.labels("reconcile").inc()
                    next_resync = time.time() + s.resync_period
                timeout = max(0.01, min(next_election, next_resync) - time.time())
                self._wake.wait(timeout) if self.elector.is_leader else stop.wait(
                    min(timeout, 0.5))
        finally:
            for informer in (self.gateways, self.nodes, self.leases):
                informer.stop()
            self.elector.release()
            self.metrics.leader.set(0)

    def health_server(self, listen: str) -> HealthServer:
        def healthy() -> tuple[bool, str]:
            errors = [f"{i.name}: {i.last_error}" for i in (self.gateways, self.nodes, self.leases)
                      if i.last_error]
            return True, "; ".join(errors) or "ok"

        def ready() -> tuple[bool, str]:
            return (self.synced(), "informers synced" if self.synced() else "waiting for lists")

        return HealthServer(listen, self.metrics.registry, healthy, ready, lambda: {
            "identity": self.settings.identity, "leader": self.elector.is_leader,
            "holder": self.elector.holder(), "writes": self.writes,
            "reconciles": self.reconciles,
        })

