"""PURE failover decisions from data-path probes: health per candidate, and which candidate of a
pool carries its cross-pool traffic, decided by the nodes themselves without the API server.

Rules this module keeps (docs/gateway.md "Failover without the cloud" explains them):
- Health is hysteresis over probe outcomes, never a single probe: a target is UP after
  `up_after` consecutive replies, DOWN after `down_after` consecutive lost probes (a probe is
  lost when no reply came within `timeout`). A target that never answered stays UNKNOWN (a
  fresh agent, or a peer whose tunnel is not built yet, follows the controller) until
  `unknown_down_after` probes in a row were lost.
- The candidate order of a pool is what the controller last wrote, read alike by every node:
  `status.activeEndpoints` (tunnel, first occurrence), then our optional
  `status.standbyEndpoints`. Only candidates listed there (with their key and public address)
  take part: a node can switch only to a gateway every other node can build a tunnel to.
- The effective active gateway of a pool is the first candidate in that order that is not DOWN
  as seen by this node (a candidate always counts itself up). Every observer applies the same
  rule to the same order, so observers that see the same failure converge on the same node
  with no message exchanged; when every candidate is DOWN, the controller's choice stands.
- Remote pools are judged only by nodes that probe them (gateway candidates probe the
  candidates of remote pools over WireGuard); any other node keeps the controller's choice.
- Pure: time and probe outcomes are arguments; no socket, clock or file.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from raven.model import TUNNEL, Endpoint, FrozenMap, Gateway, GatewayStatus

STANDBY_FIELD = "standbyEndpoints"  # our optional status field: candidates beyond the active


@dataclass(frozen=True)
class ProbeSettings:
    """Data-path probes (BFD-like timing): small UDP echoes every `interval` seconds."""

    interval: float = field(default=0.05, metadata={"help": (
        "seconds between two data-path probes to one gateway candidate; 0 turns probes and "
        "local failover off")})
    timeout: float = 0.2  # a probe without a reply this long is lost
    down_after: int = 8  # consecutive lost probes: DOWN (0.4 s of silence at the defaults)
    up_after: int = 5  # consecutive replies: UP again
    # A target that never answered is DOWN only after this many lost probes (30 s at the
    # defaults): long enough for any tunnel to be built at start, short enough that an agent
    # restarted while its pool has failed over without the controller does not wait forever.
    unknown_down_after: int = 600
    port: int = 4473  # UDP port of the echo responder on every node
    # Seconds between two probes of a target whose verdict decides nothing (`Target.telemetry`:
    # a pool with one candidate has no other to switch to). Its probes only feed the status
    # (RTT, loss per pool pair), and on a 2-core node every probe costs wireguard-go and the
    # agent CPU that pod traffic then lacks: 20 a second per target was ~10 % of the overlay's
    # throughput gap. A slow target is judged on its own probes (`judged_by`).
    slow_interval: float = 1.0
    # Seconds between two probes of a healthy standby (`Target.standby`): a candidate that is
    # UP and not the gateway this node uses. Its verdict decides only after the gateway in use
    # fails, and it is UP then whatever the rate; a standby that loses a probe is probed at
    # the full rate again until it answers, so it is still DOWN after `down_after` lost probes,
    # at most one standby interval later. Measured on two-pools (docs/benchmarks.md): of the
    # four 50 ms probe streams two went to a standby (one through WireGuard), ~4 % of one CPU.
    # 0.25 s is also how old a candidate's claim (raven.pool_claims) may get: each standby
    # probe asks for it.
    standby_interval: float = 0.25

    @property
    def enabled(self) -> bool:
        return self.interval > 0


def probe_problems(s: ProbeSettings) -> list[str]:
    problems = []
    if s.interval < 0:
        problems.append(f"--probe-interval {s.interval:g}: must be >= 0 (0 turns probes off)")
    if s.enabled and s.timeout <= 0:
        problems.append(f"probe timeout {s.timeout:g}: must be > 0")
    if s.down_after < 1 or s.up_after < 1:
        problems.append("probe down_after and up_after must be at least 1")
    if s.enabled and s.slow_interval < s.interval:
        problems.append(f"probe slow_interval {s.slow_interval:g}: must be at least the "
                        f"probe interval ({s.interval:g})")
    if s.enabled and s.standby_interval < s.interval:
        problems.append(f"probe standby_interval {s.standby_interval:g}: must be at least the "
                        f"probe interval ({s.interval:g})")
    if not 0 < s.port < 65536:
        problems.append(f"--probe-port {s.port}: use 1-65535")
    return problems


class Verdict(StrEnum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True)
class Health:
    """One target's health, updated by `replied` and `lost`."""

    verdict: Verdict = Verdict.UNKNOWN
    ok_run: int = 0  # consecutive replies
    lost_run: int = 0  # consecutive lost probes
    replies: int = 0
    lost: int = 0
    rtt_ms: float | None = None  # smoothed (1/8 per sample, as TCP's SRTT)


def judged_by(s: ProbeSettings, telemetry: bool) -> ProbeSettings:
    """The settings a target's probes are sent and judged with. A telemetry-only target is
    probed every `slow_interval`, and its hysteresis counts ITS probes: each is lost only after
    its own `timeout`, so probing less often never makes it DOWN sooner (`down_after` lost
    probes is a longer silence, not a shorter one, and a single lost probe is never a verdict).
    Only the never-answered silence is a duration (a tunnel being built takes as long whatever
    the rate): `unknown_down_after` is scaled to the same seconds."""
    if not telemetry or s.slow_interval <= s.interval or not s.enabled:
        return s
    silence = s.unknown_down_after * s.interval
    return replace(s, interval=s.slow_interval, unknown_down_after=max(
        s.down_after, math.ceil(silence / s.slow_interval - 1e-9)))


def replied(h: Health, rtt_s: float, s: ProbeSettings) -> Health:
    ok_run = h.ok_run + 1
    rtt = rtt_s * 1000.0
    srtt = rtt if h.rtt_ms is None else h.rtt_ms + (rtt - h.rtt_ms) / 8
    verdict = Verdict.UP if ok_run >= s.up_after else h.verdict
    return replace(h, verdict=verdict, ok_run=ok_run, lost_run=0, replies=h.replies + 1,
                   rtt_ms=srtt)


def lost(h: Health, s: ProbeSettings) -> Health:
    lost_run = h.lost_run + 1
    # A target that never answered proves little (its tunnel may not be built yet): it needs
    # a much longer silence to be DOWN.
    needed = s.unknown_down_after if h.verdict == Verdict.UNKNOWN else s.down_after
    verdict = Verdict.DOWN if lost_run >= needed else h.verdict
    return replace(h, verdict=verdict, ok_run=0, lost_run=lost_run, lost=h.lost + 1)


# --- candidates as the controller last wrote them ----------------------------------------------

def _endpoint(raw: Any) -> Endpoint | None:
    """A status endpoint object, leniently (a malformed one is skipped, never fatal)."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("nodeName"), str):
        return None
    config = raw.get("config") if isinstance(raw.get("config"), Mapping) else {}

    def integer(key: str) -> int:
        value = raw.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    return Endpoint(
        node_name=raw["nodeName"], type=str(raw.get("type") or TUNNEL), port=integer("port"),
        under_nat=raw.get("underNAT") is True, nat_type=str(raw.get("natType") or ""),
        public_ip=str(raw.get("publicIP") or ""), public_port=integer("publicPort"),
        config=FrozenMap({str(k): str(v) for k, v in config.items() if isinstance(v, str)}))


def standby_endpoints(gw: Gateway) -> tuple[Endpoint, ...]:
    raw = gw.status.extra.get(STANDBY_FIELD)
    if not isinstance(raw, list | tuple):
        return ()
    return tuple(ep for item in raw if (ep := _endpoint(item)) is not None)


def candidates(gw: Gateway) -> tuple[Endpoint, ...]:
    """The pool's candidates in failover order: active endpoints, then standbys; only nodes
    listed in status.nodes (a gateway must be reachable over VXLAN by its members)."""
    members = {n.node_name for n in gw.status.nodes if n.private_ip}
    out: dict[str, Endpoint] = {}
    for ep in (*gw.status.active_endpoints, *standby_endpoints(gw)):
        if ep.type == TUNNEL and ep.node_name in members and ep.node_name not in out:
            out[ep.node_name] = ep
    return tuple(out.values())


# --- the decision ----------------------------------------------------------------------------

Verdicts = Mapping[tuple[str, str], Verdict]  # (pool, node) -> verdict


@dataclass(frozen=True)
class Switch:
    """A pool whose effective active gateway differs from the controller's choice."""

    pool: str
    controller: tuple[str, ...]  # what status.activeEndpoints says
    effective: tuple[str, ...]  # what this node uses
    down: tuple[str, ...]  # the candidates seen DOWN (the reason)

    def __str__(self) -> str:
        return (f"Gateway {self.pool}: {', '.join(self.controller) or 'none'} -> "
                f"{', '.join(self.effective)} (data-path probes: "
                f"{', '.join(self.down) or 'none'} down)")


def choose(order: Sequence[str], verdicts: Mapping[str, Verdict], me: str,
           replicas: int = 1) -> tuple[str, ...]:
    """The first `replicas` candidates of `order` not seen DOWN (`me` counts itself up); the
    controller's choice (the head of `order`) when every candidate is DOWN."""
    alive = [n for n in order if n == me or verdicts.get(n, Verdict.UNKNOWN) != Verdict.DOWN]
    return tuple(alive[:max(1, replicas)]) if alive else tuple(order[:max(1, replicas)])


def effective_gateways(gateways: Sequence[Gateway], verdicts: Verdicts,
                       me: str, claims: Mapping[tuple[str, str], Any] | None = None,
                       mine: Any = None, self_alive: bool = True
                       ) -> tuple[list[Gateway], list[Switch]]:
    """The Gateways with each pool's active endpoints replaced by this node's choice, and the
    switches made. A pool without verdicts, or with fewer than two candidates, is unchanged.
    `claims` ((pool, node) -> raven.pool_claims.Claim), `mine` (this node's own claim) and
    `self_alive` (False: this candidate does not count itself yet) keep an incumbent gateway
    first (raven.pool_claims; one active gateway per pool only)."""
    from raven import pool_claims  # (it imports Verdict from here)

    out: list[Gateway] = []
    switches: list[Switch] = []
    for gw in gateways:
        cands = candidates(gw)
        seen = {node: v for (pool, node), v in verdicts.items() if pool == gw.name}
        order = [ep.node_name for ep in cands]
        waiting = not self_alive and me in order  # (before our first probes: not ourselves)
        if len(cands) < 2 or not (seen or waiting):
            out.append(gw)
            continue
        controller = gw.status.tunnel_names
        who = me
        if claims is not None and len(controller) <= 1:
            held = {node: c for (pool, node), c in claims.items() if pool == gw.name}
            order = pool_claims.first(order, pool_claims.incumbent(
                order, seen, held, me, mine if me in order else None))
            if waiting:
                seen, who = {**seen, me: Verdict.DOWN}, ""
        chosen = choose(order, seen, who, max(1, len(controller)))
        # The whole active set: with active-active (raven.shards) losing one of two active
        # gateways keeps the other at the head, and that is a switch too.
        if chosen == controller:
            out.append(gw)
            continue
        by_name = {ep.node_name: ep for ep in cands}
        rest = [by_name[n].to_k8s() for n in order if n not in chosen]
        status = GatewayStatus(
            nodes=gw.status.nodes,
            # The chosen tunnel endpoints, and the other kinds (proxy) as they were.
            active_endpoints=(*(by_name[n] for n in chosen),
                              *(e for e in gw.status.active_endpoints if e.type != TUNNEL)),
            conditions=gw.status.conditions, node_count=gw.status.node_count,
            extra=FrozenMap({**gw.status.extra.to_dict(), STANDBY_FIELD: rest}))
        out.append(replace(gw, status=status))
        switches.append(Switch(gw.name, controller, chosen,
                               tuple(n for n in order if seen.get(n) == Verdict.DOWN)))
    return out, switches


# --- what to probe ---------------------------------------------------------------------------

@dataclass(frozen=True, order=True)
class Target:
    pool: str
    node: str
    address: str  # the candidate's IPv4 VTEP: an address it owns, reached through `device`
    device: str  # raven0 (inside the pool) or raven-wg0 (remote pools)
    # True when the verdict decides nothing: the pool has a single candidate (nothing to switch
    # to) and it is not the far gateway of a punched direct path. Probed every
    # `ProbeSettings.slow_interval` for the status only. Not part of the identity: a pool that
    # gains a second candidate keeps the target's health and probes it at full rate at once.
    telemetry: bool = field(default=False, compare=False)
    # True when the candidate is not a gateway this node uses now (the Gateways given to
    # `probe_targets` are the effective ones): probed every `ProbeSettings.standby_interval`
    # while it is UP and answers (raven.healthprobe.prober), at full rate otherwise. Not part
    # of the identity either: becoming the gateway in use keeps its health.
    standby: bool = field(default=False, compare=False)


def _private_ips(gw: Gateway) -> dict[str, str]:
    return {n.node_name: n.private_ip for n in gw.status.nodes if n.private_ip}


def _dialable(ep: Endpoint) -> bool:
    if ep.under_nat or not ep.public_ip:
        return False
    try:
        ipaddress.ip_address(ep.public_ip)
    except ValueError:
        return False
    return True


def probe_targets(gateways: Iterable[Gateway], me: str, vtep: Any, vxlan_device: str,
                  wireguard_device: str, direct: Mapping[str, str] | None = None
                  ) -> tuple[Target, ...]:
    """Every candidate this node probes: the other candidates of its own pool over VXLAN and,
    when it is a candidate itself, the candidates of remote pools it peers with directly over
    WireGuard (pools reached through a relay are the relay's concern). `direct` ({remote
    pool: node}) adds the gateway of each undialable pool we reach over a punched direct path
    (raven.paths): its verdict tells the path manager when the path died, sooner than the
    path's own silence (`PathSettings.dead_after`). A target whose verdict decides neither
    (`Target.telemetry`) is probed at the slow rate; a candidate that is not among its pool's
    active endpoints in `gateways` (pass the effective ones) is a `Target.standby`. `vtep`
    maps an underlay IPv4 address to its VTEP address (raven.topology.vtep_for); IPv6
    underlays are not probed."""
    gws = list(gateways)
    mine = next((g for g in gws if me in {n.node_name for n in g.status.nodes}), None)
    if mine is None:
        return ()
    out: set[Target] = set()
    my_cands = candidates(mine)
    ips = _private_ips(mine)
    for ep in my_cands:
        if ep.node_name != me and _v4(ips.get(ep.node_name)):
            out.add(Target(mine.name, ep.node_name, vtep(ips[ep.node_name]), vxlan_device,
                           telemetry=len(my_cands) < 2,
                           standby=len(my_cands) >= 2
                           and ep.node_name not in mine.status.tunnel_names))
    me_ep = next((ep for ep in my_cands if ep.node_name == me), None)
    if me_ep is None:
        return tuple(sorted(out))
    for gw in gws:
        if gw.name == mine.name:
            continue
        ips = _private_ips(gw)
        cands = candidates(gw)
        for ep in cands:
            if not valid_key(ep.public_key) or not _v4(ips.get(ep.node_name)):
                continue  # no peer can be built to it: probing it would only fail
            punched = (direct or {}).get(gw.name) == ep.node_name
            if _dialable(me_ep) or _dialable(ep) or punched:
                out.add(Target(gw.name, ep.node_name, vtep(ips[ep.node_name]),
                               wireguard_device, telemetry=len(cands) < 2 and not punched,
                               standby=len(cands) >= 2 and not punched
                               and ep.node_name not in gw.status.tunnel_names))
    return tuple(sorted(out))


def valid_key(key: str) -> bool:
    """A WireGuard key (base64 of 32 bytes): a malformed one (a hand-written status) gets no
    peer, so it is neither probed nor kept warm (the data plane reports the skipped peer)."""
    try:
        return len(base64.b64decode(key, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def _v4(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).version == 4
    except ValueError:
        return False
