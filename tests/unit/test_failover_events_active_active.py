"""GatewayFailover events of active-active pools (tunnelConfig.Replicas 2, issue 12 item 7):
each failover of ANY active gateway, the first or not, gives exactly one event naming the
Gateway, the old node, the node(s) that took over its share and the cause, by the rules of the
single-gateway case. Replayed on the pure controller loop of test_failover_cause_orderings
(its Controller, Node factory and timing), the shape of test-topologies/active-active.yaml
(two candidates, both active) and acceptance-replicas.yaml (three candidates, one standby).

Agents publish the FIRST gateway of their pool's active set as their vote, so the failure of
a non-first active gateway changes no vote: the controller moves it when its heartbeat expires.
Before, a move that elected nobody (both candidates active: the survivor takes the share) or
that kept the first gateway queued no event, or waited for votes that never name the new one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from test_failover_cause_orderings import OPTS, PERIOD, Controller, D, node

from raven import shards
from raven.gateway_status import compute_status
from raven.model import Node
from raven.pool_decision import PARTITION, POWER_OFF

T = OPTS.heartbeat_timeout
GW = "gw-site"


def aa_obj(candidates: tuple[str, ...]) -> dict[str, Any]:
    return {"apiVersion": "raven.openyurt.io/v1beta1", "kind": "Gateway",
            "metadata": {"name": GW, "resourceVersion": "1"},
            "spec": {"tunnelConfig": {"Replicas": 2},
                     "endpoints": [{"nodeName": n, "type": "tunnel", "underNAT": True}
                                   for n in candidates]}}


def pool(candidates: tuple[str, ...], members: tuple[str, ...], votes: dict[str, str],
         down: tuple[str, ...] = ()) -> dict[str, Node]:
    return {n: node(n, ready=n not in down, vote=votes.get(n), pool=GW)
            for n in (*candidates, *members)}


def started(candidates: tuple[str, ...], members: tuple[str, ...]) -> Controller:
    c = Controller(aa_obj(candidates), gateway=GW)
    head = candidates[0]
    c.look(pool(candidates, members, dict.fromkeys((*candidates, *members), head)),
           dict.fromkeys(candidates, D - 1), D - 1)
    assert c.active() == list(candidates[:2]) and not c.events
    return c


def renewing(last: float, now: float) -> float:
    return last + PERIOD * max(0, math.floor((now - last) / PERIOD))


def replay(c: Controller, nodes: Callable[[float], dict[str, Node]],
           beats: Callable[[float], dict[str, float]], until: float = 60.0) -> None:
    for k in range(int(until) + 1):
        now = D + k
        c.look(nodes(now), beats(now), now)


CASES = [  # (candidates, members, the one powered off, who takes its share)
    (("site-1", "site-2"), ("site-3", "site-4", "site-5"), "site-2", ("site-1",)),
    (("site-1", "site-2"), ("site-3", "site-4", "site-5"), "site-1", ("site-2",)),
    (("farm-1", "farm-2", "farm-3"), ("farm-4", "farm-5"), "farm-2", None),
    (("farm-1", "farm-2", "farm-3"), ("farm-4", "farm-5"), "farm-1", None),
]


@pytest.mark.parametrize(("candidates", "members", "off", "takers"), CASES)
def test_power_off_of_any_active_gateway_is_one_power_off_event(
        candidates: tuple[str, ...], members: tuple[str, ...], off: str,
        takers: tuple[str, ...] | None) -> None:
    """The pool is heard all along. Its probes drop `off` within a second: every node's vote
    names the first gateway of its active set, which changes only when `off` was the first."""
    c = started(candidates, members)
    alive = [n for n in candidates if n != off]
    everyone = (*candidates, *members)

    def nodes(now: float) -> dict[str, Node]:
        head = alive[0] if now >= D + 1 else candidates[0]
        return pool(candidates, members, {n: head for n in everyone if n != off}
                    | {off: candidates[0]}, down=(off,) if now >= D + 40 else ())

    def beats(now: float) -> dict[str, float]:
        return {n: D if n == off else renewing(D - 1, now) for n in candidates}

    replay(c, nodes, beats)
    new = [n for n in c.active() if n != off]
    assert off not in c.active() and len(new) == min(2, len(alive))
    if takers is None:  # a standby was promoted: it takes its share, maybe survivors the rest
        old = shards.assign(everyone, candidates[:2])
        takers = tuple(sorted({shards.gateway_of(m, new) for m, g in old.items() if g == off}
                              | {n for n in new if n not in candidates[:2]},
                              key=candidates.index))
    assert c.events == [f"Gateway {GW}: active gateway {off} -> {', '.join(takers)}, "
                        f"cause: {POWER_OFF}"]
    assert not c.pending


def test_second_active_gateway_powered_off_while_the_pool_is_cut_off_is_a_partition() -> None:
    """Cut off at D, site-2 (not the first) powered off: every heartbeat stops at the cut;
    the votes do not change (the first gateway stays first). Heal at D + 30."""
    candidates, members = ("site-1", "site-2"), ("site-3", "site-4")
    c = started(candidates, members)
    heal = D + 30

    def beats(now: float) -> dict[str, float]:
        return {"site-1": D - 1 if now < heal + 1 else renewing(heal + 1, now),
                "site-2": D - 3}

    replay(c, lambda now: pool(candidates, members, dict.fromkeys((*candidates, *members),
                                                                  "site-1")), beats)
    assert c.active() == ["site-1"]
    assert c.events == [f"Gateway {GW}: active gateway site-2 -> site-1, cause: {PARTITION}"]


def test_the_plan_names_the_takers_and_the_new_first_gateway() -> None:
    """StatusPlan.failover: the promoted standby and the survivors that carry the lost share;
    `head` only when the first active gateway changed (the node the votes name then)."""
    candidates, members = ("farm-1", "farm-2", "farm-3"), ("farm-4", "farm-5")
    c = started(candidates, members)
    nodes = pool(candidates, members, dict.fromkeys((*candidates, *members), "farm-1"))
    plan = compute_status(c.obj, nodes, {"farm-1": D, "farm-3": D}, D, options=OPTS)
    move = plan.failover(GW, D)
    assert move is not None and move.lost == ("farm-2",) and "farm-3" in move.elected
    assert move.head == "" and move.voted == ""
    plan = compute_status(c.obj, nodes, {"farm-2": D, "farm-3": D}, D, options=OPTS)
    move = plan.failover(GW, D)
    assert move is not None and move.lost == ("farm-1",) and move.voted == "farm-2"
    # Nobody left to take over (every candidate's Node deleted): no move to report.
    left = {n: v for n, v in nodes.items() if n in members}
    plan = compute_status(c.obj, left, {}, D, options=OPTS)
    assert plan.lost == ("farm-1", "farm-2") and plan.failover(GW, D) is None
