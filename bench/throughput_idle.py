"""CPU the control processes of a running lab take while the lab is idle (no test traffic).

On this 2-core machine every CPU second a control loop takes is a second the data path of
bench/throughput.py does not get, and the hand-built twin runs no such process. This reads
utime + stime (all threads; plus cutime + cstime: children it ran and reaped, such as `nft`
or `ip`) of every supervised process of the lab and of its wireguard-go daemons from
/proc/PID/stat at the start and the end of a window, and prints each one's CPU in per cent of
one CPU over the window, and the sum. `--py-spy` also samples the Python processes with
py-spy (`py-spy record --format raw`, idle threads left out) for the same window and prints,
per process, the functions that were on CPU most often: which loops take the time (`--gil`:
only the thread that holds the GIL is sampled, so threads waiting in select() or on a
condition do not count). `--paused` measures with the lab's control processes SIGSTOPped
(throughput.paused): what wireguard-go then still uses is its own, not the agents' probes.
Besides the supervised processes and wireguard-go, every other process in one of the lab's node
namespaces is measured too (the agents' probe responders, iperf3). `--load CLIENT_POD
SERVER_POD` runs one iperf3 sample across the lab for the window: the same processes' CPU
while the data path is busy, as during a sample of bench/throughput.py.

    .venv/bin/python bench/throughput_idle.py LAB [--seconds 30] [--py-spy] [--paused]
        [--load CLIENT_POD SERVER_POD] [--json]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from throughput import control_pids, paused, wireguard_pids

from raven.lab.iperf import iperf
from raven.lab.netns import netns_path
from raven.lab.runtime import load_plan, supervised


def ticks(pid: int) -> tuple[int, int] | None:
    """(own utime + stime, reaped children's cutime + cstime) of a process, in clock ticks."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def processes(lab: str) -> dict[int, str]:
    """pid -> label (target/name) of the lab's supervised processes, its wireguard-go, and
    every other process inside one of its node namespaces (found by netns inode): the agents'
    probe responders (a process of their own, started by the agent, not supervised by the
    lab), wireguard-go, iperf3 and anything else that runs there."""
    out = {int(r["pid"]): f"{r['target']}/{r['name']}" for r in supervised(lab) if r["running"]}
    plan = load_plan(lab)
    for pid in wireguard_pids(lab, plan):
        out.setdefault(pid, f"wireguard-go pid {pid}")
    nodes = {}
    for pool in plan.pools:
        for node in pool.nodes:
            with contextlib.suppress(OSError):
                nodes[os.stat(netns_path(f"{lab}.{node.name}")).st_ino] = node.name
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in out:
            continue
        try:
            node = nodes.get(os.stat(entry / "ns" / "net").st_ino)
            if node is None:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        pid = int(entry.name)
        words = [Path(w.decode(errors="replace")).name for w in argv if w][:3]
        out[pid] = f"{node}/{' '.join(words)[:40]}"
    return out


def top_functions(raw: Path, limit: int = 6) -> list[tuple[str, int]]:
    """The innermost Python frames of py-spy's collapsed stacks, by samples; a frame inside
    the standard library is attributed to the first frame of ours above it (the loop that
    called it), written `ours <- stdlib`."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")[1:]  # the first is the thread
        if not frames:
            continue
        ours = next((f for f in reversed(frames) if "raven/" in f), None)
        leaf = frames[-1]
        counts[leaf if ours in (None, leaf) else f"{ours} <- {leaf}"] += int(n)
    return counts.most_common(limit)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("lab")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--py-spy", action="store_true", help="also sample the Python "
                        "processes with py-spy and print their busiest functions")
    parser.add_argument("--paused", action="store_true", help="SIGSTOP the lab's control "
                        "processes during the window")
    parser.add_argument("--load", nargs=2, metavar=("CLIENT_POD", "SERVER_POD"),
                        help="run one iperf3 sample from CLIENT_POD to SERVER_POD for the "
                        "window (e.g. cloud-1-pod0 edge-1-pod0): the processes' CPU while "
                        "the data path is busy, as during bench/throughput.py's samples")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    pods = {pod.name: pod for pool in load_plan(args.lab).pools for node in pool.nodes
            for pod in node.pods}
    if args.load and not all(name in pods for name in args.load):
        parser.error(f"--load: pods of {args.lab} are {', '.join(sorted(pods))}")
    if args.paused and args.py_spy:
        parser.error("--py-spy samples the control processes; --paused stops them")
    procs = processes(args.lab)
    if not procs:
        sys.exit(f"lab {args.lab!r} has no running process; is it up? (`raven lab list`)")
    spies: dict[int, tuple[subprocess.Popen, Path]] = {}
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if args.py_spy:
        for pid in procs:
            if Path(f"/proc/{pid}/comm").read_text().strip().startswith("python"):
                fd, name = tempfile.mkstemp(prefix="raven-idle-", suffix=".txt")
                os.close(fd)
                spies[pid] = (subprocess.Popen(
                    [spy, "record", "--pid", str(pid), "--duration", f"{args.seconds:g}",
                     "--rate", "100", "--format", "raw", "--output", name, "--nonblocking",
                     "--gil"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), Path(name))
    hz = os.sysconf("SC_CLK_TCK")
    with paused(control_pids(args.lab) if args.paused else []):
        before = {pid: ticks(pid) for pid in procs}
        start = time.monotonic()
        mbit = None
        if args.load:
            client, server = (pods[name] for name in args.load)
            mbit = iperf(server.netns, server.ip, client.netns,
                         args.seconds).mbit
        else:
            time.sleep(args.seconds)
        after = {pid: ticks(pid) for pid in procs}
        elapsed = time.monotonic() - start
    rows = []
    for pid, label in sorted(procs.items(), key=lambda kv: kv[1]):
        a, b = before[pid], after[pid]
        if a is None or b is None:
            rows.append({"process": label, "pid": pid, "gone": True})
            continue
        own = 100 * (b[0] - a[0]) / hz / elapsed
        children = 100 * (b[1] - a[1]) / hz / elapsed
        rows.append({"process": label, "pid": pid, "cpu_pct": round(own, 2),
                     "children_pct": round(children, 2)})
        print(f"{label:<40} pid {pid:>7}  CPU {own:6.2f} %  reaped children {children:5.2f} %")
    total = sum(r.get("cpu_pct", 0) + r.get("children_pct", 0) for r in rows)
    control = sum(r.get("cpu_pct", 0) + r.get("children_pct", 0) for r in rows
                  if "wireguard-go" not in r["process"])
    print(f"sum {total:.2f} % of one CPU (control processes {control:.2f} %) over "
          f"{elapsed:.1f} s; load average {Path('/proc/loadavg').read_text().split()[:3]}"
          + ("" if mbit is None else f"; iperf3 {mbit:.1f} Mbit/s"))
    for pid, (proc, raw) in spies.items():
        try:
            proc.wait(timeout=args.seconds + 60)
            top = top_functions(raw) if raw.exists() else []
        finally:
            raw.unlink(missing_ok=True)
        print(f"py-spy {procs[pid]} (samples at 100 Hz holding the GIL):")
        for func, n in top:
            print(f"  {n:5d}  {func}")
        next(r for r in rows if r["pid"] == pid)["py_spy_top"] = top
    if args.json:
        print(json.dumps({"lab": args.lab, "seconds": elapsed, "processes": rows,
                          "total_pct": round(total, 2), "control_pct": round(control, 2),
                          "load": args.load, "mbit": mbit}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
