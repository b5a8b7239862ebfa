"""Benchmark: cross-pool pod-to-pod TCP throughput through the overlay, against references.

One two-pools lab (cloud, edge behind cone NAT). Between the same two pods (the pods of the two
pools' gateway nodes: pod -> node -> WireGuard -> NAT -> internet -> node -> pod), in one run:
  hand alone  the same devices built by hand with `ip` and `wg` before the overlay exists: a
              wireguard-go device on each gateway node, one peer each, routes for the remote
              podCIDRs;
  overlay     after `raven.lab.cluster.up` (API server, controller, agents: raven-wg0, nftables
              marks, policy routing, all programmed by the agents);
  hand        the hand-built devices again (port 4501) next to the running overlay, measured
              alternately with it: a priority-50 rule sends the remote podCIDRs to the main
              table (the hand-built routes) ahead of the overlay's fwmark rule. Same moment,
              same machine load: this is the reference of `ratio`;
  member      overlay, member node to member node (VXLAN -> gateway -> WireGuard -> gateway ->
              VXLAN), for information;
and ceilings between two bare namespaces joined by a veth: raw veth, VXLAN over it and
wireguard-go over it. Figures are medians of --runs iperf3 runs of --seconds.
ratio = overlay / hand (alternating ABBA); ratio_vs_hand_alone is printed too. The hand-built
wireguard-go daemons run one session per gateway node, like the overlay's (--hand-session).
Prints figures only, never pass/fail; `--json` prints a JSON summary as the last line.

    .venv/bin/python bench/throughput.py [--runs 3] [--seconds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from raven.lab import build, cluster, teardown
from raven.lab.iperf import iperf
from raven.lab.plan import LabPlan
from raven.lab.runtime import node_exec_argv
from raven.lab.topology import load_topology

ROOT = Path(__file__).resolve().parents[1]
WG_ENV = {**os.environ, "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}


def sh(argv: list[str], stdin: str | None = None, new_session: bool = False) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=WG_ENV,
                          timeout=60, start_new_session=new_session)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc.stdout


def load() -> list[float]:
    """1, 5 and 15 minute load averages: the figures are only comparable at similar load."""
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def median_mbit(run: Callable[[], float], runs: int) -> tuple[float, list[float]]:
    values = [run() for _ in range(runs)]
    return statistics.median(values), [round(v, 1) for v in values]


# --- ceilings between two bare namespaces ------------------------------------------------------

class Pair:
    """Two namespaces a and b joined by a veth (10.99.0.1 <-> 10.99.0.2)."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.a, self.b = f"rvb-tp-{tag}-a", f"rvb-tp-{tag}-b"
        self.tag = tag

    def __enter__(self) -> Pair:
        sh(["ip", "netns", "add", self.a])
        sh(["ip", "netns", "add", self.b])
        sh(["ip", "-n", self.a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
            "netns", self.b])
        for ns, ip in ((self.a, "10.99.0.1"), (self.b, "10.99.0.2")):
            sh(["ip", "-n", ns, "-batch", "-"], stdin=f"address add {ip}/24 dev eth0\n"
               "link set eth0 up\nlink set lo up\n")
        return self

    def __exit__(self, *_: object) -> None:
        for ns in (self.a, self.b):
            inode = os.stat(f"/run/netns/{ns}").st_ino if os.path.exists(f"/run/netns/{ns}") \
                else None
            if inode is not None:
                for entry in Path("/proc").iterdir():
                    if entry.name.isdigit():
                        try:
                            if os.stat(entry / "ns" / "net").st_ino == inode:
                                os.kill(int(entry.name), 9)
                        except OSError:
                            pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for name in (f"rvb{self.tag}a", f"rvb{self.tag}b"):
            Path(f"/var/run/wireguard/{name}.sock").unlink(missing_ok=True)

    def vxlan(self) -> None:
        for ns, local, remote, ip in ((self.a, "10.99.0.1", "10.99.0.2", "10.98.0.1"),
                                      (self.b, "10.99.0.2", "10.99.0.1", "10.98.0.2")):
            sh(["ip", "-n", ns, "-batch", "-"], stdin=(
                f"link add vx0 mtu 1450 type vxlan id 200 local {local} remote {remote} "
                f"dstport 4472\naddress add {ip}/24 dev vx0\nlink set vx0 up\n"))

    def wireguard(self) -> None:
        keys = {}
        for side in ("a", "b"):
            private = sh(["wg", "genkey"]).strip()
            keys[side] = (private, sh(["wg", "pubkey"], stdin=private + "\n").strip())
        for side, ns, ip, peer, endpoint in (("a", self.a, "10.97.0.1", "b", "10.99.0.2"),
                                             ("b", self.b, "10.97.0.2", "a", "10.99.0.1")):
            dev = f"rvb{self.tag}{side}"
            sh(["ip", "netns", "exec", ns, "wireguard-go", dev])
            key_file = Path(f"/tmp/{dev}.key")
            key_file.write_text(keys[side][0])
            key_file.chmod(0o600)
            try:
                sh(["ip", "netns", "exec", ns, "wg", "set", dev, "listen-port", "4500",
                    "private-key", str(key_file), "peer", keys[peer][1], "allowed-ips",
                    "10.97.0.0/24", "endpoint", f"{endpoint}:4500"])
            finally:
                key_file.unlink()
            sh(["ip", "-n", ns, "-batch", "-"], stdin=(
                f"address add {ip}/24 dev {dev}\nlink set {dev} mtu 1420 up\n"))


def ceilings(runs: int, seconds: float) -> dict[str, float]:
    out = {}
    with Pair() as pair:
        out["veth"] = median_mbit(lambda: iperf(pair.b, "10.99.0.2", pair.a, seconds).mbit,
                                  runs)[0]
        pair.vxlan()
        out["vxlan"] = median_mbit(lambda: iperf(pair.b, "10.98.0.2", pair.a, seconds).mbit,
                                   runs)[0]
        pair.wireguard()
        out["wireguard_go"] = median_mbit(
            lambda: iperf(pair.b, "10.97.0.2", pair.a, seconds).mbit, runs)[0]
    return out


# --- the same devices by hand in the lab --------------------------------------------------------

def build_by_hand(plan: LabPlan, port: int = 4500,
                  session: str = "node") -> Callable[[], None]:
    """wireguard-go + one peer + routes on both gateway nodes; returns the undo.

    `wireguard-go hand-wg0` daemonises by re-executing itself *without* a new session, so the
    daemon lands in the session of whoever started it. session="node": each node's daemon is
    started from its own session, as an operator's shell on that gateway (or its agent, or a
    systemd unit) would; that is where the overlay's daemons are. session="bench": both
    daemons in this script's session, next to the iperf3 client and server - one scheduling
    group for both tunnel ends and both traffic ends (kernel.sched_autogroup_enabled=1), which
    no two real gateways share; kept to reproduce the earlier figures.
    """
    cloud, edge = plan.pools[0], plan.pools[1]
    gws = [(cloud, cloud.nodes[0]), (edge, edge.nodes[0])]
    keys = {}
    for _, node in gws:
        private = sh(["wg", "genkey"]).strip()
        keys[node.name] = (private, sh(["wg", "pubkey"], stdin=private + "\n").strip())
    for (_pool, node), (other_pool, other) in ((gws[0], gws[1]), (gws[1], gws[0])):
        run = node_exec_argv(plan.name, node.name)
        sh([*run, "wireguard-go", "hand-wg0"], new_session=session == "node")
        key_file = Path(f"/tmp/{plan.name}-{node.name}.key")
        key_file.write_text(keys[node.name][0])
        key_file.chmod(0o600)
        subnets = ",".join(n.pod_cidr for n in other_pool.nodes)
        peer = ["peer", keys[other.name][1], "allowed-ips", subnets]
        if other_pool.nat == "none":  # dial the public side; the NAT'd side keeps it open
            peer += ["endpoint", f"{other.underlay_ip}:{port}", "persistent-keepalive", "25"]
        try:
            sh([*run, "wg", "set", "hand-wg0", "listen-port", str(port), "private-key",
                str(key_file), *peer])
        finally:
            key_file.unlink()
        lines = ["link set hand-wg0 mtu 1420 up"]
        lines += [f"route add {n.pod_cidr} dev hand-wg0" for n in other_pool.nodes]
        sh([*run, "ip", "-batch", "-"], stdin="\n".join(lines) + "\n")
        sh([*run, "sysctl", "-qw", "net.ipv4.conf.hand-wg0.rp_filter=0"])

    def undo() -> None:
        for _, node in gws:
            sh([*node_exec_argv(plan.name, node.name), "ip", "link", "del", "hand-wg0"])
        time.sleep(0.5)  # wireguard-go exits when its device goes

    return undo


def lab_pods(plan: LabPlan) -> dict[str, tuple[str, str]]:
    """name -> (netns, ip) of the pods used: gateway pods and member pods of both pools."""
    cloud, edge = plan.pools[0], plan.pools[1]
    pick = {"gw-a": cloud.nodes[0].pods[0], "gw-b": edge.nodes[0].pods[0],
            "member-a": cloud.nodes[-1].pods[0], "member-b": edge.nodes[-1].pods[0]}
    return {k: (p.netns, p.ip) for k, p in pick.items()}


def wait_ping(netns: str, ip: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run(["ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "1", ip],
                          capture_output=True).returncode == 0:
            return
        time.sleep(0.3)
    raise SystemExit(f"{netns} cannot reach {ip}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--topology", default=str(ROOT / "test-topologies" / "two-pools.yaml"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    parser.add_argument("--hand-session", choices=("node", "bench"), default="node",
                        help="where the hand-built wireguard-go daemons run: one session per "
                        "gateway node like the overlay's (default), or both in this script's "
                        "session with iperf3 (one autogroup; the old, flattering reference)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")

    result: dict[str, object] = {"runs": args.runs, "seconds": args.seconds,
                                 "hand_session": args.hand_session, "load_before": load()}
    ceiling = ceilings(args.runs, args.seconds)
    for name, value in ceiling.items():
        print(f"ceiling {name:<13} {value:9.0f} Mbit/s", flush=True)
    result.update({f"{k}_mbit": round(v, 1) for k, v in ceiling.items()})

    lab = f"rvb-tp-{secrets.token_hex(3)}"
    try:
        plan = build.up(load_topology(args.topology), lab, source=args.topology)
        pods = lab_pods(plan)
        (a_ns, _), (b_ns, b_ip) = pods["gw-a"], pods["gw-b"]

        def sample() -> float:
            return iperf(b_ns, b_ip, a_ns, args.seconds).mbit

        # 1. by hand alone, before anything of the overlay exists
        undo = build_by_hand(plan, session=args.hand_session)
        wait_ping(a_ns, b_ip)
        clean, clean_runs = median_mbit(sample, args.runs)
        print(f"hand-built alone   {clean:9.0f} Mbit/s  {clean_runs}", flush=True)
        undo()
        # 2. the overlay, and the hand-built devices next to it (other port), alternating:
        #    a priority-50 rule sends the remote podCIDRs to the main table (hand-wg0 routes)
        #    before the overlay's fwmark rule (priority 100) sees them.
        cluster.up(plan)
        undo = build_by_hand(plan, port=4501, session=args.hand_session)
        gateways = [(plan.pools[0].nodes[0], plan.pools[1]), (plan.pools[1].nodes[0],
                                                              plan.pools[0])]

        def hand_rules(verb: str) -> None:
            for node, remote in gateways:
                lines = [f"rule {verb} priority 50 to {n.pod_cidr} lookup main"
                         for n in remote.nodes]
                sh([*node_exec_argv(plan.name, node.name), "ip", "-batch", "-"],
                   stdin="\n".join(lines) + "\n")

        def overlay_sample() -> None:
            wait_ping(a_ns, b_ip)
            overlay_runs.append(round(sample(), 1))

        def hand_sample() -> None:
            hand_rules("add")
            try:
                wait_ping(a_ns, b_ip)
                hand_runs.append(round(sample(), 1))
            finally:
                hand_rules("del")

        # ABBA order (overlay, hand, hand, overlay, ...): neither path always goes first, so a
        # load drift during the run (other work on the machine) falls on both alike.
        overlay_runs: list[float] = []
        hand_runs: list[float] = []
        for i in range(args.runs):
            first, second = (overlay_sample, hand_sample) if i % 2 == 0 else \
                (hand_sample, overlay_sample)
            first()
            second()
        undo()
        overlay, hand = statistics.median(overlay_runs), statistics.median(hand_runs)
        print(f"overlay            {overlay:9.0f} Mbit/s  {overlay_runs}", flush=True)
        print(f"hand-built, same   {hand:9.0f} Mbit/s  {hand_runs}", flush=True)
        (ma_ns, _), (mb_ns, mb_ip) = pods["member-a"], pods["member-b"]
        member, member_runs = median_mbit(
            lambda: iperf(mb_ns, mb_ip, ma_ns, args.seconds).mbit, args.runs)
        print(f"overlay member     {member:9.0f} Mbit/s  {member_runs}", flush=True)
    finally:
        teardown.down(lab)
    result["load_after"] = load()
    ratio = overlay / hand if hand else 0.0
    print(f"ratio overlay/hand-built {ratio:.3f} (target >= 0.95); overlay/hand-built alone "
          f"{overlay / clean if clean else 0:.3f}")
    print(f"load average before {result['load_before']} after {result['load_after']}; "
          f"hand-built daemons: --hand-session {args.hand_session}")
    result.update({"ratio": round(ratio, 3), "overlay_mbit": round(overlay, 1),
                   "hand_mbit": round(hand, 1), "hand_alone_mbit": round(clean, 1),
                   "ratio_vs_hand_alone": round(overlay / clean, 3) if clean else 0.0,
                   "member_mbit": round(member, 1), "overlay_runs": overlay_runs,
                   "hand_runs": hand_runs, "hand_alone_runs": clean_runs,
                   "topology": args.topology})
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
