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
            ) -> tuple[float, float]:
    """Median wall-clock and median CPU milliseconds of `fn`. CPU time (this thread only) is the
    steadier figure on a machine shared with other test suites."""
    wall, cpu = [], []
    for _ in range(repeat):
        if before is not None:
            before()
        start, start_cpu = time.perf_counter(), time.thread_time()
        fn()
        cpu.append((time.thread_time() - start_cpu) * 1000)
        wall.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(wall), 2), round(statistics.median(cpu), 2)


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
        def plan(n: str = node) -> object:
            return plan_node(gateways, n)
        figures[f"plan_{label}_cold_ms"], figures[f"plan_{label}_cold_cpu_ms"] = measure(
            plan, args.repeat, clear_caches)
        figures[f"plan_{label}_warm_ms"], figures[f"plan_{label}_warm_cpu_ms"] = measure(
            plan, args.repeat)
    objects = [g.to_k8s() for g in gateways]
    figures["parse_gateways_ms"], figures["parse_gateways_cpu_ms"] = measure(
        lambda: [Gateway.from_k8s(o) for o in objects], args.repeat)
    subnets = [s for g in gateways for n in g.status.nodes for s in n.subnets]
    figures["reference_parse_ms"], figures["reference_parse_cpu_ms"] = measure(
        lambda: [ipaddress.ip_network(s) for s in subnets], args.repeat)

    def election_pass() -> int:
        return sum(len(elect(g, nodes, heartbeats, NOW).active) for g in gateways)

    figures["elected"] = election_pass()
    figures["election_pass_ms"], figures["election_pass_cpu_ms"] = measure(election_pass,
                                                                           args.repeat)
    reference = float(figures["reference_parse_cpu_ms"])  # type: ignore[arg-type]

    def show(title: str, key: str, target: str = "") -> None:
        ratio = float(figures[f"{key}_cpu_ms"]) / reference  # type: ignore[arg-type]
        print(f"{title:44} wall {figures[f'{key}_ms']:8.2f} ms   cpu "
              f"{figures[f'{key}_cpu_ms']:8.2f} ms   {ratio:5.2f}x ref{target}")

    print(f"fleet: {figures['pools']} pools, {figures['nodes']} nodes, {figures['subnets']} "
          f"subnets; gateway plan has {figures['gateway_routes']} routes, "
          f"{figures['gateway_peers']} WireGuard peers (medians of {args.repeat} runs)")
    show(f"reference: ipaddress.ip_network x {figures['subnets']}", "reference_parse")
    for label in ("member", "gateway"):
        show(f"plan_node {label}, cold (empty caches)", f"plan_{label}_cold")
        show(f"plan_node {label}, warm", f"plan_{label}_warm", "   (target <= 100 ms)")
    show(f"Gateway.from_k8s x {figures['pools']} (agent input)", "parse_gateways")
    show(f"election pass over {figures['nodes']} nodes", "election_pass",
         "   (target <= 200 ms)")
    if args.json:
        print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
