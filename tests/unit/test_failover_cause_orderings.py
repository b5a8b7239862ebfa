"""The cause named by the GatewayFailover event (issue 12, item 7) in every order the controller
can hear about a failover: the pure controller loop (raven.gateway_status.compute_status for the
move, raven.pool_decision.resolve for the event) driven through the timelines of the lab's
cases: (a) power-off, (b) probe loss, (c) power-off while the pool is cut off from the control
plane, whichever of the old gateway's expiring heartbeat and the pool's late votes comes first.

The timeline model (the shipped defaults): agents renew every `PERIOD` (a third of the
timeout); a renewal lands up to `LATENCY` late; a node's vote (its pool-gateway annotation)
published while cut off is flagged offline and lands after the heal, the flag cleared at the
agent's next resync (`RESYNC`); the controller looks at every change and at least every
`LOOK` (its resync)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from raven import constants
from raven.election import ElectionOptions, heard
from raven.gateway_status import compute_status, kept_reason, tunnel_candidates
from raven.model import Gateway, Node
from raven.pool_decision import (
    KEPT_REASON,
    PARTITION,
    POWER_OFF,
    PROBE_LOSS,
    Failover,
    heard_again,
    resolve,
    unheard,
    unproven,
)

OPTS = ElectionOptions()  # shipped: heartbeat timeout 15 s
T = OPTS.heartbeat_timeout
PERIOD = T / 3  # agents renew every third of the timeout (AgentSettings.heartbeat_period)
LATENCY = 0.5  # how late a renewal may land
RESYNC = 30.0  # the agent's resync: when it clears its offline flag after publishing
LOOK = 5.0  # the controller's resync period
D = 1_700_000_000.0  # the fault: the old gateway powered off (and the pool cut off, case c)
GW = "gw-edge-cone"
CANDIDATES = ("cone-1", "cone-2")


def node(name: str, ready: bool = True, vote: str | None = None, offline: bool = False,
         pool: str = GW) -> Node:
    annotations = {constants.ANNOTATION_PUBLIC_KEY: name[-1] * 43 + "="}
    if vote is not None:
        annotations[constants.ANNOTATION_POOL_GATEWAY] = vote
        annotations[constants.ANNOTATION_POOL_GATEWAY_OFFLINE] = "true" if offline else "false"
    ip = f"192.0.2.{name[-1]}"
    return Node.from_k8s({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {constants.GATEWAY_LABEL: pool},
                     "annotations": annotations},
        "spec": {"podCIDR": f"10.244.{name[-1]}.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}],
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    })


def gateway_obj(candidates: tuple[str, ...] = CANDIDATES) -> dict[str, Any]:
    return {"apiVersion": "raven.openyurt.io/v1beta1", "kind": "Gateway",
            "metadata": {"name": GW, "resourceVersion": "1"},
            "spec": {"endpoints": [{"nodeName": n, "type": "tunnel", "underNAT": True}
                                   for n in candidates]}}


@dataclass
class Controller:
    """controller.reconcile / _write / _report_failovers without the API: stores the status it
    computes, queues a Failover per move (StatusPlan.failover), remembers the nodes it moved
    away from (GatewayController._moved_from) and when it heard a kept pool again
    (GatewayController._hold_kept), reports the settled ones."""

    obj: dict[str, Any]
    pending: list[Failover] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    moves: list[tuple[float, bool]] = field(default_factory=list)  # (when, adopted)
    moved_from: dict[str, float] = field(default_factory=dict)
    gateway: str = GW
    heard: float | None = None
    hold: bool = True  # False: the controller without the heal hold (to show what it prevents)

    def look(self, nodes: dict[str, Node], beats: dict[str, float], now: float) -> None:
        held = unproven(self.moved_from, beats)
        self.moved_from = {n: at for n, at in self.moved_from.items() if n in held}
        self.heard = heard_again(
            self.heard, kept_reason(self.obj) == KEPT_REASON,
            any(heard(beats.get(n), now, OPTS) for n in tunnel_candidates(self.obj)), now, T)
        plan = compute_status(self.obj, nodes, beats, now, options=OPTS,
                              moved_from=self.moved_from,
                              hold_kept=self.hold and self.heard is not None
                              and now - self.heard < T)
        if plan.status != (self.obj.get("status") or {}):
            self.obj = {**self.obj, "status": plan.status}
            move = plan.failover(self.gateway, now)
            if move is not None:
                self.pending.append(move)
                self.moves.append((now, any("adopted" in r for r in plan.reasons)))
                self.moved_from.update(dict.fromkeys(move.lost, now))
        self.pending, ready = resolve(self.pending, nodes, beats, now, OPTS)
        self.events += [f.message(cause) for f, cause in ready]

    def active(self) -> list[str]:
        return [e["nodeName"] for e in (self.obj.get("status") or {}).get("activeEndpoints", [])]


def settled_controller(members: tuple[str, ...] = ("cone-3",),
                       candidates: tuple[str, ...] = CANDIDATES) -> Controller:
    c = Controller(gateway_obj(candidates))
    names = (*candidates, *members)
    c.look({n: node(n, vote=candidates[0]) for n in names}, dict.fromkeys(candidates, D - 1), D - 1)
    assert c.active() == [candidates[0]] and not c.events
    return c


@dataclass(frozen=True)
class Timeline:
    """What the controller can see at each moment of one fault."""

    last: dict[str, float]  # each candidate's last renewal before the fault (or the cut)
    heal: float = math.inf  # when the pool reaches the control plane again (case c)
    cut: bool = False  # the pool is cut off from D until `heal`
    old_alive: bool = False  # case (b): the old gateway keeps renewing
    renew_after_heal: float = 1.0  # first renewal of the others after the heal
    votes: dict[str, float] = field(default_factory=dict)  # node -> when its vote lands
    members: tuple[str, ...] = ("cone-3",)
    in_flight: tuple[str, ...] = ()  # votes whose write straddled the heal: never flagged
    grace: float = 40.0  # a powered-off node is NotReady after this (node monitor grace)

    def beats(self, now: float) -> dict[str, float]:
        out = {}
        for name, last in self.last.items():
            if name == "cone-1" and not self.old_alive:
                out[name] = last  # powered off at D: never renews again
            elif not self.cut:
                out[name] = last + PERIOD * max(0, math.floor((now - last) / PERIOD))
            elif now < self.heal + self.renew_after_heal:
                out[name] = last  # `last` was its final renewal before the cut
            else:  # renewing again from its first renewal after the heal
                first = self.heal + self.renew_after_heal
                out[name] = first + PERIOD * math.floor((now - first) / PERIOD)
        return out

    def nodes(self, now: float) -> dict[str, Node]:
        out = {}
        for name in (*self.last, *self.members):
            if name == "cone-1" and not self.old_alive:
                out[name] = node(name, ready=now < D + self.grace, vote="cone-1")
                continue
            landed = self.votes.get(name)
            if landed is None or now < landed:
                out[name] = node(name, vote="cone-1")  # what it published before the fault
            else:  # flagged when it could not publish at once; cleared at its next resync
                out[name] = node(name, vote="cone-2",
                                 offline=self.cut and name not in self.in_flight
                                 and now < self.votes_cleared(name))
        return out

    def votes_cleared(self, name: str) -> float:
        return self.votes[name] + RESYNC

    def changes(self) -> list[float]:
        """Moments a watch event wakes the controller (votes landing or cleared, the heal)."""
        out = [*self.votes.values(), *(self.votes_cleared(n) for n in self.votes)]
        if self.heal < math.inf:
            out += [self.heal + self.renew_after_heal]
        return out


def run(t: Timeline, phase: float = 0.0, look: float = LOOK, until: float = 120.0
        ) -> Controller:
    c = settled_controller(t.members, tuple(t.last))
    times = sorted({*(D + phase + k * look for k in range(int(until / look) + 1)),
                    *(x for x in t.changes() if x < D + until)})
    for now in times:
        c.look(t.nodes(now), t.beats(now), now)
    return c


def one_event(c: Controller) -> str:
    (message,) = c.events
    assert message.startswith(f"Gateway {GW}: active gateway cone-1 -> cone-2, cause: ")
    return message.rsplit("cause: ", 1)[1]


# --- case (c): the pool is cut off, then its active gateway is powered off ------------------


def test_old_gateways_heartbeat_expires_first_the_controller_keeps_it_partition() -> None:
    """The race of the lab's case (c): the old gateway's last renewal was 4 s before the cut,
    the new one's 1 s: the controller sees the old one expire first (at D + 11), while the new
    one's renewal is 12 s old (none within half the timeout: the silent pool rule). It keeps the
    old gateway (it used to move on its own to a node the cut-off pool had not chosen, and the
    remote pools follow the status) until the pool's votes land after the heal."""
    t = Timeline(last={"cone-1": D - 4, "cone-2": D - 1}, cut=True, heal=D + 35,
                 votes={"cone-2": D + 37, "cone-3": D + 38})
    c = run(t, look=1.0)
    (at, adopted), = c.moves
    assert at == D + 37 and adopted  # after the heal, the pool's decision
    assert one_event(c) == PARTITION
    assert c.active() == ["cone-2"]


def test_the_pools_votes_come_first_partition() -> None:
    """The partition heals before the old gateway's heartbeat expires: the pool's late,
    offline-flagged votes are adopted."""
    t = Timeline(last={"cone-1": D - 1, "cone-2": D - 4}, cut=True, heal=D + 6,
                 votes={"cone-2": D + 7, "cone-3": D + 8})
    c = run(t)
    (at, adopted), = c.moves
    assert at == D + 8 and adopted
    assert one_event(c) == PARTITION


def test_the_partition_heals_before_the_bound_and_the_new_gateway_renews_first() -> None:
    """Kept during the partition (the silent pool rule, from D + 11); the pool heals at
    D + 13, the new gateway renews at once, the votes land late and lose their flag later: the
    heal hold waits for the votes, one move, one partition event."""
    t = Timeline(last={"cone-1": D - 4, "cone-2": D - 1}, cut=True, heal=D + 13,
                 renew_after_heal=0.2, votes={"cone-2": D + 24, "cone-3": D + 25})
    c = run(t, look=1.0)
    (at, adopted), = c.moves
    assert at == D + 24 and adopted
    assert one_event(c) == PARTITION


def test_healed_just_before_the_controllers_own_move_waits_for_the_flagged_votes() -> None:
    """The pool heals at D + 9 and the new gateway renews at once, but the votes are still in
    their backoff when the old gateway's heartbeat expires (D + 11): the controller moves on
    its own hearing the pool, and the cause waits for the votes, which say cut off."""
    t = Timeline(last={"cone-1": D - 4, "cone-2": D - 1}, cut=True, heal=D + 9,
                 renew_after_heal=0.1, votes={"cone-2": D + 18, "cone-3": D + 20})
    c = run(t, look=1.0)
    (at, adopted), = c.moves
    assert at < D + 18 and not adopted
    assert one_event(c) == PARTITION


def test_a_vote_whose_write_was_in_flight_at_the_heal_lands_unflagged() -> None:
    """A short partition (the lab's case c, seen in the lab): the member's write timed out, so
    its vote is flagged; the new gateway decided later and its write was only delayed by the
    partition, so its vote lands without the flag. One flagged vote is the evidence."""
    t = Timeline(last={"cone-1": D - 2, "cone-2": D - 1}, cut=True, heal=D + 3,
                 votes={"cone-2": D + 3.1, "cone-3": D + 3.4}, in_flight=("cone-2",))
    c = run(t, look=1.0)
    (at, adopted), = c.moves
    assert at == D + 3.4 and adopted
    assert one_event(c) == PARTITION


def test_a_pool_of_two_candidates_and_no_member() -> None:
    """The rest of the pool is the new gateway alone: kept while the pool is silent, then its
    vote, flagged offline, moves the status after the heal and is the evidence."""
    t = Timeline(last={"cone-1": D - 4, "cone-2": D - 1}, cut=True, heal=D + 35,
                 votes={"cone-2": D + 37}, members=())
    c = run(t, look=1.0)
    assert c.moves == [(D + 37, True)]
    assert one_event(c) == PARTITION


def test_a_single_candidate_pool_has_no_failover_and_no_event() -> None:
    """Nothing to fail over to: the status is kept without heartbeat, nobody is moved."""
    c = settled_controller(candidates=("cone-1",))
    nodes = {"cone-1": node("cone-1", vote="cone-1"), "cone-3": node("cone-3", vote="cone-1")}
    for dt in range(0, 60, 5):
        c.look(nodes, {"cone-1": D - 4}, D + dt)
    assert c.active() == ["cone-1"] and not c.moves and not c.events


def test_unheard_needs_another_heartbeat_to_judge_by() -> None:
    gw = Gateway.from_k8s(gateway_obj())
    lone = {"cone-1": node("cone-1"), "cone-3": node("cone-3")}  # no other heartbeat
    assert not unheard(gw, ("cone-1",), ("cone-2",), lone, {"cone-1": D - 30}, D, OPTS)
    both = {**lone, "cone-2": node("cone-2")}
    assert unheard(gw, ("cone-1",), ("cone-2",), both, {"cone-2": D - T / 2 - 0.01}, D, OPTS)
    assert not unheard(gw, ("cone-1",), ("cone-2",), both, {"cone-2": D - T / 2}, D, OPTS)
    # A third candidate (or any other node of the pool) heard recently: the pool is heard.
    other = {**both, "cone-4": node("cone-4")}
    assert not unheard(gw, ("cone-1",), ("cone-2",), other,
                       {"cone-2": D - 12, "cone-4": D - 1}, D, OPTS)
    # Another pool's heartbeats are no evidence about this one.
    elsewhere = {**both, "sym-1": node("sym-1", pool="gw-edge-sym")}
    assert unheard(gw, ("cone-1",), ("cone-2",), elsewhere,
                   {"cone-2": D - 12, "sym-1": D}, D, OPTS)


# --- cases (a) and (b): the pool reaches the control plane all along -------------------------


def test_case_a_power_off_with_the_pool_heard() -> None:
    t = Timeline(last={"cone-1": D - 4, "cone-2": D - 1},
                 votes={"cone-2": D + 1, "cone-3": D + 1.2})
    c = run(t, look=1.0)
    (at, adopted), = c.moves
    assert at == D + 1.2 and adopted
    assert one_event(c) == POWER_OFF


def test_case_b_probe_loss_with_the_pool_heard() -> None:
    t = Timeline(last={"cone-1": D - 4, "cone-2": D - 1}, old_alive=True,
                 votes={"cone-2": D + 1, "cone-3": D + 1.2})
    assert one_event(run(t, look=1.0)) == PROBE_LOSS


def test_an_old_gateway_whose_agent_died_is_replaced_by_the_controller_alone_not_partition(
) -> None:
    """The controller moves on its own (the pool's data path still works through the old
    gateway, so its votes keep naming it), but it hears the new gateway: not a partition."""
    t = Timeline(last={"cone-1": D - 4, "cone-2": D - 1}, votes={"cone-2": D + 30,
                                                                 "cone-3": D + 30})
    c = run(t, look=1.0)
    (at, adopted), = c.moves
    assert at <= D + 12 and not adopted
    assert one_event(c) == POWER_OFF


# --- every ordering ---------------------------------------------------------------------------

renewal = st.floats(min_value=0.0, max_value=PERIOD + LATENCY)


@settings(max_examples=150, deadline=None)
@given(before_cut=st.tuples(renewal, renewal), heal=st.floats(min_value=2.0, max_value=38.0),
       renew=st.floats(min_value=0.0, max_value=10.0),
       votes=st.tuples(st.floats(min_value=0.0, max_value=12.0),
                       st.floats(min_value=0.0, max_value=12.0)),
       look=st.floats(min_value=1.0, max_value=LOOK), phase=st.floats(min_value=0.0,
                                                                       max_value=LOOK),
       in_flight=st.sampled_from([(), ("cone-2",), ("cone-3",)]))
def test_case_c_is_a_partition_in_every_order(
        before_cut: tuple[float, float], heal: float, renew: float,
        votes: tuple[float, float], look: float, phase: float,
        in_flight: tuple[str, ...]) -> None:
    """Cut off at D with the old gateway powered off: last renewals up to one period (plus
    latency) apart, the heal at any time while the pool's nodes are Ready, the new gateway's
    first renewal up to a request timeout after it, the votes up to the agents' longest
    backoff plus a publish timeout after it (one of them possibly unflagged: its write was in
    flight at the heal), the controller looking at any pace. The one move is reported once,
    as a partition. (When the new gateway's first renewal after the heal came later than its
    last one before the cut plus the timeout, the election used to move back to the powered-off
    gateway while its last heartbeat was the fresher, then forward again: two "partition" events
    for one failover, the lab's test_d once. `unproven` keeps the old gateway out until it
    renews: `test_a_late_renewal_after_the_heal_moves_nothing_back`.)"""
    t = Timeline(last={"cone-1": D - before_cut[0], "cone-2": D - before_cut[1]}, cut=True,
                 heal=D + heal, renew_after_heal=renew,
                 votes={"cone-2": D + heal + votes[0], "cone-3": D + heal + votes[1]},
                 in_flight=in_flight)
    c = run(t, phase=phase % look, look=look, until=75.0)
    assert not c.pending
    assert one_event(c) == PARTITION
    assert len(c.moves) == 1
    assert c.active() == ["cone-2"]


def test_a_late_renewal_after_the_heal_moves_nothing_back() -> None:
    """The ordering behind test_d's two "partition" events: cut off at D with cone-1 powered
    off (its last renewal at D; cone-2's agent was already late, its last at D - 8.5); the pool
    heals at D + 6 and its votes are adopted at once (cone-2, whose heartbeat is still fresh
    from before the cut), but cone-2's agent renews only at D + 16, in its retry backoff. From
    D + 6.5 cone-2's heartbeat is stale while the dead cone-1's is recent enough to look heard
    (6.5 s old): the election used to move back to cone-1 (without hearing the pool: a
    partition) and forward to cone-2 again at D + 16 (a partition again). The memory of the
    node moved away from keeps cone-2: one move, one event. (With cone-1's renewal older than
    half the timeout, the silent pool rule would keep cone-2 as well.)"""
    t = Timeline(last={"cone-1": D, "cone-2": D - 8.5}, cut=True, heal=D + 6,
                 renew_after_heal=10.0, votes={"cone-2": D + 6, "cone-3": D + 6})
    c = settled_controller()
    seen = []
    for now in sorted({D + k * 0.5 for k in range(150)} | set(t.changes())):
        c.look(t.nodes(now), t.beats(now), now)
        seen.append(c.active())
    assert ["cone-1"] not in seen[seen.index(["cone-2"]):], "moved back to the dead gateway"
    (at, adopted), = c.moves
    assert at == D + 6 and adopted
    assert one_event(c) == PARTITION
    # And it is the rule that does it: the same timeline without the memory moves back.
    c = settled_controller()
    for now in sorted({D + k * 0.5 for k in range(150)} | set(t.changes())):
        c.moved_from.clear()
        c.look(t.nodes(now), t.beats(now), now)
    assert len(c.moves) == 3 and c.events.count(c.events[0]) == 2


def test_a_node_moved_away_from_is_eligible_again_once_it_renews() -> None:
    assert unproven({"a": D, "b": D}, {"a": D + 0.1, "b": D}) == {"b"}
    assert unproven({"a": D}, {}) == {"a"}  # no heartbeat at all: not proven alive


@settings(max_examples=100, deadline=None)
@given(before=st.tuples(renewal, renewal), votes=st.tuples(
    st.floats(min_value=0.2, max_value=3.0), st.floats(min_value=0.2, max_value=3.0)),
    alive=st.booleans(), look=st.floats(min_value=1.0, max_value=LOOK))
def test_cases_a_and_b_are_never_a_partition(before: tuple[float, float],
                                             votes: tuple[float, float], alive: bool,
                                             look: float) -> None:
    t = Timeline(last={"cone-1": D - before[0], "cone-2": D - before[1]}, old_alive=alive,
                 votes={"cone-2": D + votes[0], "cone-3": D + votes[1]})
    assert one_event(run(t, look=look, until=45.0)) == (PROBE_LOSS if alive else POWER_OFF)


def test_d_the_old_gateway_back_during_the_partition_renews_first_at_the_heal() -> None:
    """The lab's test_d, once two "partition" events: cut off at D and cone-1 powered off; the
    controller moves on its own to cone-2 at D + 11 (unheard) and keeps it without heartbeats
    from D + 14. cone-1 is powered on at D + 20 while still cut off (a new agent: it renews at
    once after the heal, D + 30.3, and votes cone-2, what its pool uses, at D + 35); cone-2's
    agent is in its retry backoff and renews at D + 38, the flagged votes land at D + 39. The
    election used to take cone-1, heard first, and the votes brought the pool back: cone-2 ->
    cone-1 and cone-1 -> cone-2 again, both "partition". The heal hold (`heard_again`) lets
    only the votes move a kept status for a heartbeat timeout: one move, one event."""
    heal, back = D + 30, D + 20

    def beats(now: float) -> dict[str, float]:
        out = {"cone-1": D - 4, "cone-2": D - 1}
        if now >= heal + 0.3:
            out["cone-1"] = heal + 0.3 + PERIOD * math.floor((now - heal - 0.3) / PERIOD)
        if now >= heal + 8:
            out["cone-2"] = heal + 8 + PERIOD * math.floor((now - heal - 8) / PERIOD)
        return out

    def nodes(now: float) -> dict[str, Node]:
        def vote(name: str, lands: float) -> Node:
            return (node(name, vote="cone-2", offline=True) if now >= lands
                    else node(name, vote="cone-1"))
        return {"cone-1": vote("cone-1", heal + 5) if now >= back else node("cone-1",
                                                                           vote="cone-1"),
                "cone-2": vote("cone-2", heal + 9), "cone-3": vote("cone-3", heal + 9)}

    def replay(hold: bool) -> Controller:
        c = settled_controller()
        c.hold = hold
        for k in range(160):
            now = D + k * 0.5
            c.look(nodes(now), beats(now), now)
        return c

    for hold in (True, False):
        c = replay(hold=hold)
        assert c.events == [f"Gateway {GW}: active gateway cone-1 -> cone-2, cause: {PARTITION}"]
        assert len(c.moves) == 1 and c.active() == ["cone-2"]
        # The silent pool rule kept cone-1 through the partition, so cone-1 heard first at the
        # heal is the kept gateway itself: the flagged votes make the one move, hold or not.
        # Held, cone-1's flagged vote is adopted once cone-2 renews (heal + 8); not held, the
        # vote of the majority is needed (heal + 9).
        assert c.moves[0] == (heal + (8 if hold else 9), True)


def test_a_standby_heard_first_at_the_heal_does_not_take_a_kept_status() -> None:
    """What the heal hold is for: the pool uses cone-2 (status cone-2, votes cone-2) when it is
    cut off at D; every heartbeat goes stale and the status is kept. The standby cone-1 is
    rebooted while cut off: at the heal (D + 30) its new agent renews first, cone-2's only 8 s
    later, and the votes still name cone-2 unflagged (the pool never changed its gateway).
    Without the hold the controller moves to cone-1, heard first, and the votes move it back
    once cone-2 renews; with it nothing moves."""
    heal = D + 30

    def beats(now: float) -> dict[str, float]:
        out = {"cone-2": D - 1, "cone-1": D - 3}
        for name, first in (("cone-1", heal + 0.3), ("cone-2", heal + 8)):
            if now >= first:
                out[name] = first + PERIOD * math.floor((now - first) / PERIOD)
        return out

    def replay(hold: bool) -> Controller:
        c = settled_controller(candidates=("cone-2", "cone-1"))
        c.hold = hold
        nodes = {n: node(n, vote="cone-2") for n in ("cone-1", "cone-2", "cone-3")}
        for k in range(160):
            now = D + k * 0.5
            c.look(nodes, beats(now), now)
        return c

    c = replay(hold=True)
    assert c.moves == [] and c.events == [] and c.active() == ["cone-2"]
    c = replay(hold=False)
    assert [at for at, _ in c.moves] == [heal + 0.5, heal + 8]
    assert c.active() == ["cone-2"]


def test_heard_again_starts_at_the_first_fresh_heartbeat_of_a_kept_pool() -> None:
    assert heard_again(None, kept=False, heard=True, now=D, window=T) is None
    assert heard_again(None, kept=True, heard=False, now=D, window=T) is None  # still cut off
    assert heard_again(None, kept=True, heard=True, now=D, window=T) == D
    assert heard_again(D, kept=True, heard=True, now=D + 9, window=T) == D  # not renewed
    assert heard_again(D, kept=True, heard=True, now=D + 99, window=T) == D  # never reopens
    # The kept gateway renewed (the status is no longer kept): the window still runs out.
    assert heard_again(D, kept=False, heard=True, now=D + 9, window=T) == D
    assert heard_again(D, kept=False, heard=True, now=D + T, window=T) is None
