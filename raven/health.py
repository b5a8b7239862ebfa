"""HTTP endpoints of the daemons: /healthz, /readyz, /metrics (Prometheus text) and /status.

Rules kept: the server runs on its own threads and only reads state through the callables it
is given, so a slow scrape can never block a reconcile; it binds exactly the addresses asked,
never a wildcard (the agent runs on the host network, where 0.0.0.0 would include the node's
public addresses: `raven.settings.listen_problems` refuses it before anything is bound); /status
(node names, keys, the plan) is served only on loopback listeners, the rest on every listener.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from raven.errors import CommandError
from raven.settings import is_loopback, listen_problems


def parse_listen(text: str) -> tuple[str, int]:
    """'HOST:PORT' -> (host, port); raises ValueError naming the problem and the fix."""
    problems = listen_problems("listen address", (text,))
    if problems:
        raise ValueError(problems[0])
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class HealthServer:
    def __init__(
        self,
        listen: str,
        registry: CollectorRegistry,
        healthy: Callable[[], tuple[bool, str]],
        ready: Callable[[], tuple[bool, str]],
        status: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        host, port = parse_listen(listen)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return  # scrapes every few seconds would flood the daemon's log

            def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    ok, why = outer.healthy()
                    self._send(200 if ok else 503, (why or "ok").encode() + b"\n")
                elif path == "/readyz":
                    ok, why = outer.ready()
                    self._send(200 if ok else 503, (why or "ok").encode() + b"\n")
                elif path == "/metrics":
                    self._send(200, generate_latest(outer.registry), CONTENT_TYPE_LATEST)
                elif path == "/status" and outer.status is not None:
                    body = json.dumps(outer.status(), indent=2, sort_keys=True).encode()
                    self._send(200, body + b"\n", "application/json")
                else:
                    self._send(404, b"not found: try /healthz /readyz /metrics /status\n")

        self.registry = registry
        self.healthy = healthy
        self.ready = ready
        self.status = status if is_loopback(listen) else None  # never off the machine
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, name="health",
                                        daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def run_until_signalled(
    run: Callable[[threading.Event], None],
    health_server: Callable[[str], HealthServer],
    listen: Sequence[str],
) -> None:
    """Run a daemon's main loop until SIGTERM or SIGINT, serving health and metrics on every
    address of `listen`.

    The signal only sets the stop event: the loop finishes its current step and returns, so the
    agent leaves the data plane in place (hitless restart) and the controller releases its lease.
    """
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    servers: list[HealthServer] = []
    try:
        for address in listen:
            try:
                servers.append(health_server(address).start())
            except (OSError, ValueError) as exc:
                raise CommandError(f"--metrics-listen {address}: {exc}; use an address of "
                                   "this machine and a free port") from exc
        run(stop)
    finally:
        for server in servers:
            server.stop()
