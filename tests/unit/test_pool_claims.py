"""Claims advertised in probe replies (raven.pool_claims): a gateway that comes back while its
pool uses another becomes a standby, and a node back from a power cut does not take the role
from its cached inputs before it heard its pool."""

from __future__ import annotations

import itertools

from test_failover_decision import active_of, fleet

from raven import failover, pool_claims
from raven.failover import Verdict
from raven.healthprobe import responder, wire
from raven.pool_claims import Claim

UP, DOWN, UNKNOWN = Verdict.UP, Verdict.DOWN, Verdict.UNKNOWN


def test_the_oldest_self_claim_under_the_controllers_choice_is_the_incumbent() -> None:
    order = ["k1", "k2"]
    k2 = Claim("k2", "k1", 30.0)  # k2 took over while the controller still says k1
    assert pool_claims.incumbent(order, {"k1": UP, "k2": UP}, {"k2": k2}, "k3", None) == "k2"
    # k1 back, following k2 (it claims k2, not itself): k2 stays.
    back = {"k1": Claim("k2", "k1", 0.1), "k2": k2}
    assert pool_claims.incumbent(order, {"k1": UP, "k2": UP}, back, "k3", None) == "k2"
    # The controller's choice claiming itself wins (a blackholed k1 that saw k2 DOWN too and
    # kept its role, repaired before the controller heard from the pool: the known limit).
    both = {"k1": Claim("k1", "k1", 0.1), "k2": k2}
    assert pool_claims.incumbent(order, {"k1": UP, "k2": UP}, both, "k3", None) == "k1"
    # Repaired after the controller adopted k2: k2 is the choice, k1's claim is void anyway.
    adopted = {"k1": Claim("k1", "k2", 50.0), "k2": Claim("k2", "k2", 1.0)}
    assert pool_claims.incumbent(["k2", "k1"], {"k1": UP, "k2": UP}, adopted, "k3",
                                 None) == "k2"
    # A follower's claim is no self-claim; a DOWN claimant counts for nothing.
    assert pool_claims.incumbent(order, {"k2": UP}, {"k2": Claim("k1", "k1", 9)}, "k3",
                                 None) is None
    assert pool_claims.incumbent(order, {"k2": DOWN}, {"k2": k2}, "k3", None) is None
    # The controller spoke (its choice is now k2 first, or another node): old claims are void.
    assert pool_claims.incumbent(["k2", "k1"], {"k2": UP}, {"k2": k2}, "k3", None) is None
    # My own claim counts as mine, whatever my verdicts say.
    assert pool_claims.incumbent(order, {"k2": DOWN}, {}, "k1", Claim("k1", "k1", 5)) == "k1"
    # Among others: the oldest, then the controller's order.
    three = ["k0", "k1", "k2"]
    older = {"k1": Claim("k1", "k0", 3), "k2": Claim("k2", "k0", 4)}
    assert pool_claims.incumbent(three, {}, older, "k9", None) == "k2"
    tie = {"k1": Claim("k1", "k0", 3), "k2": Claim("k2", "k0", 3)}
    assert pool_claims.incumbent(three, {}, tie, "k9", None) == "k1"


def test_every_observer_keeps_the_incumbent_when_the_old_gateway_returns() -> None:
    """The pool moved to k2 while cut off (the status still says k1); k1 is back and UP for
    everyone: members, the other candidate and remote gateways all keep k2."""
    gws = fleet()
    claims = {("cone", "k1"): Claim("k2", "k1", 0.2), ("cone", "k2"): Claim("k2", "k1", 40)}
    verdicts = {("cone", "k1"): UP, ("cone", "k2"): UP}
    for me in ("k3", "c1"):
        out, _ = failover.effective_gateways(gws, verdicts, me, claims)
        assert active_of(out, "cone")[0] == "k2", me
    out, _ = failover.effective_gateways(gws, verdicts, "k2", claims,
                                         Claim("k2", "k1", 40))
    assert active_of(out, "cone")[0] == "k2"
    # Without claims (older agents), the old rule: the first candidate not DOWN.
    out, _ = failover.effective_gateways(gws, verdicts, "k3")
    assert active_of(out, "cone")[0] == "k1"


def test_a_node_back_from_a_power_cut_waits_to_hear_its_pool() -> None:
    gws = fleet()
    # Its first plan, before any probe: it does not count itself (no verdicts at all yet).
    out, _ = failover.effective_gateways(gws, {}, "k1", {}, None, self_alive=False)
    assert active_of(out, "cone")[0] == "k2"
    # Heard k2 claiming: k2 stays; also once it counts itself again.
    heard = {("cone", "k2"): UP}
    claims = {("cone", "k2"): Claim("k2", "k1", 12)}
    for alive in (False, True):
        out, _ = failover.effective_gateways(gws, heard, "k1", claims, None, alive)
        assert active_of(out, "cone")[0] == "k2"
    # k2 is DOWN: it is the gateway after all (the controller's order).
    out, _ = failover.effective_gateways(gws, {("cone", "k2"): DOWN}, "k1", {}, None, True)
    assert active_of(out, "cone")[0] == "k1"
    # A plain agent restart (standing claim, self_alive) changes nothing.
    out, _ = failover.effective_gateways(gws, {("cone", "k2"): UNKNOWN}, "k1", {},
                                         Claim("k1", "k1", 100), True)
    assert out == gws


def test_any_two_observers_with_the_same_claims_agree() -> None:
    """Claims are the same for every observer (advertised), so are verdicts when the fault is
    seen alike: all observers of the pool pick the same gateway."""
    gws = fleet()
    views = list(itertools.product((UP, DOWN, UNKNOWN), repeat=2))
    ages = (None, 0.5, 40.0)
    for (v1, v2), a1, a2 in itertools.product(views, ages, ages):
        claims = {}
        if a1 is not None:
            claims[("cone", "k1")] = Claim("k1", "k1", a1)
        if a2 is not None:
            claims[("cone", "k2")] = Claim("k2", "k1", a2)
        verdicts = {("cone", "k1"): v1, ("cone", "k2"): v2}
        picks = {active_of(failover.effective_gateways(gws, verdicts, me, claims)[0],
                           "cone")[0] for me in ("k3", "c1", "s1")}
        assert len(picks) == 1, (v1, v2, a1, a2, picks)


def test_claim_file_and_advert_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / responder.ADVERT_FILE
    path.write_text(pool_claims.render("k2", "k1", 1000.0))
    claim = responder._Claim(str(path))
    payload = claim.payload().decode()
    gateway, head, age = pool_claims.parse_advert(payload)  # type: ignore[misc]
    assert (gateway, head) == ("k2", "k1") and age > 1000
    request = wire.encode(wire.REQUEST, 9, wire.ADVERTISE)
    assert request[5] & responder.ADVERTISE
    reply = request[:4] + bytes([wire.REPLY]) + request[5:] + payload.encode()
    assert wire.decode(reply) == (wire.REPLY, 9) and wire.advert(reply) == payload
    assert wire.advert(request) is None
    assert wire.decode(request + b"x") is None  # a request carries no payload
    assert responder._Claim(str(tmp_path / "missing")).payload() == b""
    assert pool_claims.parse_advert("k2 k1 notanumber") is None
    assert (responder.MAX_ADVERT, responder.ADVERTISE) == (wire.MAX_ADVERT, wire.ADVERTISE)
