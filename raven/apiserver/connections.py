"""Connections: accepting (TLS handed to the request thread), a bound on how many are served at
once, and reads with a deadline.

Rules kept:
- At most `max_connections` connections are served at once, one thread each (watches included);
  a connection beyond that is closed at accept, so idle or hostile clients cannot make the
  server grow without bound.
- Every read of a request has a deadline for the whole phase (request line and headers, body,
  wait for the next keep-alive request), not per recv: a client that trickles one byte at a time
  is cut off as surely as a silent one. A connection handed to the watch fan-out makes no reads,
  so a long watch is never timed out as idle.
"""

from __future__ import annotations

import http.server
import io
import logging
import socket
import threading
import time
from typing import Any

from raven.apiserver.context import ServerContext

log = logging.getLogger("raven.apiserver")


class HeadersTooLarge(OSError):
    """The request line and headers passed their byte budget (answered 431, then closed)."""


class DeadlineReader(io.RawIOBase):
    """A socket's reads, each bounded by what is left of `deadline` (time.monotonic()) and, in
    a phase with a byte `budget`, by what is left of it."""

    def __init__(self, sock: socket.socket, idle_timeout: float) -> None:
        self.sock = sock
        self.deadline: float | None = None
        self.budget: int | None = None
        self.phase = "request"
        self.fallback_timeout = idle_timeout
        self.probing = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        if self.probing:  # "nothing available": BufferedReader then hands out its buffer only
            return None
        if self.deadline is None:
            self.sock.settimeout(self.fallback_timeout)
        else:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"the client took too long to send its {self.phase}")
            self.sock.settimeout(remaining)
        if self.budget is None:
            return self.sock.recv_into(buffer)
        if self.budget <= 0:
            raise HeadersTooLarge(f"the client sent more than the byte limit for its {self.phase}")
        with memoryview(buffer) as view:
            received = self.sock.recv_into(view[:self.budget])
        self.budget -= received
        return received

    def start(self, phase: str, seconds: float, budget: int | None = None) -> None:
        self.phase = phase
        self.deadline = time.monotonic() + seconds
        self.budget = budget


class SocketWriter(io.BufferedIOBase):
    """Unbuffered writes with sendall (a raw socket file may write only part of a buffer)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.sock.sendall(data)
        with memoryview(data) as view:
            return view.nbytes


class ApiServerHTTP(http.server.ThreadingHTTPServer):
    """ThreadingHTTPServer with a connection bound that hands TLS handshakes to request threads."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], handler: type[http.server.BaseHTTPRequestHandler],
                 context: ServerContext, ssl_context: Any) -> None:
        self.context = context
        self.ssl_context = ssl_context
        self.slots = threading.BoundedSemaphore(context.settings.max_connections)
        self.refused = 0
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context is not None:
            sock = self.ssl_context.wrap_socket(sock, server_side=True,
                                                do_handshake_on_connect=False)
        return sock, addr

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning("refused a connection from %s: %d connections are being served "
                            "(max_connections); %d refused so far", client_address,
                            self.context.settings.max_connections, self.refused)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: give the slot back
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("error on connection from %s", client_address, exc_info=True)
