"""Issue 12 item 7: a gateway powered off and back within two heartbeat renewals is a
"power-off", not a "probe loss" (raven.pool_decision.classify / resolve): it heartbeats again
after the move, but from a new agent process (its Lease's acquireTime, written once per agent
start, is later than the move). A blackholed gateway keeps its agent: still "probe loss"."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from test_pool_decision_cause import node  # the same Node factory (tests/unit on sys.path)

from raven.election import ElectionOptions
from raven.pool_decision import (
    POWER_OFF,
    PROBE_LOSS,
    Failover,
    classify,
    resolve,
    restarted,
)

AT = 1_700_000_000.0  # the move (API time of the status write)
OPTS = ElectionOptions(heartbeat_timeout=15.0)  # agents renew every 5 s
PERIOD = OPTS.heartbeat_timeout / 3
MISSED = 2 * OPTS.heartbeat_timeout / 3
BOOTED = AT - 3600  # when the lab's agents started


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
    assert classify(("hz-1",), AT, NODES, {"hz-1": AT + 4}, AT + 4.5, OPTS,
                    starts) == PROBE_LOSS
    # Before its next renewal the cause waits, as before.
    assert classify(("hz-1",), AT, NODES, {"hz-1": AT - 1}, AT + 0.5, OPTS, starts) is None


def test_an_agent_started_before_the_move_is_no_evidence() -> None:
    """A start written before the move (an agent restarted earlier, or one the controller's
    informer delivers late, e.g. at the heal of a partition) proves nothing: the heartbeat
    rules decide, and the pool's offline-flagged votes keep their time to land."""
    assert not restarted("hz-1", AT, {"hz-1": AT - 0.5})
    assert not restarted("hz-1", AT, {})  # an agent that never marks its start
    assert classify(("hz-1",), AT, NODES, {"hz-1": AT - 0.5}, AT + 1, OPTS,
                    {"hz-1": AT - 0.5}) is None
    assert restarted("hz-1", AT, {"hz-1": AT + 0.01})


def test_resolve_reads_the_starts() -> None:
    move = Failover("gw-hz", ("hz-1",), ("hz-2",), AT)
    assert resolve([move], NODES, {"hz-1": AT + 2}, AT + 2.5, OPTS, {"hz-1": AT + 2}) == (
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
        got = classify(("hz-1",), AT, NODES, {"hz-1": beat}, now, OPTS, starts)
        assert got in (None, POWER_OFF)
        if now >= AT + back:
            assert got == POWER_OFF
        alive = last_before + PERIOD * int((now - last_before) // PERIOD)
        assert classify(("hz-1",), AT, NODES, {"hz-1": alive}, now, OPTS,
                        {"hz-1": BOOTED}) in (None, PROBE_LOSS)
