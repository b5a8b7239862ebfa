"""HTTP framing and dispatch: connections, authentication, bodies on the wire, answers.

Rules kept:
- Every request needs `Authorization: Bearer <token>`; anything else is 401 (a Status), answered
  before a byte of the body is read.
- A body is read only after authentication, within `max_body_bytes` (413 otherwise) and
  `body_timeout`; a connection whose body was left unread is answered, drained up to a bound and
  closed, so the next request can never be read from the middle of a body.
- Responses are JSON (protobuf-only clients get 406, negotiation.py). Malformed input of any
  kind is a 4xx Status, never a 500.
- The handler reaches its server only through `ServerContext` (context.py). It frames and
  dispatches only: routing is the pure `routing.route`; what a request means lives in one
  module per kind of answer: `documents` (health, version, discovery, OpenAPI), `verbs`
  (one-document answers on resources), `watch` (event streams), `connect` (kubelet relays).
- HTTP/1.1 keep-alive with header/idle deadlines (connections.py); watch responses are chunked
  and end with the terminating chunk when the watch times out, the server stops or the client
  goes away; a kubelet relay ends the connection.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import logging
import secrets
import socket
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

from raven.apiserver import bodies, connect, documents, negotiation, verbs, watch
from raven.apiserver.connections import (
    ApiServerHTTP,
    DeadlineReader,
    HeadersTooLarge,
    SocketWriter,
)
from raven.apiserver.context import ServerContext
from raven.apiserver.exchange import (
    Request,
    Response,
    error_response,
    parse_query,
    percent_encode_raw,
)
from raven.apiserver.routing import Endpoint, ResourceRoute, route
from raven.apiserver.status import ApiError, unauthorized

log = logging.getLogger("raven.apiserver")

READ_BUFFER = 1 << 16
# A refused body is read and thrown away up to this many times the body limit, so a client that
# sends its whole body before reading the answer still sees it; beyond that the connection closes.
DRAIN_FACTOR = 16
# ... and for at most this long: a refused client cannot hold its thread for a body timeout.
LINGER_SECONDS = 2.0


class RequestHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "raven-apiserver"
    server: ApiServerHTTP  # type: ignore[assignment]  # its `context` is all the handler uses

    # ------------------------------------------------------------------ framing

    @property
    def context(self) -> ServerContext:
        return self.server.context

    def setup(self) -> None:
        settings = self.context.settings
        self.connection = self.request
        self.reader = DeadlineReader(self.connection, settings.idle_timeout)
        self.rfile = io.BufferedReader(self.reader, READ_BUFFER)
        self.wfile = SocketWriter(self.connection)
        self.requests_served = 0

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionError, TimeoutError, OSError) as exc:
            log.debug("connection from %s ended: %s", self.client_address, exc)

    def handle_one_request(self) -> None:
        """One request, with a deadline on each read phase (see connections.py)."""
        settings = self.context.settings
        # The read-ahead buffer may hold up to one buffer of what follows the headers.
        budget = settings.max_header_bytes + READ_BUFFER
        if self.requests_served:
            self.reader.start("next request", settings.idle_timeout, budget)
        else:
            self.reader.start("request line and headers", settings.header_timeout, budget)
        self.expect_continue = False
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(414)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if self.requests_served:  # the idle wait is over: the headers get their own time
                self.reader.start("request line and headers", settings.header_timeout,
                                  self.reader.budget)
            try:
                parsed = self.parse_request()
            except HeadersTooLarge:
                self.close_connection = True
                self.send_error(431, "Request Header Fields Too Large",
                                f"the request line and headers exceed "
                                f"{settings.max_header_bytes} bytes")
                return
            if not parsed:
                return
            self.requests_served += 1
            self.reader.deadline = None
            self.reader.budget = None
            self.connection.settimeout(settings.write_timeout)
            handler = getattr(self, "do_" + self.command, None)
            if handler is None:
                self.send_error(501, f"Unsupported method ({self.command!r})")
                return
            handler()
            self.wfile.flush()
        except TimeoutError as exc:
            log.debug("connection from %s timed out: %s", self.client_address, exc)
            self.close_connection = True

    def handle_expect_100(self) -> bool:
        # Answer "100 Continue" only once the request is authenticated and its framing is
        # acceptable (in _read_body), never before: a refused client then sends no body.
        self.expect_continue = True
        return True

    def _read_body(self) -> bytes:
        settings = self.context.settings
        frame = bodies.framing(self.headers, settings.max_body_bytes)
        if not frame.has_body:
            self.body_unread = False
            return b""
        if self.expect_continue:
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.reader.start("request body", settings.body_timeout)
        try:
            body = bodies.read(self.rfile, frame, settings.max_body_bytes)
        except TimeoutError as exc:
            raise ApiError(408, "Timeout", f"{exc} (body_timeout {settings.body_timeout:g} s); "
                           "send the body faster or make it smaller") from exc
        finally:
            self.reader.deadline = None
            self.connection.settimeout(settings.write_timeout)
        self.body_unread = False
        return body

    def _drain_unread_body(self) -> None:
        """After answering a request whose body we did not read: discard it, bounded, and close.

        Clients that write the whole body before they read (most do) would otherwise see a reset
        instead of our answer.
        """
        self.close_connection = True
        settings = self.context.settings
        if self.expect_continue:
            return  # we never said "100 Continue": a well-behaved client sends no body
        budget = DRAIN_FACTOR * settings.max_body_bytes
        if not isinstance(self.connection, ssl.SSLSocket):
            with contextlib.suppress(OSError):  # EOF after the answer, for clients that wait
                self.connection.shutdown(socket.SHUT_WR)
        self.reader.start("refused body", min(settings.body_timeout, LINGER_SECONDS))
        with contextlib.suppress(OSError, ValueError):
            while budget > 0:
                chunk = self.rfile.read1(min(budget, 1 << 16))
                if not chunk:
                    break
                budget -= len(chunk)
        self.reader.deadline = None

    def _respond(self, response: Response) -> int:
        self.send_response(response.code)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.payload)))
        self.send_header("Cache-Control", "no-cache, private")
        if self.body_unread:
            self.send_header("Connection", "close")
        self._send_warning()
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.payload)
        return response.code

    def _start_chunked(self) -> None:
        """The head of a chunked answer (a watch stream), sent at once."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self._send_warning()
        self.end_headers()
        self.wfile.flush()

    def _send_warning(self) -> None:
        warning = getattr(self, "warning", "")
        if warning:
            self.send_header("Warning", '299 - "' + warning.replace('"', "'") + '"')

    def _buffered_request_bytes(self) -> bytes:
        """What the client sent after the request head and we already buffered (it belongs to
        the upgraded stream), without waiting for more."""
        self.reader.probing = True
        try:
            data = self.rfile.peek(0)
            return self.rfile.read(len(data)) if data else b""
        finally:
            self.reader.probing = False

    # ------------------------------------------------------------------ dispatch

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        started = time.monotonic()
        self.warning = ""
        # Until the body is read, any answer must close the connection (so a refused body is
        # never read as the next request).
        self.body_unread = bodies.declares_body(self.headers)
        code = 200
        try:
            self._authenticate()
            body = self._read_body()
            url = urlsplit(percent_encode_raw(self.path))
            request = Request(method=method, command=self.command, target=self.path,
                              path=url.path, raw_query=url.query, query=parse_query(url.query),
                              headers=self.headers, body=body)
            code = self._serve(request)
        except ApiError as error:
            code = self._respond(error_response(error))
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            raise
        except Exception:  # a bug must not kill the connection silently: answer 500
            log.exception("internal error serving %s %s", method, self.path)
            code = self._respond(error_response(
                ApiError(500, "InternalError", "an internal error occurred; see the server log")))
        if self.body_unread:
            self.wfile.flush()
            self._drain_unread_body()
        log.info("%s %s -> %d (%.1f ms)", method, self.path, code,
                 (time.monotonic() - started) * 1000)

    def _authenticate(self) -> None:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            token.strip().encode(errors="surrogateescape"), self.context.token.encode()
        ):
            raise unauthorized()

    def _serve(self, request: Request) -> int:
        """Route the request and answer it; the status code, for the log."""
        target = route(request.method, request.path, self.context.registry)
        if target.endpoint is not Endpoint.RESOURCE:
            return self._respond(documents.serve(self.context, target))
        assert target.resource is not None
        resource = target.resource
        self.warning = resource.rtype.deprecation_warning
        if connect.is_connect(resource):
            return self._relay(request, resource)
        negotiation.check_accept(request.headers)
        if watch.requested(request, resource):
            return self._watch(request, resource)
        return self._respond(verbs.serve(self.context, request, resource))

    def _relay(self, request: Request, resource: ResourceRoute) -> int:
        """Hand the connection to a kubelet relay (connect.py); it ends with the relay."""
        relay = connect.open_relay(self.context, request, resource)
        early = self._buffered_request_bytes() if relay.upgrade else b""
        self.close_connection = True  # the relay ends with the kubelet's connection
        endpoint = relay.kubelet.endpoint
        log.info("%s %s -> kubelet of node %s at %s %s", request.command, request.target,
                 endpoint.node, endpoint.address, relay.kubelet.target.split("?", 1)[0])
        return relay.forward(self.connection, early, request.body,
                             self.context.settings.write_timeout)

    def _watch(self, request: Request, resource: ResourceRoute) -> int:
        """Stream a watch (watch.py) on this connection; it stays open if the stream ended
        cleanly."""
        stream = watch.open_watch(self.context, request, resource, self.connection)
        self._start_chunked()
        if not stream.stream(self.wfile.write):
            self.close_connection = True
        return 200
