"""Benchmark: reconcile N remote subnets (routes, nft set elements, WireGuard allowed IPs).

Measures, in the same run and on identical freshly built namespaces:
- ours: `Dataplane.apply` of a gateway state with N remote subnets, starting from the same
  state without them (devices, peer and nft table already there);
- reference: the same content written by the standard tools: `ip -batch` for the routes,
  one `nft -f` for the set elements, `wg addconf` for the peer's allowed IPs;
- incremental: one more subnet (then one fewer, alternately) applied with `Dataplane.apply`:
  it diffs against its caches (routes kept equal to what it wrote, the nft generation id,
  WireGuard as it last wrote it) and writes 3 things (a route, an nft element, an allowed IP);
  the median of --rounds rounds, wall clock and our process's CPU time;
- no-op: the same state applied again (0 writes), wall clock and CPU time.
Prints a human summary, and with --json the figures as the last line:
{"ours_s", "reference_s", "ratio", "incremental_ms", ...}. It decides nothing (no pass/fail).
Needs root; everything lives in throwaway namespaces `rvt-bench-<hex>` and temp directories.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from raven.dataplane import Dataplane, DataplaneSettings
from raven.desired import Firewall, NodeState, Role, Route, Rule, WireGuardDevice, WireGuardPeer

PEER_KEY = base64.b64encode(bytes(range(1, 33))).decode()


def subnets(n: int, offset: int = 0) -> list[str]:
    # every other /24, so that nothing collapses into a larger prefix in the nft interval set
    out = []
    for i in range(offset, offset + n):
        k = 2 * i
        out.append(f"10.{k // 256}.{k % 256}.0/24")
    return out


def state_for(nets: list[str]) -> NodeState:
    peer = WireGuardPeer(public_key=PEER_KEY, endpoint="198.51.100.2:4500",
                         allowed_ips=tuple(sorted(nets)), keepalive=0)
    return NodeState(
        node="bench", role=Role.ACTIVE_GATEWAY, pool="bench", vxlan=None,
        routes=tuple(Route(dst=n, table=9028, dev="raven-wg0") for n in nets),
        rules=(Rule(priority=100, table=9028, fwmark=0x40, fwmask=0x40),),
        wireguard=WireGuardDevice(name="raven-wg0", listen_port=4500, mtu=1420, peers=(peer,)),
        firewall=Firewall(table="raven", mark=0x40, mark_mask=0x40, local_subnets=(),
                          remote_subnets=tuple(sorted(nets))),
    )


def sh(argv: list[str], stdin: str | None = None) -> None:
    subprocess.run(argv, input=stdin, text=True, check=True, capture_output=True)


class Node:
    """A throwaway namespace with the gateway's devices applied but no remote subnets."""

    def __init__(self) -> None:
        self.ns = f"rvt-bench-{secrets.token_hex(3)}"
        self.dir = Path(tempfile.mkdtemp(prefix="rvt-bench-"))
        sh(["ip", "netns", "add", self.ns])
        self.dp = Dataplane(DataplaneSettings(netns=self.ns, state_dir=self.dir,
                                              wireguard_backend="userspace",
                                              wireguard_run_dir=self.dir / "run"))
        self.dp.apply(state_for([]))

    def wg_addconf(self, config: str) -> None:
        # wg's UAPI socket is in our run dir: bind it on /var/run/wireguard in a private mount ns
        script = 'mount --bind "$0" /var/run/wireguard && exec "$@"'
        sh(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
            str(self.dir / "run"), "wg", "addconf", "raven-wg0", "/dev/stdin"], config)

    def close(self) -> None:
        try:
            self.dp.cleanup()
        finally:
            self.dp.close()
            subprocess.run(["ip", "netns", "del", self.ns], check=False)
            shutil.rmtree(self.dir, ignore_errors=True)


def reference(node: Node, nets: list[str]) -> float:
    routes = "".join(f"route replace {n} dev raven-wg0 table 9028 proto 82\n" for n in nets)
    elements = f"add element inet raven remote4 {{ {', '.join(nets)} }}\n"
    start = time.perf_counter()
    sh(["ip", "-n", node.ns, "-batch", "-"], routes)
    sh(["ip", "netns", "exec", node.ns, "nft", "-f", "-"], elements)
    node.wg_addconf(f"[Peer]\nPublicKey = {PEER_KEY}\nAllowedIPs = {', '.join(nets)}\n")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=10_000, help="remote subnets (N)")
    parser.add_argument("--json", action="store_true", help="print figures as JSON last line")
    parser.add_argument("--rounds", type=int, default=7, help="one-change rounds (median)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/reconcile.py needs root (network namespaces)", file=sys.stderr)
        return 2
    nets = subnets(args.routes)
    ours_node, ref_node = Node(), Node()
    try:
        ref_s = reference(ref_node, nets)
        start = time.perf_counter()
        result = ours_node.dp.apply(state_for(nets))
        ours_s = time.perf_counter() - start
        again = ours_node.dp.apply(state_for(nets))
        # One change at a time (add a subnet, remove it again, ...): the median of several
        # rounds, because a busy 2-core machine makes single samples noisy.
        steps, cpu, noops, noop_cpu = [], [], [], []
        step = again
        for i in range(args.rounds):
            changed = state_for(nets + subnets(1, args.routes)) if i % 2 == 0 else state_for(nets)
            start, start_cpu = time.perf_counter(), time.process_time()
            step = ours_node.dp.apply(changed)
            steps.append((time.perf_counter() - start) * 1000)
            cpu.append((time.process_time() - start_cpu) * 1000)
            start, start_cpu = time.perf_counter(), time.process_time()
            noop = ours_node.dp.apply(changed)
            noops.append((time.perf_counter() - start) * 1000)
            noop_cpu.append((time.process_time() - start_cpu) * 1000)
        incremental_ms = statistics.median(steps)
        noop_ms = statistics.median(noops)
    finally:
        ours_node.close()
        ref_node.close()
    figures = {
        "routes": args.routes,
        "ours_s": round(ours_s, 4),
        "reference_s": round(ref_s, 4),
        "ratio": round(ours_s / ref_s, 2),
        "incremental_ms": round(incremental_ms, 2),
        "incremental_cpu_ms": round(statistics.median(cpu), 2),
        # Adding a subnet adds one allowed IP; removing one moves that IP to a throwaway peer
        # deleted in the same request (wireguard-go's UAPI has no single-IP removal), so the
        # two are reported apart.
        "incremental_add_ms": round(statistics.median(steps[0::2]), 2),
        "incremental_remove_ms": round(statistics.median(steps[1::2]), 2) if steps[1:] else None,
        "noop_ms": round(noop_ms, 2),
        # CPU time of our process: far less sensitive than wall time to a loaded machine
        "noop_cpu_ms": round(statistics.median(noop_cpu), 2),
        "load_avg_1m": os.getloadavg()[0],
        "writes_full": result.writes,
        "writes_second_apply": again.writes,
        "writes_incremental": step.writes,
        "writes_noop": noop.writes,
    }
    print(f"N={args.routes}: ours {ours_s:.3f} s ({result.writes} writes), reference "
          f"(ip -batch + nft -f + wg addconf) {ref_s:.3f} s, ratio {figures['ratio']}; "
          f"one change {incremental_ms:.1f} ms median ({step.writes} writes, "
          f"{figures['incremental_cpu_ms']} ms CPU); no-op apply {noop_ms:.1f} ms; "
          f"load average {figures['load_avg_1m']:.1f}")
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
