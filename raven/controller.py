"""Gateway controller: Nodes + Gateways + heartbeat Leases -> Gateway status (one leader).

Rules kept:
- what each Gateway's status should be is the pure `raven.gateway_status.compute_status`
  (membership, election, public keys and addresses, conditions); when to elect, renew and
  reconcile is the pure `raven.controller_step`; this module is the runner: informers, the
  leader Lease, status writes, Events, metrics and a monotonic clock. The wall clock is read
  only for what goes to the API (Lease renewTime, condition and Event times, heartbeat ages,
  which compare with renewTimes written by the agents) and passed in as `now`;
- status is written only when it differs from what is stored (PUT /status with the object's
  resourceVersion; a conflict just means "look again"); events ActiveEndpointElected /
  ActiveEndpointLost follow a successful write; GatewayFailover follows once its cause is
  settled (raven.pool_decision.resolve: at once for a partition, else at the first reconcile
  that has the evidence, a heartbeat renewed after the move or one missed);
- only the holder of the Lease `raven-gateway-controller` writes; standbys keep warm informers
  so a handover costs one lease period, not a relist;
- nothing in an object can crash the loop: a Gateway whose status cannot be computed is logged
  and skipped, the others are still written.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import random
import socket
import threading
import time
from dataclasses import replace
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from raven import constants, controller_step, pool_decision, relay_choice
from raven.controller_step import Action, ControllerState, Observation
from raven.election import heard
from raven.errors import ValidationError
from raven.gateway_status import (
    CONDITION_READY,
    CONDITION_SPEC_VALID,
    EVENT_ELECTED,
    EVENT_FAILOVER,
    EVENT_LOST,
    StatusPlan,
    agent_starts_from_leases,
    compute_status,
    heard_since_floor,
    heartbeats_from_leases,
    kept_reason,
    key_problem,
    members_by_pool,
    observed_endpoints,
    public_address,
    relay_rtts,
    tunnel_candidates,
    why_no_endpoint,
)
from raven.health import HealthServer
from raven.kube.client import (
    CONFIGMAPS,
    ENDPOINTS,
    GATEWAYS,
    JSON,
    LEASES,
    NODES,
    SERVICES,
    Kube,
    Resource,
)
from raven.kube.errors import AlreadyExists, Conflict, KubeError, NotFound
from raven.kube.events import EventRecorder
from raven.kube.informer import Informer
from raven.kube.lease import LeaderElector
from raven.model import Gateway, Node, fleet_problems
from raven.proxy import compat
from raven.settings import ControllerSettings

log = logging.getLogger(__name__)

__all__ = [  # the pure names stay importable from here for existing callers
    "CONDITION_READY", "CONDITION_SPEC_VALID", "EVENT_ELECTED", "EVENT_FAILOVER", "EVENT_LOST",
    "ControllerSettings", "GatewayController", "StatusPlan", "compute_status",
    "heartbeats_from_leases", "key_problem", "members_by_pool", "public_address",
    "why_no_endpoint",
]


def default_identity() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


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
        if not settings.identity:
            settings = replace(settings, identity=default_identity())
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
        self.write_failures = 0  # status writes refused by the API (not conflicts)
        self.reconciles = 0
        self._heartbeat_seen: dict[str, float] = {}  # node -> last renewTime seen (for wakes)
        # Unix time this replica last gained leadership: renewals it could not see before are
        # not held against active gateways (raven.gateway_status.heard_since_floor).
        self._heard_since: float | None = None
        self._node_cache: dict[str, tuple[str, Node]] = {}  # name -> (resourceVersion, parsed)
        self._relay_state = relay_choice.RelayState()
        self._compat_done: object = None  # the proxy objects last written (skip when equal)
        self._unserved: set[str] = set()  # kinds the API server does not serve (logged once)
        self._failovers: list[pool_decision.Failover] = []  # moves whose cause is pending
        # Gateway -> {node: wall time the status moved the pool's gateway away from it}, kept
        # until the node renews (raven.pool_decision.unproven: no move back to a dead node).
        self._moved_from: dict[str, dict[str, float]] = {}
        self._heard_again: dict[str, float] = {}  # Gateway -> pool_decision.heard_again

    def _changed(self, kind: str, obj: JSON) -> None:
        self._wake.set()

    def _lease_changed(self, kind: str, obj: JSON) -> None:
        """Wake only when a heartbeat can change an election (controller_step.heartbeat_wakes):
        every agent renews every few seconds, and those renewals change nothing."""
        name = str((obj.get("metadata") or {}).get("name", ""))
        if not name.startswith(constants.AGENT_LEASE_PREFIX):
            return
        node = name.removeprefix(constants.AGENT_LEASE_PREFIX)
        current = None if kind == "DELETED" else heartbeats_from_leases([obj]).get(node)
        previous = self._heartbeat_seen.get(node)
        if current is None:
            self._heartbeat_seen.pop(node, None)
        else:
            self._heartbeat_seen[node] = current
        if controller_step.heartbeat_wakes(previous, current,
                                           self.settings.election.heartbeat_timeout) \
                or any(node in f.lost for f in self._failovers):
            self._wake.set()  # (a renewal of a node we failed over from settles a cause)

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

    def _choose_relay(self, gateways: list[Gateway], nodes: dict[str, Node],
                      mono: float) -> str | None:
        """The relay between NAT'd pools by measured RTT (raven.relay_choice), to flag in its
        Gateway's status; None when it is the planner's default (nothing to flag). The hold is
        a duration, timed on the monotonic clock `mono`: a wall clock stepped by NTP would cut
        it short or stretch it (the leader elector times takeovers the same way)."""
        decided = relay_choice.decide(gateways, relay_rtts(gateways, nodes), self._relay_state,
                                      mono)
        if decided.moved or decided.state != self._relay_state:
            log.info("relay between NAT'd pools: %s", decided.why)
        self._relay_state = decided.state
        return decided.flag

    def reconcile(self, now: float, mono: float | None = None) -> int:
        """Bring every Gateway's status up to date; returns the number of status writes.
        `now` is API (wall) time, for what is written; `mono` the monotonic clock, for the
        durations the controller times itself (the relay hold); read here when not given."""
        start = time.monotonic()
        nodes = self._nodes()
        leases = self.leases.items()
        starts = agent_starts_from_leases(leases)  # when each node's agent started
        objects = self.gateways.items()
        heartbeats = heard_since_floor(heartbeats_from_leases(leases), objects, self._heard_since)
        parsed = []
        for obj in objects:
            try:
                parsed.append(Gateway.from_k8s(obj))
            except ValidationError:
                continue  # reported on the object itself by compute_status
        pools = members_by_pool(nodes)
        observed = observed_endpoints(nodes)
        relay = self._choose_relay(parsed, nodes, start if mono is None else mono)
        # Judge the fleet by the membership we are about to write, not by the stored
        # status.nodes: a node that just moved pools is otherwise "in two pools" until our own
        # write lands, and the condition would flap (two extra writes per move).
        upcoming = [replace(g, status=replace(g.status, nodes=pools.get(g.name, ())))
                    for g in parsed]
        fleet = fleet_problems(upcoming, list(nodes.values()))
        writes, without = 0, 0
        planned: list[Gateway] = []
        for obj in objects:
            try:
                plan = compute_status(obj, nodes, heartbeats, now, fleet,
                                      self.settings.election, pools, observed, relay,
                                      self._away(obj, heartbeats),
                                      self._hold_kept(obj, heartbeats, now))
            except Exception:  # a planner bug for one Gateway must not stop the others
                log.exception("Gateway %s: computing status failed",
                              (obj.get("metadata") or {}).get("name"))
                self.metrics.errors.labels("plan").inc()
                continue
            with contextlib.suppress(ValidationError):
                planned.append(Gateway.from_k8s({**obj, "status": plan.status}))
            if not any(e.get("type") != "proxy" for e in plan.status.get("activeEndpoints") or []
                       if isinstance(e, dict)):
                without += 1  # a pool with only proxy endpoints still has no tunnel
            if plan.status == (obj.get("status") or {}):
                continue
            if self._write(obj, plan, now):
                writes += 1
        self.metrics.pools.set(without)
        self._report_failovers(nodes, heartbeats, starts, now)
        try:
            self.sync_proxy_objects(planned, nodes)
        except KubeError as exc:
            log.warning("proxy Service/Endpoints/ConfigMap: %s; retrying at the next reconcile",
                        exc)
            self.metrics.errors.labels("proxy-objects").inc()
        self.metrics.reconcile.observe(time.monotonic() - start)
        self.reconciles += 1
        return writes

    def _away(self, obj: JSON, heartbeats: dict[str, float]) -> dict[str, float]:
        """This Gateway's nodes moved away from that have not renewed since (pruned here)."""
        name = str((obj.get("metadata") or {}).get("name", ""))
        held = self._moved_from.get(name, {})
        silent = pool_decision.unproven(held, heartbeats)
        kept = {n: at for n, at in held.items() if n in silent}
        if kept:
            self._moved_from[name] = kept
        else:
            self._moved_from.pop(name, None)
        return kept

    def _hold_kept(self, obj: JSON, heartbeats: dict[str, float], now: float) -> bool:
        """Whether the pool of a status kept without heartbeats is heard again, less than a
        heartbeat timeout ago (raven.pool_decision.heard_again)."""
        name = str((obj.get("metadata") or {}).get("name", ""))
        start = pool_decision.heard_again(
            self._heard_again.get(name), kept_reason(obj) == pool_decision.KEPT_REASON,
            any(heard(heartbeats.get(n), now, self.settings.election)
                for n in tunnel_candidates(obj)), now, self.settings.election.heartbeat_timeout)
        if start is None:
            self._heard_again.pop(name, None)
            return False
        self._heard_again[name] = start
        return now - start < self.settings.election.heartbeat_timeout

    def _report_failovers(self, nodes: dict[str, Node], heartbeats: dict[str, float],
                          starts: dict[str, float], now: float) -> None:
        """One GatewayFailover event per move whose cause is settled now."""
        self._failovers, ready = pool_decision.resolve(
            self._failovers, nodes, heartbeats, now, self.settings.election, starts)
        for failover, cause in ready:
            self.events.record(failover.subject, EVENT_FAILOVER, failover.message(cause), now,
                               "Warning")
            log.info("%s", failover.message(cause))

    def sync_proxy_objects(self, gateways: list[Gateway], nodes: dict[str, Node]) -> None:
        """OpenYurt's proxy objects (raven.proxy.compat): the Service and Endpoints
        x-raven-proxy-internal-svc and the ConfigMap edge-tunnel-nodes, written only when what
        they should say changed since the last successful write."""
        want = compat.compat_objects(gateways, nodes, self.settings.proxy_server_port)
        key = (want, tuple(sorted((n, v.internal_ip) for n, v in nodes.items())))
        if key == self._compat_done:
            return
        ns = compat.NAMESPACE
        cluster_ip = ""
        if want.addresses:
            svc = self._upsert(SERVICES, compat.SERVICE_NAME, want.service)
            cluster_ip = str(((svc or {}).get("spec") or {}).get("clusterIP") or "")
            self._upsert(ENDPOINTS, compat.SERVICE_NAME, want.endpoints)
        else:  # no proxy server anywhere: nothing to point at
            for res in (ENDPOINTS, SERVICES):
                if res.plural in self._unserved:
                    continue
                with contextlib.suppress(NotFound):
                    self.kube.delete(res, compat.SERVICE_NAME, ns)
        records = want.dns_records(nodes, cluster_ip)
        self._upsert(CONFIGMAPS, compat.DNS_CONFIGMAP, lambda old: want.configmap(records, old))
        self._compat_done = key

    def _upsert(self, res: Resource, name: str, build: Any) -> JSON | None:
        """Create or update `name` from `build(existing or None)`; None when the API server
        does not serve `res` (logged once: the rest of the reconcile goes on)."""
        if res.plural in self._unserved:
            return None
        ns = compat.NAMESPACE
        try:
            old = self.kube.get(res, name, ns)
        except NotFound:
            old = None
        if old is None:
            try:
                return self.kube.create(res, build(None), ns)
            except NotFound:
                self._unserved.add(res.plural)
                log.warning("the API server does not serve %s; %s/%s is not kept", res.plural,
                            ns, name)
                return None
            except AlreadyExists:
                old = self.kube.get(res, name, ns)
        new = build(old)
        if new == old:
            return old
        return self.kube.replace(res, new, ns)

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
            self.write_failures += 1  # retried with backoff (controller_step.reconciled)
            return False
        self.writes += 1
        self.metrics.writes.inc()
        for node in plan.elected:
            self.events.record(stored, EVENT_ELECTED,
                               f"node {node} elected active tunnel endpoint of Gateway {name}",
                               now)
        move = plan.failover(name, now, stored)
        if move is not None:  # reported when its cause is settled
            self._failovers.append(move)
            self._moved_from.setdefault(name, {}).update(dict.fromkeys(move.lost, now))
        for node in plan.lost:
            why = "; ".join(plan.reasons) or "no longer elected"
            self.events.record(stored, EVENT_LOST,
                               f"node {node} is no longer an active endpoint of Gateway {name}: "
                               f"{why}", now, "Warning")
        for node in plan.proxy_elected:
            self.events.record(stored, EVENT_ELECTED,
                               f"node {node} elected active proxy endpoint of Gateway {name}", now)
        for node in plan.proxy_lost:
            self.events.record(stored, EVENT_LOST,
                               f"node {node} is no longer an active proxy endpoint of Gateway "
                               f"{name}", now, "Warning")
        log.info("Gateway %s: status written (elected %s, lost %s)", name,
                 list(plan.elected), list(plan.lost))
        return True

    def synced(self) -> bool:
        return all(i.synced.is_set() for i in (self.gateways, self.nodes, self.leases))

    def run(self, stop: threading.Event) -> None:
        """The thin runner of `controller_step`: observe, step, act, sleep until the deadline
        or the next event."""
        for informer in (self.gateways, self.nodes, self.leases):
            informer.start()
        # The loop sleeps on _wake: wake it when stop is set (SIGTERM) so the lease is released
        # at once, not at the next deadline.
        threading.Thread(target=lambda: (stop.wait(), self._wake.set()), name="stop-waker",
                         daemon=True).start()
        state = ControllerState()
        try:
            while not stop.is_set():
                woke = self._wake.is_set()
                self._wake.clear()
                seen = Observation(woke=woke, synced=self.synced())
                decided = controller_step.step(state, seen, time.monotonic(), self.settings)
                state = decided.state
                for action in decided.actions:
                    state = self._act(action, state)
                self._wake.wait(max(0.0, decided.deadline - time.monotonic()))
        finally:
            for informer in (self.gateways, self.nodes, self.leases):
                informer.stop()
            self.elector.release()
            self.metrics.leader.set(0)

    def _act(self, action: Action, state: ControllerState) -> ControllerState:
        """Carry out one action of the step; the outcome goes back into the state."""
        if action is Action.TRY_LEAD:
            return self._try_lead(state)
        refused = self.write_failures
        try:
            # Conditions and Events carry API (wall) time; the relay hold is a duration.
            self.reconcile(time.time(), time.monotonic())
            ok = self.write_failures == refused
        except Exception:
            log.exception("reconcile failed")
            self.metrics.errors.labels("reconcile").inc()
            ok = False
        return controller_step.reconciled(state, ok, time.monotonic(), self.settings,
                                          random.random())

    def _try_lead(self, state: ControllerState) -> ControllerState:
        # renewTime goes to the API (wall clock); the holder's silence is timed on ours (monotonic)
        leader = self.elector.try_acquire_or_renew(time.time(), time.monotonic())
        self.metrics.leader.set(1 if leader else 0)
        if leader != state.leader:
            log.info("%s %s leadership", self.settings.identity,
                     "acquired" if leader else "lost")
            if leader:
                self._heard_since = time.time()  # compared with Lease renewTimes: wall clock
        return controller_step.after_election(state, leader, time.monotonic(), self.settings)

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

