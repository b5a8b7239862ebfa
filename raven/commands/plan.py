"""`raven plan --gateways FILE [--nodes FILE] --node NAME [--json]`: one node's desired state.

It runs the same pure planner the agent runs (`raven.topology.plan_node` + `raven.standby.warm`
+ `raven.route_placement.place`, as the controller's status has it: no probe verdicts; the
node's main table as `--main-route` says, none by default) on Gateway and Node
objects read from YAML/JSON files (multi-document or a List), so the output is exactly what the
agent would apply. Invalid Gateways are refused with every problem listed (as `raven validate`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import Any

from raven import constants
from raven.errors import CommandError, ValidationError
from raven.settings import AgentSettings, default_of


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "plan", help="print the desired data-plane state of one node",
        description="Plan one node from Gateway (and Node) objects in files: exactly what the "
                    "agent would apply.")
    parser.add_argument("--gateways", required=True, metavar="FILE",
                        help="YAML/JSON with the Gateway objects (as read from the cluster)")
    parser.add_argument("--nodes", metavar="FILE",
                        help="YAML/JSON with Node objects; without it the node's facts come "
                             "from Gateway status")
    parser.add_argument("--node", required=True, metavar="NAME", help="the node to plan")
    parser.add_argument("--underlay-mtu", type=int, default=None, metavar="BYTES")
    parser.add_argument("--main-route", action="append", default=[], metavar="CIDR",
                        help="a route the node's main table holds that is not the overlay's "
                             "(repeatable): a member keeps its rule when one contests its "
                             "routes; the agent reads them from the node")
    parser.add_argument("--tunnel-namespace", action=argparse.BooleanOptionalAction,
                        default=bool(default_of(AgentSettings, "tunnel_netns")),
                        help="plan an active gateway's devices in the tunnel namespace, as the "
                        "agent does by default (docs/tunnel-namespace.md); "
                        "--no-tunnel-namespace: as an agent with --tunnel-netns ''")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def _read(path: str, what: str) -> list[Any]:
    from raven.commands.validate import load_documents

    docs, problems = load_documents(path)
    if problems:
        raise CommandError("\n".join(problems))
    if not docs:
        raise CommandError(f"{path}: no {what} objects found")
    return [d for d in docs]


def run(args: argparse.Namespace) -> int:
    from raven import route_placement, standby
    from raven.model import Gateway, Node, fleet_problems, gateway_problems
    from raven.topology import PlanOptions, plan_node

    gateways: list[Gateway] = []
    problems: list[str] = []
    for doc in _read(args.gateways, "Gateway"):
        found = gateway_problems(doc.data)
        if found:
            problems.extend(f"{doc.source}: {p}" for p in found)
        else:
            gateways.append(Gateway.from_k8s(doc.data))
    if problems:
        raise CommandError("invalid Gateways (fix them, `raven validate` lists the same):\n"
                           + "\n".join(problems))
    me: Node | str = args.node
    nodes: list[Node] = []
    if args.nodes:
        for doc in _read(args.nodes, "Node"):
            try:
                nodes.append(Node.from_k8s(doc.data))
            except ValidationError as exc:
                problems.extend(f"{doc.source}: {p}" for p in exc.problems)
        if problems:
            raise CommandError("invalid Nodes:\n" + "\n".join(problems))
        me = next((n for n in nodes if n.name == args.node), args.node)
    options = PlanOptions(tunnel_namespace=args.tunnel_namespace)
    if args.underlay_mtu is not None:
        if not 1280 <= args.underlay_mtu <= 65535:
            raise CommandError(f"--underlay-mtu {args.underlay_mtu}: use 1280..65535")
        options = replace(options, underlay_mtu=args.underlay_mtu)
    # The warm standby additions the agent applies too (FDB for every candidate, probe peers);
    # what data-path probes decide at run time is not known here: this is the controller's view.
    state = standby.warm(plan_node(gateways, me, options), gateways,
                         me if isinstance(me, str) else me.name, options)
    state = route_placement.place(state, args.main_route, options)
    warnings = fleet_problems(gateways, nodes, nodes_complete=False)
    if args.json:
        out = state.to_json()
        out["fleetProblems"] = warnings
        print(json.dumps(out, indent=2, sort_keys=True))
        return 0
    print(format_state(state))
    for w in warnings:
        print(f"warning: {w}")
    return 0


def format_state(state: Any) -> str:
    """Human-readable NodeState: one section per kind of object, notes last."""
    lines = [f"node {state.node}: {state.role.value}" + (f" of pool {state.pool}"
                                                          if state.pool else "")]
    if state.vxlan is not None:
        v = state.vxlan
        lines.append(f"vxlan {v.name}: vni {v.vni} port {v.port} local {v.local_ip} "
                     f"vtep {v.vtep_ip}/{v.vtep_prefixlen} mac {v.mac} mtu {v.mtu}")
    for f in state.fdb:
        lines.append(f"  fdb {f.mac} dst {f.dst}")
    for n in state.neighbours:
        lines.append(f"  neigh {n.ip} lladdr {n.mac}")
    if state.wireguard is not None:
        w = state.wireguard
        lines.append(f"wireguard {w.name}: listen {w.listen_port} mtu {w.mtu} "
                     f"peers {len(w.peers)}")
        for p in w.peers:
            relay = f" relays {','.join(p.relays_for)}" if p.relays_for else ""
            lines.append(f"  peer {p.public_key} pool {p.pool} endpoint "
                         f"{p.endpoint or '(learned from handshake)'} keepalive {p.keepalive}"
                         f"{relay}")
            lines.append(f"    allowed-ips {', '.join(p.allowed_ips) or '(none)'}")
    if state.routes:
        lines.append(f"routes ({len(state.routes)}):")
        for r in state.routes:
            via = f" via {r.gateway} onlink" if r.gateway else ""
            mtu = f" mtu lock {r.mtu}" if r.mtu else ""
            src = f" src {r.src}" if r.src else ""
            table = (f"main metric {constants.MAIN_ROUTE_METRIC}"
                     if r.table == constants.MAIN_TABLE else r.table)
            lines.append(f"  {r.dst}{via} dev {r.dev} table {table}{mtu}{src}")
    for r in state.rules:
        iif = f" iif {r.iif}" if r.iif else ""
        mark = f" fwmark {r.fwmark:#x}/{r.fwmask:#x}" if r.fwmark or r.fwmask else ""
        lines.append(f"rule ipv{r.family} priority {r.priority}{iif}{mark} lookup {r.table}")
    if state.firewall is not None:
        fw = state.firewall
        marks = f"mark {fw.mark:#x}/{fw.mark_mask:#x} traffic to" if fw.marks else "sets of"
        lines.append(f"nftables table {fw.table}: {marks} {len(fw.remote_subnets)} remote "
                     "subnet(s) (identity SNAT only where another table could masquerade); "
                     f"local {', '.join(fw.local_subnets) or '(none)'}")
    for key, value in state.sysctls:
        lines.append(f"sysctl {key}={value}")
    if state.veth is not None:
        v = state.veth
        lines.append(f"veth {v.name} {v.address}/{v.prefixlen} <-> {v.peer} {v.peer_address} "
                     f"in the tunnel namespace: mtu {v.mtu}, gro {'on' if v.gro else 'off'}")
    for note in state.notes:
        lines.append(f"note: {note}")
    if state.tunnel is not None:
        inner = format_state(state.tunnel).splitlines()[1:]  # its first line repeats the node
        lines.append("tunnel namespace:")
        lines.extend(f"  {line}" for line in inner)
    return "\n".join(lines)
