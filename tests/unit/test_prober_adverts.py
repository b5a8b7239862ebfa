"""The prober asks a target for its claim (raven.pool_claims) only when the claim it holds is
`ADVERT_EVERY` old: every probe still measures health. Oracle: the requests as they arrive on
a UDP socket of the test's own on loopback, which answers them as the responder does."""

from __future__ import annotations

import socket
import threading
import time

from raven.failover import ProbeSettings, Target, Verdict
from raven.healthprobe import prober as prober_mod
from raven.healthprobe import wire


def _answer(sock: socket.socket, seen: list[tuple[float, int]], stop: threading.Event,
            advert: bytes) -> None:
    sock.settimeout(0.05)
    while not stop.is_set():
        try:
            data, peer = sock.recvfrom(64)
        except TimeoutError:
            continue
        if len(data) != wire.SIZE or data[4] != wire.REQUEST:
            continue
        seen.append((time.monotonic(), data[5]))
        reply = bytes([*data[:4], wire.REPLY, *data[5:]])
        sock.sendto(reply + (advert if data[5] & wire.ADVERTISE else b""), peer)


def test_claims_are_asked_for_every_advert_period_and_health_from_every_probe() -> None:
    responder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    responder.bind(("127.0.0.1", 0))
    port = responder.getsockname()[1]
    seen: list[tuple[float, int]] = []
    stop = threading.Event()
    thread = threading.Thread(target=_answer, args=(responder, seen, stop, b"n1 n1 1500"),
                              daemon=True)
    thread.start()
    settings = ProbeSettings(interval=0.02, port=port)
    prober = prober_mod.Prober(settings, lambda: None)
    target = Target("gw-a", "n1", "127.0.0.1", "lo")
    prober.set_targets([target], "127.0.0.1")
    prober.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (len(seen) < 60 or not prober.claims()):
            time.sleep(0.05)
    finally:
        prober.stop()
        stop.set()
        thread.join(2)
        responder.close()
    asked = [t for t, flags in seen if flags & wire.ADVERTISE]
    print(f"\n{len(seen)} probes, {len(asked)} asked for the claim")
    assert len(seen) >= 60
    assert prober.verdicts()[("gw-a", "n1")] == Verdict.UP  # health from every probe
    claim = prober.claims()[("gw-a", "n1")]
    assert (claim.gateway, claim.head) == ("n1", "n1") and claim.age >= 1.5
    assert asked and seen[0][1] & wire.ADVERTISE  # the first probe asks: no claim held yet
    # At most one ask per period of the run (load can only make them rarer), and the claim
    # is asked for again, not once for good.
    span = seen[-1][0] - seen[0][0]
    assert 2 <= len(asked) <= span / prober_mod.ADVERT_EVERY + 2, (len(asked), span)
    assert len(asked) < len(seen) / 2
