"""A NON-first active gateway of an active-active pool (tunnelConfig.Replicas 2) that stays
alive and heartbeats but whose data path is broken (`raven lab blackhole`), issue 12 item 7:
the pool's agents move its share from their probes and vote for an active set without it
(`raven.openyurt.io/pool-gateways`, raven.pool_decision.ballot); the controller drops it from
the status with ONE GatewayFailover event, cause "probe loss" ("partition" when the votes were
decided while cut off), and takes it back when the pool's votes name it again, with no event.
On main the votes named only the first gateway, so the status kept naming the broken one and
no event came. Replayed on the pure controller loop of test_failover_cause_orderings."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import replace

import pytest
from test_failover_cause_orderings import OPTS, PERIOD, RESYNC, Controller, D
from test_failover_events_active_active import aa_obj

from raven import constants, shards
from raven.failover import standby_endpoints
from raven.gateway_status import compute_status
from raven.model import FrozenMap, Gateway, Node
from raven.pool_decision import PARTITION, PROBE_LOSS, ballot, set_choice

GW = "gw-site"
T = OPTS.heartbeat_timeout
Votes = dict[str, tuple[str, ...]]  # node -> its active set (the single name is its first)


def voter(name: str, vote: tuple[str, ...] | None, old: bool = False,
          offline: bool = False) -> Node:
    """A Ready node of the pool; `old`: its agent publishes only the single name."""
    annotations = {constants.ANNOTATION_PUBLIC_KEY: name[-1] * 43 + "="}
    if vote:
        annotations[constants.ANNOTATION_POOL_GATEWAY] = vote[0]
        annotations[constants.ANNOTATION_POOL_GATEWAY_OFFLINE] = "true" if offline else "false"
        if not old:
            annotations[constants.ANNOTATION_POOL_GATEWAYS] = ",".join(vote)
    return Node.from_k8s({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {constants.GATEWAY_LABEL: GW},
                     "annotations": annotations},
        "spec": {"podCIDR": f"10.244.{name[-1]}.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": f"192.0.2.{name[-1]}"}],
                   "conditions": [{"type": "Ready", "status": "True"}]},
    })


def pool(votes: Votes, old: tuple[str, ...] = (), offline: bool = False) -> dict[str, Node]:
    return {n: voter(n, v, n in old, offline) for n, v in votes.items()}


def renewing(now: float, since: float = D - 1) -> float:
    return since + PERIOD * max(0, math.floor((now - since) / PERIOD))


def started(candidates: tuple[str, ...], members: tuple[str, ...]) -> Controller:
    c = Controller(aa_obj(candidates), gateway=GW)
    first = tuple(candidates[:2])
    c.look(pool(dict.fromkeys((*candidates, *members), first)),
           dict.fromkeys(candidates, D - 1), D - 1)
    assert c.active() == list(first) and not c.events
    return c


def replay(c: Controller, nodes: Callable[[float], dict[str, Node]],
           beats: Callable[[float], dict[str, float]], start: float, until: float) -> None:
    for k in range(int(until - start) + 1):
        now = start + k
        c.look(nodes(now), beats(now), now)


def takers(everyone: tuple[str, ...], old: tuple[str, ...], new: tuple[str, ...],
           lost: str) -> str:
    """Who carries the lost gateway's share now (raven.shards), in status order."""
    before = shards.assign(everyone, old)
    moved = {shards.gateway_of(m, new) for m, g in before.items() if g == lost}
    return ", ".join(n for n in new if n in moved or n not in old)


CASES = [  # (candidates, members, blackholed, the pool's active set without it)
    (("site-1", "site-2"), ("site-3", "site-4", "site-5"), "site-2", ("site-1",)),
    (("farm-1", "farm-2", "farm-3"), ("farm-4", "farm-5"), "farm-2", ("farm-1", "farm-3")),
]


@pytest.mark.parametrize(("candidates", "members", "cut", "without"), CASES)
def test_blackholed_second_active_gateway_is_one_probe_loss_event_and_comes_back(
        candidates: tuple[str, ...], members: tuple[str, ...], cut: str,
        without: tuple[str, ...]) -> None:
    """Blackholed at D: within a second every other node's probes drop it and vote for the
    set without it; the broken node sees nobody and votes for itself. It keeps renewing its
    heartbeat all along. Unblackholed at D + 30: every node's probes see it UP again."""
    c = started(candidates, members)
    everyone = (*candidates, *members)
    first = tuple(candidates[:2])
    back = D + 30

    def nodes(now: float) -> dict[str, Node]:
        if now < D + 1:
            return pool(dict.fromkeys(everyone, first))
        if now < back + 1:
            return pool({n: (cut,) if n == cut else without for n in everyone})
        # Back: the pool's probes see it UP; a standby now (unless the status has room).
        room = len(without) < 2
        return pool(dict.fromkeys(everyone, (*without, cut) if room else without))

    def beats(now: float) -> dict[str, float]:
        return {n: renewing(now) for n in candidates}

    replay(c, nodes, beats, D, back)
    assert c.active() == list(without)
    assert c.events == [f"Gateway {GW}: active gateway {cut} -> "
                        f"{takers(everyone, first, without, cut)}, cause: {PROBE_LOSS}"]
    replay(c, nodes, beats, back, back + 60)
    assert c.active() == (list(first) if len(without) < 2 else list(without))
    assert len(c.events) == 1 and not c.pending


def test_mixture_of_old_and_new_agents() -> None:
    """Agents that publish only the single name (older versions) count against a set: while
    they are the majority the controller keeps its own election for the non-first gateway
    (main's behaviour: the status keeps it, no event); once most of the pool votes for the
    set without it (one more agent upgraded), one probe-loss event. A blackholed FIRST
    gateway still moves by the single names alone, the old agents' included."""
    candidates, members = ("site-1", "site-2"), ("site-3", "site-4", "site-5")
    c = started(candidates, members)
    upgraded = D + 20

    def nodes(now: float) -> dict[str, Node]:
        old = ("site-2", "site-4", "site-5") if now < upgraded else ("site-2", "site-5")
        return pool({"site-2": ("site-2",), **dict.fromkeys(("site-1", *members), ("site-1",))},
                    old=old)

    def beats(now: float) -> dict[str, float]:
        return {n: renewing(now) for n in candidates}

    replay(c, nodes, beats, D, upgraded - 1)
    assert c.active() == ["site-1", "site-2"] and not c.events and not c.pending
    replay(c, nodes, beats, upgraded, upgraded + 40)
    assert c.active() == ["site-1"]
    assert c.events == [f"Gateway {GW}: active gateway site-2 -> site-1, cause: {PROBE_LOSS}"]

    # The first one blackholed instead, where only two agents publish the set: the single
    # names still move the first gateway (the old agents' included), and the set, no majority,
    # changes nothing (main's behaviour).
    c = started(candidates, members)
    mixed = pool({"site-1": ("site-1",), **dict.fromkeys(("site-2", *members), ("site-2",))},
                 old=("site-3", "site-4", "site-5"))
    replay(c, lambda now: mixed, beats, D, D + 40)
    assert c.active() == ["site-2", "site-1"] and not c.events


@pytest.mark.parametrize("votes_first", [True, False])
def test_blackholed_second_active_gateway_while_cut_off_is_one_partition_event(
        votes_first: bool) -> None:
    """Cut off at D (every heartbeat stops at the cut), site-2 blackholed at D + 2: the pool
    votes for {site-1} while it cannot publish, so its votes land flagged offline after the
    heal (D + 30), before or after the candidates' first renewals; the flags are cleared at
    the agents' next resync. One event, cause "partition"; none more."""
    candidates, members = ("site-1", "site-2"), ("site-3", "site-4")
    everyone = (*candidates, *members)
    c = started(candidates, members)
    heal = D + 30
    landed = heal + (0.5 if votes_first else 3)

    def nodes(now: float) -> dict[str, Node]:
        if now < landed:  # what the API server last heard: the votes from before the cut
            return pool(dict.fromkeys(everyone, candidates))
        votes = {n: ("site-2",) if n == "site-2" else ("site-1",) for n in everyone}
        return pool(votes, offline=now < landed + RESYNC)

    def beats(now: float) -> dict[str, float]:
        last = D - 1 if now < heal + 1 else renewing(now, heal + 1)
        return dict.fromkeys(candidates, last)

    replay(c, nodes, beats, D, heal + 90)
    assert c.active() == ["site-1"]
    assert c.events == [f"Gateway {GW}: active gateway site-2 -> site-1, cause: {PARTITION}"]
    assert not c.pending


def test_ballot_and_set_choice() -> None:
    """The vote: the gateways in use, then the standbys not seen DOWN (itself never), up to
    Replicas; the choice: more than half of ALL current votes."""
    gw = Gateway.from_k8s(aa_obj(("farm-1", "farm-2", "farm-3")))
    c = started(("farm-1", "farm-2", "farm-3"), ("farm-4",))
    stored = Gateway.from_k8s(c.obj)  # active farm-1, farm-2; standby farm-3
    assert ballot(stored, frozenset(), "farm-4") == ("farm-1", "farm-2")
    nodes = {**pool({"farm-1": ("farm-1",), "farm-4": ("farm-1",)}),
             **pool(dict.fromkeys(("farm-2", "farm-3"), None))}
    plan = compute_status(c.obj, nodes, dict.fromkeys(("farm-1", "farm-2", "farm-3"), D), D,
                          options=OPTS)
    shrunk = Gateway.from_k8s({**c.obj, "status": plan.status})
    assert [e.node_name for e in shrunk.status.active_endpoints] == ["farm-1"]
    assert ballot(shrunk, frozenset({"farm-2"}), "farm-4") == ("farm-1", "farm-3")
    assert ballot(shrunk, frozenset({"farm-2", "farm-3"}), "farm-4") == ("farm-1",)
    assert ballot(shrunk, frozenset({"farm-2", "farm-3"}), "farm-2") == ("farm-1", "farm-2")
    beats = dict.fromkeys(("farm-1", "farm-2", "farm-3"), D)
    split = pool({"farm-1": ("farm-1",), "farm-4": ("farm-1",), "farm-2": ("farm-2",),
                  "farm-3": ("farm-1", "farm-3")})
    assert set_choice(gw, split, beats, D, OPTS) is None  # 2 of 4 is no majority
    assert set_choice(gw, {**split, "farm-3": voter("farm-3", ("farm-1",))}, beats, D,
                      OPTS) == ("farm-1",)


def test_a_candidate_elected_late_is_not_held_out_by_the_votes() -> None:
    """The pool's start: site-2 heartbeats first and is elected alone; the agents, whose
    probes have no verdict on site-1 yet, vote for {site-2, site-1}; site-1 is elected as
    soon as its heartbeat comes (the lab's first e2e run caught a ballot of UP standbys
    only holding it out)."""
    c = Controller(aa_obj(("site-1", "site-2")), gateway=GW)
    everyone = ("site-1", "site-2", "site-3")
    c.look(pool(dict.fromkeys(everyone, None)), {"site-2": D}, D)
    assert c.active() == ["site-2"]
    stored = Gateway.from_k8s(c.obj)
    votes = dict.fromkeys(everyone, ballot(stored, frozenset(), "site-3"))
    assert votes["site-3"] == ("site-2", "site-1")
    c.look(pool(votes), {"site-2": D}, D + 1)
    c.look(pool(votes), {"site-2": D, "site-1": D + 2}, D + 2)
    assert c.active() == ["site-2", "site-1"] and not c.events


def test_a_candidate_whose_key_came_late_is_not_dropped_by_votes_cast_before_it() -> None:
    """The pool's start as CI caught it (test_lab_active_active_direct): site-2 is elected
    alone while site-1 has no key yet, so the status lists no standby; the agents vote from
    that status; site-1's key and heartbeat come and the controller elects it second. The
    votes cast before it must not drop it (on main they named site-2 alone, the controller
    took site-1 out again with a "probe loss" event, and the pool had one active gateway until
    the agents voted again)."""
    everyone = ("site-1", "site-2", "site-3")
    c = Controller(aa_obj(("site-1", "site-2")), gateway=GW)
    keyless = {**pool(dict.fromkeys(everyone, None)),
               "site-1": replace(voter("site-1", None), annotations=FrozenMap({}))}
    c.look(keyless, {"site-2": D}, D)
    assert c.active() == ["site-2"]
    stored = Gateway.from_k8s(c.obj)
    assert not standby_endpoints(stored)  # site-1 has no key: no standby to vote for
    votes = dict.fromkeys(everyone, ballot(stored, frozenset(), "site-3"))
    assert votes["site-3"] == ("site-2", "site-1")
    beats = {"site-2": D, "site-1": D + 1}
    c.look(pool(dict.fromkeys(everyone, None)), beats, D + 1)  # key and heartbeat come
    assert c.active() == ["site-2", "site-1"]
    control = copy.deepcopy(c)  # the votes main cast: the key-less candidate left out
    for now in (D + 1.5, D + 2, D + 3):  # the votes cast before it land
        c.look(pool(votes), beats, now)
        control.look(pool(dict.fromkeys(everyone, ("site-2",))), beats, now)
    assert c.active() == ["site-2", "site-1"] and not c.events
    assert control.active() == ["site-2"]  # what the votes decide: the test can fail
