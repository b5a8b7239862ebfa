"""HTTP layer: authentication, body limits, content negotiation, list and watch streaming.

Rules kept:
- Every request needs `Authorization: Bearer <token>`; anything else is 401 (a Status), answered
  before a byte of the body is read.
- A body is read only after authentication, within `max_body_bytes` (413 otherwise) and
  `body_timeout`; a connection whose body was left unread is answered, drained up to a bound and
  closed, so the next request can never be read from the middle of a body.
- Request bodies are JSON or YAML (raven.safeyaml); responses are JSON (protobuf-only clients
  get 406). Malformed input of any kind is a 4xx Status, never a 500.
- The handler reaches its server only through `ServerContext` (context.py); routing is the pure
  `routing.route`.
- HTTP/1.1 keep-alive with header/idle deadlines (connections.py); watch responses are chunked
  and end with the terminating chunk when the watch times out, the server stops or the client
  goes away.
- Watches with selectors see objects enter (ADDED) and leave (DELETED) the selection, as
  kube-apiserver reports them.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import logging
import random
import secrets
import socket
import ssl
import time
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from raven.apiserver import bodies, discovery, kubeletproxy, openapi, paging, tables
from raven.apiserver.api import ResourceApi, delete_options_dry_run
from raven.apiserver.connections import (
    ApiServerHTTP,
    DeadlineReader,
    HeadersTooLarge,
    SocketWriter,
)
from raven.apiserver.context import ServerContext
from raven.apiserver.fanout import Subscription, health_report
from raven.apiserver.routing import Endpoint, ResourceRoute, page_not_found, route
from raven.apiserver.selectors import escape_field_value, make_filter
from raven.apiserver.status import (
    ApiError,
    bad_request,
    expired,
    method_not_allowed,
    unauthorized,
)
from raven.apiserver.store import encode
from raven.apiserver.watchlines import WatchLines

log = logging.getLogger("raven.apiserver")

MAX_QUERY_FIELDS = 100
READ_BUFFER = 1 << 16
# A refused body is read and thrown away up to this many times the body limit, so a client that
# sends its whole body before reading the answer still sees it; beyond that the connection closes.
DRAIN_FACTOR = 16
JSON_PATCH = "application/json-patch+json"
# ... and for at most this long: a refused client cannot hold its thread for a body timeout.
LINGER_SECONDS = 2.0


class RequestHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "raven-apiserver"
    server: ApiServerHTTP  # type: ignore[assignment]  # its `context` is all the handler uses

    # ------------------------------------------------------------------ plumbing

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

    def _send(self, code: int, payload: bytes, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-cache, private")
        if self.body_unread:
            self.send_header("Connection", "close")
        self._send_warning()
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _send_warning(self) -> None:
        warning = getattr(self, "warning", "")
        if warning:
            self.send_header("Warning", '299 - "' + warning.replace('"', "'") + '"')

    def _send_json(self, code: int, obj: Any) -> None:
        self._send(code, encode(obj))

    def _send_error(self, error: ApiError) -> None:
        self._send(error.code, encode(error.to_status()), headers=error.headers)

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
            url = urlsplit(_percent_encode_raw(self.path))
            self.raw_query = url.query
            code = self._route(method, url.path, _query(url.query), body)
        except ApiError as error:
            code = error.code
            self._send_error(error)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            raise
        except Exception:  # a bug must not kill the connection silently: answer 500
            log.exception("internal error serving %s %s", method, self.path)
            code = 500
            self._send_error(ApiError(500, "InternalError", "an internal error occurred; see the server log"))  # noqa: E501
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

    def _route(self, method: str, path: str, query: dict[str, str], body: bytes) -> int:
        context = self.context
        registry = context.registry
        target = route(method, path, registry)
        endpoint = target.endpoint
        if endpoint is Endpoint.HEALTH:
            code, text = health_report(context.watch_health())
            self._send(code, text, "text/plain; charset=utf-8")
            return code
        doc: Any = None
        if endpoint is Endpoint.VERSION:
            doc = discovery.version_info()
        elif endpoint is Endpoint.OPENAPI_ROOT:
            doc = openapi.root(registry)
        elif endpoint is Endpoint.OPENAPI_DOC:
            doc = openapi.group_version_doc(registry, target.group, target.version)
        elif endpoint is Endpoint.CORE_VERSIONS:
            doc = discovery.core_versions(context.address)
        elif endpoint is Endpoint.GROUP_LIST:
            doc = discovery.group_list(registry)
        elif endpoint is Endpoint.GROUP:
            doc = discovery.group(registry, target.group)
        elif endpoint is Endpoint.RESOURCE_LIST:
            doc = discovery.resource_list(registry, target.group, target.version)
        else:
            assert target.resource is not None
            self.warning = target.resource.rtype.deprecation_warning
            return self._serve_resource(method, target.resource, query, body)
        if doc is None:
            raise page_not_found(target.path)
        self._send_json(200, doc)
        return 200

    # ------------------------------------------------------------------ resources

    def _decode(self, body: bytes) -> Any:
        return bodies.decode(body, self.headers.get("Content-Type"),
                             self.context.settings.max_body_depth)

    def _decode_object(self, body: bytes, what: str) -> dict[str, Any]:
        return bodies.require_object(self._decode(body), what)

    def _serve_resource(self, method: str, route: ResourceRoute, query: dict[str, str],
                        body: bytes) -> int:
        api: ResourceApi = self.context.api
        rtype = route.rtype
        if route.subresource and route.subresource in rtype.connect_subresources:
            return self._connect(route, body)
        self._check_accept()
        if route.watch_path or (method == "GET" and query.get("watch") in ("true", "1")):
            if self.command == "HEAD":  # a stream of events has no headers-only form
                raise method_not_allowed()
            if route.name is not None:
                query["fieldSelector"] = ",".join(
                    s for s in (query.get("fieldSelector"),
                                f"metadata.name={escape_field_value(route.name)}") if s
                )
            return self._watch(route, query)
        dry_run = _dry_run(query)
        if rtype.review:
            return self._review(route, method, body)
        what = f"the body of a {method} of {rtype.plural}"
        if route.name is None:
            if method == "GET":
                return self._list(route, query)
            if method == "POST":
                obj = api.create(rtype, route.namespace, self._decode_object(body, what), dry_run)
                self._send_json(201, obj)
                return 201
            if method == "DELETE":
                return self._delete_collection(route, query, body)
            raise method_not_allowed()
        what = f'{what} "{route.name}"'
        if method == "GET":
            obj = api.get(rtype, route.namespace, route.name)
            return self._send_objects(route, query, [obj], single=True)
        if method == "PUT":
            obj = api.update(rtype, route.namespace, route.name, self._decode_object(body, what),
                             "status" if route.subresource == "status" else "", dry_run)
        elif method == "PATCH":
            content_type = self.headers.get("Content-Type") or ""
            patch = self._decode(body)
            if bodies.media_type(content_type) == JSON_PATCH:
                bodies.require_array(patch, f"{what} ({JSON_PATCH})")
            else:
                bodies.require_object(patch, what)
            obj = api.patch(rtype, route.namespace, route.name, content_type, patch,
                            route.subresource, dry_run)
        elif method == "DELETE":
            options = self._delete_options(body)
            # kubectl sends dryRun in the DeleteOptions body.
            dry_run = dry_run or delete_options_dry_run(options)
            obj = api.delete(rtype, route.namespace, route.name, options, dry_run)
            if rtype.plural != "namespaces":
                # Deleted at once: kube-apiserver answers a Status (namespaces: the object).
                obj = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                       "status": "Success",
                       "details": {"name": route.name, "group": rtype.group,
                                   "kind": rtype.plural, "uid": obj["metadata"].get("uid")}}
        else:
            raise method_not_allowed()
        self._send_json(200, obj)
        return 200

    def _connect(self, route: ResourceRoute, body: bytes) -> int:
        """pods/log, pods/exec, pods/attach, nodes/proxy: relayed to the node's kubelet."""
        context = self.context
        proxy = context.kubelets
        if proxy is None:
            raise ApiError(503, "ServiceUnavailable", "this API server is not set up to reach "
                           "kubelets (no kubelet client certificate)", {})
        upgrade = _wants_upgrade(self.headers.get("Connection"), self.headers.get("Upgrade"))
        try:
            query = parse_qs(self.raw_query, keep_blank_values=True,
                             max_num_fields=MAX_QUERY_FIELDS)
        except ValueError as exc:
            raise bad_request(f"the query is not valid: {exc}") from exc
        method = self.command
        request = proxy.resolve(context.api, context.registry, route,
                                "GET" if method == "HEAD" else method, query, upgrade)
        upstream = proxy.dial(request)
        head = kubeletproxy.request_head(method, request, self.headers, upgrade, len(body))
        early = self._buffered_request_bytes() if upgrade else b""
        self.close_connection = True  # the relay ends with the kubelet's connection
        log.info("%s %s -> kubelet of node %s at %s %s", method, self.path, request.endpoint.node,
                 request.endpoint.address, request.target.split("?", 1)[0])
        return kubeletproxy.forward(self.connection, early, upstream, head, body, upgrade,
                                    context.settings.write_timeout)

    def _buffered_request_bytes(self) -> bytes:
        """What the client sent after the request head and we already buffered (it belongs to
        the upgraded stream), without waiting for more."""
        self.reader.probing = True
        try:
            data = self.rfile.peek(0)
            return self.rfile.read(len(data)) if data else b""
        finally:
            self.reader.probing = False

    def _review(self, route: ResourceRoute, method: str, body: bytes) -> int:
        """The token is cluster-admin: every access review is allowed, the user is admin."""
        if method != "POST" or route.name is not None:
            raise method_not_allowed()
        review = self._decode_object(body, f"a {route.rtype.kind}")
        review.update(apiVersion=route.rtype.api_version, kind=route.rtype.kind)
        metadata = review.get("metadata")
        if not isinstance(metadata, dict):
            metadata = review["metadata"] = {}
        metadata["creationTimestamp"] = None
        if route.rtype.review == "access":
            review["status"] = {"allowed": True, "reason": "the raven API server's bearer token is cluster-admin (no RBAC)"}  # noqa: E501
        else:
            review["status"] = {"userInfo": {"username": "admin",
                                             "groups": ["system:masters", "system:authenticated"]}}
        self._send_json(201, review)
        return 201

    def _delete_options(self, body: bytes) -> dict[str, Any]:
        options = self._decode(body) if body.strip() else {}
        return bodies.require_object(options, "DeleteOptions")

    def _check_accept(self) -> None:
        accept = self.headers.get("Accept") or "*/*"
        kinds = [a.split(";")[0].strip() for a in accept.split(",")]
        if all(k == "application/vnd.kubernetes.protobuf" for k in kinds):
            raise ApiError(406, "NotAcceptable", "only the following media types are accepted: application/json, application/yaml")  # noqa: E501

    def _wants(self) -> str:
        """'Table', 'PartialObjectMetadata' or '' (plain objects) from the Accept header."""
        for entry in (self.headers.get("Accept") or "").split(","):
            params = dict(
                p.strip().split("=", 1) for p in entry.split(";")[1:] if "=" in p
            )
            wanted = params.get("as", "")
            if wanted == "Table":
                return "Table"
            if wanted in ("PartialObjectMetadata", "PartialObjectMetadataList"):
                return "PartialObjectMetadata"
            if entry.split(";")[0].strip() in ("application/json", "*/*", "application/*"):
                return ""
        return ""

    def _send_objects(self, route: ResourceRoute, query: dict[str, str],
                      objs: list[dict[str, Any]], single: bool) -> int:
        wants = self._wants()
        if wants == "Table":
            meta = {"resourceVersion": objs[0]["metadata"].get("resourceVersion", "")} if single else {}  # noqa: E501
            self._send_json(200, tables.table(route.rtype, objs, query.get("includeObject", "PartialObjectMetadata"), meta))  # noqa: E501
        elif wants == "PartialObjectMetadata":
            self._send_json(200, {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": objs[0]["metadata"]})  # noqa: E501
        else:
            self._send_json(200, objs[0])
        return 200

    def _list(self, route: ResourceRoute, query: dict[str, str]) -> int:
        api: ResourceApi = self.context.api
        rtype = route.rtype
        limit = bodies.query_int(query, "limit") or 0
        keep = make_filter(query.get("labelSelector"), query.get("fieldSelector"), rtype.kind)
        self.context.store.check_read_at(query.get("resourceVersion"))
        items, rv = api.list(rtype, route.namespace, keep)
        items, meta = paging.page(items, rv, limit, query.get("continue"))
        wants = self._wants()
        if wants == "Table":
            objs = [api.to_version(rtype, s.obj) for s in items]
            self._send_json(200, tables.table(rtype, objs, query.get("includeObject", "PartialObjectMetadata"), meta))  # noqa: E501
            return 200
        if wants == "PartialObjectMetadata":
            self._send_json(200, {
                "kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                "metadata": meta,
                "items": [{"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                           "metadata": s.obj["metadata"]} for s in items],
            })
            return 200
        if api.needs_conversion(rtype):
            raws = [encode(api.to_version(rtype, s.obj)) for s in items]
        else:
            raws = [s.raw for s in items]
        head = encode({"kind": rtype.list_kind, "apiVersion": rtype.api_version, "metadata": meta})
        payload = head[:-1] + b',"items":[' + b",".join(raws) + b"]}"
        self._send(200, payload)
        return 200

    def _delete_collection(self, route: ResourceRoute, query: dict[str, str],
                           body: bytes) -> int:
        api: ResourceApi = self.context.api
        keep = make_filter(query.get("labelSelector"), query.get("fieldSelector"), route.rtype.kind)
        items, _ = api.list(route.rtype, route.namespace, keep)
        options = self._delete_options(body)
        dry_run = _dry_run(query) or delete_options_dry_run(options)
        deleted = []
        # Every delete is checked (dry run) before any is made: an item that may not be deleted
        # (a protected namespace, a failed precondition) refuses the whole collection, instead
        # of answering an error after the items sorted before it were deleted.
        for check in ((True, False) if not dry_run else (True,)):  # check: this pass is dry
            for stored in items:
                meta = stored.obj["metadata"]
                try:
                    result = api.delete(route.rtype, meta.get("namespace"), meta["name"],
                                        options, check)
                except ApiError as error:
                    if error.code != 404:
                        raise
                    continue
                if check == dry_run:
                    deleted.append(result)
        self._send_json(200, {"kind": route.rtype.list_kind, "apiVersion": route.rtype.api_version,
                              "metadata": {}, "items": deleted})
        return 200

    # ------------------------------------------------------------------ watch

    def _watch(self, route: ResourceRoute, query: dict[str, str]) -> int:
        context = self.context
        api: ResourceApi = context.api
        rtype = route.rtype
        keep = make_filter(query.get("labelSelector"), query.get("fieldSelector"), rtype.kind)
        initial = query.get("sendInitialEvents") == "true"
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        since: int | None = None
        rv_text = query.get("resourceVersion", "")
        if initial:
            # The initial events are the current state; the resourceVersion still has to be a
            # number the store has reached (garbage or a future one was accepted silently).
            context.store.check_read_at(rv_text)
        elif rv_text not in ("", "0"):
            if not bodies.DECIMAL.fullmatch(rv_text):
                raise bad_request(f"resourceVersion {rv_text!r} is not a valid resourceVersion; use one from a previous list or watch")  # noqa: E501
            since = int(rv_text)
            context.store.check_watch_start(since)
        timeout_seconds = bodies.query_int(query, "timeoutSeconds")
        if timeout_seconds is not None:
            timeout = float(timeout_seconds)
        else:
            timeout = random.uniform(*context.settings.default_watch_timeout)
        writer = WatchLines(api, rtype, keep, self._wants() == "Table",
                              query.get("includeObject", "PartialObjectMetadata"))
        sub = Subscription(
            key=rtype.storage_key, namespace=route.namespace, sock=self.connection,
            format_event=writer.event_line, format_bookmark=writer.bookmark_line,
            deadline=time.monotonic() + timeout,
            bookmark_interval=context.settings.bookmark_interval if bookmarks else None,
            initial_end_bookmark=initial and bookmarks,
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self._send_warning()
        self.end_headers()
        self.wfile.flush()
        if context.is_stopping() or not context.store.watch(sub, since):
            # Trimmed between the check and now (or stopping): an ERROR event, as kube does.
            error = _too_old(since or 0, context.store.history_floor).to_status()
            line = encode({"type": "ERROR", "object": error}) + b"\n"
            self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n0\r\n\r\n")
            return 200
        sub.done.wait()
        with contextlib.suppress(OSError):
            self.connection.settimeout(context.settings.write_timeout)
        if not sub.clean:
            self.close_connection = True
        return 200


# Printable ASCII (with '%', so existing escapes stay as they are).
_TARGET_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))


def _percent_encode_raw(target: str) -> str:
    """The request target with raw non-ASCII bytes (and controls) percent-encoded.

    http.server decodes the request line as Latin-1, so the raw UTF-8 bytes of `ü` arrived as
    `Ã¼` and named another object; encoded back to their bytes and percent-escaped, they go
    through the one strict UTF-8 decoding of path segments and query values (routing.py,
    parse_qs), as if the client had escaped them itself.
    """
    if target.isascii() and target.isprintable():
        return target
    return quote(target, safe=_TARGET_SAFE, encoding="latin-1")


def _wants_upgrade(connection: str | None, upgrade: str | None) -> bool:
    tokens = {t.strip().lower() for t in (connection or "").split(",")}
    return "upgrade" in tokens and bool(upgrade)


def _query(text: str) -> dict[str, str]:
    """The query parameters (the last of repeated ones); 400 beyond MAX_QUERY_FIELDS."""
    try:
        pairs = parse_qs(text, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
    except ValueError as exc:  # too many fields
        raise bad_request(f"the query is not valid: {exc}") from exc
    return {k: v[-1] for k, v in pairs.items()}


def _dry_run(query: dict[str, str]) -> bool:
    if "dryRun" not in query:
        return False
    if query["dryRun"] != "All":
        raise bad_request(f'dryRun {query["dryRun"]!r} is not supported; use dryRun=All')
    return True


def _too_old(since: int, floor: int) -> ApiError:
    return expired(f"too old resource version: {since} ({floor + 1})")
