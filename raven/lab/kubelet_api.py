"""The kubelet API of a lab node: what kube-apiserver's pods/log, pods/exec and nodes/proxy reach.

One process per node (in the node's network and mount namespaces, port 10250, HTTPS with a
serving certificate from the cluster CA) serves the kubelet paths kubectl's requests end at:
  /healthz                                   "ok"
  /metrics                                   Prometheus text (pods, requests, execs)
  /pods                                      the node's pods (a PodList, as the kubelet serves it)
  /containerLogs/NS/POD/CONTAINER            the container's log: follow, tailLines, timestamps,
                                             limitBytes, sinceSeconds, sinceTime
  /exec/NS/POD/CONTAINER?command=..&output=1 WebSocket remote command (raven.lab.kubelet_exec)
  /attach/NS/POD/CONTAINER                   refused (501): lab pods run no main process
The pods it serves are read from a JSON file (`--pods`, written by raven.lab.cluster):
  {"node": NAME, "pods": [{"namespace", "name", "container", "lab", "log", "ip"}]}
where "lab" (optional) names the lab whose supervisor runs the pod's sandbox (target = the pod's
name, process `sandbox`): an exec enters its namespaces.
A pod's log file holds one line per entry, `<RFC 3339 time> <text>` (the time is what
`timestamps=true` shows).
Rules kept:
- clients must present a certificate from `--client-ca` (the API server's kubelet client
  certificate): nobody else in the lab can exec in a pod; unknown pods or containers are 404;
- every exec runs in a process group of its own, killed when its client leaves and when the
  server stops (SIGTERM), so nothing outlives it;
- a follow stream ends when its client goes away or the server stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import os
import signal
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from raven.lab import runtime
from raven.lab.kubelet_exec import ExecRequest, serve_exec

log = logging.getLogger("raven.lab.kubelet_api")

DEFAULT_PORT = 10250
SANDBOX = "sandbox"  # supervisor name of a lab pod's sandbox process (raven.lab.kubelets)
FOLLOW_POLL = 0.2  # seconds between looks at a followed log file
MAX_LOG_LINE = 1 << 20


@dataclass(frozen=True)
class PodEntry:
    namespace: str
    name: str
    container: str
    lab: str | None  # the lab running the pod's sandbox; None: no sandbox (tests)
    log: Path
    ip: str = ""


def load_pods(path: Path) -> tuple[str, dict[tuple[str, str], PodEntry]]:
    data = json.loads(path.read_text())
    pods = {}
    for item in data.get("pods", []):
        entry = PodEntry(item["namespace"], item["name"], item["container"], item.get("lab"),
                         Path(item["log"]), item.get("ip", ""))
        pods[(entry.namespace, entry.name)] = entry
    return str(data.get("node", "")), pods


def log_line(text: str, when: float) -> str:
    """One entry of a pod's log file."""
    stamp = datetime.datetime.fromtimestamp(when, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"{stamp} {text}\n"


class KubeletApi:
    def __init__(self, node: str, pods: dict[tuple[str, str], PodEntry]) -> None:
        self.node = node
        self.pods = pods
        self.groups: set[int] = set()  # process groups of running execs
        self.stopping = asyncio.Event()
        self.metrics = CollectorRegistry()
        self.requests = Counter("kubelet_http_requests", "HTTP requests served",
                                ["path"], registry=self.metrics)
        self.execs = Counter("kubelet_exec_sessions", "exec sessions started",
                             registry=self.metrics)
        Gauge("kubelet_running_pods", "pods on this node", registry=self.metrics).set(len(pods))
        Gauge("kubelet_exec_running", "exec sessions running", registry=self.metrics
              ).set_function(lambda: len(self.groups))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics_text)
        app.router.add_get("/pods", self.pod_list)
        app.router.add_get("/containerLogs/{ns}/{pod}/{container}", self.container_logs)
        app.router.add_route("*", "/exec/{ns}/{pod}/{container}", self.exec)
        app.router.add_route("*", "/attach/{ns}/{pod}/{container}", self.attach)
        return app

    def _pod(self, request: web.Request) -> PodEntry:
        key = (request.match_info["ns"], request.match_info["pod"])
        pod = self.pods.get(key)
        if pod is None:
            raise web.HTTPNotFound(text=f'pod "{key[1]}" in namespace "{key[0]}" is not on node '
                                        f"{self.node}\n")
        container = request.match_info["container"]
        if container != pod.container:
            raise web.HTTPNotFound(text=f'container "{container}" not found in pod "{pod.name}"\n')
        return pod

    async def healthz(self, request: web.Request) -> web.Response:
        self.requests.labels("/healthz").inc()
        return web.Response(text="ok")

    async def metrics_text(self, request: web.Request) -> web.Response:
        self.requests.labels("/metrics").inc()
        return web.Response(body=generate_latest(self.metrics),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def pod_list(self, request: web.Request) -> web.Response:
        self.requests.labels("/pods").inc()
        items = [{"metadata": {"name": p.name, "namespace": p.namespace},
                  "spec": {"nodeName": self.node, "containers": [{"name": p.container}]},
                  "status": {"phase": "Running", "podIP": p.ip}} for p in self.pods.values()]
        return web.json_response({"kind": "PodList", "apiVersion": "v1", "metadata": {},
                                  "items": items})

    async def attach(self, request: web.Request) -> web.Response:
        self._pod(request)
        raise web.HTTPNotImplemented(text="attach: lab pods run no main process to attach to; "
                                          "use kubectl exec\n")

    async def exec(self, request: web.Request) -> web.StreamResponse:
        self.requests.labels("/exec").inc()
        pod = self._pod(request)
        query = request.query
        command = tuple(query.getall("command", []))
        if not command:
            raise web.HTTPBadRequest(text="you must specify at least 1 command\n")
        flags = {k: query.get(k, "") in ("1", "true") for k in ("input", "output", "error", "tty")}
        if request.headers.get("Upgrade", "").lower() != "websocket":
            raise web.HTTPBadRequest(text="exec needs a WebSocket upgrade (v5.channel.k8s.io or "
                                          "v4.channel.k8s.io); SPDY is not served\n")
        sandbox = None
        if pod.lab is not None:
            sandbox = runtime.process_pid(pod.lab, pod.name, SANDBOX)
            if sandbox is None:
                raise web.HTTPServiceUnavailable(text=f'the sandbox of pod "{pod.name}" is not '
                                                      "running (raven lab down?)\n")
        self.execs.inc()
        log.info("exec in %s/%s: %s", pod.namespace, pod.name, " ".join(command))
        exec_request = ExecRequest(pod.name, sandbox, command, flags["input"],
                                   flags["output"], flags["error"], flags["tty"])
        return await serve_exec(request, exec_request, self._track)

    def _track(self, pgid: int, running: bool) -> None:
        if running:
            self.groups.add(pgid)
        else:
            self.groups.discard(pgid)

    def kill_execs(self) -> None:
        for pgid in list(self.groups):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)

    async def container_logs(self, request: web.Request) -> web.StreamResponse:
        self.requests.labels("/containerLogs").inc()
        pod = self._pod(request)
        options = LogOptions.parse(request.query)
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        offset, lines = read_log(pod.log, options)
        budget = options.limit_bytes
        for line in lines:
            budget = await _write_limited(response, line.encode(), budget)
        while options.follow and budget != 0 and not self.stopping.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), FOLLOW_POLL)
            offset, more = read_new(pod.log, offset, options.timestamps)
            for line in more:
                budget = await _write_limited(response, line.encode(), budget)
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response


async def _write_limited(response: web.StreamResponse, data: bytes, budget: int | None
                         ) -> int | None:
    if budget is not None:
        data = data[:budget]
        budget -= len(data)
    if data:
        await response.write(data)
    return budget


@dataclass(frozen=True)
class LogOptions:
    follow: bool = False
    timestamps: bool = False
    tail_lines: int | None = None
    limit_bytes: int | None = None
    since: float | None = None  # unix seconds

    @classmethod
    def parse(cls, query: object) -> LogOptions:
        get = query.get  # type: ignore[attr-defined]

        def number(key: str) -> int | None:
            value = get(key)
            if value is None:
                return None
            if not (value.isascii() and value.isdigit()):
                raise web.HTTPBadRequest(text=f"{key}={value!r} is not a non-negative integer\n")
            return int(value)

        since = None
        seconds = number("sinceSeconds")
        if seconds is not None:
            since = datetime.datetime.now(datetime.UTC).timestamp() - seconds
        if get("sinceTime"):
            try:
                since = datetime.datetime.fromisoformat(get("sinceTime").replace("Z", "+00:00")
                                                        ).timestamp()
            except ValueError as exc:
                raise web.HTTPBadRequest(text=f"sinceTime {get('sinceTime')!r} is not an "
                                              "RFC 3339 time\n") from exc
        return cls(follow=get("follow") in ("true", "1"),
                   timestamps=get("timestamps") in ("true", "1"),
                   tail_lines=number("tailLines"), limit_bytes=number("limitBytes"), since=since)


def _render(raw: str, timestamps: bool) -> tuple[str, float | None]:
    stamp, _, text = raw.partition(" ")
    try:
        when = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:  # not one of our lines: shown as it is
        return raw, None
    return (raw if timestamps else text), when


def read_log(path: Path, options: LogOptions) -> tuple[int, list[str]]:
    """(offset after the last whole line, the lines to send)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0, []
    end = data.rfind(b"\n") + 1
    out = []
    for raw in data[:end].decode(errors="replace").splitlines(keepends=True):
        text, when = _render(raw, options.timestamps)
        if options.since is not None and when is not None and when < options.since:
            continue
        out.append(text)
    if options.tail_lines is not None:
        out = out[len(out) - options.tail_lines:] if options.tail_lines else []
    return end, out


def read_new(path: Path, offset: int, timestamps: bool) -> tuple[int, list[str]]:
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < offset:  # truncated or replaced: start over
                offset = 0
            handle.seek(offset)
            data = handle.read(max(0, size - offset))
    except FileNotFoundError:
        return 0, []
    end = data.rfind(b"\n") + 1
    if end == 0 and len(data) > MAX_LOG_LINE:
        end = len(data)  # an endless line: send what there is
    lines = [_render(raw, timestamps)[0]
             for raw in data[:end].decode(errors="replace").splitlines(keepends=True)]
    return offset + end, lines


def server_context(cert: Path, key: Path, client_ca: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    context.load_verify_locations(str(client_ca))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


async def serve(addresses: list[tuple[str, int]], context: ssl.SSLContext, api: KubeletApi,
                ready_file: Path | None = None) -> None:
    """Listen on every (host, port) (one per address family of a dual-stack node)."""
    runner = web.AppRunner(api.app(), access_log=None, handle_signals=False)
    await runner.setup()
    for host, port in addresses:
        site = web.TCPSite(runner, host, port, ssl_context=context, shutdown_timeout=1.0)
        await site.start()
    for host, bound in (a[:2] for a in runner.addresses):  # port 0: the kernel's pick
        shown = f"[{host}]" if ":" in host else host
        print(f"kubelet API of node {api.node} listening on https://{shown}:{bound}", flush=True)
    if ready_file is not None:
        ready_file.write_text(f"{os.getpid()}\n")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, api.stopping.set)
    await api.stopping.wait()
    api.kill_execs()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raven.lab.kubelet_api",
                                     description="kubelet API stand-in of a lab node")
    parser.add_argument("--listen", action="append", metavar="HOST:PORT",
                        help=f"address to listen on, repeatable (default 0.0.0.0:{DEFAULT_PORT})")
    parser.add_argument("--cert", type=Path, required=True, help="serving certificate")
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--client-ca", type=Path, required=True,
                        help="CA that client certificates must chain to")
    parser.add_argument("--pods", type=Path, required=True, help="the node's pods (JSON)")
    parser.add_argument("--ready-file", type=Path,
                        help="written (with our pid) once the port is bound")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    addresses = []
    for text in args.listen or [f"0.0.0.0:{DEFAULT_PORT}"]:
        host, _, port = text.rpartition(":")
        addresses.append((host.strip("[]") or "0.0.0.0", int(port)))
    node, pods = load_pods(args.pods)
    for pod in pods.values():
        if not pod.log.exists():
            pod.log.parent.mkdir(parents=True, exist_ok=True)
            with pod.log.open("a") as handle:
                handle.write(log_line(f"pod {pod.namespace}/{pod.name} started on node {node} "
                                      f"with IP {pod.ip or 'none'} (raven lab)",
                                      datetime.datetime.now(datetime.UTC).timestamp()))
    api = KubeletApi(node, pods)
    asyncio.run(serve(addresses, server_context(args.cert, args.key, args.client_ca), api,
                      args.ready_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
