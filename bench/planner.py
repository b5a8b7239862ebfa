"""Planner and election at scale: prints figures, decides nothing.

- plan: one node's plan in a fleet of 1,000 pools x 10 nodes (10,000 pod subnets), for a member
  node and for an active gateway (10,000 routes, ~1,000 WireGuard peers). "cold" clears the
  planner's parse caches first (an agent's first plan after start); "warm" is every later plan.
- election: one pass over every Gateway of the same fleet (10,000 nodes, 10,000 heartbeats),
  as the controller does at each resync.
- parse: `Gateway.from_k8s` of the whole fleet, which the agent does before planning.
- reference, measured in the same run: parsing the fleet's 10,000 subnets once with
  `ipaddress.ip_network` (what any planner must at least do without caches); the ratios make
  figures from a busy machine comparable.
Targets on the 2-core build machine: plan <= 100 ms, election pass <= 200 ms.
Usage: .venv/bin/python bench/planner.py [--pools N] [--nodes-per-pool N] [--repeat N] [--json]
(--json prints the figures as one JSON object on the last line).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import statistics
import time
from collections.abc import Callable

from raven import topology
from raven.election import elect
from raven.model import Endpoint, FrozenMap, Gateway, GatewaySpec, GatewayStatus, Node, NodeInfo
from raven.topology import plan_node

NOW = 1_700_000_000.0


def fleet(pools: int, per_pool: int) -> tuple[list[Gateway], dict[str, Node], dict[str, float]]:
    gateways: list[Gateway] = []
    nodes: dict[str, Node] = {}
    heartbeats: dict[str, float] = {}
    for p in range(pools):
        name = f"pool-{p:04d}"
        nat = p % 3 != 0  # two thirds behind NAT: relays are exercised
        infos = []
        for n in range(per_pool):
            node = f"{name}-n{n:02d}"
            index = p * per_pool + n
            ip = f"10.{100 + index // 65536}.{index // 256 % 256}.{index % 256}"
            subnet = f"{20 + index // 65536}.{index // 256 % 256}.{index % 256}.0/24"
            infos.append(NodeInfo(node, ip, (subnet,)))
            nodes[node] = Node(node, internal_ips=(ip,), pod_cidrs=(subnet,))
            heartbeats[node] = NOW - 3 * n  # the first five fresh, the rest stale
        active = Endpoint(infos[0].node_name, under_nat=nat, port=4500,
                          public_ip="" if nat else f"203.{p // 256}.{p % 256}.1",
                          config=FrozenMap({"public-key": f"key-{p:04d}="}))
        gateways.append(Gateway(
            name,
            spec=GatewaySpec(endpoints=tuple(Endpoint(i.node_name, under_nat=nat)
                                             for i in infos)),
            status=GatewayStatus(nodes=tuple(infos), active_endpoints=(active,)),
            metadata=FrozenMap({"name": name,
                                "creationTimestamp": f"2024-01-01T00:{p // 60 % 60:02d}:"
                                                     f"{p % 60:02d}Z"}),
        ))
    return gateways, nodes, heartbeats


def measure(fn: Callable[[], object], repeat: int, before: Callable[[], None] | None = None
            ) -> list[float]:
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def clear_caches() -> None:
    topology._cidr.cache_clear()
    topology.vtep_for.cache_clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=int, default=1000)
    parser.add_argument("--nodes-per-pool", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    gateways, nodes, heartbeats = fleet(args.pools, args.nodes_per_pool)
    member = gateways[-1].status.nodes[-1].node_name
    gateway_node = gateways[0].status.active_endpoints[0].node_name  # public: relays too

    state = plan_node(gateways, gateway_node)
    assert state.wireguard is not None
    figures: dict[str, object] = {
        "pools": args.pools, "nodes": len(nodes),
        "subnets": sum(len(g.status.nodes) for g in gateways),
        "gateway_routes": len(state.routes), "gateway_peers": len(state.wireguard.peers),
    }
    for label, node in (("member", member), ("gateway", gateway_node)):
        cold = measure(lambda n=node: plan_node(gateways, n), args.repeat, clear_caches)
        warm = measure(lambda n=node: plan_node(gateways, n), args.repeat)
        figures[f"plan_{label}_cold_ms"] = round(statistics.median(cold), 2)
        figures[f"plan_{label}_warm_ms"] = round(statistics.median(warm), 2)

    objects = [g.to_k8s() for g in gateways]
    figures["parse_gateways_ms"] = round(statistics.median(measure(
        lambda: [Gateway.from_k8s(o) for o in objects], args.repeat)), 2)
    subnets = [s for g in gateways for n in g.status.nodes for s in n.subnets]
    reference = statistics.median(measure(
        lambda: [ipaddress.ip_network(s) for s in subnets], args.repeat))
    figures["reference_parse_ms"] = round(reference, 2)
    for label in ("member", "gateway"):
        for when in ("cold", "warm"):
            key = f"plan_{label}_{when}_ms"
            figures[f"{key[:-3]}_ratio"] = round(float(figures[key]) / reference, 2)  # type: ignore[arg-type]

    def election_pass() -> int:
        return sum(len(elect(g, nodes, heartbeats, NOW).active) for g in gateways)

    elected = election_pass()
    figures["elected"] = elected
    figures["election_pass_ms"] = round(statistics.median(measure(election_pass, args.repeat)), 2)

    print(f"fleet: {figures['pools']} pools, {figures['nodes']} nodes, {figures['subnets']} "
          f"subnets; gateway plan has {figures['gateway_routes']} routes, "
          f"{figures['gateway_peers']} WireGuard peers")
    print(f"reference: ipaddress.ip_network over the {figures['subnets']} subnets: "
          f"{reference:.2f} ms")
    for label in ("member", "gateway"):
        print(f"plan_node ({label:7}): cold {figures[f'plan_{label}_cold_ms']:8.2f} ms "
              f"({figures[f'plan_{label}_cold_ratio']:.2f}x ref)   "
              f"warm {figures[f'plan_{label}_warm_ms']:8.2f} ms "
              f"({figures[f'plan_{label}_warm_ratio']:.2f}x ref)   (target <= 100 ms)")
    print(f"Gateway.from_k8s of all {figures['pools']} Gateways (the agent parses before it "
          f"plans): {figures['parse_gateways_ms']:.2f} ms")
    print(f"election pass over {figures['nodes']} nodes: {figures['election_pass_ms']:.2f} ms "
          f"({elected} active endpoints; target <= 200 ms)")
    if args.json:
        print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
