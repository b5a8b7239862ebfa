"""HTTP layer: authentication, routing, content negotiation, list and watch streaming.

Rules kept:
- Every request needs `Authorization: Bearer <token>`; anything else is 401 (a Status).
- Request bodies are JSON or YAML; responses are JSON (protobuf-only clients get 406).
- HTTP/1.1 keep-alive; watch responses are chunked and end with the terminating chunk when the
  watch times out, the server stops or the client goes away.
- Watches with selectors see objects enter (ADDED) and leave (DELETED) the selection, as
  kube-apiserver reports them.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import random
import secrets
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import yaml

from raven.apiserver import discovery, openapi, tables
from raven.apiserver.api import ResourceApi, delete_options_dry_run, parse_continue_token
from raven.apiserver.fanout import Subscription, health_report
from raven.apiserver.resources import ResourceType
from raven.apiserver.selectors import make_filter
from raven.apiserver.status import (
    ApiError,
    bad_request,
    expired,
    method_not_allowed,
    unauthorized,
)
from raven.apiserver.store import WatchEvent, encode

if TYPE_CHECKING:
    from raven.apiserver.server import ApiServer

log = logging.getLogger("raven.apiserver")

NAMESPACE_SUBRESOURCES = ("status", "finalize")
MAX_BODY = 3 * 1024 * 1024  # kube-apiserver's limit for a request body


class Route:
    """A parsed resource URL."""

    def __init__(self, rtype: ResourceType, namespace: str | None, name: str | None,
                 subresource: str, watch_path: bool) -> None:
        self.rtype = rtype
        self.namespace = namespace
        self.name = name
        self.subresource = subresource
        self.watch_path = watch_path


class RequestHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "raven-apiserver"
    server: ApiServerHTTP  # type: ignore[assignment]

    # ------------------------------------------------------------------ plumbing

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionError, TimeoutError, OSError) as exc:
            log.debug("connection from %s ended: %s", self.client_address, exc)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            if length <= 16 * MAX_BODY:  # drain it, so the client reads our answer
                remaining = length
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, 1 << 20))
                    if not chunk:
                        break
                    remaining -= len(chunk)
            else:
                self.close_connection = True  # the unread body makes the connection unusable
            raise ApiError(413, "RequestEntityTooLarge",
                           f"the request body is {length} bytes; the limit is {MAX_BODY}")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0] or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(length) if length else b""

    def _send(self, code: int, payload: bytes, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-cache, private")
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
        code = 200
        try:
            body = self._read_body()
            self._authenticate()
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            code = self._route(method, url.path.rstrip("/") or "/", query, body)
        except ApiError as error:
            code = error.code
            self._send_error(error)
        except (BrokenPipeError, ConnectionResetError):
            raise
        except Exception:  # a bug must not kill the connection silently: answer 500
            log.exception("internal error serving %s %s", method, self.path)
            code = 500
            self._send_error(ApiError(500, "InternalError", "an internal error occurred; see the server log"))  # noqa: E501
        log.info("%s %s -> %d (%.1f ms)", method, self.path, code,
                 (time.monotonic() - started) * 1000)

    def _authenticate(self) -> None:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            token.strip().encode(), self.server.owner.token.encode()
        ):
            raise unauthorized()

    def _route(self, method: str, path: str, query: dict[str, str], body: bytes) -> int:
        owner = self.server.owner
        registry = owner.registry
        if path in ("/healthz", "/livez", "/readyz"):
            code, text = health_report(owner.fanout.health())
            self._send(code, text, "text/plain; charset=utf-8")
            return code
        if path == "/version":
            self._send_json(200, discovery.version_info())
            return 200
        if path == "/openapi/v3":
            self._send_json(200, openapi.root(registry))
            return 200
        if path.startswith("/openapi/v3/"):
            gv = path[len("/openapi/v3/"):].split("/")
            doc = None
            if gv[0] == "api" and len(gv) == 2:
                doc = openapi.group_version_doc(registry, "", gv[1])
            elif gv[0] == "apis" and len(gv) == 3:
                doc = openapi.group_version_doc(registry, gv[1], gv[2])
            if doc is None:
                raise _page_not_found(path)
            self._send_json(200, doc)
            return 200
        if path.startswith("/openapi/"):
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path}); this server publishes no OpenAPI schema")  # noqa: E501
        parts = [p for p in path.split("/") if p]
        if parts[:1] == ["api"]:
            if len(parts) == 1:
                self._send_json(200, discovery.core_versions(owner.address))
                return 200
            if parts[1] != "v1":
                raise _page_not_found(path)
            group, version, rest = "", "v1", parts[2:]
        elif parts[:1] == ["apis"]:
            if len(parts) == 1:
                self._send_json(200, discovery.group_list(registry))
                return 200
            if len(parts) == 2:
                doc = discovery.group(registry, parts[1])
                if doc is None:
                    raise _page_not_found(path)
                self._send_json(200, doc)
                return 200
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise _page_not_found(path)
        if not rest:
            if method != "GET":
                raise method_not_allowed()
            doc = discovery.resource_list(registry, group, version)
            if doc is None:
                raise _page_not_found(path)
            self._send_json(200, doc)
            return 200
        route = self._parse_resource(group, version, rest, path)
        self.warning = route.rtype.deprecation_warning
        return self._serve_resource(method, route, query, body)

    def _parse_resource(self, group: str, version: str, rest: list[str], path: str) -> Route:
        registry = self.server.owner.registry
        watch_path = False
        if rest[0] == "watch":
            watch_path, rest = True, rest[1:]
        namespace = None
        if (
            len(rest) >= 3 and rest[0] == "namespaces"
            and not (group == "" and rest[2] in NAMESPACE_SUBRESOURCES and len(rest) == 3)
        ):
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise _page_not_found(path)
        rtype = registry.get(group, version, rest[0])
        if rtype is None:
            raise _page_not_found(path)
        if rtype.namespaced and namespace is None and len(rest) > 1:
            raise _page_not_found(path)
        if not rtype.namespaced and namespace is not None:
            raise _page_not_found(path)
        name = rest[1] if len(rest) > 1 else None
        subresource = rest[2] if len(rest) > 2 else ""
        served = subresource == "status" and rtype.has_status
        finalize = rtype.plural == "namespaces" and subresource == "finalize"
        if subresource and not served and not finalize:
            raise _page_not_found(path)
        return Route(rtype, namespace, name, subresource, watch_path)

    # ------------------------------------------------------------------ resources

    def _decode(self, body: bytes) -> Any:
        if not body:
            raise bad_request("the request needs a body")
        media = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip()
        try:
            if media in ("application/yaml", "application/apply-patch+yaml"):
                return yaml.safe_load(body)
            return json.loads(body)
        except (ValueError, yaml.YAMLError) as exc:
            raise bad_request(f"the request body is not valid {media}: {exc}") from exc

    def _serve_resource(self, method: str, route: Route, query: dict[str, str], body: bytes) -> int:
        api: ResourceApi = self.server.owner.api
        rtype = route.rtype
        self._check_accept()
        if route.watch_path or (method == "GET" and query.get("watch") in ("true", "1")):
            if route.name is not None:
                query["fieldSelector"] = ",".join(
                    s for s in (query.get("fieldSelector"), f"metadata.name={route.name}") if s
                )
            return self._watch(route, query)
        dry_run = _dry_run(query)
        if rtype.review:
            return self._review(route, method, body)
        if route.name is None:
            if method == "GET":
                return self._list(route, query)
            if method == "POST":
                obj = api.create(rtype, route.namespace, self._decode(body), dry_run)
                self._send_json(201, obj)
                return 201
            if method == "DELETE":
                return self._delete_collection(route, query, body)
            raise method_not_allowed()
        if method == "GET":
            obj = api.get(rtype, route.namespace, route.name)
            return self._send_objects(route, query, [obj], single=True)
        if method == "PUT":
            obj = api.update(rtype, route.namespace, route.name, self._decode(body),
                             "status" if route.subresource == "status" else "", dry_run)
        elif method == "PATCH":
            obj = api.patch(rtype, route.namespace, route.name,
                            self.headers.get("Content-Type") or "", self._decode(body),
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

    def _review(self, route: Route, method: str, body: bytes) -> int:
        """The token is cluster-admin: every access review is allowed, the user is admin."""
        if method != "POST" or route.name is not None:
            raise method_not_allowed()
        review = self._decode(body)
        if not isinstance(review, dict):
            raise bad_request(f"a {route.rtype.kind} must be a JSON object")
        review.update(apiVersion=route.rtype.api_version, kind=route.rtype.kind)
        review.setdefault("metadata", {})["creationTimestamp"] = None
        if route.rtype.review == "access":
            review["status"] = {"allowed": True, "reason": "the raven API server's bearer token is cluster-admin (no RBAC)"}  # noqa: E501
        else:
            review["status"] = {"userInfo": {"username": "admin",
                                             "groups": ["system:masters", "system:authenticated"]}}
        self._send_json(201, review)
        return 201

    def _delete_options(self, body: bytes) -> dict[str, Any]:
        options = self._decode(body) if body.strip() else {}
        if not isinstance(options, dict):
            raise bad_request("DeleteOptions must be a JSON object")
        return options

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

    def _send_objects(self, route: Route, query: dict[str, str], objs: list[dict[str, Any]],
                      single: bool) -> int:
        wants = self._wants()
        if wants == "Table":
            meta = {"resourceVersion": objs[0]["metadata"].get("resourceVersion", "")} if single else {}  # noqa: E501
            self._send_json(200, tables.table(route.rtype, objs, query.get("includeObject", "PartialObjectMetadata"), meta))  # noqa: E501
        elif wants == "PartialObjectMetadata":
            self._send_json(200, {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": objs[0]["metadata"]})  # noqa: E501
        else:
            self._send_json(200, objs[0])
        return 200

    def _list(self, route: Route, query: dict[str, str]) -> int:
        api: ResourceApi = self.server.owner.api
        rtype = route.rtype
        keep = make_filter(query.get("labelSelector"), query.get("fieldSelector"), rtype.kind)
        self.server.owner.store.check_read_at(query.get("resourceVersion"))
        items, rv = api.list(rtype, route.namespace, keep)
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        limit = int(query["limit"]) if query.get("limit", "").isdigit() else 0
        token = query.get("continue")
        if token:
            start_ns, start_name, rv = parse_continue_token(token)
            meta["resourceVersion"] = str(rv)
            items = [s for s in items if (s.obj["metadata"].get("namespace", ""), s.obj["metadata"]["name"]) > (start_ns, start_name)]  # noqa: E501
        if limit and len(items) > limit:
            last = items[limit - 1].obj["metadata"]
            meta["continue"] = _b64(json.dumps([last.get("namespace", ""), last["name"], str(rv)]))
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
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

    def _delete_collection(self, route: Route, query: dict[str, str], body: bytes) -> int:
        api: ResourceApi = self.server.owner.api
        keep = make_filter(query.get("labelSelector"), query.get("fieldSelector"), route.rtype.kind)
        items, _ = api.list(route.rtype, route.namespace, keep)
        options = self._delete_options(body)
        dry_run = _dry_run(query) or delete_options_dry_run(options)
        deleted = []
        for stored in items:
            meta = stored.obj["metadata"]
            try:
                deleted.append(api.delete(route.rtype, meta.get("namespace"), meta["name"],
                                          options, dry_run))
            except ApiError as error:
                if error.code != 404:
                    raise
        self._send_json(200, {"kind": route.rtype.list_kind, "apiVersion": route.rtype.api_version,
                              "metadata": {}, "items": deleted})
        return 200

    # ------------------------------------------------------------------ watch

    def _watch(self, route: Route, query: dict[str, str]) -> int:
        owner = self.server.owner
        api: ResourceApi = owner.api
        rtype = route.rtype
        keep = make_filter(query.get("labelSelector"), query.get("fieldSelector"), rtype.kind)
        rv_text = query.get("resourceVersion", "")
        initial = query.get("sendInitialEvents") == "true"
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        since: int | None = None
        if rv_text not in ("", "0") and not initial:
            if not rv_text.isdigit():
                raise bad_request(f"resourceVersion {rv_text!r} is not a valid resourceVersion; use one from a previous list or watch")  # noqa: E501
            since = int(rv_text)
            owner.store.check_watch_start(since)
        if query.get("timeoutSeconds", "").isdigit():
            timeout = float(query["timeoutSeconds"])
        else:
            timeout = random.uniform(*owner.settings.default_watch_timeout)
        writer = _WatchWriter(api, rtype, keep, self._wants() == "Table",
                              query.get("includeObject", "PartialObjectMetadata"))
        sub = Subscription(
            key=rtype.storage_key, namespace=route.namespace, sock=self.connection,
            format_event=writer.event_line, format_bookmark=writer.bookmark_line,
            deadline=time.monotonic() + timeout,
            bookmark_interval=owner.settings.bookmark_interval if bookmarks else None,
            initial_end_bookmark=initial and bookmarks,
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self._send_warning()
        self.end_headers()
        self.wfile.flush()
        if owner.stopping or not owner.store.watch(sub, since):
            # Trimmed between the check and now (or stopping): an ERROR event, as kube does.
            error = _too_old(since or 0, owner.store.history_floor).to_status()
            line = encode({"type": "ERROR", "object": error}) + b"\n"
            self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n0\r\n\r\n")
            return 200
        sub.done.wait()
        with contextlib.suppress(OSError):
            self.connection.settimeout(None)
        if not sub.clean:
            self.close_connection = True
        return 200

class _WatchWriter:
    """Turns store events into watch lines for one client (selector, version, Table).

    Runs on the fan-out thread only, so the per-event encoding cache needs no lock.
    """

    def __init__(self, api: ResourceApi, rtype: ResourceType,
                 keep: Callable[[dict[str, Any]], bool] | None, table: bool,
                 include: str) -> None:
        self.api = api
        self.rtype = rtype
        self.keep = keep
        self.table = table
        self.include = include
        self.convert = api.needs_conversion(rtype)

    def _type_for(self, event: WatchEvent) -> str | None:
        if self.keep is None:
            return event.type
        if event.type == "ADDED":
            return "ADDED" if self.keep(event.new) else None
        if event.type == "DELETED":
            return "DELETED" if self.keep(event.new) else None
        was = event.old is not None and self.keep(event.old)
        now = self.keep(event.new)
        if was and now:
            return "MODIFIED"
        if now:
            return "ADDED"
        if was:
            return "DELETED"
        return None

    def event_line(self, event: WatchEvent) -> bytes | None:
        kind = self._type_for(event)
        if kind is None:
            return None
        if self.table:
            obj = self.api.to_version(self.rtype, event.new)
            body = encode(tables.table(self.rtype, [obj], self.include, {"resourceVersion": str(event.rv)}))  # noqa: E501
            return b'{"type":"' + kind.encode() + b'","object":' + body + b"}\n"
        cache_key = (kind, self.rtype.api_version)
        line = event.encoded.get(cache_key)
        if line is None:
            try:
                if self.convert:
                    raw = encode(self.api.to_version(self.rtype, event.new))
                else:
                    raw = event.raw if event.raw is not None else encode(event.new)
            except Exception:  # a conversion bug must not end every watch
                log.exception("cannot convert %s for a watch", event.key)
                return None
            line = b'{"type":"' + kind.encode() + b'","object":' + raw + b"}\n"
            event.encoded[cache_key] = line
        return line

    def bookmark_line(self, rv: int, initial_end: bool = False) -> bytes:
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        obj = {"kind": self.rtype.kind, "apiVersion": self.rtype.api_version, "metadata": meta}
        return encode({"type": "BOOKMARK", "object": obj}) + b"\n"


def _dry_run(query: dict[str, str]) -> bool:
    if "dryRun" not in query:
        return False
    if query["dryRun"] != "All":
        raise bad_request(f'dryRun {query["dryRun"]!r} is not supported; use dryRun=All')
    return True


def _too_old(since: int, floor: int) -> ApiError:
    return expired(f"too old resource version: {since} ({floor + 1})")


def _page_not_found(path: str) -> ApiError:
    return ApiError(404, "NotFound", f"the server could not find the requested resource ({path})",
                    {})


def _b64(text: str) -> str:
    import base64

    return base64.urlsafe_b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    import base64

    return base64.urlsafe_b64decode(text.encode()).decode()


class ApiServerHTTP(http.server.ThreadingHTTPServer):
    """ThreadingHTTPServer that hands TLS handshakes to the request threads."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], owner: ApiServer, ssl_context: Any) -> None:
        self.owner = owner
        self.ssl_context = ssl_context
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, RequestHandler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context is not None:
            sock = self.ssl_context.wrap_socket(sock, server_side=True,
                                                do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("error on connection from %s", client_address, exc_info=True)
