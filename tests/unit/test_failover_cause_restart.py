"""Issue 12 item 7: a gateway powered off and back within two heartbeat renewals is a
"power-off", not a "probe loss" (raven.pool_decision.classify / resolve): it heartbeats again
after the move, but from a new agent process (its Lease's acquireTime, written once per agent
start, is later than the move, or differs from the one seen at the move). A blackholed gateway
keeps its agent: still "probe loss"."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from raven import constants
from raven.election import ElectionOptions
from raven.model import Node
from raven.pool_decision import (
    POWER_OFF,
    PROBE_LOSS,
    Failover,
    classify,
    resolve,
    restarted,
    starts_at_move,
)

AT = 1_700_000_000.0  # the move (API time of the status write)
OPTS = ElectionOptions(heartbeat_timeout=15.0)  # agents renew every 5 s
PERIOD = OPTS.heartbeat_timeout / 3
MISSED = 2 * OPTS.heartbeat_timeout / 3
BOOTED = AT - 3600  # when the lab's agents started


def node(name: str, ready: bool = True, vote: str | None = None) -> Node:
    annotations = {} if vote is None else {constants.ANNOTATION_POOL_GATEWAY: vote}
    obj: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {constants.GATEWAY_LABEL: "gw-hz"},
                     "annotations": annotations},
        "spec": {"podCIDR": "10.244.0.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}],
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }
    return Node.from_k8s(obj)


NODES = {"hz-1": node("hz-1"), "hz-2": node("hz-2", vote="hz-2"),
         "hz-3": node("hz-3", vote="hz-2")}


def test_a_node_back_from_a_power_cut_within_two_renewals_is_power_off() -> None:
    """Its new agent's first renewal (3 s after the move) is fresh and after the move, and it
    is Ready again: by heartbeats alone it looks alive; its agent started after the move."""
    beats = {"hz-1": AT + 3}
    assert classify(("hz-1",), AT, NODES, beats, AT + 3.5, OPTS) == PROBE_LOSS  # the old rule
    assert classify(("hz-1",), AT, NODES, beats, AT + 3.5, OPTS,
                    starts={"hz-1": AT + 3}) == POWER_OFF


def test_a_blackholed_node_keeps_its_agent_and_is_probe_loss() -> None:
    starts = {"hz-1": BOOTED}
    assert classify(("hz-1",), AT, NODES, {"hz-1": AT + 4}, AT + 4.5, OPTS, starts,
                    seen={"hz-1": BOOTED}) == PROBE_LOSS
    # Before its next renewal the cause waits, as before.
    assert classify(("hz-1",), AT, NODES, {"hz-1": AT - 1}, AT + 0.5, OPTS, starts,
                    seen={"hz-1": BOOTED}) is None


def test_a_start_that_changed_since_the_move_is_power_off_whatever_the_agents_clock() -> None:
    """An agent whose clock is behind writes a start earlier than the move: the change from
    the start seen at the move still tells (no clock comparison)."""
    seen = {"hz-1": BOOTED}
    skewed = {"hz-1": AT - 30}
    assert restarted("hz-1", AT, skewed, seen)
    assert classify(("hz-1",), AT, NODES, {"hz-1": AT + 2}, AT + 2.5, OPTS, skewed,
                    seen) == POWER_OFF
    assert not restarted("hz-1", AT, seen, seen)
    assert not restarted("hz-1", AT, {}, seen)  # an agent that never marks its start


def test_the_controller_records_the_starts_seen_at_the_move_and_resolve_uses_them() -> None:
    assert starts_at_move(("hz-1", "hz-9"), {"hz-1": BOOTED, "hz-2": AT}) == (("hz-1", BOOTED),)
    move = Failover("gw-hz", ("hz-1",), ("hz-2",), AT, started=(("hz-1", BOOTED),))
    back = {"hz-1": AT - 100}  # its clock is far behind: only the change tells
    assert resolve([move], NODES, {"hz-1": AT + 2}, AT + 2.5, OPTS, back) == (
        [], [(move, POWER_OFF)])
    assert resolve([move], NODES, {"hz-1": AT + 2}, AT + 2.5, OPTS, {"hz-1": BOOTED}) == (
        [], [(move, PROBE_LOSS)])
    # Callers that do not read starts (older agents never mark them) get the old rule.
    assert resolve([move], NODES, {"hz-1": AT + 2}, AT + 2.5, OPTS) == (
        [], [(move, PROBE_LOSS)])


@given(cut=st.floats(min_value=0, max_value=1), phase=st.floats(min_value=0, max_value=PERIOD),
       back=st.floats(min_value=0.01, max_value=MISSED),
       looks=st.lists(st.floats(min_value=0, max_value=60), min_size=1, max_size=8))
def test_power_cut_and_prompt_return_is_never_probe_loss_whenever_the_controller_looks(
        cut: float, phase: float, back: float, looks: list[float]) -> None:
    """Power cut `cut` s before the move (the pool fails over within a second), the last
    renewal `phase` before the cut; the new agent's first renewal `back` s after the move
    (before two renewals are missed), every period after. Every look: power-off or not yet;
    after the return, power-off. The same node blackholed instead (its agent runs on, renewing
    every period): probe loss or not yet, never power-off."""
    last_before = AT - cut - phase
    for dt in sorted(looks):
        now = AT + dt
        if now >= AT + back:
            beat = AT + back + PERIOD * int((now - AT - back) // PERIOD)
            starts = {"hz-1": AT + back}
        else:
            beat, starts = last_before, {"hz-1": BOOTED}
        got = classify(("hz-1",), AT, NODES, {"hz-1": beat}, now, OPTS, starts,
                       {"hz-1": BOOTED})
        assert got in (None, POWER_OFF)
        if now >= AT + back:
            assert got == POWER_OFF
        alive = last_before + PERIOD * int((now - last_before) // PERIOD)
        assert classify(("hz-1",), AT, NODES, {"hz-1": alive}, now, OPTS, {"hz-1": BOOTED},
                        {"hz-1": BOOTED}) in (None, PROBE_LOSS)
