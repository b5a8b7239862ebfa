"""Gateway status, computed: one Gateway object + Nodes + heartbeats + now -> the status to store.

Pure (beside `raven.election`): no API, no clock, no file; time is the argument `now` (unix
seconds, because conditions carry API timestamps). The controller's loop calls it.

Rules kept:
- pool membership is the node label `raven.openyurt.io/gateway=<gateway>`; `status.nodes` lists
  every member with its InternalIP and all of its podCIDRs, sorted by node name;
- `status.activeEndpoints` lists the tunnel endpoints of `raven.election.elect`, then the proxy
  endpoints of `raven.election.elect_proxies` (type proxy, public address filled, no key; they
  change neither the Ready condition nor the tunnel events); each elected tunnel endpoint gets
  the node's WireGuard public key (node annotation) in `config["public-key"]` and a public
  address: the spec's publicIP, else the node's ExternalIP, else (not under NAT) its
  InternalIP, else empty;
- one node's bad input is isolated: a public-key annotation that is not a WireGuard key (base64
  of 32 bytes) is never copied into the status, so no agent of any pool builds a peer from it;
  the Gateway gets Ready=False, reason PublicKeyInvalid, naming the node, the annotation and the
  fix. The Gateway condition is the controller's, because the controller owns Gateway status
  (agents have no write access to Gateways); the agent that skips a peer reports it as an Event
  on its own Node;
- a Gateway that fails validation keeps its last status (nodes and active endpoints) and gets
  the condition SpecValid=False naming every problem; a pool without an active endpoint gets
  Ready=False with the election's reasons. Nothing in an object makes this module raise;
- a condition's lastTransitionTime changes only when its status flips;
- a NAT'd active endpoint gets what public gateways observed of its key
  (`raven.nat_discovery.endpoint_config`: `mapped-endpoint`, `nat-mapping`) in its config, and
  `status.paths` lists how that gateway reaches the other NAT'd pools (its own annotation).
- our optional `status.standbyEndpoints` lists every other tunnel candidate whose node exists
  and has a valid key, in spec order, filled like an active endpoint, whatever its heartbeat:
  the agents keep tunnels to them warm and fail over to them from data-path probes
  (raven.failover), also while the pool is cut off from this controller.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from raven import constants, nat_discovery, relay_choice, shards
from raven.election import Election, ElectionOptions, elect, elect_proxies
from raven.errors import ValidationError
from raven.failover import STANDBY_FIELD
from raven.model import (
    PROXY,
    Condition,
    Endpoint,
    FrozenMap,
    Gateway,
    GatewayStatus,
    Node,
    NodeInfo,
    gateway_problems,
)
from raven.pool_decision import (
    Failover,
    adopt,
    adopt_set,
    decided_offline,
    immediate_cause,
    set_offline,
    unheard,
    unproven,
)
from raven.timefmt import parse_time, to_time

JSON = dict[str, Any]

CONDITION_READY = "Ready"
CONDITION_SPEC_VALID = "SpecValid"
EVENT_ELECTED = "ActiveEndpointElected"
EVENT_LOST = "ActiveEndpointLost"
EVENT_FAILOVER = "GatewayFailover"  # ours: one per move of a pool's active gateway, with a cause


@dataclass(frozen=True)
class StatusPlan:
    """What the controller wants stored for one Gateway, and what changed in the election."""

    status: JSON  # the full status object to store
    elected: tuple[str, ...]  # nodes that became active endpoints
    lost: tuple[str, ...]  # nodes that stopped being active endpoints
    reasons: tuple[str, ...]
    # Why the active gateway moved, when that is known at once ("partition"); otherwise "" and
    # the controller settles it from later heartbeats (raven.pool_decision.resolve).
    cause: str = ""
    partitioned: bool = False  # the adopted decision was taken while the pool was cut off
    proxy_elected: tuple[str, ...] = ()  # the same for proxy endpoints (docs/proxy.md)
    proxy_lost: tuple[str, ...] = ()
    # The active gateways that took over the share of the `lost` ones (`takers`): the new one
    # with one active gateway; with active-active, where the lost gateways' members go now
    # (raven.shards), a promoted standby or survivors. `head`: the new first active gateway
    # when the move changed it (the node the pool's votes name), else "".
    takers: tuple[str, ...] = ()
    head: str = ""

    def failover(self, gateway: str, now: float, subject: Any = None) -> Failover | None:
        """The move this plan makes, for its GatewayFailover event; None when no active
        gateway was lost, or nobody took over (the pool has no active gateway left)."""
        if not (self.lost and self.takers):
            return None
        return Failover(gateway, self.lost, self.takers, now, self.cause, subject, self.head)


def _condition(
    old: Sequence[Condition], ctype: str, status: str, reason: str, message: str, now: float
) -> Condition:
    previous = next((c for c in old if c.type == ctype), None)
    since = to_time(now)
    if previous is not None and previous.status == status and previous.last_transition_time:
        since = previous.last_transition_time  # a condition's time is when its status flipped
    return Condition(ctype, status, reason, message, since)


def public_address(endpoint: Endpoint, node: Node | None) -> str:
    if endpoint.public_ip:
        return endpoint.public_ip
    if node is not None and node.external_ip:
        return node.external_ip
    if node is not None and not endpoint.under_nat:
        return node.internal_ip
    return ""


def members_by_pool(nodes: Mapping[str, Node]) -> dict[str, tuple[NodeInfo, ...]]:
    """Every pool's status.nodes entries, sorted by node name: one pass over all Nodes (a
    reconcile of 1,000 pools must not scan 10,000 Nodes once per pool)."""
    out: dict[str, list[NodeInfo]] = {}
    for n in sorted(nodes.values(), key=lambda n: n.name):
        if n.gateway:
            out.setdefault(n.gateway, []).append(NodeInfo(
                node_name=n.name, private_ip=n.internal_ip, subnets=tuple(n.pod_cidrs)))
    return {pool: tuple(infos) for pool, infos in out.items()}


def _old_active(obj: JSON, proxy: bool = False) -> tuple[str, ...]:
    """Node names of the stored active tunnel endpoints (or proxy endpoints with `proxy`)."""
    status = obj.get("status") if isinstance(obj.get("status"), dict) else {}
    active = status.get("activeEndpoints") if isinstance(status, dict) else None
    if not isinstance(active, list):
        return ()
    return tuple(str(e.get("nodeName")) for e in active if isinstance(e, dict)
                 and (e.get("type") == PROXY) == proxy)


def _raw_conditions(obj: JSON) -> tuple[Condition, ...]:
    status = obj.get("status") if isinstance(obj.get("status"), dict) else {}
    out = []
    for c in (status or {}).get("conditions") or ():
        if isinstance(c, dict) and isinstance(c.get("type"), str):
            out.append(Condition(c["type"], str(c.get("status", "")), str(c.get("reason", "")),
                                 str(c.get("message", "")), str(c.get("lastTransitionTime", ""))))
    return tuple(out)


def _invalid_status(obj: JSON, problems: Sequence[str], now: float) -> JSON:
    """Keep every stored status field; only the SpecValid and Ready conditions change."""
    old_conditions = _raw_conditions(obj)
    status = copy.deepcopy(obj.get("status")) if isinstance(obj.get("status"), dict) else {}
    keep = [c.to_k8s() for c in old_conditions
            if c.type not in (CONDITION_SPEC_VALID, CONDITION_READY)]
    spec_valid = _condition(old_conditions, CONDITION_SPEC_VALID, "False", "InvalidSpec",
                            "; ".join(problems), now)
    had_active = bool(_old_active(obj))
    ready = _condition(
        old_conditions, CONDITION_READY, "True" if had_active else "False", "InvalidSpec",
        "spec is invalid: keeping the last elected endpoints until it is fixed"
        if had_active else "spec is invalid: no endpoint can be elected until it is fixed", now,
    )
    status["conditions"] = [*keep, spec_valid.to_k8s(), ready.to_k8s()]
    return status


def why_no_endpoint(
    gateway: Gateway,
    nodes: Mapping[str, Node],
    heartbeats: Mapping[str, float],
    now: float,
    options: ElectionOptions,
) -> str:
    """A stable explanation (no ages, so the stored status does not change every resync)."""
    tunnels = list(dict.fromkeys(e.node_name for e in gateway.spec.tunnel_endpoints))
    if not tunnels:
        return (f"Gateway {gateway.name}: spec.endpoints has no tunnel endpoint; add one "
                "(type: tunnel) to elect an active gateway")
    parts = []
    for name in tunnels:
        node = nodes.get(name)
        last = heartbeats.get(name)
        if node is None:
            parts.append(f"{name}: no such node")
        elif options.require_ready and not node.ready:
            parts.append(f"{name}: node is not Ready")
        elif last is None:
            parts.append(f"{name}: no agent heartbeat (Lease {constants.RAVEN_NAMESPACE}/"
                         f"{constants.AGENT_LEASE_PREFIX}{name}); is the agent running?")
        elif now - last > options.heartbeat_timeout:
            parts.append(f"{name}: agent heartbeat older than {options.heartbeat_timeout:g}s")
        else:
            parts.append(f"{name}: eligible")
    return "no healthy tunnel endpoint: " + "; ".join(parts)


def compute_status(
    obj: JSON,
    nodes: Mapping[str, Node],
    heartbeats: Mapping[str, float],
    now: float,
    fleet: Sequence[str] = (),
    options: ElectionOptions | None = None,
    pools: Mapping[str, tuple[NodeInfo, ...]] | None = None,
    observed: Mapping[str, Mapping[str, str]] | None = None,
    relay: str | None = None,
    moved_from: Mapping[str, float] | None = None,
    hold_kept: bool = False,
) -> StatusPlan:
    """The status one Gateway object should have. Never raises for bad objects.
    `pools` is `members_by_pool(nodes)` and `observed` `observed_endpoints(nodes)`, computed
    once by a caller handling many Gateways. `relay`: the pool chosen by RTT to relay between
    NAT'd pools (raven.relay_choice), flagged `status.relay: true`; None = the default rule.
    `moved_from`: node -> when the controller last moved this pool's gateway away from it
    (raven.pool_decision.unproven: not elected again on the controller's own before it renews).
    `hold_kept`: the stored status was kept without heartbeats and the pool is being heard
    again (raven.pool_decision.heard_again): only the pool's votes move it for now.
    """
    old_active = _old_active(obj)
    problems = gateway_problems(obj)
    name = str((obj.get("metadata") or {}).get("name", "?"))
    mine = [p for p in fleet if p.startswith(f"Gateway {name}:")]
    if problems:
        status = _invalid_status(obj, problems + mine, now)
        return StatusPlan(status, (), (), tuple(problems))
    try:
        gateway = Gateway.from_k8s(obj)
    except ValidationError as exc:  # gateway_problems should have caught it; be safe anyway
        return StatusPlan(_invalid_status(obj, exc.problems, now), (), (), tuple(exc.problems))
    pool = (pools if pools is not None else members_by_pool(nodes)).get(gateway.name, ())
    opts = options or ElectionOptions()
    outcome = _pool_election(gateway, nodes, heartbeats, now, opts, moved_from, hold_kept)
    election, adopted = outcome.election, outcome.adopted
    active = _filled_actives(election.active, nodes, observed)
    standby = _standbys(gateway, election.names, nodes)
    proxies = elect_proxies(gateway, nodes, heartbeats, now, opts)
    proxy_active = [replace(ep, public_ip=public_address(ep, nodes.get(ep.node_name)))
                    for ep in proxies.active]  # no WireGuard key: a proxy builds no tunnel
    old_conditions = gateway.status.conditions
    others = tuple(c for c in old_conditions
                   if c.type not in (CONDITION_READY, CONDITION_SPEC_VALID))
    spec_valid = _spec_valid(old_conditions, mine, now)
    ready = _ready(gateway, active.endpoints, active.invalid_keys, election.kept_stale, nodes,
                   heartbeats, now, opts)
    new_status = GatewayStatus(
        nodes=pool,
        active_endpoints=(*active.endpoints, *proxy_active),  # tunnel endpoints, then proxies
        conditions=(*others, spec_valid, ready),
        node_count=len(pool),  # CRD printer column "Nodes" (gateway/crd.yaml)
        extra=_with_standby(gateway.status.extra, standby),
    )
    rendered = _rendered(replace(gateway, status=new_status), active.endpoints, nodes, relay)
    new_active = tuple(e.node_name for e in active.endpoints)
    lost = tuple(n for n in old_active if n not in new_active)
    elected = tuple(n for n in new_active if n not in old_active)
    previous_ready = next((c.reason for c in old_conditions if c.type == CONDITION_READY), "")
    # A move: was the pool heard? An adopted vote published at once says so; a move the
    # election made on its own from heartbeats is judged by the pool's other heartbeats.
    takers = _takers(pool, old_active, new_active, lost)
    moved = bool(lost and takers)
    silent = moved and adopted is None and not outcome.decided and unheard(
        gateway, lost, takers, nodes, heartbeats, now, opts)
    new_proxies = tuple(e.node_name for e in proxy_active)
    old_proxies = _old_active(obj, proxy=True)
    return StatusPlan(
        status=rendered,
        elected=elected,
        lost=lost,
        reasons=tuple(election.reasons),
        cause=(immediate_cause(lost, previous_ready, outcome.partitioned, silent)
               if moved else ""),
        partitioned=outcome.partitioned,
        proxy_elected=tuple(n for n in new_proxies if n not in old_proxies),
        proxy_lost=tuple(n for n in old_proxies if n not in new_proxies),
        takers=takers,
        head=new_active[0] if new_active and new_active[:1] != old_active[:1] else "",
    )


@dataclass(frozen=True)
class _PoolElection:
    """The election after the pool's own decisions: `adopted` is the candidate its nodes'
    votes made first (None: none), `decided` whether the active set came from their set votes,
    `partitioned` whether the pool decided that while cut off from the controller."""

    election: Election
    adopted: str | None
    decided: bool
    partitioned: bool


def _pool_election(gateway: Gateway, nodes: Mapping[str, Node],
                   heartbeats: Mapping[str, float], now: float, opts: ElectionOptions,
                   moved_from: Mapping[str, float] | None, hold_kept: bool) -> _PoolElection:
    """What the pool decided from its own probes (published on its Nodes) becomes the current
    active endpoint before the sticky election, when it names a healthy candidate; then the
    election, with the candidates the controller must not elect on its own (held) judged as
    stale, and reasons naming the adoption and the holds."""
    voted, adopted = adopt(gateway, nodes, heartbeats, now, opts, flagged=hold_kept)
    # Active-active: the pool's whole active set, so a non-first gateway it left is dropped.
    before = voted.status.active_endpoints
    voted, decided, dropped = adopt_set(voted, nodes, heartbeats, now, opts, flagged=hold_kept)
    partitioned = ((adopted is not None and decided_offline(gateway, nodes, adopted))
                   or (voted.status.active_endpoints != before
                       and set_offline(gateway.name, nodes, decided)))
    held = unproven(moved_from or {}, heartbeats) | dropped
    kept = gateway.status.tunnel_names
    if hold_kept and adopted is None and not decided and kept:
        held |= {e.node_name for e in gateway.spec.tunnel_endpoints} - set(kept)
    # Judged as stale by the election (kept, never moved to), whatever their last renewal.
    beats = {**heartbeats, **{n: now - opts.heartbeat_timeout - 1.0 for n in held}}
    election = elect(voted, nodes, beats if held else heartbeats, now, opts)
    if held:
        election = replace(election, reasons=(*election.reasons, *(
            f"Gateway {gateway.name}: {n} is not elected on the controller's own now (the "
            "pool's gateway moved away from it and it has not renewed since, or the pool is "
            f"heard again after a status kept without heartbeats)" for n in sorted(held - dropped)
        ), *(f"Gateway {gateway.name}: {n} is left out of the active set: the pool's nodes "
             "vote for an active set without it (data-path probes)" for n in sorted(dropped))))
    if adopted is not None and adopted in election.names:
        election = replace(election, reasons=(
            f"Gateway {gateway.name}: {adopted} adopted: the pool's nodes fail over to it "
            "from their data-path probes", *election.reasons))
    return _PoolElection(election, adopted, bool(decided), partitioned)


@dataclass(frozen=True)
class _Actives:
    endpoints: list[Endpoint]
    invalid_keys: list[str]  # a problem per elected node whose key annotation is not a key


def _filled_actives(elected: Sequence[Endpoint], nodes: Mapping[str, Node],
                    observed: Mapping[str, Mapping[str, str]] | None) -> _Actives:
    """The elected tunnel endpoints with their node's key and public address filled in, and
    for a NAT'd one what public gateways saw of its key (raven.nat_discovery): agents of other
    NAT'd pools punch a direct path to it."""
    active: list[Endpoint] = []
    invalid_keys: list[str] = []
    for ep in elected:
        filled, bad = _filled(ep, nodes.get(ep.node_name))
        if bad is not None:
            invalid_keys.append(bad)
        config = dict(filled.config)
        for item in (nat_discovery.CONFIG_MAPPED_ENDPOINT, nat_discovery.CONFIG_NAT_MAPPING):
            config.pop(item, None)
        key = filled.config.get(constants.ENDPOINT_CONFIG_PUBLIC_KEY, "")
        if key and ep.under_nat:
            if observed is None:
                observed = observed_endpoints(nodes)
            config.update(nat_discovery.endpoint_config(observed.get(key, {})))
        active.append(replace(filled, config=FrozenMap(config)))
    return _Actives(active, invalid_keys)


def _spec_valid(old: Sequence[Condition], fleet_problems: Sequence[str],
                now: float) -> Condition:
    """SpecValid: False while the fleet check names this Gateway (a conflict with another)."""
    if fleet_problems:
        return _condition(old, CONDITION_SPEC_VALID, "False", "FleetConflict",
                          "; ".join(fleet_problems), now)
    return _condition(old, CONDITION_SPEC_VALID, "True", "Valid", "spec is valid", now)


def _ready(gateway: Gateway, active: Sequence[Endpoint], invalid_keys: Sequence[str],
           kept_stale: bool, nodes: Mapping[str, Node], heartbeats: Mapping[str, float],
           now: float, opts: ElectionOptions) -> Condition:
    """Ready: an active endpoint a tunnel can be built to, or why not (bad or missing key,
    no endpoint at all), or that the pool's heartbeats went stale at once."""
    old = gateway.status.conditions
    names = ", ".join(e.node_name for e in active)
    keyless = [e.node_name for e in active if not e.public_key]
    if invalid_keys:
        return _condition(old, CONDITION_READY, "False", "PublicKeyInvalid",
                          "; ".join(invalid_keys) + "; no tunnel can be built to it", now)
    if keyless:
        return _condition(old, CONDITION_READY, "False", "PublicKeyMissing",
                          f"elected {', '.join(keyless)} but its Node has no annotation "
                          f"{constants.ANNOTATION_PUBLIC_KEY} yet (is its agent running?); "
                          "no tunnel can be built to it", now)
    if active and kept_stale:
        return _condition(old, CONDITION_READY, "True", "KeptWithoutHeartbeat",
                          f"the pool's heartbeats went stale at once (control plane lost?);"
                          f" keeping {names} active", now)
    if active:
        return _condition(old, CONDITION_READY, "True", "ActiveEndpointElected",
                          f"active endpoint(s): {names}", now)
    return _condition(old, CONDITION_READY, "False", "NoActiveEndpoint",
                      why_no_endpoint(gateway, nodes, heartbeats, now, opts), now)


def _rendered(gateway: Gateway, active: Sequence[Endpoint], nodes: Mapping[str, Node],
              relay: str | None) -> JSON:
    """The status as stored: the model's rendering, plus `relay: true` on the pool chosen to
    relay, and `paths`: how a NAT'd active gateway reaches the other NAT'd pools, as its agent
    published it."""
    rendered = gateway.to_k8s().get("status", {})
    rendered.pop("relay", None)
    if relay == gateway.name:
        rendered["relay"] = True
    rendered.pop("paths", None)
    first = nodes.get(active[0].node_name) if active else None
    if first is not None and active[0].under_nat:
        paths = nat_discovery.status_paths(first.annotations.get(nat_discovery.ANNOTATION_PATHS))
        if paths:
            rendered["paths"] = paths
    return rendered


def _takers(pool: Sequence[NodeInfo], old: Sequence[str], new: Sequence[str],
            lost: Sequence[str]) -> tuple[str, ...]:
    """The active gateways in `new` that now carry what the `lost` ones carried under `old`
    (every member, the lost gateways themselves included, as raven.shards assigns them). With
    one active gateway that is the new one; a new active gateway with no member of the lost
    share (a pool without members) is named too, so a move is never without a taker."""
    if not lost or not new:
        return ()
    members = {n.node_name for n in pool} | set(old) | set(new)
    moved = {shards.gateway_of(m, new) for m in members if shards.gateway_of(m, old) in lost}
    elected = [n for n in new if n not in old]
    return tuple(n for n in new if n in moved or n in elected)


def kept_reason(obj: JSON) -> str:
    """The stored Ready condition's reason ("" when there is none)."""
    return next((c.reason for c in _raw_conditions(obj) if c.type == CONDITION_READY), "")


def tunnel_candidates(obj: JSON) -> tuple[str, ...]:
    """Node names of the tunnel endpoints in a Gateway's spec, read leniently."""
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    endpoints = spec.get("endpoints") if isinstance(spec, dict) else None
    return tuple(str(e["nodeName"]) for e in endpoints or () if isinstance(e, dict)
                 and e.get("type", "tunnel") == "tunnel" and isinstance(e.get("nodeName"), str))


def observed_endpoints(nodes: Mapping[str, Node]) -> dict[str, dict[str, str]]:
    """{public key: {observer node: mapped endpoint}} from the nodes' annotations."""
    return nat_discovery.observations(
        (n.name, n.annotations) for n in nodes.values()
        if nat_discovery.ANNOTATION_OBSERVED in n.annotations)


def relay_rtts(gateways: Sequence[Gateway], nodes: Mapping[str, Node]
               ) -> dict[str, dict[str, float]]:
    """{NAT'd pool: {public pool: RTT ms}} from the active NAT'd gateways' annotations."""
    out: dict[str, dict[str, float]] = {}
    for gw in gateways:
        tunnels = [e for e in gw.status.active_endpoints if e.type == "tunnel" and e.node_name]
        if not tunnels or not tunnels[0].under_nat:
            continue
        node = nodes.get(tunnels[0].node_name)
        text = node.annotations.get(relay_choice.ANNOTATION_RELAY_RTT) if node else None
        try:
            data = json.loads(text) if isinstance(text, str) and len(text) < 65536 else {}
        except ValueError:
            data = {}
        out[gw.name] = {str(k): float(v) for k, v in (data.items() if isinstance(data, dict)
                                                       else ()) if isinstance(v, int | float)}
    return out


def _filled(ep: Endpoint, node: Node | None) -> tuple[Endpoint, str | None]:
    """The endpoint with its public address and the node's key (a malformed key is left out
    and returned as the problem)."""
    config = dict(ep.config)
    key = node.public_key if node is not None else ""
    bad = key_problem(ep.node_name, key) if key else None
    if bad is not None:
        key = ""  # never hand a malformed key to the agents of other pools
    if key:
        config[constants.ENDPOINT_CONFIG_PUBLIC_KEY] = key
    else:
        config.pop(constants.ENDPOINT_CONFIG_PUBLIC_KEY, None)
    return replace(ep, public_ip=public_address(ep, node), config=FrozenMap(config)), bad


def _standbys(gateway: Gateway, active: Sequence[str],
              nodes: Mapping[str, Node]) -> list[Endpoint]:
    out: list[Endpoint] = []
    seen = set(active)
    for ep in gateway.spec.tunnel_endpoints:
        node = nodes.get(ep.node_name)
        if ep.node_name in seen or node is None:
            continue
        seen.add(ep.node_name)
        filled, bad = _filled(ep, node)
        if bad is None and filled.public_key:
            out.append(filled)
    return out


def _with_standby(extra: FrozenMap, standby: Sequence[Endpoint]) -> FrozenMap:
    fields = {k: v for k, v in extra.to_dict().items() if k != STANDBY_FIELD}
    if standby:
        fields[STANDBY_FIELD] = [ep.to_k8s() for ep in standby]
    return FrozenMap(fields)


def heartbeats_from_leases(leases: Sequence[JSON]) -> dict[str, float]:
    """node name -> unix seconds of the last renewal of its `raven-agent-<node>` Lease."""
    out: dict[str, float] = {}
    for lease in leases:
        name = str((lease.get("metadata") or {}).get("name", ""))
        if not name.startswith(constants.AGENT_LEASE_PREFIX):
            continue
        spec = lease.get("spec") or {}
        when = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime"))
        if when is not None:
            out[name.removeprefix(constants.AGENT_LEASE_PREFIX)] = when
    return out


def heard_since_floor(heartbeats: Mapping[str, float], objects: Sequence[JSON],
                      since: float | None) -> dict[str, float]:
    """The heartbeats as a controller that started listening at `since` (unix seconds: it
    gained leadership) may judge them: an ACTIVE endpoint's renewal older than `since` counts
    as made at `since`.

    Why: a controller that was not listening (it was stopped with its API server, or lost the
    API) cannot tell a gateway that stopped renewing from one whose renewals it could not see:
    after an outage every Lease is as old as the outage, and the agents renew again one by one
    within a heartbeat period. Judged as they are, the first reconcile moved a pool whose active
    gateway had not renewed yet to a standby that had, and back once the active one renewed
    (two moves, a lost half second of traffic: the control-plane outage e2e test). Only what is
    active is floored: a controller's start never makes a long-dead candidate electable; a
    really dead active gateway is judged stale one heartbeat timeout after `since`, and its
    pool's votes (raven.pool_decision) move it sooner."""
    if since is None:
        return dict(heartbeats)
    active = {n for obj in objects for n in (*_old_active(obj), *_old_active(obj, proxy=True))}
    return {n: max(t, since) if n in active else t for n, t in heartbeats.items()}


def agent_starts_from_leases(leases: Sequence[JSON]) -> dict[str, float]:
    """node name -> unix seconds at which its running agent first wrote its `raven-agent-<node>`
    Lease (acquireTime: raven.kube.lease.Heartbeat sets it once per agent process)."""
    out: dict[str, float] = {}
    for lease in leases:
        name = str((lease.get("metadata") or {}).get("name", ""))
        if not name.startswith(constants.AGENT_LEASE_PREFIX):
            continue
        when = parse_time((lease.get("spec") or {}).get("acquireTime"))
        if when is not None:
            out[name.removeprefix(constants.AGENT_LEASE_PREFIX)] = when
    return out


def key_problem(node: str, key: str) -> str | None:
    """Why `key` (the Node's public-key annotation) is not a WireGuard key, or None."""
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) == 32:
        return None
    return (f"node {node}: annotation {constants.ANNOTATION_PUBLIC_KEY}={key[:60]!r} is not a "
            "WireGuard public key (base64 of 32 bytes); its agent rewrites it at start, or "
            f"fix it with kubectl annotate node {node} --overwrite "
            f"{constants.ANNOTATION_PUBLIC_KEY}=<key from 'wg show raven-wg0 public-key', run "
            "where the device is: 'ip netns exec raven-tun ...' on an active gateway>")
