"""All-pairs pod ping of a lab, in parallel, with ICMP echoes sent inside the pods' namespaces.

Rules kept:
- The oracle is ICMP actually crossing the lab: for each (source, destination) pair an echo
  request leaves the source pod's namespace; a pair is ok when the matching echo reply came back.
- One probe process (raven.lab.icmp, through raven.lab.netns.icmp_probe_many) echoes every
  pair at once from inside the source pods' namespaces, so the whole matrix takes about one
  timeout per try; its result is read as JSON (no ping text is scraped).
- `scope="pool"` limits the pairs to pods of the same pool (the only ones expected to answer
  before the overlay exists).
- Every family both pods have is pinged: a pair is (source, destination, family), `family`
  `ipv4` or `ipv6`; IPv4-only labs give exactly the pairs they always gave.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from raven.lab import netns as nsutil
from raven.lab.plan import LabPlan

SCOPES = ("all", "pool")


@dataclass(frozen=True)
class PingPair:
    src: str
    dst: str
    src_pool: str
    dst_pool: str
    ok: bool
    rtt_ms: float | None
    family: str = "ipv4"  # ipv4 | ipv6
    dst_ip: str = ""


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


def family_of(address: str) -> str:
    return "ipv6" if ":" in address else "ipv4"


def ping_all(plan: LabPlan, scope: str = "all", tries: int = 2,
             timeout_s: float = 1.0) -> PingReport:
    if scope not in SCOPES:
        raise ValueError(f"scope {scope!r}: use one of {', '.join(SCOPES)}")
    pods = [(pool.name, pod) for pool, _, pod in plan.pods()]
    by_ip = {ip: (pool, pod) for pool, pod in pods for ip in pod.addresses()}
    jobs = []
    for src_pool, src in pods:
        families = {family_of(a) for a in src.addresses()}
        dsts = [ip for pool, pod in pods
                if pod.name != src.name and (scope == "all" or pool == src_pool)
                for ip in pod.addresses() if family_of(ip) in families]
        if dsts:
            jobs.append((src_pool, src, dsts))

    rtts = nsutil.icmp_probe_many({src.netns: dsts for _, src, dsts in jobs},
                                  tries=tries, timeout_s=timeout_s)
    pairs: list[PingPair] = []
    for src_pool, src, dsts in jobs:
        for ip in dsts:
            dst_pool, dst = by_ip[ip]
            rtt = rtts[src.netns].get(ip)
            pairs.append(PingPair(src.name, dst.name, src_pool, dst_pool, rtt is not None, rtt,
                                  family_of(ip), ip))
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
