"""Interleaved A/B throughput between the same pods of two running labs (for bisecting).

bench/throughput.py --keep leaves an overlay lab and its hand-built twin up; edit the live
kernel state of one (delete an nft chain, change a sysctl, ...) and measure it against the
other with this script, in ABBA order. Failed samples count as 0 and are reported.

    .venv/bin/python bench/throughput_ab.py LAB_A LAB_B CLIENT_POD SERVER_POD
        [--rounds 6] [--seconds 3] [--label TEXT] [--json] [--perf] [--pause-a] [--pause-b]

`--pause-a` (`--pause-b`) SIGSTOPs that lab's control processes (API server, controller,
kubelet stand-in, agents: every supervised lab process but wireguard-go) right before each of
its samples and SIGCONTs them right after, so the sample measures the kernel data plane and
wireguard-go alone, without the CPU the control loops take on this shared machine.

`--perf` also samples every CPU with `perf record -e cpu-clock` during each sample and prints,
per group of kernel functions (policy rules, FIB lookups, reverse-path checks, nftables,
conntrack, VXLAN, ...), the samples per Gbit carried on each side: where the CPU time goes,
attributed by the kernel's own symbols rather than guessed from Mbit/s. The profile is
machine-wide, so other work on the machine is in it too (ABBA spreads it over both sides).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from throughput import (
    ci_text,
    control_pids,
    cpu_seconds,
    machine_cpu,
    paused,
    ratio_ci,
    wireguard_pids,
)

from raven.errors import CommandError
from raven.lab.iperf import iperf
from raven.lab.runtime import load_plan

# kernel function groups for --perf: a symbol counts for the first group one of whose
# prefixes it starts with
PERF_GROUPS: dict[str, tuple[str, ...]] = {
    "policy-rules": ("fib_rules_lookup", "fib4_rule_", "fib6_rule_", "fib_rule_"),
    "rp-filter": ("fib_validate_source", "__fib_validate_source"),
    "fib-lookup": ("fib_table_lookup", "__fib_lookup", "fib_lookup", "ip_route_input_slow",
                   "ip_route_input_noref", "ip_route_output_key_hash", "ip_route_output_flow",
                   "fib_select_path", "ip_route_use_hint", "ip_mkroute_input", "rt_dst_alloc"),
    "nftables": ("nft_", "nf_hook_slow", "nf_tables_"),
    "conntrack": ("nf_conntrack", "nf_ct_", "__nf_conntrack", "nf_nat", "hash_conntrack",
                  "__nf_ct_", "ipv4_conntrack", "ipv4_confirm", "nf_confirm"),
    "vxlan": ("vxlan_", "udp_tunnel", "iptunnel_"),
    "tun": ("tun_",),
    # the CPUs' idle loop: cpu-clock samples it too, so a path that leaves a CPU idle more
    # per Gbit shows here, not as work (it is inside kernel-total)
    "idle": ("default_idle", "native_safe_halt", "pv_native_safe_halt", "cpuidle_",
             "acpi_idle", "intel_idle", "do_idle", "cpu_idle"),
    "crypto-user": (),  # user-space samples of wireguard-go (filled by comm, not symbol)
}


class Profile:
    """`perf record -a -e cpu-clock` around one sample; samples per group of kernel symbols."""

    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="raven-thru-", suffix=".perf")
        os.close(fd)
        self.proc = subprocess.Popen(
            ["perf", "record", "-q", "-a", "-e", "cpu-clock", "-F", "997", "-o", self.path],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> tuple[dict[str, int], dict[str, int]]:
        """(samples per group, samples per kernel symbol)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=60)
        if not os.path.exists(self.path):  # stopped before
            return {}, {}
        try:
            report = subprocess.run(
                ["perf", "report", "-i", self.path, "--stdio", "-F", "sample,comm,dso,sym",
                 "--sort", "comm,dso,sym"], capture_output=True, text=True, timeout=120).stdout
        finally:
            os.unlink(self.path)
        counts = dict.fromkeys([*PERF_GROUPS, "kernel-total", "all"], 0)
        symbols: collections.Counter[str] = collections.Counter()
        for line in report.splitlines():
            parts = line.split()
            if not parts or line.startswith("#") or not parts[0].isdigit():
                continue
            n, comm = int(parts[0]), parts[1]
            counts["all"] += n
            if "[k]" not in parts:
                if comm.startswith("wireguard-go"):
                    counts["crypto-user"] += n
                continue
            counts["kernel-total"] += n
            sym = parts[parts.index("[k]") + 1]
            symbols[sym] += n
            for group, prefixes in PERF_GROUPS.items():
                if prefixes and sym.startswith(prefixes):
                    counts[group] += n
                    break
        return counts, dict(symbols)


def symbol_differences(a: list[dict[str, float]], b: list[dict[str, float]],
                       top: int = 15) -> list[tuple[str, float, float]]:
    """The `top` kernel symbols whose median samples per Gbit differ most between the sides
    (a sample without the symbol counts 0 for it)."""
    names = {k for side in (a, b) for sample in side for k in sample}
    rows = [(name, round(statistics.median(s.get(name, 0.0) for s in a), 1),
             round(statistics.median(s.get(name, 0.0) for s in b), 1)) for name in names]
    rows.sort(key=lambda r: abs(r[1] - r[2]), reverse=True)
    return rows[:top]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("lab_a")
    parser.add_argument("lab_b")
    parser.add_argument("client")
    parser.add_argument("server")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--label", default="")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--setup-a", default="", help="shell command run before every A "
                        "sample (LAB_B may equal LAB_A: then this toggles one factor in one lab)")
    parser.add_argument("--concurrent", action="store_true", help="run A and B at the same "
                        "time (needs two labs): both see exactly the same machine load, and "
                        "share the CPU in proportion to what each path costs per byte")
    parser.add_argument("--setup-b", default="", help="shell command run before every B sample")
    parser.add_argument("--pause-a", action="store_true", help="SIGSTOP lab A's control "
                        "processes during A's samples (SIGCONT after)")
    parser.add_argument("--pause-b", action="store_true", help="the same for lab B")
    parser.add_argument("--perf", action="store_true", help="profile every sample with perf "
                        "(not with --concurrent) and print kernel samples per Gbit by group")
    args = parser.parse_args()
    # SIGTERM (timeout, kill) unwinds like ^C: a running perf is stopped and its file removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.concurrent and args.lab_a == args.lab_b:
        parser.error("--concurrent needs two labs")
    if (args.pause_a or args.pause_b) and args.concurrent:
        parser.error("--pause-a/--pause-b need the samples one after the other (LAB_B may "
                     "equal LAB_A: then --pause-a alone toggles the control processes)")
    if args.concurrent and args.perf:
        parser.error("--perf profiles the whole machine: it cannot tell --concurrent sides apart")
    plan = load_plan(args.lab_a)
    server_ip = next(p.ip for pool in plan.pools for n in pool.nodes for p in n.pods
                     if p.name == args.server)
    sides = {"A": (args.lab_a, args.setup_a), "B": (args.lab_b, args.setup_b)}
    pause = {"A": args.pause_a, "B": args.pause_b}
    values: dict[str, list[float]] = {"A": [], "B": []}
    # wireguard-go CPU seconds per Gbit: its syscalls carry the node's netfilter and routing
    # work for the packets it sends and receives, and it varies less with load than Mbit/s
    cpu: dict[str, list[float]] = {"A": [], "B": []}
    kernel: dict[str, list[float]] = {"A": [], "B": []}  # machine kernel CPU-s per Gbit
    perf: dict[str, list[dict[str, float]]] = {"A": [], "B": []}  # perf samples per Gbit
    symbols: dict[str, list[dict[str, float]]] = {"A": [], "B": []}  # per kernel symbol
    pids = {side: wireguard_pids(lab, load_plan(lab)) for side, (lab, _) in sides.items()}
    failures = 0
    loads = []
    def setup(side: str) -> None:
        if sides[side][1]:
            subprocess.run(["sh", "-c", sides[side][1]], check=True, timeout=60)

    def sample(side: str) -> tuple[float, float]:
        lab = sides[side][0]
        before, (kbefore, _) = cpu_seconds(pids[side]), machine_cpu()
        profile = Profile() if args.perf else None
        stop = control_pids(lab) if pause[side] else []
        try:
            with paused(stop):
                mbit = iperf(f"{lab}.{args.server}", server_ip, f"{lab}.{args.client}",
                             args.seconds).mbit
        except (CommandError, KeyError, subprocess.TimeoutExpired) as exc:
            print(f"  FAILED {lab}: {exc}", flush=True)
            return 0.0, 0.0
        finally:
            counts, syms = profile.stop() if profile else ({}, {})
        gbit = mbit * args.seconds / 1000
        if gbit:
            kernel[side].append(round((machine_cpu()[0] - kbefore) / gbit, 3))
            if counts:
                perf[side].append({g: n / gbit for g, n in counts.items()})
                symbols[side].append({k: n / gbit for k, n in syms.items()})
        return mbit, (cpu_seconds(pids[side]) - before) / gbit if gbit else 0.0

    for i in range(args.rounds):
        order = ("A", "B") if i % 2 == 0 else ("B", "A")
        loads.append(float(Path("/proc/loadavg").read_text().split()[0]))
        if args.concurrent:
            for side in order:
                setup(side)
            with ThreadPoolExecutor(2) as pool:  # the first of `order` starts first
                futures = {side: pool.submit(sample, side) for side in order}
            results = {side: f.result() for side, f in futures.items()}
        else:
            results = {}
            for side in order:  # a setup right before its own sample: it may undo the other's
                setup(side)
                results[side] = sample(side)
        for side, (mbit, cost) in results.items():
            failures += mbit == 0.0
            values[side].append(round(mbit, 1))
            cpu[side].append(round(cost, 2))
    a, b = values["A"], values["B"]
    ratios = [round(x / y, 3) if y else 0.0 for x, y in zip(a, b, strict=True)]
    ci = ratio_ci(ratios)
    cratios = [round(x / y, 3) if x and y else 0.0 for x, y in zip(cpu["A"], cpu["B"],
                                                                   strict=True)]
    summary = {"label": args.label, "a": a, "b": b, "ratios": ratios,
               "ratio": statistics.median(ratios), "geomean": ci and round(ci[0], 3),
               "ci95": ci and [round(ci[1], 3), round(ci[2], 3)],
               "a_mbit": statistics.median(a), "b_mbit": statistics.median(b),
               "failures": failures, "load": loads,
               "a_cpu_s_per_gbit": cpu["A"], "b_cpu_s_per_gbit": cpu["B"],
               "a_kernel_cpu_s_per_gbit": kernel["A"], "b_kernel_cpu_s_per_gbit": kernel["B"]}
    print(f"{args.label:<40} A {statistics.median(a):6.1f} ({min(a)}-{max(a)})  B "
          f"{statistics.median(b):6.1f} ({min(b)}-{max(b)})  A/B median {summary['ratio']:.3f} "
          f"range {min(ratios):.3f}-{max(ratios):.3f}  n={args.rounds} fail={failures} load "
          f"{min(loads)}-{max(loads)}", flush=True)
    print(f"  A/B per round: {' '.join(f'{r:.2f}' for r in ratios)}")
    print(f"  A/B geometric mean {ci_text(ci)}; wireguard-go CPU-s/Gbit A "
          f"{statistics.median(cpu['A']):.2f} B {statistics.median(cpu['B']):.2f}, A/B "
          f"{ci_text(ratio_ci(cratios))}; machine kernel CPU-s/Gbit A "
          f"{statistics.median(kernel['A'] or [0]):.2f} B "
          f"{statistics.median(kernel['B'] or [0]):.2f}")
    if args.perf and perf["A"] and perf["B"]:
        summary["perf_samples_per_gbit"] = {}
        print("  perf cpu-clock samples per Gbit (median), A / B:")
        for group in perf["A"][0]:
            ga = statistics.median(p[group] for p in perf["A"])
            gb = statistics.median(p[group] for p in perf["B"])
            summary["perf_samples_per_gbit"][group] = [round(ga, 1), round(gb, 1)]
            print(f"    {group:<14} {ga:8.1f} / {gb:8.1f}  ({ga - gb:+.1f})")
        # the groups name what was suspected; the largest differences by symbol find the rest
        diffs = symbol_differences(symbols["A"], symbols["B"])
        summary["perf_symbol_differences"] = diffs
        print("  kernel symbols with the largest difference (median per Gbit), A / B:")
        for sym, ga, gb in diffs:
            print(f"    {sym:<40} {ga:8.1f} / {gb:8.1f}  ({ga - gb:+.1f})")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
