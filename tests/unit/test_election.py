"""raven.election: table of decisions, and hypothesis properties (sticky, never empty on stale)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from raven.election import ElectionOptions, elect, elect_proxies
from raven.model import (
    Endpoint,
    Gateway,
    GatewaySpec,
    GatewayStatus,
    Node,
    ProxyConfig,
    TunnelConfig,
)

NOW = 1_000_000.0


def gw(endpoints: list[str], active: list[str] = (), replicas: int = 0,  # type: ignore[assignment]
       proxies: list[str] = ()) -> Gateway:  # type: ignore[assignment]
    eps = tuple(Endpoint(n) for n in endpoints) + tuple(Endpoint(n, type="proxy") for n in proxies)
    return Gateway(
        "gw-hz",
        spec=GatewaySpec(endpoints=eps,
                         tunnel_config=TunnelConfig(replicas) if replicas else None),
        status=GatewayStatus(active_endpoints=tuple(Endpoint(n, public_ip="203.0.113.1")
                                                    for n in active)),
    )


def nodes(*names: str, not_ready: tuple[str, ...] = ()) -> dict[str, Node]:
    return {n: Node(n, internal_ips=("10.0.0.1",), ready=n not in not_ready) for n in names}


def fresh(*names: str) -> dict[str, float]:
    return {n: NOW - 1 for n in names}


def test_first_healthy_in_spec_order_is_elected() -> None:
    e = elect(gw(["a", "b", "c"]), nodes("a", "b", "c"), fresh("a", "b", "c"), NOW)
    assert e.names == ("a",)
    assert e.active[0] == Endpoint("a")  # the spec endpoint; the controller fills publicIP/key
    assert "Gateway gw-hz: a elected (healthy; next in spec order, spec.endpoints[0])" in e.reasons
    assert "Gateway gw-hz: b is a healthy standby (tunnelConfig.Replicas 1 reached)" in e.reasons


def test_active_endpoint_is_sticky() -> None:
    e = elect(gw(["a", "b"], active=["b"]), nodes("a", "b"), fresh("a", "b"), NOW)
    assert e.names == ("b",)
    assert "Gateway gw-hz: b stays active (healthy; active endpoints are sticky)" in e.reasons


def test_failover_when_the_active_endpoint_goes_stale() -> None:
    hb = {"a": NOW - 100, "b": NOW - 1}
    e = elect(gw(["a", "b"], active=["a"]), nodes("a", "b"), hb, NOW)
    assert e.names == ("b",)
    assert "Gateway gw-hz: a is not a candidate: agent heartbeat 100s ago (timeout 15s)" in (
        e.reasons)
    assert "Gateway gw-hz: a is no longer active" in e.reasons


def test_not_ready_missing_and_proxy_nodes_are_not_candidates() -> None:
    e = elect(gw(["gone", "sick", "ok"], proxies=["px"]), nodes("sick", "ok", "px",
                                                                 not_ready=("sick",)),
              fresh("gone", "sick", "ok", "px"), NOW)
    assert e.names == ("ok",)
    assert "Gateway gw-hz: gone is not a candidate: no such node" in e.reasons
    assert "Gateway gw-hz: sick is not a candidate: node is not Ready (heartbeat 1s ago)" in (
        e.reasons)


def test_missing_heartbeat_is_stale() -> None:
    e = elect(gw(["a"]), nodes("a"), {}, NOW)
    assert e.names == ()
    assert "Gateway gw-hz: a is not a candidate: agent heartbeat never (timeout 15s)" in e.reasons


def test_replicas_elect_several_sticky_first_then_spec_order() -> None:
    e = elect(gw(["a", "b", "c", "d"], active=["c"], replicas=2), nodes("a", "b", "c", "d"),
              fresh("a", "b", "c", "d"), NOW)
    assert e.names == ("c", "a")


def test_every_heartbeat_stale_keeps_the_active_endpoint() -> None:
    hb = {"a": NOW - 300, "b": NOW - 300}
    e = elect(gw(["a", "b"], active=["b"]), nodes("a", "b", not_ready=("a", "b")), hb, NOW)
    assert e.names == ("b",) and e.kept_stale
    assert any("every candidate's heartbeat is stale at once" in r and "keeping b active" in r
               for r in e.reasons)


def test_every_heartbeat_stale_without_a_previous_active_elects_nothing() -> None:
    e = elect(gw(["a"]), nodes("a"), {"a": NOW - 300}, NOW)
    assert e.names == () and not e.kept_stale
    assert "Gateway gw-hz: no healthy tunnel endpoint; no active gateway" in e.reasons


def test_not_ready_with_a_fresh_heartbeat_is_a_real_failure_not_lost_cloud() -> None:
    e = elect(gw(["a"], active=["a"]), nodes("a", not_ready=("a",)), fresh("a"), NOW)
    assert e.names == () and not e.kept_stale


def test_deleted_active_node_is_never_kept() -> None:
    e = elect(gw(["a", "b"], active=["a"]), nodes("b"), {"b": NOW - 300}, NOW)
    assert e.names == ()


def test_active_endpoint_removed_from_spec_is_not_kept() -> None:
    e = elect(gw(["b"], active=["a"]), nodes("a", "b"), {"a": NOW - 300, "b": NOW - 300}, NOW)
    assert e.names == ()


def test_no_tunnel_endpoints() -> None:
    e = elect(gw([], proxies=["p"]), nodes("p"), fresh("p"), NOW)
    assert e.names == ()
    assert e.reasons == ("Gateway gw-hz: spec.endpoints has no tunnel endpoint; add one "
                         "(type: tunnel) to elect an active gateway",)


def test_timeout_is_an_option() -> None:
    hb = {"a": NOW - 20}
    assert elect(gw(["a"]), nodes("a"), hb, NOW).names == ()
    assert elect(gw(["a"]), nodes("a"), hb, NOW, ElectionOptions(heartbeat_timeout=30)).names == (
        "a",)


def test_duplicate_spec_entries_count_once() -> None:
    e = elect(gw(["a", "a", "b"], replicas=2), nodes("a", "b"), fresh("a", "b"), NOW)
    assert e.names == ("a", "b")


# ---------------------------------------------------------------------------------------------
# Properties

NAMES = ["n0", "n1", "n2", "n3", "n4"]


@st.composite
def situations(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    spec = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=5, unique=True))
    active = draw(st.lists(st.sampled_from(NAMES), max_size=2, unique=True))
    existing = draw(st.lists(st.sampled_from(NAMES), unique=True))
    not_ready = tuple(draw(st.lists(st.sampled_from(NAMES), unique=True)))
    ages = {n: draw(st.sampled_from([None, 0.0, 5.0, 14.0, 16.0, 300.0])) for n in NAMES}
    replicas = draw(st.integers(0, 3))
    heartbeats = {n: NOW - a for n, a in ages.items() if a is not None}
    return gw(spec, active, replicas), nodes(*existing, not_ready=not_ready), heartbeats


def _healthy(g: Gateway, ns: dict[str, Node], hb: dict[str, float]) -> set[str]:
    return {e.node_name for e in g.spec.endpoints
            if e.node_name in ns and ns[e.node_name].ready and e.node_name in hb
            and NOW - hb[e.node_name] <= 15}


@settings(max_examples=400, deadline=None)
@given(situations())
def test_election_invariants(s) -> None:  # type: ignore[no-untyped-def]
    g, ns, hb = s
    e = elect(g, ns, hb, NOW)
    healthy = _healthy(g, ns, hb)
    names = e.names
    assert len(names) == len(set(names)) <= g.spec.tunnel_replicas
    assert e.reasons  # every outcome is explained
    if e.kept_stale:
        # Kept only while no candidate was heard within half the timeout (rule 4, silent pool).
        assert all(NOW - hb[n] > 7.5 for n in healthy)
        assert set(names) <= {a.node_name for a in g.status.active_endpoints} - healthy
    else:
        assert set(names) <= healthy
        # As many as wanted and available.
        assert len(names) == min(len(healthy), g.spec.tunnel_replicas)
    # Sticky: a previously active endpoint that is still healthy stays (while replicas allow).
    previous = [a.node_name for a in g.status.active_endpoints]
    still = [n for n in previous if n in healthy][: g.spec.tunnel_replicas]
    assert set(still) <= set(names)
    # Deterministic.
    assert elect(g, ns, hb, NOW) == e


@settings(max_examples=300, deadline=None)
@given(situations())
def test_never_empty_when_everything_goes_stale_at_once(s) -> None:  # type: ignore[no-untyped-def]
    g, ns, _ = s
    previous = [a.node_name for a in g.status.active_endpoints]
    spec = {e.node_name for e in g.spec.endpoints}
    stale = {n: NOW - 1000 for n in NAMES}
    e = elect(g, ns, stale, NOW)
    if any(n in spec and n in ns for n in previous):
        assert e.names and e.kept_stale
        assert set(e.names) <= set(previous)
    else:
        assert e.names == ()


# ---------------------------------------------------------------------------------------------
# Silent pool: a cut-off pool's heartbeats stop together but expire one by one


def test_a_silent_pool_keeps_its_active_gateway_before_every_heartbeat_expires() -> None:
    # Cut at NOW - 16: b had renewed 4 s before the cut, a 1 s before: a is still "fresh" for 14
    # more seconds, but it missed three renewals (every 5 s at the default timeout).
    hb = {"a": NOW - 10, "b": NOW - 20}
    e = elect(gw(["a", "b"], active=["b"]), nodes("a", "b"), hb, NOW)
    assert e.names == ("b",) and e.kept_stale
    assert any("no other candidate renewed within half the timeout (a 10s ago; 7.5s)" in r
               and "keeping b active" in r for r in e.reasons), e.reasons


def test_a_heard_standby_takes_over_from_a_stale_active_gateway() -> None:
    # Positive control: the standby renewed within half the timeout (the pool is heard).
    hb = {"a": NOW - 5, "b": NOW - 20}
    e = elect(gw(["a", "b"], active=["b"]), nodes("a", "b"), hb, NOW)
    assert e.names == ("a",) and not e.kept_stale


def test_a_silent_pool_is_judged_against_the_timeout_option() -> None:
    hb = {"a": NOW - 10, "b": NOW - 40}
    options = ElectionOptions(heartbeat_timeout=30)
    assert elect(gw(["a", "b"], active=["b"]), nodes("a", "b"), hb, NOW, options).names == ("a",)


def test_a_not_ready_candidate_that_heartbeats_means_the_pool_is_heard() -> None:
    hb = {"a": NOW - 10, "b": NOW - 20, "c": NOW - 1}
    e = elect(gw(["a", "b", "c"], active=["b"]), nodes("a", "b", "c", not_ready=("c",)), hb, NOW)
    assert e.names == ("a",) and not e.kept_stale


def test_a_silent_pool_keeps_only_stale_previous_endpoints() -> None:
    # One of two active endpoints is still heard: nothing is kept, the election runs as usual.
    hb = {"a": NOW - 2, "b": NOW - 20, "c": NOW - 10}
    e = elect(gw(["a", "b", "c"], active=["a", "b"], replicas=2), nodes("a", "b", "c"), hb, NOW)
    assert e.names == ("a", "c") and not e.kept_stale


def test_a_silent_pool_keeps_its_proxy_endpoint_too() -> None:
    g = gw(["a", "b"], active=[], proxies=["p", "q"])
    g = Gateway(g.name, spec=GatewaySpec(endpoints=g.spec.endpoints, proxy_config=ProxyConfig(1)),
                status=GatewayStatus(active_endpoints=(Endpoint("q", type="proxy"),)))
    hb = {"p": NOW - 10, "q": NOW - 20}
    e = elect_proxies(g, nodes("p", "q"), hb, NOW)
    assert e.names == ("q",) and e.kept_stale
    assert elect_proxies(g, nodes("p", "q"), {"p": NOW - 3, "q": NOW - 20}, NOW).names == ("p",)
