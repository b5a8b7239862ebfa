"""A stream of ICMP echoes from a network namespace, stopped on an event, judged per echo.

Used by the "loses no packet" tests (tests/e2e/test_agent.py, test_overlay.py,
tests/vm/test_vm_lab.py). Why not `ping`: a test wants the stream to cover a fault and the
recovery after it, however long that takes on a loaded machine, and then to know which echoes
went unanswered. `ping -w` stops at its deadline without waiting for the reply to its last
echo, and `ping -c` waits only two round-trip times after its last echo (`-W` applies only
while nothing has come back, see ping(8)); either way a reply that is merely late is counted
as lost (CI once counted 154/155).

The probe sends at a fixed rate until SIGTERM, then listens `GRACE` more seconds: every echo
has at least that long to be answered. A reply counts when it is an echo reply from the
destination with our identifier; duplicates count once. Standard library only (`python -I
-S`), so it starts in milliseconds, also inside a slow guest.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import dataclass

GRACE = 3.0  # seconds every echo has to be answered after the stream is stopped

PROBE = r"""
import json, os, select, signal, socket, struct, sys, time
dst, rate, grace = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident = os.getpid() & 0xffff
def checksum(b):
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    t = (t >> 16) + (t & 0xffff)
    return ~(t + (t >> 16)) & 0xffff
sent, got = 0, set()
def receive(until):
    while True:
        left = until - time.monotonic()
        if left <= 0 or not select.select([s], [], [], left)[0]:
            return
        data, peer = s.recvfrom(2048)
        ihl = (data[0] & 15) * 4
        kind, _, _, i, seq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
        if kind == 0 and i == ident and peer[0] == dst:
            got.add(seq)
print("started", flush=True)
due = time.monotonic()
while not stop and sent < 65536:  # sequence numbers are 16 bits: never reuse one
    body = struct.pack("!HH", ident, sent) + b"raven-ts" * 7
    packet = struct.pack("!BBH", 8, 0, checksum(struct.pack("!BBH", 8, 0, 0) + body)) + body
    s.sendto(packet, (dst, 0))
    sent += 1
    due += 1 / rate
    receive(due)
receive(time.monotonic() + grace)
print(json.dumps({"sent": sent, "received": len(got), "wrapped": sent >= 65536,
                  "lost": sorted(set(range(sent)) - got)[:40]}), flush=True)
"""


@dataclass
class EchoStream:
    proc: subprocess.Popen[str]
    rate: float

    def stop(self, timeout: float = 60.0) -> dict:
        """Stop sending; after the grace period: {"sent", "received", "lost" (first 40
        sequence numbers without a reply, 0-based)}."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=timeout + GRACE)
        lines = out.strip().splitlines()
        assert self.proc.returncode == 0 and lines, f"echo stream failed: {out[-2000:]}"
        result = json.loads(lines[-1])
        assert not result["wrapped"], "the stream ran out of sequence numbers: stop it sooner"
        return result

    def kill(self) -> None:
        """Cleanup after a failure elsewhere: no result."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_stream(prefix: list[str], dst: str, rate: float = 50.0) -> EchoStream:
    """Start echoing `dst` at `rate` per second through `prefix` (e.g. `ip netns exec NS`);
    returns once the first echo is about to leave."""
    proc = subprocess.Popen([*prefix, sys.executable, "-I", "-S", "-c", PROBE, dst, str(rate),
                             str(GRACE)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline().strip()
    if first != "started":
        proc.kill()
        proc.wait()
        raise AssertionError(f"echo stream to {dst} did not start: {first!r}")
    return EchoStream(proc, rate)
