"""Benchmark: cross-pool pod-to-pod TCP throughput of the overlay against a clean hand-built twin.

Two labs from the same topology (default two-pools: cloud, edge behind cone NAT), up at once:
  overlay  `build.up` + `cluster.up`: API server, controller, agents; the agents program
           raven0, raven-wg0, the `inet raven` nftables table (no mark chains; the identity
           SNAT only where another table has a nat chain, which lab nodes do not), the rules
           (no selector; on active gateways also `iif raven-wg0 lookup 9027`, which delivers
           traffic from the tunnel to the members over VXLAN), tables 9027/9028 and sysctls,
           all with the shipped default settings;
  hand     a twin built `--network-only` (no overlay state at all) where bench/twin.py builds
           the same devices by hand with `ip` and `wg`: the VXLAN devices (same VNI, port, MAC,
           MTU, VTEP addresses, neighbours, FDB), a wireguard-go per active gateway started as
           a lab process in a session of its own (as the agent starts its own), same port,
           peers, allowed IPs and keepalive, and the overlay's routes (same `mtu lock`) in the
           main table (a gateway's routes to its members over VXLAN replacing the lab's own).
           No nftables, no marks, no rules, no conntrack, default sysctls.
Before measuring, the devices of both labs are compared (`ip -d -j link`, `wg show dump`) and
every difference is printed; the sysctls, nftables tables and rules only one side has are
printed too (that is the overlay's policy state, the thing being measured).
Paths (iperf3 client in the cloud pod, server in the edge pod, data cloud -> edge):
  gw      pod on the cloud gateway -> WireGuard -> NAT -> edge gateway -> pod
  member  pod on a cloud member -> VXLAN -> cloud gateway -> WireGuard -> NAT -> edge gateway
          -> VXLAN -> edge member -> pod (the overlay's member path; returns alike)
Both labs share the machine's two CPUs, so the overlay lab's control processes (API server,
controller, kubelet stand-in, agents, and through the agents' data-path probes part of its
wireguard-go daemons' time: about 20 % of one CPU when idle, bench/throughput_idle.py) would
load the reference's samples as much as the overlay's. By default (`--control overlay`) they are
SIGSTOPped during every sample of the hand-built twin and resumed after it (the controller
last, then SETTLE_S before the next sample), so the overlay carries its own control CPU and the
reference none; `--control none` stops them during every sample (the kernel data plane and
wireguard-go alone), `--control both` leaves them running (this bench before that change).
Rounds are interleaved ABBA (overlay, hand | hand, overlay | ...), so load drift from other
work on the machine falls on both alike. A failed sample is printed as FAILED, counted in
`failures`, and enters its path's median as 0 Mbit/s: it never disappears from a median.
`ratio` = overlay/hand of the same round; printed per round, as their geometric mean with a
95 % confidence interval (Student's t on the logs of the ratios; failed rounds left out of it
but counted), and as median and range. Run enough rounds that the interval is narrow enough to
decide (16 rounds of 4 s: about +-10 % at load 2-6; CPU per Gbit +-6 %). CPU per Gbit, per
sample and as overlay/hand with the same interval: the `wireguard-go` daemons (their calls carry the
nodes' kernel work on the packets they send and receive), and the machine's kernel time
(system + irq + softirq from /proc/stat) and busy time, which include other work on the machine.
Prints figures, never pass/fail; `--json` prints a JSON summary as the last line.

    flock /tmp/raven-e2e.lock .venv/bin/python bench/throughput.py [--rounds 16] [--seconds 4]
        [--control overlay|none|both] [--json] [--keep | --reuse TAG]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import twin

from raven.errors import CommandError
from raven.lab import build, cluster, teardown
from raven.lab.iperf import iperf
from raven.lab.netns import netns_path
from raven.lab.plan import LabPlan
from raven.lab.runtime import load_plan, supervised
from raven.lab.topology import load_topology
from raven.settings import LabSettings

SHIPPED = LabSettings()  # the lab's settings are the shipped agent's (raven.settings)

ROOT = Path(__file__).resolve().parents[1]
LABS = ("overlay", "hand")
CPU_METERS = ("wireguard-go", "machine-kernel", "machine-busy")
RESUME_GAP_S = 0.5
# After a pause the overlay's processes do at once what fell due while they were stopped
# (expired probes, a heartbeat, timers); the next sample starts only after this settling time,
# so that work is not charged to it (it would be, in full, to every overlay sample that follows
# a reference sample).
SETTLE_S = 1.5


def control_pids(lab: str) -> list[int]:
    """The lab's running supervised processes that are not wireguard-go (a hand-built twin's
    daemons are supervised too): API server, controller, kubelet stand-in, agents. The
    controller comes last: `paused` resumes it last."""
    pids = []
    for record in sorted(supervised(lab), key=lambda r: r["name"] == cluster.CONTROLLER):
        if not record["running"]:
            continue
        try:
            comm = Path(f"/proc/{record['pid']}/comm").read_text().strip()
        except OSError:
            continue
        if comm != "wireguard-go":
            pids.append(int(record["pid"]))
    return pids


@contextlib.contextmanager
def paused(pids: list[int], settle: float = 0.0) -> Iterator[None]:
    """SIGSTOP the processes for the block, SIGCONT them after (also on errors): the kernel's
    data plane keeps forwarding; only their CPU use stops. The last one (the controller, see
    control_pids) is resumed RESUME_GAP_S after the others, so that agents whose heartbeat
    fell due while stopped renew their Lease before the controller looks at it again (two
    samples in a row stop them for about 11 s; the heartbeat timeout is 15 s). `settle`:
    seconds to wait after resuming (see SETTLE_S)."""
    stopped = []
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        yield
    finally:
        for i, pid in enumerate(stopped):
            if i == len(stopped) - 1 and i:
                time.sleep(RESUME_GAP_S)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if stopped and settle:
            time.sleep(settle)


def load() -> list[float]:
    """1, 5 and 15 minute load averages: the figures are only comparable at similar load."""
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def wait_ping(netns: str, ip: str, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run(["ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "1", ip],
                          capture_output=True).returncode == 0:
            return True
        time.sleep(0.3)
    return False


def wireguard_pids(lab: str, plan: LabPlan) -> list[int]:
    """wireguard-go processes inside the lab's node namespaces (found by netns inode)."""
    inodes = set()
    for pool in plan.pools:
        for node in pool.nodes:
            with contextlib.suppress(OSError):
                inodes.add(os.stat(netns_path(f"{lab}.{node.name}")).st_ino)
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == "wireguard-go" and \
                    os.stat(entry / "ns" / "net").st_ino in inodes:
                pids.append(int(entry.name))
        except OSError:
            pass
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes (all threads); kernel work done in their syscalls, such
    as netfilter on the UDP they send, is charged here too."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / ticks


def machine_cpu() -> tuple[float, float]:
    """Machine-wide (kernel, busy) CPU seconds from /proc/stat: kernel = system + irq + softirq
    (the forwarding, netfilter, routing and VXLAN work of every namespace; softirqs served in a
    process's system call are sampled as softirq by the tick too), busy = everything but idle
    and iowait. Other work on the machine is in it as well; ABBA spreads that over both labs."""
    ticks = os.sysconf("SC_CLK_TCK")
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (system + irq + softirq) / ticks, (user + nice + system + irq + softirq + steal) / ticks


# two-sided 95 % quantiles of Student's t by degrees of freedom (larger df: the next lower key)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
       9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120,
       17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 22: 2.074, 24: 2.064, 26: 2.056, 28: 2.048,
       30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def ratio_ci(ratios: list[float]) -> tuple[float, float, float] | None:
    """Geometric mean of per-round ratios with its 95 % confidence interval (t on the logs:
    a ratio and its inverse are symmetric). None for fewer than two usable rounds. Failed
    rounds (ratio 0) are left out here; they are counted and reported as failures."""
    logs = [math.log(r) for r in ratios if r > 0]
    if len(logs) < 2:
        return None
    mean = statistics.fmean(logs)
    half = T95[max(k for k in T95 if k <= len(logs) - 1)] * statistics.stdev(logs) / \
        math.sqrt(len(logs))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def ci_text(ci: tuple[float, float, float] | None) -> str:
    return "n/a" if ci is None else f"{ci[0]:.3f} [95 % CI {ci[1]:.3f}-{ci[2]:.3f}]"


def pick_pairs(plan: LabPlan, gateways: dict) -> dict[str, tuple]:
    """path name -> (client pod, server pod) of the first two pools."""
    a, b = plan.pools[0], plan.pools[1]
    gw_a, gw_b = gateways[a.name], gateways[b.name]
    pairs = {"gw": (gw_a.pods[0], gw_b.pods[0])}
    members_a = [n for n in a.nodes if n.name != gw_a.name and n.pods]
    members_b = [n for n in b.nodes if n.name != gw_b.name and n.pods]
    if members_a and members_b:
        pairs["member"] = (members_a[0].pods[0], members_b[0].pods[0])
    return pairs


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):7.1f} range {min(values):.1f}-{max(values):.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--topology", default=str(ROOT / "test-topologies" / "two-pools.yaml"))
    parser.add_argument("--rounds", type=int, default=6, help="ABBA rounds (one sample of "
                        "each lab per path per round); default 6")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    parser.add_argument("--control", choices=("overlay", "none", "both"), default="overlay",
                        help="whose samples the overlay lab's control processes (API server, "
                        "controller, kubelet stand-in, agents and so their probes) run during: "
                        "'overlay' (default: the overlay carries its own control CPU, the "
                        "reference gets a machine without it), 'none' (SIGSTOPped during every "
                        "sample: the kernel data plane and wireguard-go alone), 'both' (the "
                        "old way: they load the machine for the reference's samples too)")
    parser.add_argument("--tunnel-namespace", action=argparse.BooleanOptionalAction,
                        default=SHIPPED.tunnel_namespace, help="the overlay's agents keep an "
                        "active gateway's devices in a tunnel namespace (docs/tunnel-namespace.md;"
                        " the shipped default); --no-tunnel-namespace (NOT the shipped default) "
                        "keeps them in the node's namespace, with a policy rule; the reference "
                        "is the same plain hand-built twin either way")
    parser.add_argument("--keep", action="store_true", help="leave both labs up (for "
                        "experiments; remove them with `raven lab down NAME`)")
    parser.add_argument("--reuse", metavar="TAG", help="measure the two labs a run with "
                        "--keep left up (rvb-tp-TAG-o and rvb-tp-TAG-h) instead of building "
                        "new ones, and leave them up: the same pair measured again, or after "
                        "it has run for a while")
    args = parser.parse_args()
    shipped = args.tunnel_namespace == SHIPPED.tunnel_namespace
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")

    failures: list[str] = []
    loads: list[float] = []
    samples: dict[str, dict[str, list[float]]] = {}
    cpu: dict[str, dict[str, dict[str, list[float]]]] = {}
    pairs: dict[str, tuple] = {}
    tag = args.reuse or secrets.token_hex(3)
    names = {"overlay": f"rvb-tp-{tag}-o", "hand": f"rvb-tp-{tag}-h"}
    result: dict[str, object] = {"rounds": args.rounds, "seconds": args.seconds,
                                 "control": args.control,
                                 "labs": names, "topology": args.topology,
                                 "settings": ("shipped defaults" if shipped
                                              else "NOT shipped defaults: --no-tunnel-namespace"),
                                 "load_before": load()}
    if not shipped:
        print("NOT THE SHIPPED DEFAULT: the overlay's active gateways keep their devices in "
              "the node's namespace (--no-tunnel-namespace)", flush=True)
    print(f"labs: overlay {names['overlay']}, hand-built twin {names['hand']}; "
          f"{'shipped default' if shipped else 'NOT shipped default'} settings; overlay "
          f"control processes run during the samples of: "
          f"{ {'overlay': 'the overlay only', 'none': 'none', 'both': 'both labs'}[args.control]}",
          flush=True)
    try:
        if args.reuse:
            plan = load_plan(names["overlay"])
            gateways = twin.active_gateways(names["overlay"], plan)
        else:
            topology = load_topology(args.topology)
            plan = build.up(topology, names["overlay"], source=args.topology)
            cluster.up(plan, settings=cluster.ClusterSettings(
                tunnel_namespace=args.tunnel_namespace))
            build.up(topology, names["hand"], source=args.topology)
            gateways = twin.mirror(names["overlay"], names["hand"], plan)
        cmp = twin.compare(names["overlay"], names["hand"], plan)
        print("device differences (ip -d -j link, wg show): "
              + ("none" if not cmp.devices else f"{len(cmp.devices)}"), flush=True)
        for line in cmp.devices:
            print(f"  DIFFERS {line}")
        print("overlay policy state the twin does not have (what is measured):")
        for line in cmp.sysctls + cmp.firewall:
            print(f"  {line}")
        result["device_differences"] = cmp.devices
        result["policy_state"] = cmp.sysctls + cmp.firewall
        pairs = pick_pairs(plan, gateways)
        print("paths: " + "; ".join(f"{path} {c.name} -> {v.name}"
                                    for path, (c, v) in pairs.items()), flush=True)
        result["paths"] = {path: [c.name, v.name] for path, (c, v) in pairs.items()}
        for lab in names.values():
            for client, server in pairs.values():
                if not wait_ping(f"{lab}.{client.name}", server.ip):
                    print(f"  {lab}: {client.name} cannot reach {server.ip} yet")
        pids = {kind: wireguard_pids(names[kind], plan) for kind in LABS}
        print(f"load average before measuring {load()}; {os.cpu_count()} CPUs", flush=True)

        samples: dict[str, dict[str, list[float]]] = {p: {k: [] for k in LABS} for p in pairs}
        # CPU seconds per Gbit carried, per sample: wireguard-go (its process), the machine's
        # kernel time (system + irq + softirq) and the machine's busy time
        cpu: dict[str, dict[str, dict[str, list[float]]]] = {
            m: {p: {k: [] for k in LABS} for p in pairs} for m in CPU_METERS}
        for i in range(args.rounds):
            order = LABS if i % 2 == 0 else LABS[::-1]
            loads.append(load()[0])
            for path, (client, server) in pairs.items():
                for kind in order:
                    lab = names[kind]
                    before = cpu_seconds(pids[kind]), *machine_cpu()
                    stop = args.control == "none" or (args.control == "overlay"
                                                      and kind == "hand")
                    try:
                        with paused(control_pids(names["overlay"]) if stop else [], SETTLE_S):
                            mbit = iperf(f"{lab}.{server.name}", server.ip,
                                         f"{lab}.{client.name}", args.seconds).mbit
                            # before the control processes resume (they use CPU at once)
                            after = cpu_seconds(pids[kind]), *machine_cpu()
                    except (CommandError, KeyError, subprocess.TimeoutExpired) as exc:
                        failures.append(f"round {i + 1} {path} {kind}: {exc}")
                        print(f"round {i + 1} {path:<6} {kind:<7} FAILED: {exc}", flush=True)
                        samples[path][kind].append(0.0)
                        for meter in CPU_METERS:
                            cpu[meter][path][kind].append(0.0)
                        continue
                    samples[path][kind].append(round(mbit, 1))
                    gbit = mbit * args.seconds / 1000
                    for meter, x, y in zip(CPU_METERS, before, after, strict=True):
                        cpu[meter][path][kind].append(round((y - x) / gbit, 3) if gbit else 0.0)
                    print(f"round {i + 1} {path:<6} {kind:<7} {mbit:7.1f} Mbit/s  CPU-s/Gbit "
                          + " ".join(f"{m} {cpu[m][path][kind][-1]:.2f}" for m in CPU_METERS)
                          + f"  load {load()[0]}", flush=True)
        # the pauses must not have moved a gateway: the paths would have changed under us
        moved = {p: n.name for p, n in twin.active_gateways(names["overlay"], plan).items()}
        if moved != {p: n.name for p, n in gateways.items()}:
            failures.append(f"active gateways changed during the run: "
                            f"{ {p: n.name for p, n in gateways.items()} } -> {moved}")
            print(f"FAILED: {failures[-1]}", flush=True)
    finally:
        if args.keep or args.reuse:
            print(f"kept: raven lab down {names['overlay']}; raven lab down {names['hand']}")
        else:
            for lab in names.values():
                teardown.down(lab)
    result["load_after"] = load()
    result["load_during"] = loads
    result["failures"] = failures
    print()
    for path in pairs:
        o, h = samples[path]["overlay"], samples[path]["hand"]
        ratios = [round(a / b, 3) if b else 0.0 for a, b in zip(o, h, strict=True)]
        ratio = statistics.median(ratios)
        ci = ratio_ci(ratios)
        print(f"{path:<6} overlay {spread(o)} Mbit/s   hand {spread(h)} Mbit/s")
        print(f"{path:<6} ratio overlay/hand per round: {' '.join(f'{r:.2f}' for r in ratios)}")
        print(f"{path:<6} ratio geometric mean {ci_text(ci)}; median {ratio:.3f} range "
              f"{min(ratios):.3f}-{max(ratios):.3f}; of medians "
              f"{statistics.median(o) / statistics.median(h) if statistics.median(h) else 0:.3f}")
        entry: dict[str, object] = {
            "ratio": ratio, "ratios": ratios, "geomean": ci and round(ci[0], 3),
            "ci95": ci and [round(ci[1], 3), round(ci[2], 3)],
            "overlay_mbit": statistics.median(o), "hand_mbit": statistics.median(h),
            "overlay_runs": o, "hand_runs": h}
        for meter in CPU_METERS:
            co, ch = cpu[meter][path]["overlay"], cpu[meter][path]["hand"]
            cratios = [round(a / b, 3) if a and b else 0.0 for a, b in zip(co, ch, strict=True)]
            cci = ratio_ci(cratios)
            print(f"{path:<6} CPU-s/Gbit {meter:<13} overlay {statistics.median(co):.3f} hand "
                  f"{statistics.median(ch):.3f}; overlay/hand {ci_text(cci)}")
            entry[f"cpu_{meter}"] = {"overlay": co, "hand": ch, "ratios": cratios,
                                     "geomean": cci and round(cci[0], 3),
                                     "ci95": cci and [round(cci[1], 3), round(cci[2], 3)]}
        result[path] = entry
    print(f"{args.rounds} ABBA rounds of {args.seconds:g} s; failures {len(failures)}; load "
          f"average before {result['load_before']} during {loads} after {result['load_after']}")
    if args.json:
        print(json.dumps(result))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
