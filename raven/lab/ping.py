"""All-pairs pod ping of a lab, in parallel, with the real `ping` inside the pods' namespaces.

Rules kept:
- The oracle is ICMP actually crossing the lab: one `ping` per (source, destination) pair, run
  inside the source pod's namespace; a pair is ok when an echo reply came back.
- One process per source pod starts all of its pings at once, so the whole matrix takes about
  one timeout, not one timeout per pair.
- `scope="pool"` limits the pairs to pods of the same pool (the only ones expected to answer
  before the overlay exists).
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from raven.lab import netns as nsutil
from raven.lab.plan import LabPlan

SCOPES = ("all", "pool")
RTT = re.compile(r"= [\d.]+/([\d.]+)/")

# $1 = tries, $2 = timeout, then destinations. Prints "DST OK AVG_RTT" per destination.
PING_SCRIPT = r"""
tries=$1; wait_s=$2; shift 2
for d in "$@"; do
  (
    i=0; ok=1
    while [ $i -lt "$tries" ]; do
      out=$(ping -n -q -c 1 -W "$wait_s" "$d" 2>&1) && { ok=0; break; }
      i=$((i + 1))
    done
    echo "$d $ok $(printf '%s' "$out" | tail -n 1)"
  ) &
done
wait
"""


@dataclass(frozen=True)
class PingPair:
    src: str
    dst: str
    src_pool: str
    dst_pool: str
    ok: bool
    rtt_ms: float | None


@dataclass(frozen=True)
class PingReport:
    ok: bool
    pairs: tuple[PingPair, ...]

    def to_json(self) -> dict:
        return {"ok": self.ok, "pairs": [asdict(p) for p in self.pairs]}

    def matrix(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(src_pool, dst_pool) -> (answered, tried)."""
        out: dict[tuple[str, str], tuple[int, int]] = {}
        for p in self.pairs:
            ok, total = out.get((p.src_pool, p.dst_pool), (0, 0))
            out[(p.src_pool, p.dst_pool)] = (ok + int(p.ok), total + 1)
        return out


def ping_all(plan: LabPlan, scope: str = "all", tries: int = 2, timeout_s: int = 1) -> PingReport:
    if scope not in SCOPES:
        raise ValueError(f"scope {scope!r}: use one of {', '.join(SCOPES)}")
    pods = [(pool.name, pod) for pool, _, pod in plan.pods()]
    by_ip = {pod.ip: (pool, pod) for pool, pod in pods}
    jobs = []
    for src_pool, src in pods:
        dsts = [pod.ip for pool, pod in pods
                if pod.name != src.name and (scope == "all" or pool == src_pool)]
        if dsts:
            jobs.append((src_pool, src, dsts))

    def run_one(job: tuple) -> list[PingPair]:
        src_pool, src, dsts = job
        proc = nsutil.run(["nsenter", f"--net=/run/netns/{src.netns}", "sh", "-c", PING_SCRIPT,
                           "ping-all", str(tries), str(timeout_s), *dsts],
                          check=False, timeout=60 + tries * timeout_s * 2)
        seen: dict[str, PingPair] = {}
        for line in proc.stdout.splitlines():
            parts = line.split(" ", 2)
            if len(parts) < 2 or parts[0] not in by_ip:
                continue
            dst_pool, dst = by_ip[parts[0]]
            ok = parts[1] == "0"
            match = RTT.search(parts[2]) if ok and len(parts) > 2 else None
            seen[parts[0]] = PingPair(src.name, dst.name, src_pool, dst_pool, ok,
                                      float(match.group(1)) if match else None)
        out = []
        for ip in dsts:  # a destination with no output line counts as failed
            dst_pool, dst = by_ip[ip]
            out.append(seen.get(ip, PingPair(src.name, dst.name, src_pool, dst_pool, False, None)))
        return out

    pairs: list[PingPair] = []
    with ThreadPoolExecutor(max_workers=16) as pool:
        for result in pool.map(run_one, jobs):
            pairs.extend(result)
    return PingReport(ok=all(p.ok for p in pairs), pairs=tuple(pairs))


def format_matrix(report: PingReport, pools: list[str]) -> str:
    """Pool-by-pool table of answered/tried pod pairs."""
    cells = report.matrix()
    width = max([len(p) for p in pools] + [9])
    lines = [" " * (width + 2) + "".join(f"{p:>{width + 2}}" for p in pools)]
    for src in pools:
        row = f"{src:<{width + 2}}"
        for dst in pools:
            if (src, dst) in cells:
                ok, total = cells[(src, dst)]
                row += f"{f'{ok}/{total}':>{width + 2}}"
            else:
                row += f"{'-':>{width + 2}}"
        lines.append(row)
    return "\n".join(lines)
