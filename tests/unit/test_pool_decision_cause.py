"""The cause of a failover (raven.pool_decision.classify / resolve): settled by evidence that
comes after the move, so the answer does not depend on when the controller looks."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from raven import constants
from raven.election import ElectionOptions
from raven.model import Node
from raven.pool_decision import (
    PARTITION,
    POWER_OFF,
    PROBE_LOSS,
    Failover,
    classify,
    resolve,
)

AT = 1_700_000_000.0  # the move
OPTS = ElectionOptions(heartbeat_timeout=15.0)  # agents renew every 5 s (a third)
MISSED = 2 * OPTS.heartbeat_timeout / 3  # two renewals missed


def node(name: str, ready: bool = True, vote: str | None = None, offline: bool = False) -> Node:
    annotations = {} if vote is None else {
        constants.ANNOTATION_POOL_GATEWAY: vote,
        constants.ANNOTATION_POOL_GATEWAY_OFFLINE: "true" if offline else "false"}
    obj: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {constants.GATEWAY_LABEL: "gw-hz"},
                     "annotations": annotations},
        "spec": {"podCIDR": "10.244.0.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}],
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }
    return Node.from_k8s(obj)


NODES = {"hz-1": node("hz-1"), "hz-2": node("hz-2")}


def test_a_powered_off_node_whose_heartbeat_was_fresh_at_the_move_is_pending_then_power_off(
) -> None:
    """The pool fails over in half a second: the dead node's last renewal is 2 s old then."""
    beats = {"hz-1": AT - 2, "hz-2": AT}
    assert classify(("hz-1",), AT, NODES, beats, AT + 0.1, OPTS) is None
    assert classify(("hz-1",), AT, NODES, beats, AT - 2 + MISSED, OPTS) is None
    assert classify(("hz-1",), AT, NODES, beats, AT - 2 + MISSED + 0.01, OPTS) == POWER_OFF


def test_a_node_that_renews_after_the_move_lost_probes() -> None:
    beats = {"hz-1": AT + 4.9}  # its next renewal, after the move: alive
    assert classify(("hz-1",), AT, NODES, beats, AT + 5, OPTS) == PROBE_LOSS
    # A renewal written before the move (seen late) proves nothing.
    assert classify(("hz-1",), AT, NODES, {"hz-1": AT - 0.5}, AT + 5, OPTS) is None


def test_gone_notready_or_no_heartbeat_is_power_off_at_once() -> None:
    fresh = {"hz-1": AT + 1}
    assert classify(("hz-1",), AT, {}, fresh, AT + 1, OPTS) == POWER_OFF
    assert classify(("hz-1",), AT, {"hz-1": node("hz-1", ready=False)}, fresh, AT + 1,
                    OPTS) == POWER_OFF
    assert classify(("hz-1",), AT, NODES, {}, AT + 1, OPTS) == POWER_OFF


@given(last=st.floats(min_value=-30, max_value=0), renew=st.floats(min_value=0.01, max_value=5),
       looks=st.lists(st.floats(min_value=0, max_value=60), min_size=1, max_size=8))
def test_the_outcome_does_not_depend_on_when_the_controller_looks(
        last: float, renew: float, looks: list[float]) -> None:
    """A live node renews every third of the timeout (here: `renew` seconds after the move):
    every look gives PROBE_LOSS or nothing yet. A dead one never renews: POWER_OFF or nothing
    yet. Never the other one."""
    for dt in sorted(looks):
        now = AT + dt
        beat = AT + renew if now >= AT + renew else AT + last
        if now - beat > MISSED:  # (a live node renews before that)
            continue
        assert classify(("hz-1",), AT, NODES, {"hz-1": beat}, now, OPTS) in (None, PROBE_LOSS)
        assert classify(("hz-1",), AT, NODES, {"hz-1": AT + last}, now, OPTS) in (None,
                                                                                   POWER_OFF)


def test_resolve_reports_each_move_once_in_order_and_keeps_the_rest() -> None:
    partition = Failover("gw-a", ("a-1",), ("a-2",), AT, PARTITION, subject={"n": 1})
    pending = Failover("gw-hz", ("hz-1",), ("hz-2",), AT)
    waiting, ready = resolve([partition, pending], NODES, {"hz-1": AT - 1}, AT + 1, OPTS)
    assert waiting == [pending] and ready == [(partition, PARTITION)]
    voted = {"hz-1": node("hz-1"), "hz-2": node("hz-2", vote="hz-2")}
    waiting, ready = resolve(waiting, voted, {"hz-1": AT - 1}, AT + 10, OPTS)
    assert waiting == [] and ready == [(pending, POWER_OFF)]
    assert pending.message(POWER_OFF) == (
        "Gateway gw-hz: active gateway hz-1 -> hz-2, cause: power-off")


def test_the_cause_waits_for_the_pools_votes_so_a_power_off_while_cut_off_is_a_partition() -> None:
    """Case (c): the pool failed over while cut off; back online, the controller moves on its own
    (the old gateway's heartbeat is stale) before the pool's late votes land. The cause waits
    for the other nodes' votes (or a heartbeat timeout), then reads them."""
    move = Failover("gw-hz", ("hz-1",), ("hz-2",), AT)
    dead = {"hz-1": AT - 20}  # powered off long ago: power-off evidence is there at once
    silent = {"hz-1": node("hz-1", ready=False), "hz-2": node("hz-2"), "hz-3": node("hz-3")}
    assert resolve([move], silent, dead, AT + 1, OPTS) == ([move], [])
    late = {**silent, "hz-2": node("hz-2", vote="hz-2", offline=True),
            "hz-3": node("hz-3", vote="hz-2", offline=True)}
    assert resolve([move], late, dead, AT + 3, OPTS) == ([], [(move, PARTITION)])
    online = {**silent, "hz-2": node("hz-2", vote="hz-2"), "hz-3": node("hz-3", vote="hz-2")}
    assert resolve([move], online, dead, AT + 3, OPTS) == ([], [(move, POWER_OFF)])
    # Votes that never come do not hold the event for ever.
    assert resolve([move], silent, dead, AT + OPTS.heartbeat_timeout + 0.1, OPTS) == (
        [], [(move, POWER_OFF)])
