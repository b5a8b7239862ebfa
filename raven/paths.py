"""PURE. Direct paths between NAT'd pools: which remote pools to punch to, and when to switch.

Two pools whose gateways are both under NAT start relayed through a public gateway (the
planner's relay). This module decides, for the active gateway of one NAT'd pool, per remote
NAT'd pool:

  RELAYED --(candidate, retry time reached)--> PROBING --(handshake seen)--> DIRECT
     ^                                            |                             |
     +----------- timeout: backoff <--------------+---- silent > dead_after ----+

- a candidate is a remote pool whose active endpoint is under NAT, has a public key and a
  `mapped-endpoint` observed by public gateways (raven.nat_discovery), unless BOTH NATs are known
  to map per destination (`nat-mapping: dependent`): no port to aim at on either side;
- PROBING: the planner adds a WireGuard peer for the remote gateway with the mapped endpoint,
  a 1 s keepalive and NO allowed IPs. Both gateways do the same from what both read in Gateway
  status, so each sends to the other's mapping: whichever packet leaves second finds the hole
  the first one opened in its own NAT (simultaneous open). Traffic stays on the relay;
- DIRECT once the probe peer completed a handshake after the probe started: the remote subnets
  move from the relay peer to the direct peer in one WireGuard write (make-before-break: the
  direct session exists before any packet needs it). Both sides schedule the move at the
  handshake time + `settle`, so they move at nearly the same instant (a packet crossing
  between a moved and an unmoved side is dropped by WireGuard's allowed-IPs check);
- a DIRECT path whose peer received nothing for `dead_after` (the 1 s keepalive keeps an idle
  path talking), or whose gateway the data-path probes over the path see DOWN (0.4 s of
  silence, raven.failover; `step(down=...)`), falls back: the peer is removed, the subnets
  return to the relay in the same write, and the other side, no longer hearing keepalives,
  falls back too;
- a pair with one side known to map per destination (`dependent`) and the other known not to
  (`independent`) can go direct only when the independent side's NAT lets in packets from
  ports it never sent to (full cone); the symmetric side's probe arrives from a port nobody
  could aim at. Such a pair that failed `PathSettings.never_after` probes in a row is
  explained (the independent side filters by port: port-restricted cone) and is not probed
  again until a mapping of the pair changes (a new mapped endpoint, another mapping kind):
  relayed, with that reason;
- `Path.endpoint` is where the path goes now, never a port from an earlier mapping: the live
  peer's endpoint once direct (a symmetric far side's direct peer talks from another port
  than the one public gateways see), else the mapped endpoint public gateways see now;
  `Path.aimed` is the mapping the last probe aimed at;
- a failed probe or a fallback retries after an exponential backoff, in wall-clock slots both
  sides of the pair compute alike (`retry_slot`): a side that backs off longer still probes
  in a slot the other side also probes in; a NEW mapped endpoint (e.g. after the NAT rebound)
  retries at once;
- time: `now` is monotonic seconds, `wall` unix seconds (WireGuard reports handshakes in wall
  time); both are arguments.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from raven.model import TUNNEL, Endpoint, Gateway
from raven.nat_discovery import (
    CONFIG_MAPPED_ENDPOINT,
    CONFIG_NAT_MAPPING,
    DEPENDENT,
    INDEPENDENT,
    UNKNOWN,
    valid_endpoint,
)

DIRECT_KEEPALIVE = 1  # seconds: keeps the holes open and gives liveness to the direct peer


class Mode(StrEnum):
    RELAYED = "relayed"
    PROBING = "probing"
    DIRECT = "direct"


@dataclass(frozen=True)
class PathSettings:
    probe_timeout: float = 12.0  # > two WireGuard handshake retries (5 s each)
    settle: float = 1.0  # seconds after the handshake both sides move the subnets
    # Seconds before the move from which its instant is fixed: the runner then holds the
    # agent's reconcile lock until the move is applied (raven.path_agent). Before that, a
    # newer handshake (both sides initiated) moves the instant, so both sides aim at the last.
    commit: float = 0.5
    dead_after: float = 1.5  # a direct peer silent this long has lost its path
    backoff_min: float = 2.0
    # A peer we send to (endpoint, keepalive) that has never completed a handshake is made
    # afresh after this long, then after twice as long, ... (`renew_due`): WireGuard retries a
    # lost first initiation only after 5 s (REKEY_TIMEOUT), e.g. when it reached a gateway
    # not configured for us yet, and that retry dominated the time from `lab up` to direct
    # (the public gateways learn a mapped endpoint from the handshake). A fresh peer
    # initiates at once. At `lab up` the loss is a race between two applies made from the
    # same Gateway status write (ours and the public gateway's), over in milliseconds, so
    # the first renewal comes early; the doubling leaves a slow handshake (a loaded machine)
    # time to complete, since a renewal drops the answer to the initiation before it.
    # Renewals at 0.4, 1.2 and 2.8 s, then WireGuard's own retries.
    renew_after: float = 0.4
    renew_max: int = 3
    backoff_max: float = 60.0
    # Failed probes in a row after which a pair with one side mapping per destination and the
    # other not is explained by port filtering and no longer probed (more than one: a single
    # probe can also fail because the far agent was restarting).
    never_after: int = 2

    def backoff(self, failures: int) -> float:
        return min(self.backoff_max, self.backoff_min * 2 ** max(0, failures - 1))


@dataclass(frozen=True)
class Candidate:
    """A remote NAT'd pool we may open a direct path to."""

    pool: str
    public_key: str
    endpoint: str  # its mapped endpoint, as public gateways saw it
    nat_mapping: str = UNKNOWN  # of the remote NAT
    local_mapping: str = UNKNOWN  # of our own NAT


@dataclass(frozen=True)
class Sample:
    """What WireGuard reports about one peer."""

    last_handshake: float = 0.0  # unix seconds, 0 = never
    rx_bytes: int = 0
    endpoint: str | None = None
    keepalive: int = 0
    tx_bytes: int = 0


@dataclass(frozen=True)
class Path:
    pool: str
    mode: Mode = Mode.RELAYED
    public_key: str = ""
    # Where the path goes now: the direct peer's live endpoint, else the mapped endpoint public
    # gateways see now (never a port of an earlier mapping: `raven status` shows it).
    endpoint: str = ""
    since: float = 0.0  # monotonic: when this mode began
    since_wall: float = 0.0  # unix: when this mode began (to compare with handshakes)
    failures: int = 0
    next_try: float = 0.0  # monotonic: earliest next probe
    switch_at: float | None = None  # monotonic: when a probing path moves the subnets
    handshake: float = 0.0  # unix: the handshake `switch_at` was scheduled from
    rx_bytes: int = 0
    rx_changed: float = 0.0  # monotonic: last time rx_bytes grew
    reason: str = ""
    aimed: str = ""  # the mapped endpoint the last probe aimed at
    kinds: tuple[str, str] = ("", "")  # (our, its) NAT mapping when the last probe started


@dataclass(frozen=True)
class PathPlan:
    """What the planner needs: a peer for the remote pool's gateway, direct or not yet."""

    pool: str
    public_key: str
    endpoint: str | None  # None once direct: WireGuard follows the peer (roaming)
    direct: bool  # the remote pool's subnets are routed to this peer


def candidates(gateways: Iterable[Gateway], my_pool: str, me: str = ""
               ) -> tuple[list[Candidate], list[str]]:
    """Remote NAT'd pools to try, and a reason for every NAT'd pool that is not one. `me`
    (our node): only our pool's first active endpoint probes, the one the remote side probes
    and gives its direct peer; another active gateway of an active-active pool (raven.shards)
    keeps its share on the relay."""
    gateways = list(gateways)
    mine = next((g for g in gateways if g.name == my_pool), None)
    my_ep = active_endpoint(mine) if mine is not None else None
    if my_ep is None or not my_ep.under_nat:
        return [], []
    if me and my_ep.node_name != me:
        return [], [f"{gw.name}: active-active pool {my_pool}: only its first active "
                    f"gateway {my_ep.node_name} takes a direct path, {me}'s share stays on the "
                    "relay" for gw in sorted(gateways, key=lambda g: g.name)
                    if gw.name != my_pool and (ep := active_endpoint(gw)) is not None
                    and ep.under_nat]
    my_mapping = str(my_ep.config.get(CONFIG_NAT_MAPPING, UNKNOWN))
    out: list[Candidate] = []
    why: list[str] = []
    for gw in sorted(gateways, key=lambda g: g.name):
        ep = active_endpoint(gw)
        if gw.name == my_pool or ep is None or not ep.under_nat:
            continue
        endpoint = valid_endpoint(ep.config.get(CONFIG_MAPPED_ENDPOINT))
        mapping = str(ep.config.get(CONFIG_NAT_MAPPING, UNKNOWN))
        if not ep.public_key:
            why.append(f"{gw.name}: its gateway has no public key yet")
        elif endpoint is None:
            why.append(f"{gw.name}: no public gateway has seen its mapped address yet")
        elif mapping == DEPENDENT and my_mapping == DEPENDENT:
            why.append(f"{gw.name}: both NATs map a new port per destination (symmetric); "
                       "neither side knows where to send")
        else:
            out.append(Candidate(gw.name, ep.public_key, endpoint, mapping, my_mapping))
    return out, why


def active_endpoint(gw: Gateway) -> Endpoint | None:
    """The first tunnel endpoint of the Gateway's status (the planner's active gateway)."""
    tunnels = [e for e in gw.status.active_endpoints if e.type == TUNNEL and e.node_name]
    return tunnels[0] if tunnels else None


def step(paths: Mapping[str, Path], found: Iterable[Candidate], samples: Mapping[str, Sample],
         now: float, wall: float, s: PathSettings = PathSettings(), me: str = "",
         down: Collection[str] = ()) -> dict[str, Path]:
    """The next state of every path. `samples` is keyed by public key; `me` is our pool (it
    places the pair's retry slots, which both sides compute alike); `down`: remote pools
    whose gateway our data-path probes over the direct path see DOWN (raven.failover): a
    direct path to it falls back at once, without waiting for `dead_after` of silence."""
    out: dict[str, Path] = {}
    for c in found:
        path = paths.get(c.pool) or Path(c.pool, public_key=c.public_key, next_try=now)
        if path.public_key != c.public_key:  # another gateway became active there: start over
            path = Path(c.pool, public_key=c.public_key, next_try=now)
        offset = pair_offset(me, c.pool, s)
        if path.mode == Mode.DIRECT and c.pool in down:
            out[c.pool] = _relayed(path, now, wall, s, "data-path probes over the direct path "
                                   "unanswered (its gateway is down or the path broke)", offset)
            continue
        out[c.pool] = _advance(path, c, samples.get(c.public_key), now, wall, s, offset)
    return out


def pair_offset(a: str, b: str, s: PathSettings) -> float:
    """Seconds in [0, backoff_min) that place one pair's retry slots: the same on both sides
    (the names are sorted), different between pairs (their probes do not all start at once)."""
    key = "|".join(sorted((a, b))).encode()
    return (zlib.crc32(key) % 1000) / 1000 * s.backoff_min


def retry_slot(wall: float, period: float, offset: float) -> float:
    """The next wall-clock instant `offset + k * period` after `wall`. Both sides of a pair
    retry in these slots, so their probes overlap even when their backoffs differ: with
    periods that double, every slot of the longer period is also one of the shorter."""
    return (math.floor((wall - offset) / period) + 1) * period + offset


def _relayed(path: Path, now: float, wall: float, s: PathSettings, reason: str,
             offset: float) -> Path:
    failures = path.failures + 1
    slot = retry_slot(wall, s.backoff(failures), offset)
    return replace(path, mode=Mode.RELAYED, since=now, switch_at=None, failures=failures,
                   next_try=now + (slot - wall), reason=reason)


def _kinds(c: Candidate) -> tuple[str, str]:
    return c.local_mapping, c.nat_mapping


def filtered_pair(c: Candidate) -> bool:
    """One side maps per destination, the other is known not to: the pair goes direct only
    if the independent side's NAT lets in ports it never sent to (full cone)."""
    return {c.local_mapping, c.nat_mapping} == {DEPENDENT, INDEPENDENT}


def _never_reason(c: Candidate) -> str:
    if c.nat_mapping == DEPENDENT:
        both = "its NAT maps a new port per destination (symmetric) and ours filters"
    else:
        both = "our NAT maps a new port per destination (symmetric) and its NAT filters"
    return (f"{both} by source port (port-restricted cone): no probe was answered; tried "
            "again when a mapping of the pair changes")


def _direct_reason(live: str, c: Candidate) -> str:
    if live and live != c.endpoint:  # the far NAT gave us another port than the gateways
        return (f"direct to {live} (its NAT maps per destination: public gateways see "
                f"{c.endpoint})")
    return f"direct to {live or c.endpoint}"


def _advance(path: Path, c: Candidate, sample: Sample | None, now: float, wall: float,
             s: PathSettings, offset: float) -> Path:
    if not path.aimed and path.mode == Mode.DIRECT and path.endpoint:
        path = replace(path, aimed=path.endpoint)  # adopted from the previous agent
    if path.mode == Mode.RELAYED:
        never = math.isinf(path.next_try)
        if path.aimed and (c.endpoint != path.aimed or (never and path.kinds != _kinds(c))):
            # the NAT rebound or a mapping kind changed: try now (and count afresh)
            path = replace(path, next_try=min(path.next_try, now),
                           failures=0 if never else path.failures)
        if path.endpoint != c.endpoint:
            path = replace(path, endpoint=c.endpoint)  # what the public gateways see now
        if now < path.next_try:
            return path
        return replace(path, mode=Mode.PROBING, endpoint=c.endpoint, aimed=c.endpoint,
                       kinds=_kinds(c), since=now, since_wall=wall, switch_at=None,
                       reason=f"probing {c.endpoint}")
    handshake = sample.last_handshake if sample is not None else 0.0
    rx = sample.rx_bytes if sample is not None else 0
    live = (sample.endpoint if sample is not None else None) or ""
    if path.mode == Mode.PROBING:
        if handshake > path.since_wall:
            if path.switch_at is None or (handshake > path.handshake
                                          and now < path.switch_at - s.commit):
                path = replace(path, switch_at=now + max(0.0, handshake + s.settle - wall),
                               handshake=handshake)
            if now >= path.switch_at:
                return replace(path, mode=Mode.DIRECT, since=now, failures=0, rx_bytes=rx,
                               rx_changed=now, switch_at=None, endpoint=live or c.endpoint,
                               reason=_direct_reason(live, c))
            return path
        if now - path.since >= s.probe_timeout:
            failed = _relayed(path, now, wall, s, f"no handshake from {c.endpoint} within "
                              f"{s.probe_timeout:g}s (NAT filtering?)", offset)
            if filtered_pair(c) and failed.failures >= s.never_after:
                return replace(failed, next_try=math.inf, reason=_never_reason(c))
            return failed
        return path
    # DIRECT
    if live and live != path.endpoint:  # the peer roamed: show where it is now
        path = replace(path, endpoint=live, reason=_direct_reason(live, c))
    if rx != path.rx_bytes:
        return replace(path, rx_bytes=rx, rx_changed=now)
    if now - path.rx_changed >= s.dead_after:
        return _relayed(path, now, wall, s,
                        f"direct path silent for {now - path.rx_changed:.1f}s", offset)
    return path


def renewals(waiting: Mapping[str, tuple[float, int]], samples: Mapping[str, Sample],
             now: float, s: PathSettings = PathSettings()
             ) -> tuple[dict[str, tuple[float, int]], list[str]]:
    """Peers to make afresh now, and the new `waiting` ({public key: (monotonic time since
    which it waits for its first handshake, renewals so far)}). Only peers that initiate on
    their own (an endpoint and a keepalive) and never completed a handshake wait. A peer is
    renewed `renew_after` after it appeared or was last renewed, at most `renew_max` times:
    a far end that is down is left to WireGuard's own retries (every 5 s). The wait doubles
    with each renewal (`renew_due`)."""
    out: dict[str, tuple[float, int]] = {}
    renew: list[str] = []
    for key, sample in samples.items():
        if sample.last_handshake or not sample.endpoint or not sample.keepalive:
            continue
        since, count = waiting.get(key, (now, 0))
        if count < s.renew_max and now >= renew_due(since, count, s):
            renew.append(key)
            since, count = now, count + 1
        out[key] = (since, count)
    return out, sorted(renew)


def renew_due(since: float, count: int, s: PathSettings = PathSettings()) -> float:
    """When a peer waiting since `since`, renewed `count` times so far, is renewed next."""
    return since + s.renew_after * 2 ** count


def plans(paths: Mapping[str, Path]) -> dict[str, PathPlan]:
    """The peers the planner adds for the paths (relayed paths need none)."""
    out: dict[str, PathPlan] = {}
    for name, path in paths.items():
        if path.mode == Mode.PROBING:
            out[name] = PathPlan(name, path.public_key, path.aimed or path.endpoint,
                                 direct=False)
        elif path.mode == Mode.DIRECT:
            out[name] = PathPlan(name, path.public_key, None, direct=True)
    return out


def next_deadline(paths: Mapping[str, Path], now: float, poll: float, lead: float = 0.0
                  ) -> float:
    """When to step again: `lead` seconds before a scheduled switch (the runner then waits for
    its exact instant, when both sides move), soon while something is probing or direct, else
    at the next try."""
    switches = [p.switch_at - lead for p in paths.values() if p.switch_at is not None]
    if any(p.mode != Mode.RELAYED for p in paths.values()):
        return min([now + poll, *switches])
    tries = [p.next_try for p in paths.values()]
    return min([*tries, now + 1.0])
