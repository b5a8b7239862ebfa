"""PURE: the controller adopts what a pool decided about its own gateway while it was on its
own, and names the cause of each failover.

Rules kept:
- every agent publishes its pool's gateway as it uses it (Node annotation
  `raven.openyurt.io/pool-gateway`, written by the agent from its data-path probes);
- the pool's decision is the node named by more than half of the pool's Ready nodes that
  publish one; a gateway candidate that missed a heartbeat renewal (older than a third of the
  timeout) has no vote (a powered-off gateway's last word is stale); without such a majority
  there is no decision and the election runs as before;
- a decision is adopted only for a healthy candidate (in the spec, Ready, fresh heartbeat): the
  controller never elects a node it considers dead, whatever the pool says;
- adopting means making the decided node the current active endpoint before the sticky
  election runs, so the election keeps it;
- the cause of a failover is settled by evidence, never guessed at the moment of the move
  (when the pool fails over in half a second, a powered-off node's last heartbeat is still
  fresh): "partition" when the pool decided while cut off from the control plane (the
  previous status was kept without heartbeats, or most of the nodes that voted for the new
  gateway flagged their vote `raven.openyurt.io/pool-gateway-offline`: they could not publish
  it at once); otherwise "probe loss" once every lost node renewed its heartbeat after the
  failover and is Ready (alive, but the pool's probes do not get through it), "power-off" as
  soon as one is gone, NotReady, has no heartbeat or missed two renewals (its heartbeat is
  older than two thirds of the timeout); until then the cause is pending (`resolve`). No cause
  is settled before the pool's other nodes have voted for the new gateway (or a heartbeat
  timeout passed): a cut-off pool's late votes would otherwise race the controller's own move.
  A live node renews every third of the timeout, so it reaches "probe loss" before it could
  look like "power-off"; a dead one never renews, so it reaches "power-off": the outcome does
  not depend on when the controller looks.
Time is an argument; no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from raven import constants
from raven.election import ElectionOptions
from raven.model import TUNNEL, Gateway, Node

POWER_OFF = "power-off"
PROBE_LOSS = "probe loss"
PARTITION = "partition"
KEPT_REASON = "KeptWithoutHeartbeat"  # raven.gateway_status's Ready reason for a kept status


def pool_choice(gateway: Gateway, nodes: Mapping[str, Node], heartbeats: Mapping[str, float],
                now: float, options: ElectionOptions) -> str | None:
    """The gateway named by a majority of the pool's Ready nodes that publish one."""
    candidates = {e.node_name for e in gateway.spec.tunnel_endpoints}

    def votes_now(n: Node) -> bool:
        if n.name not in candidates:
            return True
        last = heartbeats.get(n.name)
        return last is not None and now - last <= options.heartbeat_timeout / 3

    votes = Counter(
        str(n.annotations.get(constants.ANNOTATION_POOL_GATEWAY))
        for n in nodes.values()
        if n.gateway == gateway.name and n.ready and votes_now(n)
        and n.annotations.get(constants.ANNOTATION_POOL_GATEWAY))
    if not votes:
        return None
    name, count = votes.most_common(1)[0]
    return name if 2 * count > sum(votes.values()) else None


def _healthy(name: str, nodes: Mapping[str, Node], heartbeats: Mapping[str, float],
             now: float, options: ElectionOptions) -> bool:
    node = nodes.get(name)
    last = heartbeats.get(name)
    return (node is not None and (node.ready or not options.require_ready)
            and last is not None and now - last <= options.heartbeat_timeout)


def adopt(gateway: Gateway, nodes: Mapping[str, Node], heartbeats: Mapping[str, float],
          now: float, options: ElectionOptions) -> tuple[Gateway, str | None]:
    """The Gateway with the pool's decision as its current active endpoint (when there is one
    to adopt), and the adopted node's name."""
    choice = pool_choice(gateway, nodes, heartbeats, now, options)
    current = [e.node_name for e in gateway.status.active_endpoints if e.type == TUNNEL]
    spec = {e.node_name: e for e in gateway.spec.tunnel_endpoints}
    if (choice is None or choice not in spec or current[:1] == [choice]
            or not _healthy(choice, nodes, heartbeats, now, options)):
        return gateway, None
    rest = tuple(e for e in gateway.status.active_endpoints
                 if not (e.node_name == choice and e.type == TUNNEL))
    status = replace(gateway.status, active_endpoints=(spec[choice], *rest))
    return replace(gateway, status=status), choice


def decided_offline(gateway: Gateway, nodes: Mapping[str, Node], choice: str) -> bool:
    """Whether most of the Ready nodes of the pool that vote for `choice` flagged their vote as
    published late (`raven.openyurt.io/pool-gateway-offline: "true"`): decided while cut off."""
    return voted_offline(gateway.name, nodes, choice)


def voted_offline(gateway: str, nodes: Mapping[str, Node], choice: str) -> bool:
    """`decided_offline` by the Gateway's name."""
    voters = [n for n in nodes.values()
              if n.gateway == gateway and n.ready
              and n.annotations.get(constants.ANNOTATION_POOL_GATEWAY) == choice]
    offline = sum(n.annotations.get(constants.ANNOTATION_POOL_GATEWAY_OFFLINE) == "true"
                  for n in voters)
    return bool(voters) and 2 * offline > len(voters)


def votes_settled(f: Failover, nodes: Mapping[str, Node], now: float,
                  options: ElectionOptions) -> bool:
    """Whether the pool's other nodes have had their say about a move: each is Ready and names
    one of the elected gateways, or a heartbeat timeout passed since the move. A move the
    controller makes on its own as a cut-off pool comes back (the old gateway's heartbeat went
    stale meanwhile) comes before the pool's late votes land; judged earlier, a power-off while
    cut off was reported as "power-off" or as "partition" depending on which came first."""
    if now - f.at > options.heartbeat_timeout:
        return True
    return all(n.ready and n.annotations.get(constants.ANNOTATION_POOL_GATEWAY) in f.elected
               for n in nodes.values() if n.gateway == f.gateway and n.name not in f.lost)


def immediate_cause(lost: Sequence[str], previous_ready_reason: str, partitioned: bool) -> str:
    """The cause known at the moment of the move: "partition" or "" (settled later by
    `classify`)."""
    return PARTITION if lost and (partitioned or previous_ready_reason == KEPT_REASON) else ""


def classify(lost: Sequence[str], at: float, nodes: Mapping[str, Node],
             heartbeats: Mapping[str, float], now: float, options: ElectionOptions
             ) -> str | None:
    """POWER_OFF or PROBE_LOSS for a failover away from `lost` at wall time `at`, or None while
    the evidence is not in yet (module docstring)."""
    alive = 0
    for name in lost:
        node, last = nodes.get(name), heartbeats.get(name)
        if node is None or not node.ready or last is None \
                or now - last > 2 * options.heartbeat_timeout / 3:
            return POWER_OFF
        if last > at:
            alive += 1
    return PROBE_LOSS if lost and alive == len(lost) else None


@dataclass(frozen=True)
class Failover:
    """A move of a pool's active gateway whose event waits for its cause."""

    gateway: str
    lost: tuple[str, ...]
    elected: tuple[str, ...]
    at: float  # wall seconds (API time) of the status write that made the move
    cause: str = ""  # known at once (partition), else settled by `classify`
    subject: Any = None  # what the caller attaches the event to (the stored object)

    def message(self, cause: str) -> str:
        return (f"Gateway {self.gateway}: active gateway {', '.join(self.lost)} -> "
                f"{', '.join(self.elected)}, cause: {cause}")


def resolve(pending: Sequence[Failover], nodes: Mapping[str, Node],
            heartbeats: Mapping[str, float], now: float, options: ElectionOptions
            ) -> tuple[list[Failover], list[tuple[Failover, str]]]:
    """(still pending, [(failover, cause)] ready to be reported), in order. A newer move of
    the same Gateway does not cancel an older one: each move gets its event."""
    waiting: list[Failover] = []
    ready: list[tuple[Failover, str]] = []
    for f in pending:
        found = f.cause
        if not found and votes_settled(f, nodes, now, options):
            found = (PARTITION if voted_offline(f.gateway, nodes, f.elected[0])
                     else classify(f.lost, f.at, nodes, heartbeats, now, options))
        if found:
            ready.append((f, found))
        else:
            waiting.append(f)
    return waiting, ready
