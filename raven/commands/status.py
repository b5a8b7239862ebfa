"""`raven status`: what the agent on this node is doing, from its status file and the kernel.

Two sources, shown side by side so a difference is visible: the agent's last applied plan
(`<state-dir>/agent-status.json`, written after every successful apply) and the live data plane
(`raven.dataplane.Dataplane.observe()`: counts, WireGuard peers with handshake age and bytes,
drift between plan and kernel).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

from raven.errors import CommandError
from raven.settings import AgentSettings, default_of


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="show this node's role, pool, gateway, peers and drift")
    state_dir = default_of(AgentSettings, "state_dir")
    p.add_argument("--state-dir", type=Path, default=state_dir,
                   help=f"the agent's state directory (default {state_dir})")
    p.add_argument("--netns", default=None, help="inspect this named network namespace")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return value


def observe_live(state_dir: Path, netns: str | None) -> dict[str, Any]:
    """Counts and WireGuard peers read from the kernel now (drift needs the plan, which only
    the running agent holds; it reports its last check in its status file)."""
    from raven.dataplane import Dataplane, DataplaneSettings

    with Dataplane(DataplaneSettings(netns=netns, state_dir=state_dir)) as dataplane:
        return _plain(dataplane.observe())


def _timestamp(value: Any) -> float | None:
    """A finite UNIX time from the status file, or None (absent, zero or not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value else None


def collect(state_dir: Path, netns: str | None, now: float) -> dict[str, Any]:
    path = state_dir / "agent-status.json"
    try:
        agent = json.loads(path.read_text())
    except FileNotFoundError:
        agent = None
    except (OSError, ValueError, RecursionError) as exc:
        raise CommandError(
            f"{path} is unreadable ({str(exc)[:200]}); is this the agent's --state-dir?"
        ) from exc
    if agent is not None and not isinstance(agent, dict):
        raise CommandError(f"{path} holds a JSON {type(agent).__name__}, not the agent's status "
                           "object; is this the agent's --state-dir?")
    report: dict[str, Any] = {"stateDir": str(state_dir), "agent": agent}
    if agent is not None:
        # A damaged file (hand-edited, another version) shows as unknown ages, not a traceback.
        applied = _timestamp(agent.get("appliedAt"))
        report["appliedAgo"] = round(now - applied, 1) if applied else 0.0
        confirmed = _timestamp(agent.get("inputsConfirmedAt"))
        report["inputsAge"] = round(now - confirmed, 1) if confirmed else None
        observed = _timestamp(agent.get("observedAt"))
        report["driftCheckedAgo"] = round(now - observed, 1) if observed else None
        report["drift"] = agent.get("drift")
    try:
        report["live"] = observe_live(state_dir, netns)
    except Exception as exc:  # the report is still useful without the kernel view
        report["live"] = None
        report["liveError"] = f"{type(exc).__name__}: {exc}"
    return report


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _proxy_lines(proxy: Any) -> list[str]:
    """The proxy role (docs/proxy.md): server with its connected clients, client with the
    servers it reaches, or none."""
    if not isinstance(proxy, dict):
        return []
    role = str(proxy.get("role") or "none")
    line = f"proxy:          {role}"
    if role == "server":
        clients = proxy.get("clients") or {}
        shown = "; ".join(f"{pool}: {', '.join(map(str, nodes)) or 'none'}"
                          for pool, nodes in sorted(clients.items())) or "none"
        line += f" on {', '.join(map(str, proxy.get('listen') or []))}; clients {shown}"
    elif role == "client":
        servers = [str(s) for s in proxy.get("servers") or []]
        connected = [str(s) for s in proxy.get("connected") or []]
        line += (f" of pool {proxy.get('pool')}; connected to {len(connected)}/{len(servers)} "
                 f"server(s): {', '.join(connected) or 'none'}")
    lines = [line]
    if proxy.get("lastError"):
        lines.append(f"proxy error:    {proxy['lastError']}")
    return lines


def render(report: dict[str, Any]) -> str:
    lines: list[str] = []
    agent = report.get("agent")
    if agent is None:
        lines.append(f"agent: no status in {report['stateDir']} (agent not started yet, or "
                     "another --state-dir)")
    else:
        active = ", ".join(agent.get("activeGateways") or []) or "none"
        lines += [
            f"node:           {agent.get('node')}",
            f"role:           {agent.get('role')}",
            f"pool:           {agent.get('pool') or '-'}",
            f"active gateway: {active}",
            f"applied:        {report.get('appliedAgo')}s ago from {agent.get('source')} inputs"
            + (f" (confirmed by the API {report['inputsAge']}s ago)"
               if report.get("inputsAge") is not None else ""),
        ]
        plan = agent.get("plan") or {}
        devices = plan_devices(plan)
        routes = len(plan.get("routes") or []) + (
            len(devices.get("routes") or []) if devices is not plan else 0)
        lines.append(f"planned:        {routes} routes, "
                     f"{len(plan.get('rules') or [])} rules, {len(devices.get('fdb') or [])} fdb, "
                     f"{len((devices.get('wireguard') or {}).get('peers') or [])} peers, "
                     f"{len((plan.get('firewall') or {}).get('remote_subnets') or [])} "
                     "remote subnets in the set")
        for note in plan.get("notes") or []:
            lines.append(f"note:           {note}")
        lines += _proxy_lines(agent.get("proxy"))
    live = report.get("live")
    if live is None:
        lines.append(f"live:           unavailable ({report.get('liveError')})")
        return "\n".join(lines) + "\n"
    peers = live.pop("peers", None) or []
    live.pop("drift", None)  # a fresh Dataplane has no plan to compare with: use the agent's
    drift = (agent or {}).get("drift")
    backend = live.get("wireguard_backend")
    lines.append(
        f"kernel:         raven0 {'up' if live.get('vxlan') else 'absent'}, WireGuard "
        + (f"up ({backend})" if live.get("wireguard") else "absent")
        + f", {live.get('routes', 0)} routes, {live.get('rules', 0)} rules, "
        # No set-element count: Dataplane.observe() counts them only against the plan it
        # applied itself, which this fresh instance does not have.
        f"{live.get('fdb', 0)} fdb, {live.get('neighbours', 0)} neighbours")
    lines.append(f"peers:          {len(peers)}")
    for peer in peers:
        age = peer.get("handshake_age_s")
        if age is None and peer.get("last_handshake"):
            age = time.time() - float(peer["last_handshake"])
        shown = "never" if age is None else f"{float(age):.0f}s ago"
        lines.append(f"  {str(peer.get('public_key', ''))[:12]}… endpoint "
                     f"{peer.get('endpoint') or '(learned)'} handshake {shown} "
                     f"rx {_human_bytes(float(peer.get('rx_bytes') or 0))} "
                     f"tx {_human_bytes(float(peer.get('tx_bytes') or 0))}")
    lines += _paths(agent or {}, peers)
    checked = report.get("driftCheckedAgo")
    when = f" (agent's check {checked}s ago)" if checked is not None else ""
    if drift is None:
        lines.append("drift:          not checked yet by the agent")
    elif drift:
        lines.append(f"drift:          {len(drift)} difference(s){when}")
        lines += [f"  {d}" for d in drift]
    else:
        lines.append(f"drift:          none{when}")
    return "\n".join(lines) + "\n"


def _paths(agent: dict[str, Any], peers: list[dict[str, Any]]) -> list[str]:
    """Paths to the other NAT'd pools (raven.paths), as the agent last recorded them, with the
    endpoint the kernel's peer talks to now."""
    paths = agent.get("paths")
    if not isinstance(paths, list) or not paths:
        return []
    lines = [f"paths:          {len(paths)} NAT'd pool(s)"]
    for path in paths:
        if isinstance(path, dict):
            lines.append(f"  {path.get('pool')}: {path_text(path, agent, peers)}")
    return lines


def plan_devices(plan: dict[str, Any]) -> dict[str, Any]:
    """The part of a plan (as JSON) that holds raven0 and raven-wg0: its tunnel namespace's
    when it has one (docs/tunnel-namespace.md; `NodeState.devices`), else the plan itself."""
    tunnel = plan.get("tunnel")
    return tunnel if isinstance(tunnel, dict) else plan


def relays(agent: dict[str, Any]) -> dict[str, str]:
    """{remote pool: the pool whose gateway relays its traffic} from the applied plan."""
    wireguard = plan_devices(agent.get("plan") or {}).get("wireguard") or {}
    out = {}
    for peer in wireguard.get("peers") or []:
        if isinstance(peer, dict):
            for pool in peer.get("relays_for") or []:
                out[str(pool)] = str(peer.get("pool"))
    return out


def live_endpoint(pool: str, agent: dict[str, Any], peers: list[dict[str, Any]]) -> str | None:
    """The endpoint the kernel's WireGuard peer of `pool` (its direct or probe peer) talks to
    now: WireGuard follows the far side wherever its packets come from."""
    wireguard = plan_devices(agent.get("plan") or {}).get("wireguard") or {}
    keys = {p.get("public_key") for p in wireguard.get("peers") or []
            if isinstance(p, dict) and p.get("pool") == pool}
    return next((str(p["endpoint"]) for p in peers
                 if p.get("public_key") in keys and p.get("endpoint")), None)


def path_text(path: dict[str, Any], agent: dict[str, Any], peers: list[dict[str, Any]]) -> str:
    """One NAT'd pool's path as the user should read it: where its traffic goes now (a probing
    pair is still relayed), the figures, and why."""
    mode = path.get("mode")
    pool = str(path.get("pool"))
    via = path.get("via") or relays(agent).get(pool)
    relayed = f"relayed via {via}" if via else "relayed"
    if mode == "direct":
        text = f"direct to {live_endpoint(pool, agent, peers) or path.get('endpoint')}"
    elif mode == "probing":
        failures = path.get("failures")
        attempt = (f" (attempt {failures + 1})" if isinstance(failures, int) and failures
                   else "")
        text = f"{relayed}; probing a direct path to {path.get('endpoint')}{attempt}"
    else:
        text = relayed
    if isinstance(path.get("rttMs"), int | float):
        text += f", rtt {path['rttMs']} ms"
    if isinstance(path.get("loss"), int | float):
        text += f", loss {path['loss']:.0%}"
    reason = str(path.get("reason") or "")
    if mode == "direct":  # "direct to <endpoint>" repeats the line; what follows is news
        _, sep, rest = reason.partition(" (")
        text += f" ({rest}" if sep else ""
    elif reason and mode != "probing":  # a probe's reason only repeats its endpoint
        text += f" ({reason})"
    return text


def run(args: argparse.Namespace) -> int:
    report = collect(args.state_dir, args.netns, time.time())
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True, default=str))
    else:
        print(render(report), end="")
    return 0
