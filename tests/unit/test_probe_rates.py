"""Probes at the rate their verdict needs (issue 12): a telemetry-only target is probed every
`ProbeSettings.slow_interval` and judged on its own probes; a healthy standby every
`ProbeSettings.standby_interval`, at full rate from its first lost probe. Oracle for the rates:
the requests as they arrive on UDP sockets of the test's own on loopback, which answer as the
responder does.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import replace

from raven import failover
from raven.failover import Health, ProbeSettings, Target, Verdict
from raven.healthprobe import prober as prober_mod
from raven.healthprobe import wire

S = ProbeSettings()


def test_a_slow_target_is_judged_on_its_own_probes() -> None:
    slow = failover.judged_by(S, telemetry=True)
    assert failover.judged_by(S, telemetry=False) == S
    assert slow.interval == S.slow_interval and slow.timeout == S.timeout
    # DOWN needs as many of ITS probes lost as a fast target does: a longer silence, never
    # a shorter one, and never a single lost probe.
    assert slow.down_after == S.down_after
    assert slow.down_after * slow.interval >= S.down_after * S.interval
    # The never-answered silence is a duration: the same 30 s, not 600 slow probes (10 min).
    assert slow.unknown_down_after * slow.interval == S.unknown_down_after * S.interval
    h = Health()
    for _ in range(slow.unknown_down_after - 1):
        h = failover.lost(h, slow)
    assert h.verdict == Verdict.UNKNOWN
    assert failover.lost(h, slow).verdict == Verdict.DOWN
    # Probes off, or a slow rate that is not slower: nothing changes.
    assert failover.judged_by(ProbeSettings(interval=0), True) == ProbeSettings(interval=0)
    same = ProbeSettings(slow_interval=S.interval)
    assert failover.judged_by(same, True) == same


class Responder:
    """Answers probes on (address, port) and notes when each request arrived."""

    def __init__(self, address: str, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, port))
        self.sock.settimeout(0.05)
        self.seen: list[float] = []
        self.mute = False  # True: requests are noted but not answered (a dead target)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                data, peer = self.sock.recvfrom(64)
            except TimeoutError:
                continue
            if len(data) == wire.SIZE and data[4] == wire.REQUEST:
                self.seen.append(time.monotonic())
                if self.mute:
                    continue
                self.sock.sendto(bytes([*data[:4], wire.REPLY, *data[5:]]), peer)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_telemetry_targets_are_probed_at_the_slow_rate_and_at_once_when_they_decide() -> None:
    port = free_port()
    fast_r, slow_r = Responder("127.0.0.2", port), Responder("127.0.0.3", port)
    settings = ProbeSettings(interval=0.02, slow_interval=0.2, port=port)
    prober = prober_mod.Prober(settings, lambda: None)
    fast = Target("two", "a", "127.0.0.2", "lo")
    slow = Target("one", "b", "127.0.0.3", "lo", telemetry=True)
    prober.set_targets([fast, slow], "127.0.0.1")
    prober.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(slow_r.seen) < 10:
            time.sleep(0.05)
        verdicts = prober.verdicts()
        fast_n, slow_n = len(fast_r.seen), len(slow_r.seen)
        # The pool gains a second candidate: its verdict decides now, probed at full rate.
        switched = time.monotonic()
        prober.set_targets([fast, Target("one", "b", "127.0.0.3", "lo")], "127.0.0.1")
        while time.monotonic() < deadline and len([t for t in slow_r.seen if t > switched]) < 50:
            time.sleep(0.05)
        after = [t for t in slow_r.seen if t > switched]
        ref = [t for t in fast_r.seen if switched < t <= after[-1]]
        report = {r["node"]: r for r in prober.report()}
    finally:
        prober.stop()
        fast_r.close()
        slow_r.close()
    print(f"\nfast target {fast_n} probes, slow target {slow_n}; after the switch "
          f"{len(after)} to it, {len(ref)} to the fast one meanwhile")
    assert slow_n >= 10 and fast_n >= 5 * slow_n  # 10x the rate (load only spaces them out)
    # Both answered every probe: UP, the slow one after up_after of its own replies.
    assert verdicts == {("two", "a"): Verdict.UP, ("one", "b"): Verdict.UP}
    # At full rate from the switch on, measured against the fast target on the same thread
    # (no clock threshold): its first probe goes at once, not at its slow turn (10 fast
    # probes away), and it keeps pace with the fast one.
    assert len([t for t in fast_r.seen if switched < t < after[0]]) <= 2
    assert len(after) >= 50 and len(ref) <= len(after) + 2
    assert report["b"]["verdict"] == "up" and report["b"]["telemetryOnly"] is False
    # Its health was kept through the change of rate: replies from both rates are counted.
    assert report["b"]["replies"] >= slow_n + len(after) - 3


def wait(cond, deadline: float) -> None:
    while time.monotonic() < deadline and not cond():
        time.sleep(0.01)


def test_a_healthy_standby_is_probed_slowly_and_at_full_rate_when_it_matters() -> None:
    """Counted against a full-rate target on the same prober thread (no clock threshold):
    a standby that is UP gets a fraction of its probes; made the gateway in use it is probed
    at once and at full rate; silent, it is probed at full rate from its first lost probe, so
    DOWN comes after `down_after` probes as for any other target."""
    port = free_port()
    fast_r, sb_r = Responder("127.0.0.2", port), Responder("127.0.0.3", port)
    settings = ProbeSettings(interval=0.02, timeout=0.1, standby_interval=0.5, port=port)
    prober = prober_mod.Prober(settings, lambda: None)
    fast = Target("pool", "a", "127.0.0.2", "lo")
    sb = Target("pool", "b", "127.0.0.3", "lo", standby=True)
    prober.set_targets([fast, sb], "127.0.0.1")
    prober.start()
    deadline = time.monotonic() + 60

    def verdict(node: str) -> Verdict:
        return prober.verdicts()[("pool", node)]

    try:
        wait(lambda: verdict("b") == Verdict.UP, deadline)  # full rate until UP
        up = time.monotonic()
        wait(lambda: len([t for t in sb_r.seen if t > up]) >= 5, deadline)
        slow_n = len([t for t in sb_r.seen if t > up])
        slow_ref = len([t for t in fast_r.seen if up < t <= sb_r.seen[-1]])
        # The gateway in use now: probed at once, then at full rate.
        prober.set_targets([fast, replace(sb, standby=False)], "127.0.0.1")
        switched = time.monotonic()
        wait(lambda: len([t for t in sb_r.seen if t > switched]) >= 20, deadline)
        after = [t for t in sb_r.seen if t > switched]
        before_first = len([t for t in fast_r.seen if switched < t < after[0]])
        ref = len([t for t in fast_r.seen if switched < t <= after[-1]])
        # A standby again, then silent: full rate from its first lost probe until DOWN.
        prober.set_targets([fast, sb], "127.0.0.1")
        again = time.monotonic()
        wait(lambda: len([t for t in sb_r.seen if t > again]) >= 3, deadline)
        sb_r.mute = True
        muted = time.monotonic()
        wait(lambda: verdict("b") == Verdict.DOWN, deadline)
        down = time.monotonic()
        silent = [t for t in sb_r.seen if muted < t <= down]
        # The first went at the slow turn; the next as soon as it was lost (its timeout), not
        # at the next slow turn; from then on at full rate.
        gap_ref = len([t for t in fast_r.seen if silent[0] < t < silent[1]]) \
            if len(silent) > 1 else 99
        silent_ref = len([t for t in fast_r.seen if silent[1] < t <= down]) \
            if len(silent) > 1 else 0
        report = {r["node"]: r for r in prober.report()}
    finally:
        prober.stop()
        fast_r.close()
        sb_r.close()
    print(f"\nstandby UP: {slow_n} probes while the full-rate one got {slow_ref}; in use: "
          f"{len(after)} vs {ref}; silent until DOWN: {len(silent)} vs {silent_ref} (after "
          f"the first lost, {gap_ref})")
    assert slow_n >= 5 and slow_ref >= 10 * slow_n  # 25x nominal (load only spaces them out)
    assert before_first <= 2 and ref <= len(after) + 2
    assert down_took_down_after_probes(silent, settings)
    assert gap_ref <= settings.timeout / settings.interval + 2  # a slow turn: about 25
    assert silent_ref <= len(silent) - 1 + 2
    assert report["b"]["verdict"] == "down" and report["b"]["standby"] is True


def down_took_down_after_probes(silent: list[float], s: ProbeSettings) -> bool:
    """DOWN took `down_after` lost probes (the first may have been sent at the slow turn)."""
    return s.down_after <= len(silent) <= s.down_after + s.timeout / s.interval + 4
