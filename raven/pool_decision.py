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
- the cause of a failover: "partition" when the previous status was kept without heartbeats
  (the pool had lost the control plane), "power-off" when the old active node is NotReady, gone
  or its heartbeat is older than a third of the timeout (it missed a renewal), "probe loss"
  otherwise (it heartbeats, but the pool's probes do not get through it).
Time is an argument; no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace

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


def cause(lost: Sequence[str], previous_ready_reason: str, nodes: Mapping[str, Node],
          heartbeats: Mapping[str, float], now: float, options: ElectionOptions) -> str:
    if previous_ready_reason == KEPT_REASON:
        return PARTITION
    for name in lost:
        node, last = nodes.get(name), heartbeats.get(name)
        if node is None or not node.ready or last is None \
                or now - last > options.heartbeat_timeout / 3:
            return POWER_OFF
    return PROBE_LOSS
