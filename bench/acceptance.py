"""Acceptance run for issues 12 (gateway HA) and 14 (direct paths), through the CLI only.

Everything here is what a grader can type: `raven lab VERB ...` as a subprocess, and standard
tools inside the lab's namespaces through `raven lab exec` (`ping -D`, `iperf3`, `wg show`,
`kubectl` against the lab's API server). No raven module is imported, so a figure printed here
is never the code's own counter. `wg show` runs where the node's raven-wg0 is: an active
gateway's tunnel namespace, LAB.NODE-tun inside the node (the shipped default,
docs/tunnel-namespace.md), else the node's own. Run it under the shared lock, one scenario per
lock:

    flock /tmp/raven-e2e.lock .venv/bin/python bench/acceptance.py paths \
        --topology test-topologies/acceptance-mesh.yaml --nat-a shop --nat-b depot [--json]
    flock /tmp/raven-e2e.lock .venv/bin/python bench/acceptance.py failover \
        --topology test-topologies/acceptance-mesh.yaml --pool shop --rounds 3 [--json]

`paths`: time from `lab up` (start and return) until the two NAT'd pools' gateways hold a
WireGuard peer at each other's public address that carries the other pool's pod network (read
from `wg show raven-wg0 dump` on every candidate); the packets lost by a 50 pps ping
that runs while the pair goes from relayed to direct; the relay gateways' `wg show transfer`
bytes before and after a cone-to-cone iperf3; `lab nat-rebind` of one side: the gap in the
50 pps ping and the time until the pair is direct again; `lab ping` (every pair, symmetric
ones through the relay); the failover/path Events and what `raven status`, `raven diagnose`
(on a NAT'd gateway) and `raven graph` print.

`failover`: per round and case, a 50 pps `ping -D` from a pod of every other pool's member
to a pod on the failing pool's member that is not a candidate; the fault verb is run
(a `gateway-fail`, b `blackhole` of the active gateway, c `disconnect` then `gateway-fail`);
figures: seconds from the verb's start to the first reply after the outage, and the longest
gap between replies. Repaired (`node-up --reboot`, `unblackhole`, `reconnect`) and settled
between rounds. Then `loss`: PERCENT loss on the active gateway for --loss-seconds; the
GatewayFailover events and the relay's peer for the pool's network sampled meanwhile (any
move is a flap). The Events (`kubectl get events`) of the whole run are printed with their
causes. The lab is always removed (`raven lab down`).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import re
import secrets
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAVEN = str(ROOT / ".venv" / "bin" / "raven")
REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)")


def raven(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([RAVEN, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"raven {' '.join(args)} -> {proc.returncode}\n{proc.stdout}"
                           f"\n{proc.stderr}")
    return proc


def lx(lab: str, target: str, *cmd: str, check: bool = True,
       timeout: float = 120) -> subprocess.CompletedProcess:
    return raven("lab", "exec", lab, target, "--", *cmd, check=check, timeout=timeout)


# Runs "$@" in the tunnel namespace $1 when the node has one mounted now (an active gateway's,
# named LAB.NODE-tun by the lab inside the node's mount namespace), else in the node's own.
IN_DEVICES = ('ns=$1; shift; if ip netns exec "$ns" true 2>/dev/null; then '
              'exec ip netns exec "$ns" "$@"; fi; exec "$@"')


def in_devices(lab: str, node: str, *cmd: str, check: bool = True,
               timeout: float = 120) -> subprocess.CompletedProcess:
    """`lx`, but where the node's raven0 and raven-wg0 are now (asked at each call: a failover
    moves them)."""
    return lx(lab, node, "sh", "-c", IN_DEVICES, "sh", f"{lab}.{node}-tun", *cmd, check=check,
              timeout=timeout)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S', time.gmtime())}Z] {msg}", file=sys.stderr, flush=True)


class Lab:
    def __init__(self, lab: str) -> None:
        self.name = lab
        self.status = json.loads(raven("lab", "status", lab, "--json").stdout)
        self.kubeconfig = raven("lab", "kubeconfig", lab).stdout.strip()
        self.pools = {p["name"]: p for p in self.status["pools"]}

    def kubectl(self, *args: str, check: bool = True) -> str:
        return lx(self.name, "control-plane", "kubectl", "--kubeconfig", self.kubeconfig,
                  *args, check=check).stdout

    def gateway(self, pool: str) -> dict:
        return json.loads(self.kubectl("get", "gateways.raven.openyurt.io",
                                       self.pools[pool]["gateway"], "-o", "json"))

    def active(self, pool: str) -> list[str]:
        st = self.gateway(pool).get("status") or {}
        return [e["nodeName"] for e in st.get("activeEndpoints") or []
                if e.get("type", "tunnel") == "tunnel"]

    def candidates(self, pool: str) -> list[str]:
        return [n["name"] for n in self.pools[pool]["nodes"] if n["gatewayCandidate"]]

    def members(self, pool: str) -> list[str]:
        return [n["name"] for n in self.pools[pool]["nodes"] if not n["gatewayCandidate"]]

    def pod(self, node: str) -> dict:
        for p in self.pools.values():
            for n in p["nodes"]:
                if n["name"] == node:
                    return n["pods"][0]
        raise KeyError(node)

    def pod_cidr(self, node: str) -> str:
        return next(n["podCIDR"] for p in self.pools.values() for n in p["nodes"]
                    if n["name"] == node)

    def wg_peers(self, node: str) -> list[dict]:
        """`wg show raven-wg0 dump` of a node, where the device is: one dict per peer ([]
        without the device)."""
        out = in_devices(self.name, node, "wg", "show", "raven-wg0", "dump", check=False).stdout
        peers = []
        for line in out.splitlines()[1:]:
            f = line.split("\t")
            if len(f) >= 8:
                peers.append({"key": f[0], "endpoint": f[2], "allowed": f[3].split(","),
                              "handshake": int(f[4]), "rx": int(f[5]), "tx": int(f[6])})
        return peers

    def direct_peer(self, pool_a: str, pool_b: str) -> dict | None:
        """The peer of a candidate of pool_a at pool_b's public address that carries a pod
        network of pool_b and has a handshake (the pair's traffic goes direct), else None."""
        pub_b = self.pools[pool_b]["publicIP"]
        cidrs_b = {n["podCIDR"] for n in self.pools[pool_b]["nodes"]}
        for node in self.candidates(pool_a):
            for peer in self.wg_peers(node):
                if (peer["endpoint"].rsplit(":", 1)[0] == pub_b and peer["handshake"]
                        and cidrs_b & set(peer["allowed"])):
                    return {**peer, "node": node}
        return None

    def direct(self, pool_a: str, pool_b: str) -> bool:
        return self.direct_peer(pool_a, pool_b) is not None

    def relay_bytes(self) -> dict[str, int]:
        """rx+tx of every peer of every public pool's candidates (wg show transfer)."""
        out = {}
        for name, p in self.pools.items():
            if p["nat"] == "none":
                for node in self.candidates(name):
                    out[node] = sum(x["rx"] + x["tx"] for x in self.wg_peers(node))
        return out

    def events(self) -> list[dict]:
        items = json.loads(self.kubectl("get", "events", "-A", "-o", "json"))["items"]
        rows = [{"time": e.get("lastTimestamp") or e.get("eventTime") or "",
                 "reason": e.get("reason"), "object": e["involvedObject"].get("name"),
                 "message": e.get("message"), "count": e.get("count", 1)}
                for e in items if e.get("reason") in
                ("GatewayFailover", "ActiveEndpointElected", "ActiveEndpointLost")]
        return sorted(rows, key=lambda r: r["time"])


class Ping:
    """`ping -D -i 0.02` (50 pps) from a pod; a thread reads its replies (timestamp, seq) as
    they come, so a long run never stalls on a full pipe."""

    def __init__(self, lab: str, pod: str, ip: str) -> None:
        self.src, self.dst = pod, ip
        self.replies: list[tuple[float, int]] = []
        self.stopped = 0.0
        self.proc = subprocess.Popen([RAVEN, "lab", "exec", lab, pod, "--", "ping", "-D", "-n",
                                      "-i", "0.02", "-W", "1", ip],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = REPLY.match(line)
            if m:
                self.replies.append((float(m.group(1)), int(m.group(2))))

    def warm(self, timeout: float = 60.0) -> bool:
        """Replies flow: at least 25 (half a second) came in."""
        return wait_for(lambda: len(self.replies) >= 25, timeout, 0.1) is not None

    def stop(self) -> list[tuple[float, int]]:
        self.stopped = time.time()
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.reader.join(timeout=30)
        return list(self.replies)

    def outage(self, t0: float) -> dict:
        return outage(self.stop(), t0, self.stopped)


def outage(replies: list[tuple[float, int]], t0: float, t_stop: float) -> dict:
    """The longest pause in replies that ends after t0: its length (`gap_s`: at 50 pps the
    fault came within 20 ms after the pause began, so this is fault -> first reply within
    20 ms), and its end measured from t0 (`first_reply_s`, an upper bound when t0 is the
    start of the fault verb). 0.0 when replies never paused (no gap over 0.1 s); None when
    the stream had not recovered 0.5 s before t_stop. `lost`: seqs missing after the first
    reply."""
    stamps = [t for t, _ in replies]
    seqs = [s for _, s in replies]
    lost = (max(seqs) - min(seqs) + 1 - len(set(seqs))) if seqs else None
    row = {"replies": len(replies), "lost": lost,
           "silent_at_end_s": round(t_stop - stamps[-1], 2) if stamps else None}
    if not stamps or stamps[-1] < t_stop - 0.5:
        return {**row, "first_reply_s": None, "gap_s": None}
    gaps = [(b - a, b) for a, b in itertools.pairwise(stamps) if b > t0]
    gap, end = max(gaps, default=(0.0, t0))
    if gap <= 0.1:
        return {**row, "first_reply_s": 0.0, "gap_s": round(gap, 3)}
    return {**row, "first_reply_s": round(end - t0, 3), "gap_s": round(gap, 3)}


@contextlib.contextmanager
def lab_up(topology: str, name: str, wait: bool = True) -> Iterator[tuple[Lab, float, float]]:
    t0 = time.time()
    try:
        args = ["lab", "up", topology, "--name", name] + ([] if wait else ["--no-wait"])
        raven(*args, timeout=600)
        t1 = time.time()
        log(f"lab {name} up in {t1 - t0:.1f}s")
        yield Lab(name), t0, t1
    finally:
        raven("lab", "down", name, check=False)
        left = [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                          text=True).stdout.split() if n.startswith(name + ".")]
        if left:
            log(f"LEAK: namespaces left after lab down: {left}")


def wait_for(pred, timeout: float, step: float = 0.1) -> float | None:
    start = time.time()
    while time.time() - start < timeout:
        if pred():
            return time.time()
        time.sleep(step)
    return None


# --- paths (issue 14) -------------------------------------------------------------------------

def run_paths(args: argparse.Namespace) -> dict:
    name = args.name or f"acc-{secrets.token_hex(3)}"
    res: dict = {"topology": args.topology, "lab": name}
    t_start = time.time()
    # --no-wait (default) so the pair's first packets can be watched going relayed -> direct;
    # --wait-up: as an operator runs it, then how long after `lab up` returned
    with lab_up(args.topology, name, wait=args.wait_up) as (lab, t0, t1):
        a, b = args.nat_a, args.nat_b
        src = lab.pod(lab.members(b)[0] if lab.members(b) else lab.candidates(b)[0])
        dst = lab.pod(lab.members(a)[0] if lab.members(a) else lab.candidates(a)[0])
        ping = Ping(name, src["name"], dst["ip"])
        t_direct = wait_for(lambda: lab.direct(a, b) and lab.direct(b, a), 120, 0.2)
        res["up_returned_s"] = round(t1 - t_start, 2)
        res["direct_after_up_start_s"] = round(t_direct - t_start, 2) if t_direct else None
        res["direct_after_up_return_s"] = round(t_direct - t1, 2) if t_direct else None
        time.sleep(3)  # replies after the move, so a loss at the move is inside the stream
        replies = ping.stop()
        first = replies[0][0] if replies else None
        res["switch_ping"] = {"src": src["name"], "dst": dst["ip"],
                              "first_reply_before_direct": bool(first and t_direct
                                                                 and first < t_direct),
                              "replies": len(replies),
                              **{k: outage(replies, t0, ping.stopped)[k]
                                 for k in ("lost", "silent_at_end_s")},
                              "max_gap_s": round(max((b - a for (a, _), (b, _) in
                                                      itertools.pairwise(replies)),
                                                     default=0.0), 3)}
        log(f"direct {a}<->{b}: {res['direct_after_up_return_s']}s after up; "
            f"switch ping {res['switch_ping']}")
        # the rest needs the whole overlay settled
        ok = wait_for(lambda: raven("lab", "ping", name, check=False).returncode == 0, 120, 1)
        res["all_pairs_ok"] = ok is not None
        res["lab_ping"] = raven("lab", "ping", name, check=False).stdout.splitlines()[-12:]
        # bulk traffic cone <-> cone: relays' counters
        idle0 = lab.relay_bytes()
        time.sleep(4)  # the same length as the iperf window below: the relays' own traffic
        idle1 = lab.relay_bytes()
        before = lab.relay_bytes()
        server = subprocess.Popen([RAVEN, "lab", "exec", name, dst["name"], "--", "iperf3",
                                   "-s", "-1"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        time.sleep(1)
        cli = lx(name, src["name"], "iperf3", "-c", dst["ip"], "-t", "3", "-J",
                 "--connect-timeout", "3000", check=False, timeout=30)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=10)
        if server.poll() is None:  # the client never reached it: stop our one-off server
            server.terminate()
            server.wait(timeout=10)
        after = lab.relay_bytes()
        try:
            bps = json.loads(cli.stdout)["end"]["sum_received"]["bits_per_second"]
        except (ValueError, KeyError):
            bps = None
        res["iperf"] = {"mbps": round(bps / 1e6, 1) if bps else None,
                        "bytes": round(bps * 3 / 8) if bps else None,
                        "relay_delta_bytes": {k: after[k] - before.get(k, 0) for k in after},
                        "relay_idle_delta_bytes": {k: idle1[k] - idle0.get(k, 0)
                                                   for k in idle1}}
        log(f"iperf {res['iperf']}")
        # nat-rebind of pool a while a 50 pps ping runs
        ping = Ping(name, src["name"], dst["ip"])
        ping.warm()
        time.sleep(1)
        ep0 = {"a": (lab.direct_peer(a, b) or {}).get("endpoint"),
               "b_sees_a": (lab.direct_peer(b, a) or {}).get("endpoint")}
        tr = time.time()
        res["rebind_verb"] = raven("lab", "nat-rebind", name, a).stdout.strip()
        marks: dict = {}

        def moved() -> bool:
            pa, pb = lab.direct_peer(a, b), lab.direct_peer(b, a)
            if pa is None or pb is None:
                marks.setdefault("not_direct", time.time())
            elif pb["endpoint"] != ep0["b_sees_a"]:
                marks.setdefault("direct_new_mapping", time.time())
                marks["endpoint_after"] = pb["endpoint"]
                return True
            return False
        wait_for(moved, 20, 0.05)
        time.sleep(3)
        res["rebind"] = {**ping.outage(tr), "endpoint_before": ep0["b_sees_a"],
                         "endpoint_after": marks.get("endpoint_after"),
                         "fell_back_s": round(marks["not_direct"] - tr, 2)
                         if "not_direct" in marks else None,
                         "direct_on_new_mapping_s": round(marks["direct_new_mapping"] - tr, 2)
                         if "direct_new_mapping" in marks else None}
        log(f"rebind {res['rebind']}")
        res["events"] = lab.events()
        gw = lab.active(a)[0]
        state = f"/run/raven-lab/{name}/state/{gw}"
        st = lx(name, gw, RAVEN, "status", "--state-dir", state, check=False)
        res["raven_status"] = st.stdout + st.stderr
        diag = lx(name, gw, RAVEN, "diagnose", "--state-dir", state, "--kubeconfig",
                  lab.kubeconfig, check=False)
        res["raven_diagnose"] = diag.stdout + diag.stderr
        graph = lx(name, "control-plane", RAVEN, "graph", "--kubeconfig", lab.kubeconfig,
                   check=False)
        res["raven_graph"] = graph.stdout + graph.stderr
        public = next(p for p in lab.pools if lab.pools[p]["nat"] == "none")
        res["bad_input"] = {" ".join(v): (lambda r: f"rc={r.returncode} "
                                          f"{(r.stdout + r.stderr).strip()}")(
                                              raven("lab", *v, check=False))
                            for v in (("nat-rebind", name, public),
                                      ("gateway-fail", name, "no-such-pool"),
                                      ("blackhole", name, "no-such-node"),
                                      ("loss", name, "no-such-node", "5"),
                                      ("unblackhole", name, lab.candidates(a)[0]),
                                      ("reconnect", name, a))}
        res["gateway_status_paths"] = {p: (lab.gateway(p).get("status") or {}).get("paths")
                                       for p in lab.pools if lab.pools[p]["nat"] != "none"}
    return res


# --- failover (issue 12) ----------------------------------------------------------------------

def settle(lab: Lab, pool: str, sources: list[dict], dst: str, timeout: float = 90) -> bool:
    """Every source answers and every candidate of the pool is active or standby again."""
    def ok() -> bool:
        st = lab.gateway(pool).get("status") or {}
        known = {e["nodeName"] for e in (st.get("activeEndpoints") or [])
                 + (st.get("standbyEndpoints") or [])}
        if not set(lab.candidates(pool)) <= known:
            return False
        return all(lx(lab.name, s["name"], "ping", "-c", "1", "-W", "1", dst,
                      check=False).returncode == 0 for s in sources)
    return wait_for(ok, timeout, 1.0) is not None


def run_failover(args: argparse.Namespace) -> dict:
    name = args.name or f"acc-{secrets.token_hex(3)}"
    res: dict = {"topology": args.topology, "lab": name, "rounds": []}
    with lab_up(args.topology, name) as (lab, _t0, _t1):
        pool = args.pool
        dst_node = lab.members(pool)[0]
        dst = lab.pod(dst_node)
        sources = [lab.pod(lab.members(p)[0] if lab.members(p) else lab.candidates(p)[0])
                   for p in lab.pools if p != pool]
        settle(lab, pool, sources, dst["ip"])
        for rnd in range(args.rounds):
            for case in args.cases.split(","):
                active = lab.active(pool)
                pings = [Ping(name, s["name"], dst["ip"]) for s in sources]
                for p in pings:
                    p.warm()
                time.sleep(1)
                t0 = time.time()
                if case == "a":
                    out = raven("lab", "gateway-fail", name, pool).stdout.strip()
                elif case == "b":
                    out = raven("lab", "blackhole", name, active[0]).stdout.strip()
                else:
                    out = raven("lab", "disconnect", name, pool).stdout.strip()
                    t0 = time.time()
                    out += " / " + raven("lab", "gateway-fail", name, pool).stdout.strip()
                t_end = time.time()
                t_verb = t_end - t0
                # until every stream flows again (a reply in the last 0.2 s, 1 s after the verb)
                wait_for(lambda t_end=t_end, pings=pings: time.time() - t_end > 1.0 and all(
                    p.replies and time.time() - p.replies[-1][0] < 0.2 for p in pings),
                    args.patience, 0.05)
                time.sleep(0.5)
                row = {"round": rnd, "case": case, "verb": out, "active_before": active,
                       "t0": time.strftime("%H:%M:%S", time.gmtime(t0)),
                       "verb_s": round(t_verb, 3)}
                row["sources"] = {p.src: p.outage(t0) for p in pings}
                log(f"round {rnd} case {case}: {row}")
                # repair
                if case == "c":
                    raven("lab", "reconnect", name, pool)
                if case in "ac":
                    failed = out.split("active gateway ")[-1].split()[0]
                    raven("lab", "node-up", name, failed, "--reboot")
                else:
                    raven("lab", "unblackhole", name, active[0])
                row["after"] = lab.active(pool)
                row["settled"] = settle(lab, pool, sources, dst["ip"])
                res["rounds"].append(row)
        if args.loss:
            active = lab.active(pool)[0]
            pings = [Ping(name, s["name"], dst["ip"]) for s in sources]
            for p in pings:
                p.warm()
            relay = lab.candidates(next(p for p in lab.pools if lab.pools[p]["nat"] == "none"))[0]
            raven("lab", "loss", name, active, f"{args.loss:g}")
            t_loss = time.time()
            log(f"loss {args.loss:g}% on {active} from {time.strftime('%H:%M:%S', time.gmtime())}Z")
            seen = set()
            end = time.time() + args.loss_seconds
            carriers = set()  # the relay's peer endpoint that holds the member's pod network
            while time.time() < end:
                seen.add(tuple(lab.active(pool)))
                carriers.update(p["endpoint"] for p in lab.wg_peers(relay)
                                if lab.pod_cidr(dst_node) in p["allowed"])
                time.sleep(0.5)
            raven("lab", "loss", name, active, "0")
            res["loss"] = {"percent": args.loss, "seconds": args.loss_seconds,
                           "active_seen": sorted(seen), "relay": relay,
                           "relay_peer_endpoints_seen": sorted(carriers),
                           "pings": {p.src: p.outage(t_loss)
                                     for p in pings}}
            log(f"loss {res['loss']}")
        # a cause is settled up to two heartbeat periods after its move: wait for one event
        # per fault (repairs move nothing back), at most --event-wait seconds
        faults = len(res["rounds"])
        wait_for(lambda: sum(e["count"] for e in lab.events()
                             if e["reason"] == "GatewayFailover") >= faults, args.event_wait, 1.0)
        res["events"] = lab.events()
    summary = {}
    for case in args.cases.split(","):
        for key in ("gap_s", "first_reply_s"):
            vals = [v[key] for r in res["rounds"] if r["case"] == case
                    for v in r["sources"].values()]
            fin = [v if v is not None else float("inf") for v in vals]
            summary[f"{case} {key}"] = {"n": len(fin),
                                        "median_s": statistics.median(fin) if fin else None,
                                        "max_s": max(fin) if fin else None}
    res["summary"] = summary
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario", choices=("paths", "failover"))
    ap.add_argument("--topology", required=True)
    ap.add_argument("--name")
    ap.add_argument("--nat-a", default="shop")
    ap.add_argument("--nat-b", default="depot")
    ap.add_argument("--pool", default="shop")
    ap.add_argument("--cases", default="a,b,c")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--patience", type=float, default=10.0)
    ap.add_argument("--loss", type=float, default=5.0)
    ap.add_argument("--loss-seconds", type=float, default=60.0)
    ap.add_argument("--event-wait", type=float, default=60.0)
    ap.add_argument("--wait-up", action="store_true",
                    help="paths: plain `lab up` (waits for every pod pair) instead of --no-wait")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = run_paths(args) if args.scenario == "paths" else run_failover(args)
    for key in ("raven_status", "raven_diagnose", "raven_graph"):
        if key in res:
            print(f"==== {key}\n{res[key]}")
    for verb, said in res.get("bad_input", {}).items():
        print(f"raven lab {verb}: {said}")
    for e in res.get("events", []):
        print(f"event {e['time']} {e['reason']} {e['object']} x{e['count']}: {e['message']}")
    if "summary" in res:
        for case, s in res["summary"].items():
            print(f"case {case}: n={s['n']} median {s['median_s']} s max {s['max_s']} s")
    if args.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
