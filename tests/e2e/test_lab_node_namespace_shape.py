"""The shape without a tunnel namespace (`raven lab up --no-tunnel-namespace`, the agent's
`--tunnel-netns ''`; docs/tunnel-namespace.md): still supported, for nodes whose firewall must
see transit traffic and for agents that cannot make a namespace, while the lab's other e2e
tests run the default. On test-topologies/two-pools.yaml: every pod pair answers; each active
gateway keeps raven0 and raven-wg0 in its own namespace with the one delivery rule
(`iif raven-wg0 lookup 9027`) and has no tunnel namespace and no veth.
Oracles: ICMP between all pod pairs (`ping_all`), `ip -j rule`, `ip -j link` and the tunnel
namespace's name inside the node (`raven.lab.runtime.device_netns`)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from overlay_support import in_node, unique_lab_name

from raven import constants
from raven.lab import cluster, runtime
from raven.lab.gateway_load import carries_itself
from raven.lab.ping import ping_all
from raven.lab.plan import LabPlan

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_gateways_keep_their_devices_and_rule_without_a_tunnel_namespace(
        lab_factory: Callable[..., LabPlan]) -> None:
    plan = lab_factory("two-pools.yaml", unique_lab_name("nn"))
    cluster.up(plan, settings=cluster.ClusterSettings(tunnel_namespace=False))
    report = ping_all(plan)
    assert report.pairs and all(p.ok for p in report.pairs), [
        (p.src, p.dst) for p in report.pairs if not p.ok]
    gateways = [n.name for _, n in plan.nodes() if carries_itself(plan.name, n.name)]
    assert len(gateways) == len(plan.pools), gateways
    for node in gateways:
        assert runtime.device_netns(plan.name, node) is None, node
        links = {link["ifname"] for link in json.loads(in_node(plan, node, "ip", "-j", "link"))}
        assert {constants.VXLAN_DEVICE, constants.WIREGUARD_DEVICE} <= links, node
        assert constants.TUNNEL_VETH not in links, node
        rules = json.loads(in_node(plan, node, "ip", "-j", "rule", "show"))
        # a gateway with members delivers what leaves the tunnel for them over raven0
        assert any(r.get("iif") == constants.WIREGUARD_DEVICE
                   and str(r.get("table")) == str(constants.VXLAN_TABLE) for r in rules), rules
