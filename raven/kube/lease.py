"""coordination.k8s.io/v1 Leases: agent heartbeats and controller leader election.

Rules kept:
- every write is optimistic (PUT with the resourceVersion we read): two writers never both win;
- leader election follows client-go: a lease held by someone else is taken over only after it
  has not changed for leaseDurationSeconds *as observed on our own clock*, so clock skew between
  replicas cannot cause two leaders; the holder renews well within the duration;
- `now` is always an argument (the caller owns the clock).
"""

from __future__ import annotations

import logging

from raven import constants
from raven.kube.client import JSON, LEASES, Kube
from raven.kube.errors import Conflict, KubeError, NotFound
from raven.settings import LeaderSettings  # defaults live in the settings root
from raven.timefmt import to_micro_time

log = logging.getLogger(__name__)


def agent_lease_name(node: str) -> str:
    return f"{constants.AGENT_LEASE_PREFIX}{node}"


def _lease(name: str, namespace: str, holder: str, duration: int, now: float) -> JSON:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration,
            "acquireTime": to_micro_time(now),
            "renewTime": to_micro_time(now),
            "leaseTransitions": 0,
        },
    }


def _transitions(spec: JSON) -> int:
    value = spec.get("leaseTransitions")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class Heartbeat:
    """Renews `raven-agent-<node>` in the Raven namespace; the controller reads renewTime.

    The first write of each Heartbeat (one per agent process) also sets acquireTime to its
    `now` and counts a leaseTransition, as a new holder does: the controller reads acquireTime
    as "this node's agent started then" (a node powered off and back promptly heartbeats again,
    but from a new agent: raven.pool_decision.classify). Later renewals leave it alone."""

    def __init__(
        self, kube: Kube, node: str, namespace: str = constants.RAVEN_NAMESPACE,
        duration: int = 15,
    ) -> None:
        self.kube = kube
        self.node = node
        self.namespace = namespace
        self.duration = duration
        self.name = agent_lease_name(node)
        self._cached: JSON | None = None
        self._acquired = False  # acquireTime written by this agent process

    def renew(self, now: float) -> None:
        """One renewal; raises KubeError when the API refuses or is unreachable."""
        for _ in range(3):
            lease = self._cached
            if lease is None:
                try:
                    lease = self.kube.get(LEASES, self.name, self.namespace)
                except NotFound:
                    body = _lease(self.name, self.namespace, self.node, self.duration, now)
                    self._cached = self.kube.create(LEASES, body, self.namespace)
                    self._acquired = True
                    return
            spec = lease.setdefault("spec", {})
            if not self._acquired:
                spec["acquireTime"] = to_micro_time(now)
                spec["leaseTransitions"] = _transitions(spec) + 1
            spec["holderIdentity"] = self.node
            spec["leaseDurationSeconds"] = self.duration
            spec["renewTime"] = to_micro_time(now)
            try:
                self._cached = self.kube.replace(LEASES, lease, self.namespace)
                self._acquired = True
                return
            except (Conflict, NotFound):
                self._cached = None  # someone else wrote or deleted it: read it again
            except KubeError:
                self._cached = None
                raise
        raise Conflict(f"Lease {self.namespace}/{self.name}: kept conflicting; will retry")


class LeaderElector:
    """`try_acquire_or_renew(now, monotonic)` -> True while we hold the lease.

    `now` is the wall clock, written to the Lease (other replicas read it). Whether the holder
    is silent is judged on our own `monotonic` clock, from when we last saw its record change,
    as client-go's leader election does: a wall-clock step (NTP, a VM resumed) must neither
    hand the lease over early nor keep a dead leader for an hour."""

    def __init__(self, kube: Kube, identity: str, settings: LeaderSettings) -> None:
        self.kube = kube
        self.identity = identity
        self.settings = settings
        self.is_leader = False
        self.transitions_seen = 0
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0  # our monotonic clock when _observed last changed

    def _observe(self, lease: JSON, now: float) -> None:
        spec = lease.get("spec") or {}
        record = (str(spec.get("holderIdentity") or ""), str(spec.get("renewTime") or ""))
        if record != self._observed:
            self._observed = record
            self._observed_at = now

    def holder(self) -> str:
        return self._observed[0] if self._observed else ""

    def try_acquire_or_renew(self, now: float, monotonic: float | None = None) -> bool:
        s = self.settings
        mono = now if monotonic is None else monotonic
        try:
            try:
                lease = self.kube.get(LEASES, s.name, s.namespace)
            except NotFound:
                body = _lease(s.name, s.namespace, self.identity, s.lease_duration, now)
                created = self.kube.create(LEASES, body, s.namespace)
                self._observe(created, mono)
                self.is_leader = True
                return True
            self._observe(lease, mono)
            spec = lease.setdefault("spec", {})
            holder = str(spec.get("holderIdentity") or "")
            duration = int(spec.get("leaseDurationSeconds") or s.lease_duration)
            held_by_other = holder not in ("", self.identity)
            if held_by_other and mono < self._observed_at + duration:
                self.is_leader = False
                return False
            if holder != self.identity:
                spec["acquireTime"] = to_micro_time(now)
                spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
            spec["holderIdentity"] = self.identity
            spec["leaseDurationSeconds"] = s.lease_duration
            spec["renewTime"] = to_micro_time(now)
            updated = self.kube.replace(LEASES, lease, s.namespace)
            self._observe(updated, mono)
            self.is_leader = True
            return True
        except Conflict:
            self.is_leader = False  # another replica wrote first; look again next period
            return False
        except KubeError as exc:
            # Cannot renew: after the lease would have expired, we must stop acting as leader.
            log.warning("leader election: %s", exc)
            if self.is_leader and mono >= self._observed_at + s.lease_duration * 2 / 3:
                self.is_leader = False
            return self.is_leader

    def release(self) -> None:
        """Give the lease up on clean shutdown so a standby takes over at once."""
        if not self.is_leader:
            return
        s = self.settings
        try:
            lease = self.kube.get(LEASES, s.name, s.namespace)
            spec = lease.setdefault("spec", {})
            if spec.get("holderIdentity") == self.identity:
                spec["holderIdentity"] = ""
                spec["leaseDurationSeconds"] = 1
                self.kube.replace(LEASES, lease, s.namespace)
        except KubeError as exc:
            log.warning("leader election: release failed: %s", exc)
        self.is_leader = False
