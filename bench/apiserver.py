"""Benchmark of the embedded API server (loopback only, bounded duration). Prints figures.

Phases, all against a `raven apiserver` subprocess over TLS with the bearer token:
1. populate: N Nodes and M Gateways created over HTTP (several keep-alive connections);
2. LIST: full LIST of Nodes and of Gateways, median of several runs (server time to first byte +
   transfer), and the same LIST decoded with json (what a client pays on top);
3. watch fan-out: W watchers of Gateways (what agents watch) while a writer patches Gateways at
   R writes/s for D seconds; each write carries its send time, every watcher records the delay to
   its arrival: p50/p99/max over all deliveries, deliveries missed;
4. RSS of the server process (current and peak).

It is a benchmark, not a test: no pass/fail. `--json` prints one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import re
import selectors
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STAMP = re.compile(rb'"bench/sent":"([0-9.]+)"')


class Client:
    """One keep-alive HTTPS connection with the bearer token."""

    def __init__(self, host: str, port: int, token: str, context: ssl.SSLContext) -> None:
        self.conn = http.client.HTTPSConnection(host, port, context=context, timeout=120)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                        "Accept": "application/json"}

    def call(self, method: str, path: str, body: Any = None,
             content_type: str = "application/json") -> tuple[int, bytes]:
        headers = dict(self.headers, **{"Content-Type": content_type})
        data = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, path, body=data, headers=headers)
        response = self.conn.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self.conn.close()


def start_server(data_dir: Path) -> tuple[subprocess.Popen[str], str, int, str, ssl.SSLContext]:
    process = subprocess.Popen(
        [sys.executable, "-m", "raven.cli", "apiserver", "--data-dir", str(data_dir),
         "--listen", "127.0.0.1:0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.match(r"listening on https://([\d.]+):(\d+) ", line)
    if not match:
        process.kill()
        raise SystemExit(f"apiserver did not start: {line!r}")
    token = (data_dir / "token").read_text().strip()
    context = ssl.create_default_context(cafile=str(data_dir / "ca.crt"))
    return process, match.group(1), int(match.group(2)), token, context


def rss_kib(pid: int) -> tuple[int, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def node(i: int) -> dict[str, Any]:
    name = f"bench-node-{i:05d}"
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "raven.openyurt.io/gateway": f"gw-{i % 1000:04d}", "kubernetes.io/hostname": name}},
        "spec": {"podCIDR": f"10.{i // 256 % 256}.{i % 256}.0/24",
                 "podCIDRs": [f"10.{i // 256 % 256}.{i % 256}.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": f"198.18.{i // 250}.{i % 250 + 1}"},  # noqa: E501
                                 {"type": "Hostname", "address": name}],
                   "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                   "nodeInfo": {"kubeletVersion": "v1.30.0", "osImage": "Debian 12"}},
    }


def gateway(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "raven.openyurt.io/v1beta1", "kind": "Gateway",
        "metadata": {"name": f"gw-{i:04d}"},
        "spec": {"endpoints": [{"nodeName": f"bench-node-{i:05d}", "type": "tunnel",
                                "port": 4500, "underNAT": False,
                                "publicIP": f"203.0.113.{i % 250 + 1}"}],
                 "tunnelConfig": {"Replicas": 1}},
    }


def populate(connect: Any, items: list[tuple[str, dict[str, Any]]], workers: int) -> float:
    chunks = [items[i::workers] for i in range(workers)]

    def run(chunk: list[tuple[str, dict[str, Any]]]) -> None:
        client = connect()
        for path, body in chunk:
            status, data = client.call("POST", path, body)
            if status not in (201, 409):
                raise SystemExit(f"POST {path} -> {status}: {data[:300]!r}")
        client.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, chunks))
    return time.perf_counter() - started


def time_list(connect: Any, path: str, runs: int) -> tuple[float, float, int, int]:
    client = connect()
    raw_times, decoded_times = [], []
    size = count = 0
    for _ in range(runs):
        started = time.perf_counter()
        status, data = client.call("GET", path)
        raw_times.append(time.perf_counter() - started)
        assert status == 200, data[:200]
        started = time.perf_counter()
        count = len(json.loads(data)["items"])
        decoded_times.append(raw_times[-1] + time.perf_counter() - started)
        size = len(data)
    client.close()
    return statistics.median(raw_times), statistics.median(decoded_times), count, size


def open_watch(host: str, port: int, token: str, context: ssl.SSLContext, rv: str,
               timeout: int) -> tuple[ssl.SSLSocket, bytes]:
    """A TLS connection with a Gateway watch request sent and the response headers read."""
    sock = context.wrap_socket(socket.create_connection((host, port), timeout=60),
                               server_hostname=host)
    sock.sendall(
        f"GET /apis/raven.openyurt.io/v1beta1/gateways?watch=true&resourceVersion={rv}"
        f"&timeoutSeconds={timeout} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise ConnectionError("watch closed before its headers")
        data += more
    head, rest = data.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(head.decode(errors="replace")[:200])
    return sock, rest


def watcher_group(host: str, port: int, token: str, cafile: str, rv: str, timeout: int,
                  count: int, expected: int, ready: Any, results: Any) -> None:
    """Child process: `count` watch connections read with one selector (no thread per watch,
    so the client measures the server rather than its own GIL); reports (delays, errors)."""
    context = ssl.create_default_context(cafile=cafile)
    selector = selectors.DefaultSelector()
    buffers: dict[ssl.SSLSocket, bytes] = {}
    errors: list[str] = []
    for _ in range(count):
        try:
            sock, rest = open_watch(host, port, token, context, rv, timeout)
        except (OSError, ConnectionError) as exc:
            errors.append(repr(exc))
            continue
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        buffers[sock] = rest
    ready.put(count)
    delays: list[float] = []
    deadline = time.monotonic() + timeout + 30
    while buffers and len(delays) < expected * len(buffers) and time.monotonic() < deadline:
        for key, _ in selector.select(1.0):
            sock = key.fileobj
            assert isinstance(sock, ssl.SSLSocket)
            data = buffers[sock]
            closed = False
            while True:
                try:
                    more = sock.recv(65536)
                except (ssl.SSLWantReadError, BlockingIOError):
                    break
                if not more:
                    closed = True
                    break
                data += more
            now = time.time()
            cut = data.rfind(b"\n") + 1
            delays.extend(now - float(m) for m in STAMP.findall(data, 0, cut))
            buffers[sock] = data[cut:]
            if closed:
                selector.unregister(sock)
                sock.close()
                del buffers[sock]
    for sock in buffers:
        sock.close()
    results.put((delays, errors))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10000)
    parser.add_argument("--gateways", type=int, default=1000)
    parser.add_argument("--watchers", type=int, default=200)
    parser.add_argument("--rate", type=float, default=100.0, help="writes per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of writes")
    parser.add_argument("--list-runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=8, help="connections used to populate")
    parser.add_argument("--writers", type=int, default=4,
                        help="connections the writes are spread over (open-loop schedule)")
    parser.add_argument("--watcher-processes", type=int, default=4,
                        help="client processes the watchers are spread over")
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    args = parser.parse_args(argv)

    results: dict[str, Any] = {"nodes": args.nodes, "gateways": args.gateways,
                               "watchers": args.watchers, "rate": args.rate,
                               "duration_s": args.duration}
    with tempfile.TemporaryDirectory(prefix="rvbench-apiserver-") as tmp:
        process, host, port, token, context = start_server(Path(tmp))
        try:
            def connect() -> Client:
                return Client(host, port, token, context)

            items = [("/api/v1/nodes", node(i)) for i in range(args.nodes)]
            items += [("/apis/raven.openyurt.io/v1beta1/gateways", gateway(i))
                      for i in range(args.gateways)]
            took = populate(connect, items, args.workers)
            results["populate_s"] = round(took, 2)
            results["populate_writes_per_s"] = round(len(items) / took, 1)
            print(f"populate: {len(items)} objects in {took:.1f} s "
                  f"({len(items) / took:.0f} creates/s over {args.workers} connections)")
            rss, peak = rss_kib(process.pid)
            results["rss_after_populate_mib"] = round(rss / 1024, 1)
            print(f"server RSS after populate: {rss / 1024:.1f} MiB")

            for label, path in (("nodes", "/api/v1/nodes"),
                                ("gateways", "/apis/raven.openyurt.io/v1beta1/gateways")):
                raw, decoded, count, size = time_list(connect, path, args.list_runs)
                results[f"list_{label}_ms"] = round(raw * 1000, 1)
                results[f"list_{label}_decoded_ms"] = round(decoded * 1000, 1)
                results[f"list_{label}_bytes"] = size
                print(f"LIST {label}: {count} items, {size / 1e6:.1f} MB, {raw * 1000:.0f} ms "
                      f"(median of {args.list_runs}; {decoded * 1000:.0f} ms incl. json decode)")
            # kubectl-style paginated first page (kubectl get asks for limit=500)
            page, _, _, _ = time_list(connect, "/api/v1/nodes?limit=500", args.list_runs)
            results["list_nodes_page500_ms"] = round(page * 1000, 1)
            print(f"LIST nodes limit=500 (first page): {page * 1000:.0f} ms")
            client = connect()
            _, data = client.call("GET", "/apis/raven.openyurt.io/v1beta1/gateways?limit=1")
            rv = json.loads(data)["metadata"]["resourceVersion"]
            timeout = int(args.duration + 30)
            writes = int(args.rate * args.duration)
            groups = max(1, min(args.watcher_processes, args.watchers))
            spawn = multiprocessing.get_context("spawn")
            ready, collected = spawn.Queue(), spawn.Queue()
            sizes = [args.watchers // groups + (1 if g < args.watchers % groups else 0)
                     for g in range(groups)]
            children = [
                spawn.Process(target=watcher_group, args=(
                    host, port, token, str(Path(tmp) / "ca.crt"), rv, timeout, size, writes,
                    ready, collected), daemon=True)
                for size in sizes if size
            ]
            for child in children:
                child.start()
            for _ in children:
                ready.get(timeout=120)
            time.sleep(1.0)
            interval = 1.0 / args.rate
            cpu_before = cpu_seconds(process.pid)
            started = time.perf_counter()
            write_latencies: list[float] = []
            gateways = max(args.gateways, 1)

            def write_some(lane: int) -> None:
                # Open-loop schedule: write i is due at started + i * interval whatever the
                # latency of earlier writes; lanes (own connections) keep the rate when slow.
                writer = connect()
                for i in range(lane, writes, args.writers):
                    pause = started + i * interval - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)
                    body = {"metadata": {"annotations": {"bench/sent": f"{time.time():.6f}"}}}
                    sent = time.perf_counter()
                    status, data = writer.call(
                        "PATCH", f"/apis/raven.openyurt.io/v1beta1/gateways/gw-{i % gateways:04d}",
                        body, "application/merge-patch+json")
                    write_latencies.append(time.perf_counter() - sent)
                    assert status == 200, data[:200]
                writer.close()

            with ThreadPoolExecutor(args.writers) as pool:
                list(pool.map(write_some, range(args.writers)))
            write_time = time.perf_counter() - started
            achieved = writes / write_time
            gathered = [collected.get(timeout=timeout + 60) for _ in children]
            server_cpu = cpu_seconds(process.pid) - cpu_before
            for child in children:
                child.join(timeout=30)
            errors = [e for _, errs in gathered for e in errs]
            if errors:
                print(f"{len(errors)} watchers failed, first: {errors[0]}")
            expected = writes * (args.watchers - len(errors))
            results["write_p50_ms"] = round(percentile(write_latencies, 0.5) * 1000, 2)
            results["write_p99_ms"] = round(percentile(write_latencies, 0.99) * 1000, 2)
            results["server_cpu_s_during_watch"] = round(server_cpu, 2)
            delays = [d for ds, _ in gathered for d in ds]
            rss, peak = rss_kib(process.pid)
            results.update({
                "writes": writes, "writes_per_s_achieved": round(achieved, 1),
                "deliveries": len(delays), "deliveries_expected": expected,
                "watch_p50_ms": round(percentile(delays, 0.5) * 1000, 2),
                "watch_p99_ms": round(percentile(delays, 0.99) * 1000, 2),
                "watch_max_ms": round(max(delays) * 1000, 2) if delays else None,
                "rss_mib": round(rss / 1024, 1), "rss_peak_mib": round(peak / 1024, 1),
            })
            print(f"watch: {args.watchers} watchers, {writes} writes at {achieved:.0f}/s "
                  f"(target {args.rate:.0f}/s), {len(delays)}/{expected} deliveries")
            print(f"watch delivery latency: p50 {results['watch_p50_ms']:.1f} ms, "
                  f"p99 {results['watch_p99_ms']:.1f} ms, max {results['watch_max_ms']} ms")
            print(f"PATCH round trip during fan-out: p50 {results['write_p50_ms']:.1f} ms, "
                  f"p99 {results['write_p99_ms']:.1f} ms; server CPU {server_cpu:.1f} s "
                  f"in {write_time:.1f} s")
            print(f"server RSS: {rss / 1024:.1f} MiB (peak {peak / 1024:.1f} MiB)")
            client.close()
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
