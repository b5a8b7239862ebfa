"""Benchmark: a kubelet request through the proxy (cloud proxy server -> NAT'd pool's proxy
client) against the same request to a directly reachable node, and how many concurrent streams
one proxy connection holds.

A two-pools lab (cloud; edge behind cone NAT) runs the whole overlay with its proxy. The lab
HTTPS echo server (raven.lab.echo) listens on the kubelet port 10250 of cloud-2 (reached
directly from the control plane) and of edge-2 (reached only through the proxy). From the
control-plane namespace, as the API server would:
  new connection   TCP + TLS (+ CONNECT through the proxy) + GET, per request (kubectl logs)
  open connection  GET on an already open connection (the relay's own cost)
  streams          K tunnels opened and held at once over the edge pool's one proxy
                   connection, each answering a GET; the largest K where all answered
Figures are medians in milliseconds and the proxied/direct ratio measured in the same run.
Prints figures; `--json` prints a JSON summary as the last line.

    .venv/bin/python bench/proxy.py [--requests 200] [--streams 50,200,800] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import socket
import ssl
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PORT = 10250


def _insecure() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the echo server's throwaway certificate
    return ctx


def _get(tls: object, close: bool) -> bytes:
    tls.sendall(b"GET / HTTP/1.1\r\nHost: kubelet\r\n"  # type: ignore[attr-defined]
                + (b"Connection: close\r\n" if close else b"") + b"\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += tls.recv(4096)  # type: ignore[attr-defined]
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += tls.recv(4096)  # type: ignore[attr-defined]
    return body


# -- worker: runs inside the control-plane namespace ------------------------------------------

def worker(args: argparse.Namespace) -> int:
    from raven.proxy.certs import user_context
    from raven.proxy.dial import open_tunnel, wrap_tls

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    user = user_context(Path(args.ca_crt), Path(args.ca_key), time.time())
    proxy = (args.proxy, 10263)
    inner = _insecure()

    def direct_conn() -> object:
        return inner.wrap_socket(socket.create_connection((args.direct, PORT), 10))

    def proxied_conn() -> object:
        return wrap_tls(open_tunnel(proxy, user, args.edge, PORT, 10), inner, None)

    if args.worker == "ready":
        conn = proxied_conn()
        print(json.dumps({"body": _get(conn, True).decode()}))
        return 0
    out: dict[str, object] = {}
    for name, dial in (("direct", direct_conn), ("proxied", proxied_conn)):
        fresh = []
        for _ in range(args.requests):
            t0 = time.perf_counter()
            conn = dial()
            _get(conn, True)
            fresh.append(time.perf_counter() - t0)
            conn.close()  # type: ignore[attr-defined]
        conn = dial()
        _get(conn, False)
        kept = []
        for _ in range(args.requests):
            t0 = time.perf_counter()
            _get(conn, False)
            kept.append(time.perf_counter() - t0)
        conn.close()  # type: ignore[attr-defined]
        out[name] = {"new_ms": statistics.median(fresh) * 1000,
                     "open_ms": statistics.median(kept) * 1000}
    streams: dict[str, int] = {}
    for count in args.streams:
        conns: list[object] = []

        def open_one(_: int) -> object | None:
            try:
                return proxied_conn()
            except OSError:
                return None

        with ThreadPoolExecutor(32) as pool:
            conns = [c for c in pool.map(open_one, range(count)) if c is not None]

        def ask(c: object) -> bool:
            try:
                return _get(c, False).startswith(b"ok")
            except OSError:
                return False

        with ThreadPoolExecutor(32) as pool:
            ok = sum(pool.map(ask, conns))  # every tunnel is still open while the others ask
        streams[str(count)] = ok
        for c in conns:
            c.close()  # type: ignore[attr-defined]
        time.sleep(1.0)  # let both agents close the streams before the next size
    out["streams"] = streams
    print(json.dumps(out))
    return 0


# -- driver ---------------------------------------------------------------------------------

def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--streams", default="50,200,800",
                   help="comma-separated numbers of concurrent tunnels to hold")
    p.add_argument("--json", action="store_true", help="print a JSON summary last")
    p.add_argument("--worker", choices=["ready", "measure"], help=argparse.SUPPRESS)
    for hidden in ("--ca-crt", "--ca-key", "--proxy", "--direct", "--edge"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.streams = [int(x) for x in str(args.streams).split(",") if x.strip()]
    if args.worker:
        return worker(args)

    from raven.lab import build, cluster, kubelets, runtime, teardown
    from raven.lab.topology import CONTROL_PLANE, load_topology

    root = Path(__file__).resolve().parents[1]
    lab = f"rvb-px-{secrets.token_hex(3)}"
    try:
        plan = build.up(load_topology(root / "test-topologies" / "two-pools.yaml"), lab)
        cluster.up(plan)
        ips = {n.name: n.underlay_ip for _, n in plan.nodes()}
        for node in ("cloud-2", "edge-2"):
            # The echo server answers on the kubelet's port instead of the lab's kubelet API
            # (which wants a client certificate from the cluster CA).
            runtime.stop_process(lab, node, kubelets.KUBELET_API)
            runtime.start_process(lab, node, "echo", [sys.executable, "-m", "raven.lab.echo",
                                                      "--listen", f"{ips[node]}:{PORT}"])
        crt, key = cluster.proxy_ca_paths(lab)
        base = [*runtime.exec_argv(lab, CONTROL_PLANE), sys.executable, __file__,
                "--ca-crt", str(crt), "--ca-key", str(key), "--proxy", ips["cloud-1"],
                "--direct", ips["cloud-2"], "--edge", ips["edge-2"],
                "--requests", str(args.requests), "--streams",
                ",".join(map(str, args.streams))]
        env = {**os.environ, "PYTHONPATH": str(root)}
        deadline = time.monotonic() + 120
        while True:  # until the edge's proxy client is connected and the echo servers answer
            ready = subprocess.run([*base, "--worker", "ready"], capture_output=True, text=True,
                                   env=env, timeout=60)
            if ready.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"proxy not ready: {ready.stderr[-2000:]}")
            time.sleep(1)
        run = subprocess.run([*base, "--worker", "measure"], capture_output=True, text=True,
                             env=env, timeout=1800)
        if run.returncode != 0:
            raise SystemExit(f"worker failed: {run.stderr[-3000:]}")
        result = json.loads(run.stdout.strip().splitlines()[-1])
    finally:
        teardown.down(lab)
    d, x = result["direct"], result["proxied"]
    held = max([int(k) for k, v in result["streams"].items() if v == int(k)], default=0)
    summary = {
        "direct_new_ms": round(d["new_ms"], 2), "proxied_new_ms": round(x["new_ms"], 2),
        "new_ratio": round(x["new_ms"] / d["new_ms"], 2),
        "direct_open_ms": round(d["open_ms"], 3), "proxied_open_ms": round(x["open_ms"], 3),
        "open_ratio": round(x["open_ms"] / d["open_ms"], 2),
        "streams": result["streams"], "streams_held": held, "requests": args.requests,
    }
    print(f"request on a new connection: direct {summary['direct_new_ms']} ms, through the "
          f"proxy {summary['proxied_new_ms']} ms (x{summary['new_ratio']})")
    print(f"request on an open connection: direct {summary['direct_open_ms']} ms, through the "
          f"proxy {summary['proxied_open_ms']} ms (x{summary['open_ratio']})")
    print("concurrent tunnels over one proxy connection: " + ", ".join(
        f"{ok}/{k}" for k, ok in result["streams"].items()) + f" (all answered up to {held})")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
