"""iperf3 between two lab pods (or any two namespaces): one short TCP sample, parsed from JSON.

Rules kept: the server is started for exactly one test (`-1`) and is always reaped, also when
the client fails; the figure is the receiver's view (`end.sum_received`).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from dataclasses import dataclass

from raven.errors import CommandError
from raven.lab import netns as nsutil


@dataclass(frozen=True)
class IperfResult:
    bits_per_second: float
    seconds: float
    retransmits: int

    @property
    def mbit(self) -> float:
        return self.bits_per_second / 1e6


def iperf(server_netns: str, server_ip: str, client_netns: str, seconds: float = 3.0,
          port: int = 5201, extra: tuple[str, ...] = ()) -> IperfResult:
    server = nsutil.spawn(nsutil.iperf3_server_argv(server_netns, server_ip, port),
                          subprocess.DEVNULL, os.environ)
    try:
        data: dict = {}
        proc = None
        for _ in range(50):  # the server needs a moment to listen
            time.sleep(0.1)
            proc = nsutil.run(nsutil.iperf3_client_argv(client_netns, server_ip, port, seconds,
                                                        extra), check=False, timeout=seconds + 30)
            try:
                data = json.loads(proc.stdout)
            except ValueError:
                data = {}
            # Retry only while the client never connected (the server is not listening yet).
            connected = (data.get("start") or {}).get("connected")
            if proc.returncode == 0 or connected or server.poll() is not None:
                break
        assert proc is not None
        if proc.returncode != 0 or "sum_received" not in (data.get("end") or {}):
            raise CommandError(f"iperf3 {client_netns} -> {server_ip} failed: "
                               f"{data.get('error') or proc.stderr.strip() or 'no result'}")
        end = data["end"]
        received = end["sum_received"]
        return IperfResult(float(received["bits_per_second"]), float(received["seconds"]),
                           int(end.get("sum_sent", {}).get("retransmits", 0)))
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=5)
        if server.poll() is None:
            server.kill()
            server.wait()
