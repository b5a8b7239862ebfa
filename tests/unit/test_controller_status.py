"""The pure Gateway-status computation (raven/gateway_status.py): Gateway object + Nodes +
heartbeats -> the status to store."""

from __future__ import annotations

import copy
from typing import Any

from raven import constants
from raven.gateway_status import compute_status, heartbeats_from_leases, key_problem
from raven.model import Node

NOW = 1_700_000_000.0
KEY_A = "a" * 43 + "="


def node(name: str, ip: str, cidrs: list[str], pool: str | None, key: str = "",
         external: str = "", ready: bool = True) -> Node:
    addresses = [{"type": "InternalIP", "address": ip}]
    if external:
        addresses.append({"type": "ExternalIP", "address": external})
    obj: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {constants.GATEWAY_LABEL: pool} if pool else {},
                     "annotations": {constants.ANNOTATION_PUBLIC_KEY: key} if key else {}},
        "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs},
        "status": {"addresses": addresses,
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }
    return Node.from_k8s(obj)


def gateway(name: str, endpoints: list[dict[str, Any]], status: dict[str, Any] | None = None,
            replicas: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "raven.openyurt.io/v1beta1", "kind": "Gateway",
        "metadata": {"name": name, "resourceVersion": "7"},
        "spec": {"endpoints": endpoints, "tunnelConfig": {"Replicas": replicas}},
    }
    if status is not None:
        obj["status"] = status
    return obj


def cond(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == ctype)


NODES = {
    "hz-1": node("hz-1", "192.0.2.1", ["10.244.0.0/24", "fd00::/64"], "gw-hz", KEY_A),
    "hz-2": node("hz-2", "192.0.2.2", ["10.244.1.0/24"], "gw-hz", "b" * 43 + "=",
                 external="198.51.100.9"),
    "bj-1": node("bj-1", "203.0.113.1", ["10.244.9.0/24"], "gw-bj"),
}


def test_members_come_from_the_label_with_internal_ip_and_every_pod_cidr() -> None:
    plan = compute_status(gateway("gw-hz", [{"nodeName": "hz-1", "type": "tunnel"}]), NODES,
                          {"hz-1": NOW}, NOW)
    assert plan.status["nodes"] == [
        {"nodeName": "hz-1", "privateIP": "192.0.2.1", "subnets": ["10.244.0.0/24", "fd00::/64"]},
        {"nodeName": "hz-2", "privateIP": "192.0.2.2", "subnets": ["10.244.1.0/24"]},
    ]


def test_elected_endpoint_gets_public_key_and_internal_ip_when_not_under_nat() -> None:
    plan = compute_status(gateway("gw-hz", [{"nodeName": "hz-1", "type": "tunnel"}]), NODES,
                          {"hz-1": NOW}, NOW)
    (active,) = plan.status["activeEndpoints"]
    assert active["nodeName"] == "hz-1"
    assert active["config"][constants.ENDPOINT_CONFIG_PUBLIC_KEY] == KEY_A
    assert active["publicIP"] == "192.0.2.1"
    assert plan.elected == ("hz-1",) and plan.lost == ()
    assert cond(plan.status, "Ready")["status"] == "True"


def test_public_address_prefers_spec_then_external_ip_and_is_empty_under_nat() -> None:
    spec_ip = compute_status(gateway("gw-hz", [
        {"nodeName": "hz-2", "type": "tunnel", "publicIP": "203.0.113.77"}]), NODES,
        {"hz-2": NOW}, NOW)
    assert spec_ip.status["activeEndpoints"][0]["publicIP"] == "203.0.113.77"
    external = compute_status(gateway("gw-hz", [{"nodeName": "hz-2", "type": "tunnel"}]), NODES,
                              {"hz-2": NOW}, NOW)
    assert external.status["activeEndpoints"][0]["publicIP"] == "198.51.100.9"
    nat = compute_status(gateway("gw-hz", [
        {"nodeName": "hz-1", "type": "tunnel", "underNAT": True}]), NODES, {"hz-1": NOW}, NOW)
    assert "publicIP" not in nat.status["activeEndpoints"][0]


def test_stored_status_is_a_fixed_point() -> None:
    obj = gateway("gw-hz", [{"nodeName": "hz-1", "type": "tunnel"}])
    first = compute_status(obj, NODES, {"hz-1": NOW}, NOW)
    stored = copy.deepcopy(obj)
    stored["status"] = first.status
    again = compute_status(stored, NODES, {"hz-1": NOW + 3}, NOW + 3)
    assert again.status == first.status
    assert again.elected == () and again.lost == ()


def test_stale_heartbeat_moves_the_endpoint_and_reports_the_loss() -> None:
    obj = gateway("gw-hz", [{"nodeName": "hz-1", "type": "tunnel"},
                            {"nodeName": "hz-2", "type": "tunnel"}])
    first = compute_status(obj, NODES, {"hz-1": NOW, "hz-2": NOW}, NOW)
    stored = copy.deepcopy(obj)
    stored["status"] = first.status
    later = NOW + 60
    second = compute_status(stored, NODES, {"hz-1": NOW, "hz-2": later}, later)
    assert [e["nodeName"] for e in second.status["activeEndpoints"]] == ["hz-2"]
    assert second.elected == ("hz-2",) and second.lost == ("hz-1",)


def test_no_candidate_gives_a_stable_not_ready_condition() -> None:
    obj = gateway("gw-bj", [{"nodeName": "bj-1", "type": "tunnel"}])
    a = compute_status(obj, NODES, {}, NOW)
    stored = copy.deepcopy(obj)
    stored["status"] = a.status
    b = compute_status(stored, NODES, {}, NOW + 30)
    ready = cond(a.status, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "NoActiveEndpoint"
    assert "bj-1" in ready["message"] and "heartbeat" in ready["message"]
    assert a.status == b.status  # no ages in the message: no write at every resync


def test_invalid_spec_keeps_the_last_status_and_explains() -> None:
    obj = gateway("gw-hz", [{"nodeName": "hz-1", "type": "tunnel"}])
    good = compute_status(obj, NODES, {"hz-1": NOW}, NOW)
    broken = copy.deepcopy(obj)
    broken["status"] = good.status
    broken["spec"]["endpoints"][0]["type"] = "wormhole"
    plan = compute_status(broken, NODES, {"hz-1": NOW}, NOW)
    assert plan.status["activeEndpoints"] == good.status["activeEndpoints"]
    assert plan.status["nodes"] == good.status["nodes"]
    valid = cond(plan.status, "SpecValid")
    assert valid["status"] == "False" and valid["reason"] == "InvalidSpec"
    assert "spec.endpoints[0].type" in valid["message"]


def test_unreadable_gateway_does_not_raise() -> None:
    obj = gateway("gw-x", [])
    obj["spec"]["endpoints"] = "not-a-list"
    plan = compute_status(obj, NODES, {}, NOW)
    assert cond(plan.status, "SpecValid")["status"] == "False"
    assert "spec.endpoints" in cond(plan.status, "SpecValid")["message"]


def test_fleet_problem_for_this_gateway_becomes_its_condition() -> None:
    obj = gateway("gw-hz", [{"nodeName": "hz-1", "type": "tunnel"}])
    fleet = ["Gateway gw-hz: status.nodes subnets: 10.244.0.0/24 overlaps ...",
             "Gateway gw-other: something else"]
    plan = compute_status(obj, NODES, {"hz-1": NOW}, NOW, fleet)
    valid = cond(plan.status, "SpecValid")
    assert valid["reason"] == "FleetConflict" and "overlaps" in valid["message"]
    assert "gw-other" not in valid["message"]


def test_condition_time_is_kept_while_its_status_holds() -> None:
    obj = gateway("gw-hz", [{"nodeName": "hz-1", "type": "tunnel"}])
    first = compute_status(obj, NODES, {"hz-1": NOW}, NOW)
    stored = copy.deepcopy(obj)
    stored["status"] = first.status
    later = compute_status(stored, NODES, {"hz-1": NOW + 100}, NOW + 100)
    assert (cond(later.status, "Ready")["lastTransitionTime"]
            == cond(first.status, "Ready")["lastTransitionTime"])


def test_heartbeats_come_from_agent_leases_only() -> None:
    leases = [
        {"metadata": {"name": "raven-agent-hz-1"},
         "spec": {"renewTime": "2023-11-14T22:13:20.000000Z"}},
        {"metadata": {"name": "raven-gateway-controller"},
         "spec": {"renewTime": "2023-11-14T22:13:20.000000Z"}},
        {"metadata": {"name": "raven-agent-bad"}, "spec": {"renewTime": "garbage"}},
    ]
    assert heartbeats_from_leases(leases) == {"hz-1": NOW}


def test_elected_node_without_key_is_not_ready() -> None:
    plan = compute_status(gateway("gw-bj", [{"nodeName": "bj-1", "type": "tunnel"}]), NODES,
                          {"bj-1": NOW}, NOW)
    assert [e["nodeName"] for e in plan.status["activeEndpoints"]] == ["bj-1"]
    assert "config" not in plan.status["activeEndpoints"][0]
    ready = cond(plan.status, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "PublicKeyMissing"
    assert constants.ANNOTATION_PUBLIC_KEY in ready["message"]


def test_members_grouped_once_equal_members_per_gateway() -> None:
    from raven.gateway_status import members_by_pool

    pools = members_by_pool(NODES)
    assert [m.node_name for m in pools["gw-hz"]] == ["hz-1", "hz-2"]
    obj = gateway("gw-hz", [{"nodeName": "hz-1", "type": "tunnel"}])
    assert (compute_status(obj, NODES, {"hz-1": NOW}, NOW, pools=pools).status
            == compute_status(obj, NODES, {"hz-1": NOW}, NOW).status)


def test_a_malformed_public_key_is_not_published_and_the_gateway_names_the_node() -> None:
    nodes = {**NODES, "hz-1": node("hz-1", "192.0.2.1", ["10.244.0.0/24"], "gw-hz",
                                   "not-a-key!")}
    plan = compute_status(gateway("gw-hz", [{"nodeName": "hz-1", "type": "tunnel"}]), nodes,
                          {"hz-1": NOW}, NOW)
    (active,) = plan.status["activeEndpoints"]
    assert active["nodeName"] == "hz-1"
    assert constants.ENDPOINT_CONFIG_PUBLIC_KEY not in active.get("config", {})
    ready = cond(plan.status, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "PublicKeyInvalid"
    assert "node hz-1" in ready["message"] and constants.ANNOTATION_PUBLIC_KEY in ready["message"]
    # The other pool is untouched by hz-1's bad annotation.
    other = compute_status(gateway("gw-bj", [{"nodeName": "hz-2", "type": "tunnel"}]), nodes,
                           {"hz-2": NOW}, NOW)
    assert cond(other.status, "Ready")["status"] == "True"


def test_key_problem_accepts_only_base64_of_32_bytes() -> None:
    assert key_problem("n", KEY_A) is None
    for bad in ("a" * 42 + "==", "a" * 44, "!" * 43 + "=", "", "a" * 43 + "=\n"):
        assert key_problem("n", bad) is not None, bad


# --- standby endpoints, the pool's own decision, failover causes ----------------------------

def _voting(votes: dict[str, str], ready: tuple[str, ...] = ("hz-1", "hz-2", "hz-3"),
            offline: tuple[str, ...] = ()) -> dict[str, Node]:
    out = {}
    for i, name in enumerate(("hz-1", "hz-2", "hz-3")):
        n = node(name, f"192.0.2.{i + 1}", [f"10.244.{i}.0/24"], "gw-hz",
                 "abc"[i] * 43 + "=", ready=name in ready)
        if name in votes:
            raw = n.raw.to_dict()
            raw["metadata"]["annotations"][constants.ANNOTATION_POOL_GATEWAY] = votes[name]
            raw["metadata"]["annotations"][constants.ANNOTATION_POOL_GATEWAY_OFFLINE] = (
                "true" if name in offline else "false")
            n = Node.from_k8s(raw)
        out[name] = n
    return out


TWO = [{"nodeName": "hz-1", "type": "tunnel"}, {"nodeName": "hz-2", "type": "tunnel"}]
HEARTS = {"hz-1": NOW, "hz-2": NOW}


def test_standby_endpoints_list_the_other_candidates_with_their_keys() -> None:
    plan = compute_status(gateway("gw-hz", TWO), _voting({}), HEARTS, NOW)
    assert [e["nodeName"] for e in plan.status["activeEndpoints"]] == ["hz-1"]
    (standby,) = plan.status["standbyEndpoints"]
    assert standby["nodeName"] == "hz-2" and standby["config"]["public-key"] == "b" * 43 + "="
    # Also with a stale heartbeat: the pool may fail over to it while cut off from us.
    plan = compute_status(gateway("gw-hz", TWO), _voting({}), {"hz-1": NOW}, NOW)
    assert [e["nodeName"] for e in plan.status["standbyEndpoints"]] == ["hz-2"]


def _active(name: str) -> dict[str, Any]:
    return {"activeEndpoints": [{"nodeName": name, "type": "tunnel"}]}


def test_the_pools_majority_decision_is_adopted_with_a_cause() -> None:
    votes = {"hz-1": "hz-1", "hz-2": "hz-2", "hz-3": "hz-2"}
    plan = compute_status(gateway("gw-hz", TWO, _active("hz-1")), _voting(votes), HEARTS, NOW)
    assert [e["nodeName"] for e in plan.status["activeEndpoints"]] == ["hz-2"]
    assert plan.lost == ("hz-1",) and plan.elected == ("hz-2",)
    # hz-1 heartbeats and is Ready: power-off or probe loss is settled by what its heartbeat
    # does next (raven.pool_decision.resolve), not at the moment of the move.
    assert plan.cause == "" and not plan.partitioned
    assert "adopted" in plan.reasons[0]


def test_no_majority_or_an_unhealthy_choice_is_not_adopted() -> None:
    split = {"hz-1": "hz-1", "hz-2": "hz-2"}
    plan = compute_status(gateway("gw-hz", TWO, _active("hz-1")), _voting(split), HEARTS, NOW)
    assert [e["nodeName"] for e in plan.status["activeEndpoints"]] == ["hz-1"]
    votes = {"hz-2": "hz-2", "hz-3": "hz-2"}
    plan = compute_status(gateway("gw-hz", TWO, _active("hz-1")), _voting(votes),
                          {"hz-1": NOW}, NOW)  # hz-2's heartbeat is missing: not adopted
    assert [e["nodeName"] for e in plan.status["activeEndpoints"]] == ["hz-1"]


def test_failover_causes_known_at_the_move() -> None:
    votes = {"hz-2": "hz-2", "hz-3": "hz-2"}
    kept = {**_active("hz-1"), "conditions": [
        {"type": "Ready", "status": "True", "reason": "KeptWithoutHeartbeat", "message": "",
         "lastTransitionTime": "2023-11-14T22:13:20Z"}]}
    healed = compute_status(gateway("gw-hz", TWO, kept), _voting(votes),
                            {"hz-1": NOW - 60, "hz-2": NOW}, NOW)
    assert healed.cause == "partition"
    # The voters could not publish their decision at once: decided while cut off, even before
    # the controller noticed the pool's silence.
    late = compute_status(gateway("gw-hz", TWO, _active("hz-1")),
                          _voting(votes, offline=("hz-2", "hz-3")), HEARTS, NOW)
    assert late.elected == ("hz-2",) and late.cause == "partition" and late.partitioned
    # One flagged voter is enough: the other's write was in flight when the partition healed
    # (only delayed, so not flagged).
    one_late = compute_status(gateway("gw-hz", TWO, _active("hz-1")),
                              _voting(votes, offline=("hz-3",)), HEARTS, NOW)
    assert one_late.cause == "partition" and one_late.partitioned
    # A flag on a vote for another node says nothing about this move.
    other = compute_status(gateway("gw-hz", TWO, _active("hz-1")),
                           _voting({**votes, "hz-1": "hz-1"}, offline=("hz-1",)), HEARTS, NOW)
    assert other.elected == ("hz-2",) and other.cause == "" and not other.partitioned
    gone = compute_status(gateway("gw-hz", TWO, _active("hz-1")), _voting(votes),
                          {"hz-1": NOW - 10, "hz-2": NOW}, NOW)
    assert gone.lost == ("hz-1",) and gone.cause == ""  # settled by resolve (next tests)
    steady = compute_status(gateway("gw-hz", TWO, _active("hz-1")), _voting({}), HEARTS, NOW)
    assert steady.cause == "" and steady.lost == ()


def test_a_candidate_that_missed_a_heartbeat_has_no_vote() -> None:
    """Two candidates, no member: the powered-off one's last word (itself) is not counted once
    it missed a renewal, so the survivor's vote is the majority."""
    votes = {"hz-1": "hz-1", "hz-2": "hz-2"}
    plan = compute_status(gateway("gw-hz", TWO, _active("hz-1")), _voting(votes, ready=(
        "hz-1", "hz-2")), {"hz-1": NOW - 6, "hz-2": NOW}, NOW)
    assert [e["nodeName"] for e in plan.status["activeEndpoints"]] == ["hz-2"]
    assert plan.lost == ("hz-1",) and plan.cause == ""
