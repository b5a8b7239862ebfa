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
- active-active pools (tunnelConfig.Replicas >= 2): agents also publish their whole ordered
  active set (`raven.openyurt.io/pool-gateways`, `ballot`; the single name stays for older
  controllers); a set named by more than half of all the pool's current votes (agents that
  publish only the single name count against it) whose first is the adopted first gateway
  becomes the active endpoints, and the candidates it leaves out are not elected on the
  controller's own while it does (`adopt_set`): a non-first active gateway that stays alive but
  whose data path is broken leaves the status, and comes back when the pool's probes no longer
  see it DOWN and the votes name it again; the move's cause follows the rules below (its
  votes' offline flag: "partition"; else "probe loss" or "power-off" by its heartbeats);
- the cause of a failover is settled by evidence, never guessed at the moment of the move
  (when the pool fails over in half a second, a powered-off node's last heartbeat is still
  fresh): "partition" when the pool decided while cut off from the control plane, known at the
  move from what the controller heard of the pool: the previous status was kept without
  heartbeats; or a node that voted for the new gateway flagged its vote
  `raven.openyurt.io/pool-gateway-offline` (it could not publish it at once; one is enough:
  a write in flight when the partition healed lands unflagged); or the
  controller moved on its own (no adopted vote) while it could not hear the pool: every other
  node of the pool that heartbeats had missed a renewal (`unheard`: its last one older than
  half the timeout; a heard agent's is at most a third old, and in a cut-off pool whose old
  gateway's heartbeat expired first the others' are at least two thirds old, since their
  renewals all stopped at the cut, at most one renewal apart). Otherwise "probe loss" once every
  lost node renewed its heartbeat after the failover from the same agent process and is Ready
  (alive, but the pool's probes do not get through it), "power-off" as soon as one is gone,
  NotReady, has no heartbeat, missed two renewals (its heartbeat is older than two thirds of the
  timeout) or heartbeats from an agent that started after the failover (its Lease's acquireTime,
  written once per agent process, is later than the move: it went away and came back, which a
  node powered off and on within two renewals does); until then the cause is pending
  (`resolve`). No pending cause is settled before the pool's other nodes have voted for the new
  gateway (or a heartbeat timeout passed): the late, offline-flagged votes of a pool that healed
  just before the controller's own move would otherwise race it. A live node renews every third
  of the timeout, so it reaches "probe loss" before it could look like "power-off"; a dead one
  never renews, and a returning one renews from a new agent, so they reach "power-off": the
  outcome does not depend on when the controller looks, nor on whether the old gateway's
  heartbeat or the cut-off pool's votes reach it first.
Time is an argument; no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from raven import constants
from raven.election import ElectionOptions
from raven.failover import standby_endpoints
from raven.model import TUNNEL, Gateway, Node

POWER_OFF = "power-off"
PROBE_LOSS = "probe loss"
PARTITION = "partition"
KEPT_REASON = "KeptWithoutHeartbeat"  # raven.gateway_status's Ready reason for a kept status


def _voters(gateway: Gateway, nodes: Mapping[str, Node], heartbeats: Mapping[str, float],
            now: float, options: ElectionOptions, flagged: bool) -> list[Node]:
    """The pool's Ready nodes whose vote counts now (a candidate that missed a renewal has
    none; `flagged`: only votes flagged offline)."""
    candidates = {e.node_name for e in gateway.spec.tunnel_endpoints}

    def votes_now(n: Node) -> bool:
        if n.name not in candidates:
            return True
        last = heartbeats.get(n.name)
        return last is not None and now - last <= options.heartbeat_timeout / 3

    return [n for n in nodes.values()
            if n.gateway == gateway.name and n.ready and votes_now(n)
            and n.annotations.get(constants.ANNOTATION_POOL_GATEWAY)
            and (not flagged
                 or n.annotations.get(constants.ANNOTATION_POOL_GATEWAY_OFFLINE) == "true")]


def pool_choice(gateway: Gateway, nodes: Mapping[str, Node], heartbeats: Mapping[str, float],
                now: float, options: ElectionOptions, flagged: bool = False) -> str | None:
    """The gateway named by a majority of the pool's Ready nodes that publish one (`flagged`:
    only votes flagged offline, published after a partition: see `heard_again`)."""
    votes = Counter(str(n.annotations.get(constants.ANNOTATION_POOL_GATEWAY))
                    for n in _voters(gateway, nodes, heartbeats, now, options, flagged))
    if not votes:
        return None
    name, count = votes.most_common(1)[0]
    return name if 2 * count > sum(votes.values()) else None


def ballot(pool: Gateway, down: Collection[str], me: str) -> tuple[str, ...]:
    """What an agent publishes as its pool's active set (ANNOTATION_POOL_GATEWAYS): the tunnel
    gateways it uses (`pool` as its probes see it, raven.failover.effective_gateways), then the
    standby candidates its probes do not see DOWN (`down`; itself never), then the spec's other
    tunnel candidates not seen DOWN, up to tunnelConfig.Replicas: raven.failover.choose's rule
    with the spec's replica count. The standbys are how the pool takes back a gateway the
    controller left out for it (agents use no more active gateways than the status lists, so
    their active set alone could never grow again), and why a candidate not probed yet
    (UNKNOWN, e.g. at the pool's start) is not held out of the election by the votes. The spec's
    candidates that are not standbys yet (no key published when the agent last read the
    status) count for the same reason: at the pool's start a vote cast from the status that
    elected the first gateway alone would otherwise drop the second one the controller elected
    a moment later, once its key came (seen in CI: a GatewayFailover "probe loss" at lab start
    and one active gateway for 5 s)."""
    active = pool.status.tunnel_names
    later = (*standby_endpoints(pool), *pool.spec.tunnel_endpoints)
    spare = [ep.node_name for ep in later
             if ep.type == TUNNEL and ep.node_name
             and (ep.node_name not in down or ep.node_name == me)]
    return tuple(dict.fromkeys((*active, *spare)))[:max(1, pool.spec.tunnel_replicas)]


def parse_ballot(text: object) -> tuple[str, ...] | None:
    """A Node's ANNOTATION_POOL_GATEWAYS as names, None when absent or empty (an agent that
    publishes only the single name, or a malformed value: no vote on the set)."""
    if not isinstance(text, str):
        return None
    names = tuple(n.strip() for n in text.split(","))
    return names if names and all(names) and len(set(names)) == len(names) else None


def set_choice(gateway: Gateway, nodes: Mapping[str, Node], heartbeats: Mapping[str, float],
               now: float, options: ElectionOptions, flagged: bool = False
               ) -> tuple[str, ...] | None:
    """The ordered active set named by more than half of ALL the pool's current votes (those
    of agents that publish only the single name count, for no set: a pool whose agents are
    mostly old keeps the controller's own election for the non-first gateways), or None."""
    voters = _voters(gateway, nodes, heartbeats, now, options, flagged)
    votes = Counter(parse_ballot(n.annotations.get(constants.ANNOTATION_POOL_GATEWAYS))
                    for n in voters)
    best = max(((c, s) for s, c in votes.items() if s is not None), default=None,
               key=lambda item: item[0])
    return best[1] if best is not None and 2 * best[0] > len(voters) else None


def adopt_set(gateway: Gateway, nodes: Mapping[str, Node], heartbeats: Mapping[str, float],
              now: float, options: ElectionOptions, flagged: bool = False
              ) -> tuple[Gateway, tuple[str, ...], frozenset[str]]:
    """Active-active (tunnelConfig.Replicas >= 2), after `adopt`: the Gateway whose active
    tunnel endpoints are the pool's decided set (`set_choice`, its healthy candidates; only
    when its first is the first active endpoint already, i.e. consistent with the single-name
    votes), the set as the votes name it, and the candidates the pool left out (`dropped`:
    the caller keeps the election from filling the set up with them again while the pool's
    votes say so; a gateway alive by its heartbeat whose data path is broken is still left
    out). Unchanged, (), {} without such a decision."""
    if gateway.spec.tunnel_replicas < 2:
        return gateway, (), frozenset()
    choice = set_choice(gateway, nodes, heartbeats, now, options, flagged)
    spec = {e.node_name: e for e in gateway.spec.tunnel_endpoints}
    current = list(gateway.status.tunnel_names)
    decided = tuple(n for n in choice or () if n in spec
                    and _healthy(n, nodes, heartbeats, now, options)
                    )[:gateway.spec.tunnel_replicas]
    if not decided or current[:1] != list(decided[:1]):
        return gateway, (), frozenset()
    dropped = frozenset(spec) - set(choice or ())
    others = tuple(e for e in gateway.status.active_endpoints if e.type != TUNNEL)
    status = replace(gateway.status, active_endpoints=(*(spec[n] for n in decided), *others))
    return replace(gateway, status=status), tuple(choice or ()), dropped


def set_offline(gateway: str, nodes: Mapping[str, Node], decided: Sequence[str]) -> bool:
    """`voted_offline` for an active set the pool voted for (`adopt_set`): a Ready node of the
    pool that votes for it flagged its vote as published late (decided while cut off)."""
    return _flagged_vote(gateway, nodes, lambda n: parse_ballot(
        n.annotations.get(constants.ANNOTATION_POOL_GATEWAYS)) == tuple(decided))


def _healthy(name: str, nodes: Mapping[str, Node], heartbeats: Mapping[str, float],
             now: float, options: ElectionOptions) -> bool:
    node = nodes.get(name)
    last = heartbeats.get(name)
    return (node is not None and (node.ready or not options.require_ready)
            and last is not None and now - last <= options.heartbeat_timeout)


def adopt(gateway: Gateway, nodes: Mapping[str, Node], heartbeats: Mapping[str, float],
          now: float, options: ElectionOptions, flagged: bool = False
          ) -> tuple[Gateway, str | None]:
    """The Gateway with the pool's decision as its current active endpoint (when there is one
    to adopt), and the adopted node's name."""
    choice = pool_choice(gateway, nodes, heartbeats, now, options, flagged)
    current = list(gateway.status.tunnel_names)
    spec = {e.node_name: e for e in gateway.spec.tunnel_endpoints}
    if (choice is None or choice not in spec or current[:1] == [choice]
            or not _healthy(choice, nodes, heartbeats, now, options)):
        return gateway, None
    rest = tuple(e for e in gateway.status.active_endpoints
                 if not (e.node_name == choice and e.type == TUNNEL))
    status = replace(gateway.status, active_endpoints=(spec[choice], *rest))
    return replace(gateway, status=status), choice


def decided_offline(gateway: Gateway, nodes: Mapping[str, Node], choice: str) -> bool:
    """Whether a Ready node of the pool that votes for `choice` flagged its vote as published
    late (`raven.openyurt.io/pool-gateway-offline: "true"`: an attempt to publish it failed):
    decided while cut off. One is enough: a vote whose write was in flight when the partition
    healed lands unflagged (its request was only delayed), so in a short partition some of the
    pool's votes are flagged and some are not, depending on when each node decided."""
    return voted_offline(gateway.name, nodes, choice)


def voted_offline(gateway: str, nodes: Mapping[str, Node], choice: str) -> bool:
    """`decided_offline` by the Gateway's name."""
    return _flagged_vote(gateway, nodes,
                         lambda n: n.annotations.get(constants.ANNOTATION_POOL_GATEWAY) == choice)


def _flagged_vote(gateway: str, nodes: Mapping[str, Node], votes_for: Callable[[Node], bool]
                  ) -> bool:
    """Whether a Ready node of the pool whose vote `votes_for` the decision flagged it as
    published late (decided while cut off)."""
    return any(n.gateway == gateway and n.ready and votes_for(n)
               and n.annotations.get(constants.ANNOTATION_POOL_GATEWAY_OFFLINE) == "true"
               for n in nodes.values())


def votes_settled(f: Failover, nodes: Mapping[str, Node], now: float,
                  options: ElectionOptions) -> bool:
    """Whether the pool's other nodes have had their say about a move: each is Ready and names
    one of the elected gateways, or a heartbeat timeout passed since the move. A pool that was
    cut off and healed just before the controller moved on its own (its old gateway's
    heartbeat expired, the new one's was renewed after the heal) has not published its
    offline-flagged votes yet; judged at once, that power-off while cut off would be reported
    as "power-off" or as "partition" depending on which came first. (A move made while the
    pool could not be heard at all is a partition at once: `unheard`.)"""
    if now - f.at > options.heartbeat_timeout or not f.voted:
        return True  # (no vote changes with a move that kept the pool's first gateway)
    return all(n.ready and n.annotations.get(constants.ANNOTATION_POOL_GATEWAY) == f.voted
               for n in nodes.values() if n.gateway == f.gateway and n.name not in f.lost)


def unheard(gateway: Gateway, lost: Sequence[str], elected: Sequence[str],
            nodes: Mapping[str, Node], heartbeats: Mapping[str, float], now: float,
            options: ElectionOptions) -> bool:
    """Whether the controller could not hear the pool when it moved the pool's gateway away
    from `lost` on its own (from heartbeats, no adopted vote): every other node of the pool
    that heartbeats (its candidates, the elected ones among them) had missed a renewal, its
    last one older than half the heartbeat timeout. A heard agent's heartbeat is never older
    than one renewal period (a third of the timeout, plus the write's latency). In a pool cut
    off from the control plane every renewal stopped at the cut, at most one period apart, so
    when the old gateway's heartbeat expires (a timeout after its last renewal) the others' are
    at least two thirds of the timeout old: half is halfway between the two. False when no
    other node of the pool has a heartbeat (nothing to hear the pool by)."""
    names = ({e.node_name for e in gateway.spec.endpoints} | set(elected)
             | {n.name for n in nodes.values() if n.gateway == gateway.name})
    beats = [heartbeats[n] for n in names - set(lost) if n in heartbeats]
    return bool(beats) and all(now - last > options.heartbeat_timeout / 2 for last in beats)


def immediate_cause(lost: Sequence[str], previous_ready_reason: str, partitioned: bool,
                    silent: bool = False) -> str:
    """The cause known at the moment of the move: "partition" (the previous status was kept
    without heartbeats, the adopted decision was flagged offline (`partitioned`) or the
    controller moved on its own without hearing the pool (`silent`, from `unheard`)) or ""
    (settled later by `classify`)."""
    cut_off = partitioned or silent or previous_ready_reason == KEPT_REASON
    return PARTITION if lost and cut_off else ""


def unproven(moved_from: Mapping[str, float], heartbeats: Mapping[str, float]
             ) -> frozenset[str]:
    """The nodes the controller moved a pool's gateway away from (`moved_from`: node -> wall
    time of that status write) that have not renewed their heartbeat since: the controller does
    not elect them again on its own. A powered-off gateway's last heartbeat stays fresh for a
    timeout after the pool left it; without this rule, when the adopted new gateway's own
    heartbeat expired first (a partition healed before its agent renewed), the election moved
    the pool back to the dead node and forward again: three moves, two events for one failover.
    The pool's votes still move the gateway (`adopt`); a node that renews is eligible again."""
    return frozenset(n for n, at in moved_from.items() if heartbeats.get(n, at) <= at)


def heard_again(start: float | None, kept: bool, heard: bool, now: float,
                window: float) -> float | None:
    """When the controller began to hear a pool again whose status it had kept without
    heartbeats (`kept`: the stored Ready reason is KEPT_REASON; `heard`: a candidate renewed
    within half the timeout, `raven.election.heard`), carried from one reconcile to the next;
    None when not in that window.
    For a heartbeat timeout from then the controller moves the pool's gateway only by the
    pool's votes decided while cut off (flagged offline; `adopt`), never on its own: at a heal
    the agents' renewals and votes land in any order, each after its own retry backoff, a
    candidate heard first is not the pool's choice, and an unflagged vote still on a Node
    is most likely from before the partition. (The lab's test_d: the old gateway, back while
    its pool was cut off, renewed first and its own and the member's pre-partition votes still
    named it: the pool moved to it, then the fresh votes moved it back: two events for one
    failover.) The window is `window` seconds from `start`, also when the kept gateway
    renews in it (the others' stale votes land later), and never opens twice while the status
    stays kept. A kept gateway that is dead is replaced after it, as before."""
    if start is not None and (kept or now - start < window):
        return start
    return now if kept and heard else None


def restarted(name: str, at: float, starts: Mapping[str, float]) -> bool:
    """Whether `name`'s agent is not the process that ran when its pool failed over at `at`:
    its start (Lease acquireTime, `starts`) is later than the move. (Compared as renewTimes
    are: agents' and the controller's clocks agree. A start that merely changed since the move
    is no evidence: the controller's Lease informer may deliver a start written just before
    the move only after it, e.g. at the heal of a partition.)"""
    start = starts.get(name)
    return start is not None and start > at


def classify(lost: Sequence[str], at: float, nodes: Mapping[str, Node],
             heartbeats: Mapping[str, float], now: float, options: ElectionOptions,
             starts: Mapping[str, float] | None = None) -> str | None:
    """POWER_OFF or PROBE_LOSS for a failover away from `lost` at wall time `at`, or None while
    the evidence is not in yet (module docstring). `starts`: node -> its agent's start
    (Lease acquireTime)."""
    alive = 0
    for name in lost:
        node, last = nodes.get(name), heartbeats.get(name)
        if node is None or not node.ready or last is None \
                or now - last > 2 * options.heartbeat_timeout / 3 \
                or restarted(name, at, starts or {}):
            return POWER_OFF
        if last > at:
            alive += 1
    return PROBE_LOSS if lost and alive == len(lost) else None


@dataclass(frozen=True)
class Failover:
    """A move of a pool's active gateway whose event waits for its cause: the active gateways
    `lost`, and the ones that took over their share of the pool (`elected`: with one active
    gateway the new one; with active-active (raven.shards) a promoted standby or the survivors
    that carry the lost gateway's members now)."""

    gateway: str
    lost: tuple[str, ...]
    elected: tuple[str, ...]
    at: float  # wall seconds (API time) of the status write that made the move
    cause: str = ""  # known at once (partition), else settled by `classify`
    subject: Any = None  # what the caller attaches the event to (the stored object)
    # The node the pool's votes name after the move (agents publish the FIRST gateway of their
    # active set): the new first active gateway, "" when the move kept the first one (a
    # non-first active gateway of an active-active pool failed: no vote changes, so votes are
    # no evidence either way); None: the first of `elected` (one active gateway).
    head: str | None = None

    @property
    def voted(self) -> str:
        return self.elected[0] if self.head is None and self.elected else self.head or ""

    def message(self, cause: str) -> str:
        return (f"Gateway {self.gateway}: active gateway {', '.join(self.lost)} -> "
                f"{', '.join(self.elected)}, cause: {cause}")


def resolve(pending: Sequence[Failover], nodes: Mapping[str, Node],
            heartbeats: Mapping[str, float], now: float, options: ElectionOptions,
            starts: Mapping[str, float] | None = None
            ) -> tuple[list[Failover], list[tuple[Failover, str]]]:
    """(still pending, [(failover, cause)] ready to be reported), in order. A newer move of
    the same Gateway does not cancel an older one: each move gets its event. `starts`: node ->
    its agent's start (Lease acquireTime) now."""
    waiting: list[Failover] = []
    ready: list[tuple[Failover, str]] = []
    for f in pending:
        found = f.cause
        if not found and votes_settled(f, nodes, now, options):
            found = (PARTITION if f.voted and voted_offline(f.gateway, nodes, f.voted)
                     else classify(f.lost, f.at, nodes, heartbeats, now, options, starts))
        if found:
            ready.append((f, found))
        else:
            waiting.append(f)
    return waiting, ready
