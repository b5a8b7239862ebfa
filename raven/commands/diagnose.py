"""`raven diagnose`: why this node's cross-pool paths are what they are.

For the node the command runs on, it explains:
- whether its WireGuard key is published on its Node (others can build no tunnel without it);
- the NAT behaviour the public gateways saw of its pool (mapped endpoint, mapping kind);
- UDP reachability of each WireGuard peer (handshake age, bytes received), read from the device;
- the path MTU pods get (the route MTU the plan sets) and the device MTUs;
- each NAT'd pool's path (direct, probing, relayed) and why a relayed pair is relayed.
Sources: the agent's status file (its last plan and paths), the API (Gateways, this Node) and
the kernel (WireGuard peers). `explain` is pure; `run` gathers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from raven import constants, nat_discovery
from raven.commands import status as status_cmd
from raven.errors import CommandError
from raven.settings import AgentSettings, default_of

REACHABLE_S = 180  # WireGuard rekeys every 2 min: a live peer's handshake is never older


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diagnose", help="explain this node's NAT, peers, MTU and relayed pairs")
    state_dir = default_of(AgentSettings, "state_dir")
    p.add_argument("--state-dir", type=Path, default=state_dir,
                   help=f"the agent's state directory (default {state_dir})")
    p.add_argument("--netns", default=None, help="inspect this named network namespace")
    p.add_argument("--kubeconfig", type=Path, default=None,
                   help="kubeconfig file (default: $KUBECONFIG, in-cluster, ~/.kube/config)")
    p.add_argument("--context", default=None, help="kubeconfig context")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.set_defaults(func=run)


def explain(agent: dict[str, Any], gateways: list[dict[str, Any]], node: dict[str, Any] | None,
            peers: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Findings as {"topic", "status": ok|warn|info, "text"}. Pure."""
    out: list[dict[str, str]] = []

    def say(topic: str, status: str, text: str) -> None:
        out.append({"topic": topic, "status": status, "text": text})

    name = agent.get("node") or "?"
    pool = agent.get("pool")
    key = agent.get("publicKey") or ""
    annotations = ((node or {}).get("metadata") or {}).get("annotations") or {}
    published = annotations.get(constants.ANNOTATION_PUBLIC_KEY, "")
    if not key:
        say("key", "warn", f"node {name}: the agent reports no WireGuard key yet")
    elif published == key:
        say("key", "ok", f"WireGuard key {key[:12]}... is published on Node {name}")
    else:
        say("key", "warn", f"Node {name} carries {published[:12] or 'no key'}... in "
            f"{constants.ANNOTATION_PUBLIC_KEY}, the agent uses {key[:12]}...: other gateways "
            "cannot build a tunnel to this node until the agent publishes it")
    by_name = {(g.get("metadata") or {}).get("name"): g for g in gateways}
    mine = by_name.get(pool)
    active = ((mine or {}).get("status") or {}).get("activeEndpoints") or []
    me = next((e for e in active if e.get("nodeName") == name), None)
    if agent.get("role") != "active-gateway" or me is None:
        say("role", "info", f"node {name} is {agent.get('role')} of {pool or 'no pool'}: "
            "cross-pool traffic leaves through the pool's active gateway "
            f"{', '.join(agent.get('activeGateways') or []) or '(none)'}")
    elif not me.get("underNAT"):
        say("nat", "ok", f"pool {pool} is public ({me.get('publicIP')}): it reports what it sees "
            "of NAT'd gateways on its Node "
            f"({len(nat_discovery.decode(annotations.get(nat_discovery.ANNOTATION_OBSERVED)))} "
            "observed)")
    else:
        config = me.get("config") or {}
        mapped = config.get(nat_discovery.CONFIG_MAPPED_ENDPOINT)
        kind = config.get(nat_discovery.CONFIG_NAT_MAPPING, nat_discovery.UNKNOWN)
        meaning = {nat_discovery.INDEPENDENT: "the same public port for every destination "
                   "(cone): direct paths can be punched",
                   nat_discovery.DEPENDENT: "a new public port per destination (symmetric): "
                   "only peers behind a full-cone NAT can reach it directly",
                   nat_discovery.UNKNOWN: "only one public gateway sees this pool; two are "
                   "needed to tell cone from symmetric"}
        if mapped and kind == nat_discovery.DEPENDENT:
            # No single port means anything: each destination sees its own.
            say("nat", "info", f"pool {pool} is behind NAT; public gateways see it at "
                f"{_host(mapped)} from a port per destination (the first of them sees "
                f"{mapped}); mapping {kind}: {meaning[kind]}")
        elif mapped:
            say("nat", "info", f"pool {pool} is behind NAT; public gateways see it at {mapped}; "
                f"mapping {kind}: {meaning.get(kind, kind)}")
        else:
            say("nat", "warn", f"pool {pool} is behind NAT and no public gateway has reported "
                "its mapped address yet: no direct path can be tried")
    plan = agent.get("plan") or {}
    wg = status_cmd.plan_devices(plan).get("wireguard") or {}
    pools_of = {p.get("public_key"): p.get("pool") for p in wg.get("peers") or []}
    probing = {p.get("public_key") for p in wg.get("peers") or []
               if "allowed_ips" in p and not p["allowed_ips"]}
    for peer in peers:
        label = pools_of.get(peer.get("public_key")) or str(peer.get("public_key", ""))[:12]
        age = peer.get("handshake_age_s")
        endpoint = peer.get("endpoint") or "(not known yet)"
        if age is not None and age < REACHABLE_S:
            say("udp", "ok", f"peer {label} at {endpoint}: answers over UDP (handshake "
                f"{age:.0f}s ago, {peer.get('rx_bytes', 0)} bytes received)")
        elif peer.get("public_key") in probing:
            # A direct-path probe (no allowed IPs): unanswered is a possible outcome, not a
            # fault; the pair's traffic is on the relay meanwhile.
            say("udp", "info", f"probe peer {label} at {endpoint}: the direct-path probe is "
                "not answered (yet); the pair's traffic stays on the relay")
        else:
            say("udp", "warn", f"peer {label} at {endpoint}: no handshake "
                + ("ever" if age is None else f"for {age:.0f}s")
                + ": UDP to it is not answered (NAT filtering, a firewall, or its agent down)")
    mtus = sorted({r.get("mtu") for r in plan.get("routes") or [] if r.get("mtu")})
    if wg:
        say("mtu", "info", f"{wg.get('name')} MTU {wg.get('mtu')}: pods' cross-pool packets "
            f"are at most {wg.get('mtu')} bytes (WireGuard adds 80 to reach the underlay)")
    elif mtus:
        say("mtu", "info", f"cross-pool routes carry MTU {', '.join(map(str, mtus))}: pods "
            "learn the path MTU from the route, without probing")
    for path in agent.get("paths") or []:
        if not isinstance(path, dict):
            continue
        mode = path.get("mode")
        text = f"to {path.get('pool')}: {status_cmd.path_text(path, agent, peers)}"
        far = _remote_nat(by_name.get(path.get("pool")))
        say("path", "ok" if mode == "direct" else "info", text + (f"; {far}" if far else ""))
    for note in plan.get("notes") or []:
        if ("relayed through" in note or "no public relay" in note
                or ("share" in note and "direct path" in note)):
            say("relay", "info", note)
    return out


def _host(endpoint: str) -> str:
    return endpoint.rpartition(":")[0] or endpoint


def _remote_nat(gateway: dict[str, Any] | None) -> str:
    """What the public gateways saw of a remote NAT'd pool (its active endpoint's config)."""
    active = ((gateway or {}).get("status") or {}).get("activeEndpoints") or []
    config = (active[0].get("config") or {}) if active and isinstance(active[0], dict) else {}
    mapped = config.get(nat_discovery.CONFIG_MAPPED_ENDPOINT)
    kind = config.get(nat_discovery.CONFIG_NAT_MAPPING)
    if not mapped:
        return ""
    if kind == nat_discovery.DEPENDENT:
        return (f"its NAT maps a new port per destination (public gateways see it at "
                f"{_host(mapped)}, each from its own port)")
    if kind == nat_discovery.INDEPENDENT:
        return f"its NAT maps one port for all destinations ({mapped})"
    return f"one public gateway sees its NAT at {mapped} (two are needed to tell its mapping)"


def _live_peers(state_dir: Path, netns: str | None) -> list[dict[str, Any]]:
    from raven.commands.status import observe_live

    return list(observe_live(state_dir, netns).get("peers") or [])


def run(args: argparse.Namespace) -> int:
    path = args.state_dir / "agent-status.json"
    try:
        agent = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CommandError(f"{path}: {exc}; is the agent running with this --state-dir?") from exc
    if not isinstance(agent, dict):
        raise CommandError(f"{path} is not the agent's status object")
    from raven.kube.client import GATEWAYS, NODES, Kube, KubeSettings
    from raven.kube.errors import KubeError

    try:
        kube = Kube(KubeSettings(kubeconfig=args.kubeconfig, context=args.context))
        gateways, _ = kube.list(GATEWAYS)
        node = kube.get(NODES, str(agent.get("node")))
    except KubeError as exc:
        raise CommandError(f"cannot read Gateways and Node {agent.get('node')}: {exc}") from exc
    try:
        peers = _live_peers(args.state_dir, args.netns)
    except Exception as exc:  # the rest is still worth showing
        peers = []
        print(f"(WireGuard device unreadable: {exc})")
    findings = explain(agent, list(gateways), node, peers)
    if args.json:
        print(json.dumps(findings, indent=1))
    else:
        for f in findings:
            print(f"[{f['status']:>4}] {f['topic']:<5} {f['text']}")
    return 0
