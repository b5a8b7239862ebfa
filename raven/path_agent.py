"""The agent's path manager: NAT discovery on public gateways, direct paths on NAT'd ones.

A thread of the agent (raven.agent). Every tick it reads the WireGuard device (handshakes,
endpoints, counters: `Dataplane.wireguard_peers`, reads only) and:
- on the active gateway of a DIALABLE pool: publishes the mapped endpoints of its NAT'd peers
  on its own Node (raven.nat_discovery), when they change;
- on the active gateway of a NAT'd pool: steps the pure path machine (raven.paths) and, when
  the peers it asks for change (a probe starts, a path goes direct or falls back), has the
  agent re-plan and apply at once (`Agent.apply_paths`), outside the agent's coalescing;
- records each path in the agent's status document and metrics.
Rules kept: decisions are raven.paths' (pure); this module owns the clock and the polling;
API writes (the annotations) go through an outbox written by their own thread (the agent's
runner of a `raven.publisher` schedule: retries back off there, not here), so the path thread
never waits for the API server; every error is logged and retried, never fatal.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from raven import failover, paths, publisher
from raven.desired import Role
from raven.model import Gateway
from raven.schedule_runner import run_schedule

if TYPE_CHECKING:
    from raven.agent import Agent

log = logging.getLogger(__name__)

POLL = 0.2  # seconds between reads of the device while a path is probing or direct
IDLE_POLL = 0.5  # otherwise (public gateways: how soon a new mapping is published)
# A public gateway reads its device every POLL while a NAT'd peer it has configured has not
# been heard from yet, for at most this long after the peer appeared: the first mapping of
# a NAT'd gateway is on the way from `lab up` (or a join) to a direct path.
LEARN_FAST = 10.0
RTT_PERIOD = 10.0  # seconds between RTT measurements to the public gateways
RTT_ALPHA = 0.3  # smoothing of those measurements
ECHOES = 3  # ICMP echoes per measurement (loss is the smoothed share unanswered)
RTT_CHANGE = 0.25  # a published RTT is rewritten when it moved by this fraction (and 0.5 ms)
ADOPT_HANDSHAKE_S = 180  # a direct peer's session is renewed every 2 min while it works


class PathManager:
    def __init__(self, agent: Agent, settings: paths.PathSettings | None = None) -> None:
        self.agent = agent
        self.settings = settings or paths.PathSettings()
        self.paths: dict[str, paths.Path] = {}
        self.why_relayed: list[str] = []
        self.observed: dict[str, str] = {}  # what we last queued for publication (public gws)
        # {pool: (mode, via, RTT known)} last queued: a change of one of these is published
        self.published: dict[str, tuple[str, str, bool]] | None = None
        self.figures: dict[str, tuple[float | None, float]] = {}  # pool -> (RTT ms, loss 0..1)
        self.changes = 0  # path mode changes, for logs and status
        self.wake = threading.Event()
        self.rtts: dict[str, float] = {}  # public Gateway -> smoothed RTT ms
        self.rtts_published: dict[str, float] = {}
        self._outbox: dict[str, dict] = {}  # annotation kind -> value still to write
        self._outbox_lock = threading.Lock()
        self._publish_wake = threading.Event()
        self._measure_wake = threading.Event()  # a path changed: measure it now
        self._gateways_for: object = None
        self._gateways: list[Gateway] = []
        self._samples: dict[str, paths.Sample] = {}
        self._prepared: dict[str, tuple[str, ...]] = {}  # pool -> subnets to take at the switch
        # peer -> (since when it waits for a first handshake, renewals so far)
        self._waiting: dict[str, tuple[float, int]] = {}
        self._unheard: dict[str, float] = {}  # NAT'd peer not heard yet -> since when
        self._recorded: list[dict[str, Any]] | None = None  # the report last recorded
        self._changed_at: dict[str, float] = {}  # pool -> unix time its path entered its mode

    # -- inputs --------------------------------------------------------------------------------

    def _parsed(self) -> list[Gateway]:
        inputs = self.agent.inputs
        if inputs is not self._gateways_for:
            from raven.agent import parse_inputs

            self._gateways = parse_inputs(inputs, self.agent.settings.node)[0] if inputs else []
            self._gateways_for = inputs
        return self._gateways

    def adopt(self, gateways: list[Gateway], now: float, wall: float) -> dict[str, paths.PathPlan]:
        """At start, before the first apply: keep the direct paths the previous agent left
        working (a peer of another NAT'd gateway holding allowed IPs, with the direct
        keepalive and a recent handshake), so a restart does not send them back to the relay."""
        live = self.agent.dataplane.wireguard_peers()
        me = self.agent.settings.node
        mine = next((g.name for g in gateways if me in g.member_names), None)
        if not live or mine is None:
            return {}
        found, _ = paths.candidates(gateways, mine, me)
        for c in found:
            peer = live.get(c.public_key)
            if (peer is not None and peer.allowed_ips and peer.keepalive == paths.DIRECT_KEEPALIVE
                    and 0 < wall - peer.last_handshake < ADOPT_HANDSHAKE_S):
                self.paths[c.pool] = paths.Path(
                    c.pool, paths.Mode.DIRECT, c.public_key, c.endpoint, since=now,
                    since_wall=wall, rx_bytes=peer.rx_bytes, rx_changed=now,
                    reason=f"direct to {peer.endpoint} (kept from the previous agent)")
                self._changed_at[c.pool] = wall
                log.info("path to %s: direct path kept from the previous agent", c.pool)
        return paths.plans(self.paths)

    def _applied(self) -> Any:
        """The applied plan's part that holds the WireGuard device (`NodeState.devices`: in a
        tunnel namespace, that namespace's part; its role and pool are the node's)."""
        state = self.agent.state
        return state.devices() if state is not None else None

    # -- one tick ------------------------------------------------------------------------------

    def tick(self, now: float, wall: float) -> float:
        """One look at the device; returns the monotonic time of the next tick."""
        state = self._applied()
        if state is None or state.role != Role.ACTIVE_GATEWAY or state.wireguard is None:
            if self.paths:
                if self.agent.probes is not None:
                    self.agent.probes.set_direct({})
                self._set({}, now, wall)
            return now + IDLE_POLL
        gateways = self._parsed()
        mine = next((g for g in gateways if g.name == state.pool), None)
        me = paths.active_endpoint(mine) if mine is not None else None
        # From `commit` seconds before a scheduled move the path thread holds the agent's
        # reconcile lock across it: a reconcile already running ends first, none starts until
        # the move is applied, so the write happens at its instant, not after a reconcile, and
        # no reconcile planned with the old paths can give the subnets back to the relay.
        lead = self.settings.commit
        due = [p for p in self.paths.values()
               if p.switch_at is not None and p.switch_at - lead <= now]
        if due and self._samples:
            with self.agent.path_switch():
                return self._switch(due, state.pool or "", gateways, now, wall)
        live = self.agent.dataplane.wireguard_peers()
        samples = {k: paths.Sample(p.last_handshake, p.rx_bytes, p.endpoint, p.keepalive,
                                   p.tx_bytes) for k, p in live.items()}
        # Not the direct-path peers: a probe is answered when the far side's own probe
        # arrives through the hole ours opened (raven.paths), and it has its own timeout.
        punched = {p.public_key for p in self.paths.values()}
        self._waiting, renew = paths.renewals(
            self._waiting, {k: v for k, v in samples.items() if k not in punched}, now,
            self.settings)
        if renew:  # a lost first initiation: a fresh peer sends one now, not in 5 s
            renewed = self.agent.dataplane.renew_peers(renew)
            log.info("no handshake yet with %d peer(s): made afresh %s", len(renew),
                     ", ".join(renewed) or "(none)")
        if me is not None and not me.under_nat:
            unheard = self._publish_observed(state, live, now)
            return self._renew_deadline(now + (POLL if unheard else IDLE_POLL))
        self._samples = samples
        return self._step(gateways, state.pool or "", now, wall)

    def _switch(self, due: list[paths.Path], pool: str, gateways: list[Gateway], now: float,
                wall: float) -> float:
        """The scheduled moves, under the agent's reconcile lock (the caller holds it): each
        prepared write at its instant (the data plane waits for it), then the step that makes
        the paths direct and the reconcile that plans them so. Nothing reads the device in
        between: the samples that scheduled the move decide it."""
        for path in sorted(due, key=lambda p: p.switch_at or 0.0):
            cidrs = self._prepared.pop(path.pool, ())  # () still waits for the instant
            self.agent.dataplane.take_allowed_ips(path.public_key, cidrs, at=path.switch_at)
        last = max(p.switch_at or now for p in due)
        if last > now:  # we waited for the instant: step at it
            now, wall = last, wall + (last - now)
        return self._step(gateways, pool, now, wall)

    def _step(self, gateways: list[Gateway], pool: str, now: float, wall: float) -> float:
        found, self.why_relayed = paths.candidates(gateways, pool,
                                                     self.agent.settings.node)
        probes = self.agent.probes
        down = probes.direct_down() if probes is not None else set()
        new = paths.step(self.paths, found, self._samples, now, wall, self.settings, pool, down)
        for name in down:
            if name in self.paths and self.paths[name].mode == paths.Mode.DIRECT \
                    and new.get(name, self.paths[name]).mode != paths.Mode.DIRECT:
                log.warning("path to %s: its gateway stopped answering probes over the direct "
                            "path; back to the relay now", name)
        if probes is not None:  # probed from the apply below on, forgotten once not direct
            probes.set_direct(_direct_nodes(new, gateways), self.wake)
        self._set(new, now, wall)
        self._nudge(self._applied())  # the state the path change just applied
        return self._renew_deadline(paths.next_deadline(self.paths, now, POLL,
                                                        self.settings.commit))

    def _renew_deadline(self, deadline: float) -> float:
        """`deadline`, or sooner when a peer waiting for its first handshake is due."""
        s = self.settings
        return min([deadline, *(paths.renew_due(t, n, s) for t, n in self._waiting.values()
                                if n < s.renew_max)])

    def _nudge(self, state: Any) -> None:
        """Traffic of our own on every direct path, so the other side hears us (nudge.py)."""
        direct = {p.public_key for p in self.paths.values() if p.mode == paths.Mode.DIRECT}
        if not direct or state is None or state.vxlan is None or state.wireguard is None:
            return
        targets = []
        for peer in state.wireguard.peers:
            # A pod subnet (the peer also allows the far gateway's VTEP /32, the probe address)
            first = next((c for c in peer.allowed_ips
                          if "." in c and not c.endswith(("/32", "/31"))), None)
            if peer.public_key in direct and first is not None:
                targets.append(str(ipaddress.ip_network(first)[1]))
        self.agent.dataplane.nudge(state.vxlan.local_ip, targets)

    def _set(self, new: dict[str, paths.Path], now: float, wall: float) -> None:
        old = self.paths
        self.paths = new
        self._prepared = {k: v for k, v in self._prepared.items()
                          if k in new and new[k].switch_at is not None}
        for name, path in new.items():
            before = old.get(name)
            if path.switch_at is not None and (before is None or before.switch_at is None):
                log.info("path to %s: handshake seen; moving its subnets in %.3fs", name,
                         path.switch_at - now)
                self._prepare(new, name)
            if before is None or before.mode != path.mode:
                self._changed_at[name] = wall
                self.figures.pop(name, None)  # measured on the old path: measure the new one
                self._measure_wake.set()
                self.changes += 1
                log.info("path to %s: %s (%s)", name, path.mode, path.reason)
        for name in set(old) - set(new):
            log.info("path to %s: no longer a direct-path candidate", name)
            self._changed_at.pop(name, None)
        if paths.plans(new) != paths.plans(old):
            started = time.monotonic()
            self.agent.apply_paths(paths.plans(new))
            log.debug("paths applied %.3fs late, in %.3fs", started - now,
                      time.monotonic() - started)
        # Written when a path or its relay changes, with the figures of that moment; never
        # for a figure alone (counters move on every tick).
        compact = self._compact(self._applied())  # after the apply: its relays are current
        shape = {k: (str(v["path"]), str(v.get("via", "")), "rttMs" in v)
                 for k, v in compact.items()}
        if shape != self.published:
            self._queue("paths", compact)
            self.published = shape
        # The status file and metrics: rewritten when a path changes or has a new RTT/loss
        # measurement (every RTT_PERIOD at most), not on every tick (nothing in the report
        # moves with the clock or the counters).
        report = self.report(now, wall)
        if report != self._recorded:
            self.agent.record_paths(report)
            self._recorded = report

    def _compact(self, state: Any) -> dict[str, dict[str, Any]]:
        """{remote Gateway: {"path", "via"?, "rttMs"?, "loss"?, "handshake"?, "rxBytes"?,
        "txBytes"?}} for every NAT'd pool we know a path to (the annotation the controller
        copies into status.paths). RTT and loss: through the path, from `_measure_paths`;
        handshake and bytes: the direct peer's (a relay peer's counters are shared by every
        pair it relays, so none for relayed)."""
        via = {}
        if state is not None and state.wireguard is not None:
            via = {r: p.pool for p in state.wireguard.peers for r in p.relays_for}
        out: dict[str, dict[str, Any]] = {}
        for name, path in self.paths.items():
            if path.mode == paths.Mode.RELAYED:
                continue
            entry: dict[str, Any] = {"path": str(path.mode)}
            if path.mode == paths.Mode.PROBING and name in via:
                entry["via"] = via[name]  # its traffic is still relayed: say through whom
            rtt, loss = self.figures.get(name, (None, 0.0))
            if rtt is not None:
                entry.update(rttMs=round(rtt, 2), loss=round(loss, 3))
            sample = self._samples.get(path.public_key)
            if path.mode == paths.Mode.DIRECT and sample is not None:
                entry.update(handshake=int(sample.last_handshake), rxBytes=sample.rx_bytes,
                             txBytes=sample.tx_bytes)
            out[name] = entry
        relayed = [n for n, p in self.paths.items() if p.mode == paths.Mode.RELAYED]
        relayed += [why.split(":", 1)[0] for why in self.why_relayed]
        for name in relayed:
            entry = {"path": "relayed"}
            if name in via:
                entry["via"] = via[name]
            rtt, loss = self.figures.get(name, (None, 0.0))
            if rtt is not None:
                entry.update(rttMs=round(rtt, 2), loss=round(loss, 3))
            out[name] = entry
        return out

    def _prepare(self, new: dict[str, paths.Path], name: str) -> None:
        """The subnets path `name` will take when it goes direct, computed now."""
        path = new[name]
        try:
            ahead = paths.plans({**new, name: replace(path, mode=paths.Mode.DIRECT)})
            self._prepared[name] = self.agent.peer_subnets(ahead).get(path.public_key, ())
        except Exception as exc:  # the reconcile at the switch moves them anyway
            log.warning("path to %s: cannot prepare the take-over: %s", name, exc)

    def _publish_observed(self, state: Any, live: dict, now: float) -> bool:
        """Queue the mapped endpoints seen when they changed; True while a NAT'd peer that
        appeared less than LEARN_FAST ago has not been heard from (poll fast for it)."""
        assert state.wireguard is not None
        learned = {p.public_key for p in state.wireguard.peers if p.endpoint is None}
        observed = {k: p.endpoint for k, p in live.items() if k in learned and p.endpoint}
        if observed != self.observed:
            new = sorted(k for k, v in observed.items() if self.observed.get(k) != v)
            if new:
                log.info("learned the mapped endpoint of %d NAT'd peer(s): %s", len(new),
                         ", ".join(f"{k[:8]}... at {observed[k]}" for k in new))
            self._queue("observed", observed)
            self.observed = observed
        self._unheard = {k: self._unheard.get(k, now) for k in learned - set(observed)}
        return any(now - t < LEARN_FAST for t in self._unheard.values())

    # -- reporting -----------------------------------------------------------------------------

    def report(self, now: float, wall: float) -> list[dict[str, Any]]:
        """Each NAT'd remote pool's path, for the status document and `raven status`
        (`changedAt`: unix seconds when the path entered its mode)."""
        out = []
        for name, path in sorted(self.paths.items()):
            out.append({"pool": name, "mode": str(path.mode), "endpoint": path.endpoint,
                        "changedAt": round(self._changed_at.get(name, wall - (now - path.since))),
                        "failures": path.failures,
                        "reason": path.reason})
        out += [{"pool": why.split(":", 1)[0], "mode": "relayed", "reason": why.split(": ", 1)[1]}
                for why in self.why_relayed]
        figures = self._compact(self._applied())
        for entry in out:  # the RTT and loss the status annotation would carry now
            entry.update({k: v for k, v in figures.get(entry["pool"], {}).items()
                          if k in ("rttMs", "loss", "via")})
        return out

    # -- relay RTTs (NAT'd gateways) -------------------------------------------------------------

    def measure_relays(self) -> None:
        """RTT to each public pool's gateway (ICMP), smoothed; published on our Node when it
        changed enough to matter (raven.relay_choice decides the relay from it)."""
        state = self._applied()
        if state is None or state.role != Role.ACTIVE_GATEWAY:
            return
        gateways = self._parsed()
        mine = next((g for g in gateways if g.name == state.pool), None)
        me = paths.active_endpoint(mine) if mine is not None else None
        if me is None or not me.under_nat:
            return
        targets = {}
        for gw in gateways:
            ep = paths.active_endpoint(gw)
            if ep is not None and not ep.under_nat and ep.public_key and "." in ep.public_ip:
                targets[gw.name] = ep.public_ip
        for name, address in targets.items():
            rtt = self.agent.dataplane.rtt_ms(address)
            if rtt is not None:
                old = self.rtts.get(name)
                self.rtts[name] = rtt if old is None else old + RTT_ALPHA * (rtt - old)
        self.rtts = {k: v for k, v in self.rtts.items() if k in targets}
        self._measure_paths(gateways, state.pool or "")
        if _worth_publishing(self.rtts, self.rtts_published):
            rounded = {k: round(v, 2) for k, v in self.rtts.items()}
            self._queue("rtt", rounded)
            self.rtts_published = dict(self.rtts)

    def _measure_paths(self, gateways: list[Gateway], pool: str) -> None:
        """RTT and loss of the overlay path to each NAT'd pool we have a path to, whatever it
        is (direct, or through the relay): ICMP echoes from our gateway's address in its own
        pod subnet (the subnet's first address, the CNI bridge's or the lab's) to the same
        address of the far pool's gateway, so they cross the tunnel the pods' traffic takes.
        No figure where either address does not answer."""
        me = _first_host(self._my_subnets())
        targets = {}
        for gw in gateways:
            ep = paths.active_endpoint(gw)
            if gw.name == pool or ep is None or not ep.under_nat:
                continue
            node = next((n for n in gw.status.nodes if n.node_name == ep.node_name), None)
            target = _first_host(node.subnets if node is not None else ())
            if target is not None:
                targets[gw.name] = target
        for name, target in targets.items() if me is not None else ():
            rtt, answered = self.agent.dataplane.echo(target, ECHOES, source=me)
            old_rtt, old_loss = self.figures.get(name, (None, None))
            if rtt is None and old_rtt is None:
                continue  # never answered: no address there to measure with
            loss = 1.0 - answered / ECHOES
            if rtt is not None and old_rtt is not None:
                rtt = old_rtt + RTT_ALPHA * (rtt - old_rtt)
            self.figures[name] = (rtt if rtt is not None else old_rtt,
                                  loss if old_loss is None
                                  else old_loss + RTT_ALPHA * (loss - old_loss))
        self.figures = {k: v for k, v in self.figures.items() if k in targets}

    def _my_subnets(self) -> tuple[str, ...]:
        inputs = self.agent.inputs
        if inputs is None:
            return ()
        from raven.agent import parse_inputs

        me = parse_inputs(inputs, self.agent.settings.node)[1]
        return me.pod_cidrs if not isinstance(me, str) else ()

    def measure_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.measure_relays()
            except Exception:  # the relay choice keeps what it has
                log.exception("relay RTT measurement failed")
            self._measure_wake.wait(RTT_PERIOD)
            self._measure_wake.clear()

    # -- API writes, off the path thread ----------------------------------------------------------

    def _queue(self, kind: str, value: dict) -> None:
        """An annotation to write; the newest value of each kind wins. The path thread never
        waits for the API (a slow or absent API server must not delay a switch or a
        fallback)."""
        with self._outbox_lock:
            self._outbox[kind] = value
        self._publish_wake.set()

    def flush_outbox(self) -> bool:
        """Write what is queued; True when nothing is left (failures stay queued)."""
        write = {"observed": self.agent.publish_observed, "paths": self.agent.publish_paths,
                 "rtt": self.agent.publish_relay_rtts}
        with self._outbox_lock:
            pending = dict(self._outbox)
        for kind, value in pending.items():
            if write[kind](value):
                with self._outbox_lock:
                    if self._outbox.get(kind) is value:
                        del self._outbox[kind]
        with self._outbox_lock:
            return not self._outbox

    def publish_loop(self, stop: threading.Event) -> None:
        """Flush the outbox when something is queued; a failed flush is retried on the
        agent's backoff (raven.publisher: the one schedule of periodic writes; a newer value
        queued meanwhile goes with the retry)."""
        run_schedule(stop, self._publish_wake,
                     publisher.Schedule(None, self.agent.settings.backoff),
                     self.flush_outbox)

    def run(self, stop: threading.Event) -> None:
        """Tick until `stop`; `wake` (set after every apply of new inputs, and on stop) ends a
        wait early, so a new mapped endpoint in Gateway status is probed at once."""
        threading.Thread(target=lambda: (stop.wait(), self.wake.set(),
                                         self._publish_wake.set(), self._measure_wake.set()),
                         name="paths-stop", daemon=True).start()
        threading.Thread(target=self.publish_loop, args=(stop,), name="paths-publish",
                         daemon=True).start()
        while not stop.is_set():
            try:
                deadline = self.tick(time.monotonic(), time.time())
            except Exception:  # never fatal: the relay keeps working; try again
                log.exception("path manager tick failed")
                deadline = time.monotonic() + IDLE_POLL
            self.wake.wait(max(0.0, deadline - time.monotonic()))
            self.wake.clear()


def _direct_nodes(current: dict[str, paths.Path], gateways: list[Gateway]) -> dict[str, str]:
    """{remote pool: node} of every direct path: the candidate of that pool holding the
    path's key (the data-path prober probes it over the path)."""
    out = {}
    for name, path in current.items():
        gw = next((g for g in gateways if g.name == name), None)
        if path.mode != paths.Mode.DIRECT or gw is None:
            continue
        node = next((ep.node_name for ep in failover.candidates(gw)
                     if ep.public_key == path.public_key), None)
        if node is not None:
            out[name] = node
    return out


def _first_host(subnets: tuple[str, ...]) -> str | None:
    """The first address of the first IPv4 subnet (e.g. 10.244.20.1 of 10.244.20.0/24)."""
    for cidr in subnets:
        net = ipaddress.ip_network(cidr, strict=False)
        if net.version == 4 and net.num_addresses > 2:
            return str(net[1])
    return None


def _worth_publishing(now: dict[str, float], published: dict[str, float]) -> bool:
    """A new set of public pools, or an RTT that moved by RTT_CHANGE and 0.5 ms."""
    if set(now) != set(published):
        return True
    return any(abs(v - published[k]) > max(0.5, RTT_CHANGE * published[k]) for k, v in now.items())
