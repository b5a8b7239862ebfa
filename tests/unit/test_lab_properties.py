"""Properties of the topology validator and the address plan (hypothesis).

- Any YAML-shaped input either parses or raises ValidationError with at least one message:
  never another exception (bad input must never become a traceback).
- For any valid topology the plan gives unique underlay addresses inside the allowed ranges,
  unique namespace names carrying the lab name, interface names of at most 15 characters, and
  pod addresses inside their node's podCIDR.
"""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from raven.errors import ValidationError
from raven.lab.plan import plan_lab
from raven.lab.topology import parse_topology

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.text(max_size=12),
                    st.sampled_from(["none", "cone", "symmetric", "10.244.0.0/24", "10.0.0.1/8",
                                     "cloud", "n-1", "wireguard"]))
keys = st.sampled_from(["name", "gateway", "nat", "nodes", "pods", "podCIDR", "gatewayCandidate",
                        "underlayMTU", "tunnel", "pools", "extra"])
yamlish = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=6)), max_leaves=30)


@settings(max_examples=150, deadline=None)
@given(yamlish)
def test_any_input_parses_or_is_a_validation_error(doc: object) -> None:
    try:
        parse_topology(doc)
    except ValidationError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)


@settings(max_examples=150, deadline=None)
@given(st.fixed_dictionaries({"pools": st.lists(st.fixed_dictionaries({
    "nat": st.sampled_from(["none", "cone", "symmetric"]),
    "pods": st.integers(0, 3),
    "size": st.integers(1, 6),
}), min_size=1, max_size=6)}), st.booleans())
def test_plan_of_any_valid_topology(spec: dict, first_public: bool) -> None:
    pools, cidr = [], 0
    for i, p in enumerate(spec["pools"]):
        nodes = []
        for j in range(p["size"]):
            nodes.append({"name": f"p{i}-n{j}", "podCIDR": f"10.{cidr // 256}.{cidr % 256}.0/24"})
            cidr += 1
        nat = "none" if first_public and i == 0 else p["nat"]
        pools.append({"name": f"p{i}", "nat": nat, "pods": p["pods"], "nodes": nodes})
    plan = plan_lab(parse_topology({"pools": pools}), "rvt-lab-prop")
    allowed = [ipaddress.IPv4Network(n) for n in
               ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "198.18.0.0/15")]
    underlay = [plan.control_plane.ip] + [n.underlay_ip for _, n in plan.nodes()]
    underlay += [p.router_lan_ip for p in plan.pools] + [p.wan_ip for p in plan.pools]
    underlay += [p.internet_wan_ip for p in plan.pools]
    assert len(set(underlay)) == len(underlay)
    assert all(any(ipaddress.IPv4Address(a) in net for net in allowed) for a in underlay)
    names = plan.netns_names()
    assert len(set(names)) == len(names) and all(n.startswith("rvt-lab-prop.") for n in names)
    for pool in plan.pools:
        assert len(pool.internet_port) <= 15
        for node in pool.nodes:
            assert len(node.router_port) <= 15
            for pod in node.pods:
                assert len(pod.node_ifname) <= 15
                assert ipaddress.IPv4Address(pod.ip) in ipaddress.IPv4Network(node.pod_cidr)
                assert pod.ip != node.pod_gateway
    public = [p for p in plan.pools if p.nat == "none"]
    assert plan.control_plane.pool == (public[0].name if public else None)
