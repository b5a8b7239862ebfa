"""A lab's HTTPS echo server: the stand-in target of proxy tests and benchmarks on a lab node.

`python -m raven.lab.echo --listen IP:PORT` serves HTTP/1.1 over TLS (a throwaway self-signed
certificate made at start): GET answers `ok <node>`, POST echoes its body. It runs under the
lab supervisor (`raven.lab.runtime.start_process`), so `raven lab down` stops it.
"""

from __future__ import annotations

import argparse
import os
import signal
import ssl
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MAX_BODY = 16 << 20


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "raven-lab-echo"

    def log_message(self, format: str, *args: object) -> None:  # quiet: benchmarks
        pass

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send(f"ok {os.environ.get('RAVEN_LAB_TARGET', '')}\n".encode())

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 <= length <= MAX_BODY:
            self.send_error(413)
            return
        self._send(self.rfile.read(length))


def tls_context() -> ssl.SSLContext:
    from raven.proxy import certs

    ca = certs.make_ca("raven-lab-echo", 7 * 86400, time.time())
    leaf = certs.issue(ca, "raven-lab-echo", "raven:lab", 7 * 86400, time.time())
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "c").write_bytes(leaf.cert_pem)
        (Path(tmp) / "k").write_bytes(leaf.key_pem)
        ctx.load_cert_chain(Path(tmp) / "c", Path(tmp) / "k")
    return ctx


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="raven.lab.echo")
    p.add_argument("--listen", required=True, help="IP:PORT")
    p.add_argument("--plain", action="store_true", help="HTTP without TLS")
    args = p.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    server = ThreadingHTTPServer((host.strip("[]"), int(port)), Handler)
    server.daemon_threads = True
    if not args.plain:
        server.socket = tls_context().wrap_socket(server.socket, server_side=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"echo on {args.listen}", file=sys.stderr, flush=True)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
