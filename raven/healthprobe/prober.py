"""The prober: the probe loop on one thread of the agent, inside the node's namespace (the echo
responder is a process of its own, raven.healthprobe.responder, so it outlives agent restarts).

Rules kept:
- a probe leaves through the device the traffic takes (SO_BINDTODEVICE raven0 or raven-wg0)
  from this node's VTEP address, to the target's VTEP address: it is encapsulated in VXLAN or
  WireGuard exactly as pod traffic is, so a gateway whose tunnel traffic is dropped stops
  answering even while its agent heartbeats. With the socket bound to a device and no route
  for the destination on it, Linux sends on-link (no route is needed for the probe addresses);
- replies are read before timeouts are judged: a late turn of this thread drains what arrived
  while it slept instead of counting it lost;
- all decisions (health, hysteresis) are `raven.failover`'s pure functions; `on_change` is called
  (on this thread) when a target becomes or stops being DOWN, when it is heard from for the
  first time (a reply or a DOWN verdict), or when the claim it advertises in its replies
  (raven.pool_claims) names another gateway or controller choice;
- sockets are re-opened when their device goes or comes back; a missing device is not an error
  (its probes are lost; a target that never answered stays UNKNOWN);
- each target is probed at the rate its verdict needs (`Target.telemetry`: every
  `ProbeSettings.slow_interval`) and judged with the matching settings (`failover.judged_by`);
  a healthy standby (`Target.standby`, UP, no probe lost since its last reply) every
  `ProbeSettings.standby_interval`, judged as any full-rate target: its first lost probe
  brings it back to the full rate at once, so it is DOWN after the same `down_after` losses.
  A target whose rate rises (it stops being telemetry-only or a standby, or loses a probe) is
  probed at once, not at its slow turn.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from raven import failover
from raven.errors import DataplaneError
from raven.failover import Health, ProbeSettings, Target, Verdict
from raven.healthprobe import wire
from raven.pool_claims import Claim, parse_advert

log = logging.getLogger(__name__)

REOPEN_AFTER = 1.0  # seconds between attempts to open a device's socket
# A probe asks for the target's claim (raven.pool_claims) only when the claim we hold from it
# is this old, or we hold none: a claim changes on a failover, not every 50 ms, and appended
# to every reply it was 30 of the 112 bytes each answer cost on the wire (WireGuard included)
# through a relay. The claim we hold is aged by the time since it was read, so its age stays
# exact; a new one reaches us at most this much later. Health (every probe) is unchanged.
ADVERT_EVERY = 0.25


@dataclass
class _Slot:
    health: Health = field(default_factory=Health)
    next_send: float = 0.0
    outstanding: dict[int, float] = field(default_factory=dict)  # seq -> sent at (monotonic)
    claim: tuple[str, str, float, float] | None = None  # gateway, head, age, read at (monotonic)
    judged: ProbeSettings | None = None  # failover.judged_by for the target's rate
    cadence: float | None = None  # seconds to the next probe when the last one was sent


class Prober:
    def __init__(self, settings: ProbeSettings, on_change: Callable[[], None],
                 netns: str | None = None) -> None:
        self.settings = settings
        self.on_change = on_change
        self.netns = netns
        self._home = netns
        self._lock = threading.Lock()
        self._slots: dict[Target, _Slot] = {}
        self._source: str | None = None
        self._by_seq: dict[int, Target] = {}
        self._seq = 0
        self._socks: dict[str, socket.socket] = {}
        self._sock_failed: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- the agent's side --------------------------------------------------------------------

    def set_targets(self, targets: Iterable[Target], source: str | None,
                    netns: str | None = None) -> None:
        """Probe these targets from `source` (our VTEP address) in namespace `netns` (where
        the devices are: a tunnel namespace's, or the one given at start when None); health
        of kept targets stays."""
        wanted = set(targets)
        netns = netns or self._home
        with self._lock:
            if source != self._source or netns != self.netns:
                self._source, self.netns = source, netns
                self._close_device_sockets()
            slots = {t: self._slots.get(t) or _Slot() for t in wanted}
            for t, slot in slots.items():
                slot.judged = failover.judged_by(self.settings, t.telemetry)
                if slot.cadence is not None and self._cadence(t, slot) < slot.cadence:
                    slot.next_send = 0.0  # its verdict decides now: probe without waiting
            self._slots = slots
            self._by_seq = {s: t for s, t in self._by_seq.items() if t in wanted}

    def verdicts(self) -> dict[tuple[str, str], Verdict]:
        with self._lock:
            return {(t.pool, t.node): s.health.verdict for t, s in self._slots.items()}

    def claims(self) -> dict[tuple[str, str], Claim]:
        """(pool, node) -> the claim the target advertised last, aged to now; only for targets
        not DOWN (a silent one's word is stale)."""
        now = time.monotonic()
        with self._lock:
            return {(t.pool, t.node): Claim(c[0], c[1], c[2] + now - c[3])
                    for t, s in self._slots.items()
                    if (c := s.claim) is not None and s.health.verdict != Verdict.DOWN}

    def heard(self) -> dict[tuple[str, str], bool]:
        """(pool, node) -> whether the target answered or was judged DOWN since it was added."""
        with self._lock:
            return {(t.pool, t.node): _heard(s.health, s.judged or self.settings)
                    for t, s in self._slots.items()}

    def report(self) -> list[dict[str, object]]:
        with self._lock:
            return [{"pool": t.pool, "node": t.node, "address": t.address, "device": t.device,
                     "verdict": str(s.health.verdict), "rttMs": s.health.rtt_ms,
                     "replies": s.health.replies, "lost": s.health.lost,
                     "telemetryOnly": t.telemetry, "standby": t.standby}
                    for t, s in sorted(self._slots.items())]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        with self._lock:
            self._close_device_sockets()

    # -- sockets -------------------------------------------------------------------------------

    def _in_netns(self, make: Callable[[], socket.socket]) -> socket.socket:
        if self.netns is None:
            return make()
        from raven.dataplane.netns import entered  # only labs/tests program another namespace

        with entered(self.netns):
            return make()

    def _device_socket(self, device: str, now: float) -> socket.socket | None:
        sock = self._socks.get(device)
        if sock is not None or self._source is None:
            return sock
        if now - self._sock_failed.get(device, -REOPEN_AFTER) < REOPEN_AFTER:
            return None
        source = self._source

        def make() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
                s.bind((source, 0))
                s.setblocking(False)
            except OSError:
                s.close()
                raise
            return s

        try:
            sock = self._in_netns(make)
        except (OSError, DataplaneError) as exc:  # device, address or namespace not there
            # yet (or gone): the next apply brings them, or retargets
            self._sock_failed[device] = now
            log.debug("probe socket on %s from %s: %s", device, source, exc)
            return None
        self._socks[device] = sock
        return sock

    def _close_device_sockets(self) -> None:
        for sock in self._socks.values():
            sock.close()
        self._socks.clear()
        self._sock_failed.clear()

    # -- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._turn()
            except Exception:  # never let one bad turn end the probes
                log.exception("prober turn failed")
                time.sleep(self.settings.interval)

    def _turn(self) -> None:
        s = self.settings
        now = time.monotonic()
        with self._lock:
            self._send_due(now)
            wake = min([now + 1.0] + [slot.next_send for slot in self._slots.values()]
                       + [sent + s.timeout for slot in self._slots.values()
                          for sent in slot.outstanding.values()])
            socks = list(self._socks.values())
        try:
            ready, _, _ = select.select(socks, [], [], max(0.0, wake - time.monotonic()))
        except (OSError, ValueError):  # a socket closed by set_targets meanwhile
            return
        changed = False
        with self._lock:
            now = time.monotonic()
            for sock in ready:
                changed |= self._read_replies(sock, now)
            changed |= self._expire(now)
        if changed:
            self.on_change()

    def _cadence(self, target: Target, slot: _Slot) -> float:
        """Seconds between this target's probes now (see the module's rules)."""
        interval = (slot.judged or self.settings).interval
        h = slot.health
        if target.standby and h.verdict == Verdict.UP and h.lost_run == 0:
            return max(interval, self.settings.standby_interval)
        return interval

    def _send_due(self, now: float) -> None:
        s = self.settings
        for target, slot in self._slots.items():
            if now < slot.next_send:
                continue
            # Keep the cadence even after a late turn, without a burst to catch up.
            cadence = slot.cadence = self._cadence(target, slot)
            slot.next_send = max(slot.next_send + cadence, now)
            sock = self._device_socket(target.device, now)
            self._seq += 1
            slot.outstanding[self._seq] = now
            self._by_seq[self._seq] = target
            if sock is None:
                continue
            # A target probed more slowly than the full rate asks earlier by the difference
            # (a standby: every probe), so no claim we hold gets much older than ADVERT_EVERY.
            flags = (wire.ADVERTISE if slot.claim is None or now - slot.claim[3]
                     >= ADVERT_EVERY - (cadence - s.interval) else 0)
            try:
                sock.sendto(wire.encode(wire.REQUEST, self._seq, flags),
                            (target.address, s.port))
            except OSError as exc:
                if exc.errno in (errno.ENODEV, errno.ENXIO, errno.EADDRNOTAVAIL):
                    sock.close()  # the device went: reopen on the new one later
                    self._socks.pop(target.device, None)
                    self._sock_failed[target.device] = now

    def _read_replies(self, sock: socket.socket, now: float) -> bool:
        changed = False
        while True:
            try:
                data, (address, _port) = sock.recvfrom(wire.SIZE + wire.MAX_ADVERT + 1)
            except (BlockingIOError, InterruptedError):
                return changed
            except OSError:
                return changed
            msg = wire.decode(data)
            if msg is None or msg[0] != wire.REPLY:
                continue
            target = self._by_seq.pop(msg[1], None)
            slot = self._slots.get(target) if target is not None else None
            if slot is None or target is None or target.address != address:
                continue
            sent = slot.outstanding.pop(msg[1], None)
            if sent is None:
                continue
            judged = slot.judged or self.settings
            before, heard = slot.health.verdict, _heard(slot.health, judged)
            slot.health = failover.replied(slot.health, now - sent, judged)
            changed |= _matters(before, slot.health.verdict) or not heard
            advert = parse_advert(wire.advert(data))
            if advert is not None:
                changed |= slot.claim is None or slot.claim[:2] != advert[:2]
                slot.claim = (*advert, now)

    def _expire(self, now: float) -> bool:
        changed = False
        for target, slot in self._slots.items():
            judged = slot.judged or self.settings
            expired = sorted(seq for seq, sent in slot.outstanding.items()
                             if now - sent >= judged.timeout)
            for seq in expired:
                del slot.outstanding[seq]
                self._by_seq.pop(seq, None)
                before, heard = slot.health.verdict, _heard(slot.health, judged)
                slot.health = failover.lost(slot.health, judged)
                changed |= _matters(before, slot.health.verdict) or (
                    heard != _heard(slot.health, judged))
                if slot.cadence is not None and self._cadence(target, slot) < slot.cadence:
                    slot.next_send = min(slot.next_send, now)  # a standby lost one: full rate
        return changed

def _heard(h: Health, s: ProbeSettings) -> bool:
    """A reply came, or enough probes were lost in a row to call a known target DOWN."""
    return h.replies > 0 or h.lost_run >= s.down_after


def _matters(before: Verdict, after: Verdict) -> bool:
    """Only becoming or ceasing to be DOWN can change a decision (UNKNOWN and UP both count as
    alive)."""
    return (before == Verdict.DOWN) != (after == Verdict.DOWN)
