"""`raven graph`: pools, gateways, tunnels and relays as Graphviz DOT (SVG when `dot` exists).

The edges are not guessed: each pool's active gateway is planned with `raven.topology.plan_node`,
the same pure planner the agent runs, and its WireGuard peers become the tunnels; a peer that
relays for other pools makes the dashed relay edges. Two NAT'd pools whose gateways report a
direct path (`status.paths`, docs/gateway.md 4a) get a green edge of their own instead.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from raven.errors import CommandError, ValidationError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("graph", help="draw pools, gateways, tunnels and relays (DOT or SVG)")
    p.add_argument("--kubeconfig", type=Path, default=None,
                   help="kubeconfig file (default: $KUBECONFIG, in-cluster, ~/.kube/config)")
    p.add_argument("--context", default=None, help="kubeconfig context")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="write here; a .svg name renders with Graphviz `dot` (default: stdout)")
    p.add_argument("--format", choices=["dot", "svg"], default=None,
                   help="output format (default: from --output's suffix, else dot)")
    p.set_defaults(func=run)


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_dot(gateways: Sequence[object]) -> str:
    """DOT text for the given raven.model.Gateway objects (pure)."""
    from raven.model import Gateway, NodeInfo
    from raven.topology import plan_node

    gws: list[Gateway] = sorted((g for g in gateways if isinstance(g, Gateway)),
                                key=lambda g: g.name)
    lines = ["digraph raven {", "  rankdir=LR;", "  compound=true;",
             '  node [shape=box, fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=9];']
    active_of: dict[str, str] = {}
    for gw in gws:
        active = [e for e in gw.status.active_endpoints if e.type == "tunnel"]
        nat = any(e.under_nat for e in gw.spec.endpoints)
        lines.append(f"  subgraph {_q('cluster_' + gw.name)} {{")
        lines.append(f"    label={_q(f'pool {gw.name}' + (' (NAT)' if nat else ''))};")
        members = list(gw.status.nodes)
        names = {m.node_name for m in members}
        for ep in gw.spec.endpoints:  # candidates not yet listed as members still appear
            if ep.node_name not in names:
                members.append(NodeInfo(node_name=ep.node_name))
                names.add(ep.node_name)
        for member in members:
            node_id = f"{gw.name}/{member.node_name}"
            parts = [member.node_name, member.private_ip, *member.subnets]
            is_active = bool(active) and member.node_name == active[0].node_name
            if is_active:
                parts.append("gateway " + (active[0].public_ip or "(no public address)"))
            attrs = [f"label={_q(chr(10).join(p for p in parts if p))}".replace(chr(10), "\\n")]
            if is_active:
                attrs += ["style=filled", 'fillcolor="gold"', "penwidth=2"]
                active_of[gw.name] = node_id
            elif any(e.node_name == member.node_name for e in gw.spec.endpoints):
                attrs += ["style=dashed"]
            lines.append(f"    {_q(node_id)} [{', '.join(attrs)}];")
        if gw.name not in active_of:
            placeholder = f"{gw.name}/(no active gateway)"
            lines.append(f'    {_q(placeholder)} [label="no active gateway", shape=note, '
                         'color="red"];')
        lines.append("  }")
    drawn: set[tuple[str, str]] = set()
    # Pairs of NAT'd pools that went direct (status.paths, published by their gateways):
    # drawn as their own tunnel instead of "relayed via".
    relay_rtt: dict[tuple[str, str], object] = {}  # (NAT'd gw, other): RTT through the relay
    for gw in gws:
        for entry in gw.status.extra.get("paths") or ():
            other = entry.get("gateway") if hasattr(entry, "get") else None
            if other is not None and entry.get("path") == "relayed" and isinstance(
                    entry.get("rttMs"), int | float):
                relay_rtt[(gw.name, str(other))] = entry.get("rttMs")
            pair = tuple(sorted((gw.name, str(other))))
            if (entry.get("path") == "direct" and other in active_of and gw.name in active_of
                    and pair not in drawn):
                drawn.add(pair)  # type: ignore[arg-type]
                rtt = entry.get("rttMs")
                rtt_text = f", {rtt} ms" if isinstance(rtt, int | float) else ""
                lines.append(f"  {_q(active_of[gw.name])} -> {_q(active_of[str(other)])} "
                             '[dir=both, color=darkgreen, penwidth=2, '
                             f'label="WireGuard direct (through both NATs){rtt_text}"];')
    for gw in gws:
        if gw.name not in active_of:
            continue
        state = plan_node(gws, active_of[gw.name].split("/", 1)[1])
        if state.wireguard is None:
            continue
        for peer in state.wireguard.peers:
            if peer.pool not in active_of:
                continue
            pair = tuple(sorted((gw.name, peer.pool)))
            if pair not in drawn:
                drawn.add(pair)  # type: ignore[arg-type]
                label = "WireGuard" if peer.endpoint else "WireGuard (peer learns endpoint)"
                lines.append(f"  {_q(active_of[gw.name])} -> {_q(active_of[peer.pool])} "
                             f"[dir=both, color=blue, label={_q(label)}];")
            for relayed in peer.relays_for:
                pair = tuple(sorted((gw.name, relayed)))
                if relayed in active_of and pair not in drawn:
                    drawn.add(pair)  # type: ignore[arg-type]
                    leg = relay_rtt.get((gw.name, relayed)) or relay_rtt.get((relayed, gw.name))
                    text = f"relayed via {peer.pool}" + (f", {leg} ms" if leg is not None else "")
                    lines.append(f"  {_q(active_of[gw.name])} -> {_q(active_of[relayed])} "
                                 f"[dir=both, style=dashed, color=gray40, label={_q(text)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from raven.kube.client import GATEWAYS, Kube, KubeSettings
    from raven.kube.errors import KubeError
    from raven.model import Gateway

    fmt = args.format or ("svg" if args.output and args.output.suffix == ".svg" else "dot")
    if fmt == "svg" and shutil.which("dot") is None:
        raise CommandError("SVG needs Graphviz `dot`, which is not installed: install graphviz "
                           "or ask for DOT (--format dot / an output name ending in .dot)")
    if fmt == "svg" and args.output is None:
        raise CommandError("--format svg needs --output FILE.svg")
    try:
        kube = Kube(KubeSettings(kubeconfig=args.kubeconfig, context=args.context))
        objects, _ = kube.list(GATEWAYS)
    except KubeError as exc:
        raise CommandError(f"cannot read Gateways: {exc}") from exc
    gateways = []
    for obj in objects:
        try:
            gateways.append(Gateway.from_k8s(obj))
        except ValidationError as exc:
            print(f"# skipped: {'; '.join(exc.problems)}")
    dot = render_dot(gateways)
    if fmt == "dot":
        if args.output is None:
            print(dot, end="")
        else:
            try:
                args.output.write_text(dot)
            except OSError as exc:
                raise CommandError(f"cannot write {args.output}: {exc.strerror or exc}; "
                                   "choose another --output") from exc
        return 0
    result = subprocess.run(["dot", "-Tsvg", "-o", str(args.output)], input=dot, text=True,
                            capture_output=True)
    if result.returncode != 0:
        raise CommandError(f"dot failed: {result.stderr.strip()}")
    return 0
