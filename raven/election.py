"""PURE election of a pool's active tunnel endpoint(s), with a reason for every decision.

Rules this module keeps (docs/gateway.md explains them for operators):
- Candidates are the spec's tunnel endpoints (first occurrence of a node wins) whose node exists,
  is Ready and has a fresh agent heartbeat (`now - last renewal <= heartbeat_timeout`).
- Sticky: a currently active endpoint that is still a healthy candidate stays active, in its
  current order. Spec order decides among the rest, up to `tunnelConfig.Replicas` (0/absent = 1).
- Lost cloud, not network: when no candidate is healthy and every existing candidate's heartbeat
  is stale (whether or not the node controller has also marked it NotReady, which it does for the
  same reason), a pool that had active endpoints keeps those still listed in the spec and still
  existing, and the reason says so. A NotReady node whose agent still heartbeats is really broken:
  that is not "lost cloud", so nothing is kept then.
  A deleted node or an endpoint removed from the spec is never kept.
- Silent pool: the same holds a moment earlier, while the other candidates' heartbeats are not
  yet stale but none renewed within half the timeout (agents renew every third of it, so a
  heard agent's renewal is never that old). The heartbeats of a pool cut off from the control
  plane all stop at the cut but expire one by one over a renewal period; electing the one that
  expires last moved the pool's status to a node the pool itself never chose (and remote pools
  follow the status): the previous active endpoints are kept then too.
- Time is an argument (`now`); nothing here reads a clock, a ConfigMap, a socket or a file.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass

from raven.model import PROXY, TUNNEL, Endpoint, Gateway, Node


@dataclass(frozen=True)
class ElectionOptions:
    heartbeat_timeout: float = 15.0  # seconds since the agent's last Lease renewal
    require_ready: bool = True  # a NotReady node is not a candidate


@dataclass(frozen=True)
class Election:
    active: tuple[Endpoint, ...]  # spec endpoints, in order; publicIP/config filled by the caller
    reasons: tuple[str, ...]
    kept_stale: bool = False  # True when the previous active endpoints were kept without heartbeat

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.node_name for e in self.active)


def _age(now: float, last: float | None) -> str:
    return "never" if last is None else f"{max(0.0, now - last):.0f}s ago"


def elect(
    gateway: Gateway,
    nodes: Mapping[str, Node],
    heartbeats: Mapping[str, float],
    now: float,
    options: ElectionOptions = ElectionOptions(),
) -> Election:
    """The active tunnel endpoints of `gateway` at time `now`, and why."""
    label = f"Gateway {gateway.name}"
    reasons: list[str] = []
    replicas = gateway.spec.tunnel_replicas
    candidates, position = _candidates(gateway, TUNNEL)
    if not candidates:
        return Election((), (f"{label}: spec.endpoints has no tunnel endpoint; add one "
                             "(type: tunnel) to elect an active gateway",))

    healthy_eps, stale_only = _health(candidates, nodes, heartbeats, now, options,
                                      f"{label}: ", reasons)
    healthy: dict[str, Endpoint] = {ep.node_name: ep for ep in healthy_eps}

    spec_by_name = {ep.node_name: ep for ep in candidates}
    previous = [e.node_name for e in gateway.status.active_endpoints
                if e.type == TUNNEL and e.node_name]
    listed = [n for n in dict.fromkeys(previous) if n in spec_by_name and n in nodes]
    silent = _silent(listed, candidates, nodes, stale_only, healthy, heartbeats, now, options)
    if silent is not None:
        kept = listed[:replicas]
        why = silent or ("every candidate's heartbeat is stale at once; the pool has probably "
                         "lost the control plane, not its network:")
        reasons.append(f"{label}: {why} keeping {', '.join(kept)} active")
        return Election(tuple(spec_by_name[n] for n in kept), tuple(reasons), True)
    if not healthy:
        reasons.append(f"{label}: no healthy tunnel endpoint; no active gateway")
        return Election((), tuple(reasons))

    chosen = _choose(previous, candidates, healthy, replicas, position, f"{label}: ",
                     "tunnelConfig.Replicas", reasons)
    return Election(tuple(spec_by_name[n] for n in chosen), tuple(reasons))


# -- proxy endpoints (docs/proxy.md) ------------------------------------------------------------
# Kept apart from `elect` so the tunnel election can change without touching the proxy's.


def proxy_replicas(gateway: Gateway) -> int:
    """`proxyConfig.Replicas`; 0 or absent elects no proxy endpoint (OpenYurt's rule)."""
    cfg = gateway.spec.proxy_config
    return max(0, cfg.replicas) if cfg is not None else 0


def elect_proxies(
    gateway: Gateway,
    nodes: Mapping[str, Node],
    heartbeats: Mapping[str, float],
    now: float,
    options: ElectionOptions = ElectionOptions(),
) -> Election:
    """The active proxy endpoints of `gateway`: the same health, stickiness and "lost cloud"
    rules as `elect`, over the spec's proxy endpoints, up to `proxyConfig.Replicas`."""
    label = f"Gateway {gateway.name}"
    replicas = proxy_replicas(gateway)
    candidates, position = _candidates(gateway, PROXY)
    if not candidates:
        return Election((), ())  # no proxy wanted: nothing to say
    if replicas == 0:
        return Election((), (f"{label}: proxyConfig.Replicas is 0; no proxy endpoint is "
                             "elected (set it to 1 or more)",))
    reasons: list[str] = []
    healthy_eps, stale = _health(candidates, nodes, heartbeats, now, options,
                                 f"{label}: proxy ", reasons)
    healthy: set[str] = {ep.node_name for ep in healthy_eps}
    spec_by_name = {ep.node_name: ep for ep in candidates}
    previous = list(dict.fromkeys(e.node_name for e in gateway.status.active_endpoints
                                  if e.type == PROXY and e.node_name))
    listed = [n for n in previous if n in spec_by_name and n in nodes]
    silent = _silent(listed, candidates, nodes, stale, healthy, heartbeats, now, options)
    if silent is not None:
        kept = listed[:replicas]
        why = f"proxy {silent}" if silent else "every proxy candidate's heartbeat is stale at once;"
        reasons.append(f"{label}: {why} keeping proxy {', '.join(kept)} active")
        return Election(tuple(spec_by_name[n] for n in kept), tuple(reasons), True)
    if not healthy:
        reasons.append(f"{label}: no healthy proxy endpoint; no active proxy")
        return Election((), tuple(reasons))
    chosen = _choose(previous, candidates, healthy, replicas, position, f"{label}: proxy ",
                     "proxyConfig.Replicas", reasons)
    return Election(tuple(spec_by_name[n] for n in chosen), tuple(reasons))


def _candidates(gateway: Gateway, kind: str) -> tuple[list[Endpoint], dict[str, int]]:
    """The spec's endpoints of `kind` (first occurrence of a node wins), and each one's index in
    spec.endpoints (for the reasons)."""
    candidates: list[Endpoint] = []
    position: dict[str, int] = {}
    for index, ep in enumerate(gateway.spec.endpoints):
        if ep.type != kind or not ep.node_name or ep.node_name in position:
            continue
        position[ep.node_name] = index
        candidates.append(ep)
    return candidates, position


def _choose(previous: list[str], candidates: list[Endpoint], healthy: Container[str], replicas: int,
            position: Mapping[str, int], prefix: str, replicas_field: str,
            reasons: list[str]) -> list[str]:
    """Up to `replicas` healthy names: the previous active ones first (sticky, in their order),
    then spec order. Every decision gets a reason, `prefix` first: tunnel and proxy endpoints
    follow one rule."""
    chosen: list[str] = []
    for name in dict.fromkeys(previous):
        if name in healthy and len(chosen) < replicas:
            chosen.append(name)
            reasons.append(f"{prefix}{name} stays active (healthy; active endpoints are sticky)")
    for ep in candidates:
        name = ep.node_name
        if name not in healthy or name in chosen:
            continue
        if len(chosen) >= replicas:
            reasons.append(f"{prefix}{name} is a healthy standby "
                           f"({replicas_field} {replicas} reached)")
            continue
        chosen.append(name)
        reasons.append(f"{prefix}{name} elected (healthy; next in spec order, "
                       f"spec.endpoints[{position[name]}])")
    for name in dict.fromkeys(previous):
        if name not in chosen:
            reasons.append(f"{prefix}{name} is no longer active")
    return chosen


def heard(last: float | None, now: float, options: ElectionOptions) -> bool:
    """Whether an agent whose last renewal was at `last` is heard: it renewed within half the
    heartbeat timeout. Agents renew every third of it, so a heard agent's renewal is never
    older; in a pool cut off from the control plane the others' renewals are at least two
    thirds old when the first one expires. The silent pool rule and the controller's heal hold
    (raven.pool_decision.heard_again) use this one bound."""
    return last is not None and now - last <= options.heartbeat_timeout / 2


def _silent(previous: list[str], candidates: list[Endpoint], nodes: Mapping[str, Node],
            stale: list[str], healthy: Container[str], heartbeats: Mapping[str, float],
            now: float, options: ElectionOptions) -> str | None:
    """Whether the pool went silent at once, so its `previous` active endpoints are kept
    (rule 4, "lost cloud", and the silent pool rule, one mechanism): None when it did not;
    "" when every existing candidate's heartbeat is stale (rule 4); else why the candidates
    that are not stale yet do not count (each missed a renewal: its last one is older than
    half the timeout). It did when there is a previous endpoint, every previous endpoint is
    stale, and every other existing candidate is stale or healthy but not heard. A NotReady
    candidate whose agent still heartbeats is neither: the pool is heard then, nothing kept."""
    existing = [ep.node_name for ep in candidates if ep.node_name in nodes]
    if not previous or any(n not in stale for n in previous):
        return None
    late = [n for n in existing if n in healthy]
    if len(stale) + len(late) != len(existing):
        return None
    if any(heard(heartbeats[n], now, options) for n in late):
        return None
    if not late:
        return ""
    ages = ", ".join(f"{n} {_age(now, heartbeats[n])}" for n in late)
    return (f"the heartbeat of {', '.join(previous)} is stale and no other candidate renewed "
            f"within half the timeout ({ages}; {options.heartbeat_timeout / 2:g}s): the pool "
            "went silent at once, it has probably lost the control plane, not its network;")


def _health(candidates: list[Endpoint], nodes: Mapping[str, Node],
            heartbeats: Mapping[str, float], now: float, options: ElectionOptions,
            prefix: str, reasons: list[str]) -> tuple[list[Endpoint], list[str]]:
    """The candidates that may be elected (the node exists, is Ready if required, and its
    heartbeat is fresh), and the names that exist but whose heartbeat is stale. Every candidate
    left out gets a reason, `prefix` first: tunnel and proxy endpoints follow one rule."""
    healthy: list[Endpoint] = []
    stale: list[str] = []  # exists, heartbeat stale (Ready or not)
    for ep in candidates:
        name, node, last = ep.node_name, nodes.get(ep.node_name), heartbeats.get(ep.node_name)
        fresh = last is not None and now - last <= options.heartbeat_timeout
        if node is None:
            reasons.append(f"{prefix}{name} is not a candidate: no such node")
        elif options.require_ready and not node.ready:
            if not fresh:
                stale.append(name)
            reasons.append(f"{prefix}{name} is not a candidate: node is not Ready "
                           f"(heartbeat {_age(now, last)})")
        elif not fresh:
            stale.append(name)
            reasons.append(f"{prefix}{name} is not a candidate: agent heartbeat "
                           f"{_age(now, last)} (timeout {options.heartbeat_timeout:g}s)")
        else:
            healthy.append(ep)
    return healthy, stale
