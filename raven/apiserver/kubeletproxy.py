"""pods/log, pods/exec, pods/attach and nodes/proxy: from the request to the kubelet and back.

What kube-apiserver does (its LogLocation/ExecLocation/nodes proxy and UpgradeAwareHandler):
resolve the pod's node (spec.nodeName), the node's kubelet endpoint (raven.apiserver.nodedial),
build the kubelet's URL (/containerLogs/NS/POD/CONTAINER, /exec/NS/POD/CONTAINER?command=...
&output=1, /attach/..., or the nodes/proxy path), send the request, then relay: a plain answer
is copied to the client and the connection closed; a 101 Switching Protocols (exec's WebSocket
`v5.channel.k8s.io`/`v4.channel.k8s.io`) is passed through and bytes are relayed both ways
until either side closes.

Rules kept:
- The client's Authorization header is never forwarded: the kubelet authenticates the API
  server by its client certificate. Hop-by-hop headers are not forwarded either.
- Only what the subresource needs reaches the kubelet: the known exec/log parameters, or for
  nodes/proxy the path (no "." or ".." segments) and query. Bad parameters are a 400 naming them.
- A relay holds its connection's thread and slot (max_connections bounds them) and ends when
  either side closes or stops reading for `write_timeout` seconds; both sockets are closed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import selectors
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from raven.apiserver import bodies
from raven.apiserver.api import ResourceApi
from raven.apiserver.nodedial import (
    KubeletEndpoint,
    NodeDialer,
    bad_gateway,
    close_quietly,
    forbidden,
    kubelet_endpoint,
    split_node_name,
    unavailable,
)
from raven.apiserver.resources import Registry
from raven.apiserver.routing import ResourceRoute
from raven.apiserver.status import ApiError, bad_request, method_not_allowed

MAX_RESPONSE_HEAD = 64 << 10
RELAY_BUFFER = 1 << 16
LOG_NUMBERS = ("tailLines", "limitBytes", "sinceSeconds")
LOG_FLAGS = ("follow", "previous", "timestamps")
# PodExecOptions/PodAttachOptions -> the kubelet's query names (kube's streamParams).
STREAM_PARAMS = (("stdin", "input"), ("stdout", "output"), ("stderr", "error"), ("tty", "tty"))
FORWARDED_HEADERS = ("accept", "accept-encoding", "user-agent", "content-type", "upgrade",
                     "sec-websocket-key", "sec-websocket-version", "sec-websocket-protocol",
                     "sec-websocket-extensions", "x-stream-protocol-version", "origin")
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "te", "trailer", "upgrade", "proxy-connection"})
Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


@dataclass(frozen=True)
class KubeletRequest:
    node: dict[str, Any]
    endpoint: KubeletEndpoint
    target: str  # path and query on the kubelet


@dataclass(frozen=True)
class KubeletProxy:
    """The server's way to its kubelets: the dialer and the networks it may dial."""

    dialer: NodeDialer
    networks: Networks

    def resolve(self, api: ResourceApi, registry: Registry, route: ResourceRoute, method: str,
                query: Mapping[str, list[str]], upgrade: bool) -> KubeletRequest:
        sub = route.subresource
        assert route.name is not None
        if route.rtype.plural == "nodes":
            return self._node_proxy(api, registry, route, query)
        if sub == "log":
            if method != "GET":
                raise method_not_allowed()
        elif method not in ("GET", "POST"):
            raise method_not_allowed()
        elif not upgrade:
            raise bad_request(f"pods/{sub} needs a streaming connection: send an Upgrade request "
                              "(WebSocket v5.channel.k8s.io or v4.channel.k8s.io)")
        pod = api.get(route.rtype, route.namespace, route.name)
        container = _container(pod, _one(query, "container"), sub)
        node_name = (pod.get("spec") or {}).get("nodeName")
        if not node_name:
            raise bad_request(f'pod "{route.name}" does not have a host assigned')
        node = _node(api, registry, str(node_name), f'pod "{route.name}"')
        endpoint = kubelet_endpoint(node, None, self.networks)
        path = "/".join(quote(p, safe="") for p in (route.namespace or "", route.name, container))
        if sub == "log":
            params = _log_params(query)
            return KubeletRequest(node, endpoint, f"/containerLogs/{path}{params}")
        return KubeletRequest(node, endpoint, f"/{sub}/{path}{_stream_params(query, sub)}")

    def _node_proxy(self, api: ResourceApi, registry: Registry, route: ResourceRoute,
                    query: Mapping[str, list[str]]) -> KubeletRequest:
        assert route.name is not None
        name, port = split_node_name(route.name)
        nodes = registry.get("", "v1", "nodes")
        assert nodes is not None
        try:
            node = api.get(nodes, None, name)
        except ApiError as error:
            if error.code == 404 and _is_ip(name):
                raise forbidden(f"nodes/proxy reaches the kubelets of registered nodes only: "
                                f"{name} is not a node of this cluster") from error
            raise
        endpoint = kubelet_endpoint(node, port, self.networks)
        for segment in route.proxy_segments:
            if segment in (".", ".."):
                raise bad_request(f"nodes/proxy: the path segment {segment!r} is not allowed")
        path = "/" + "/".join(quote(s, safe="") for s in route.proxy_segments)
        text = urlencode([(k, v) for k, values in query.items() for v in values])
        return KubeletRequest(node, endpoint, path + (f"?{text}" if text else ""))

    def dial(self, request: KubeletRequest) -> ssl.SSLSocket:
        return self.dialer.dial(request.node, request.endpoint)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _node(api: ResourceApi, registry: Registry, name: str, owner: str) -> dict[str, Any]:
    nodes = registry.get("", "v1", "nodes")
    assert nodes is not None
    try:
        return api.get(nodes, None, name)
    except ApiError as error:
        if error.code == 404:
            raise unavailable(f'{owner} runs on node "{name}", which is not registered; its '
                              "kubelet cannot be reached") from error
        raise


def _one(query: Mapping[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[-1] if values else None


def _flag(query: Mapping[str, list[str]], key: str) -> bool:
    value = _one(query, key)
    if value is None:
        return False
    if value in ("true", "1", "True"):
        return True
    if value in ("false", "0", "False", ""):
        return False
    raise bad_request(f"{key}={value!r} is not a boolean; use true or false")


def _container(pod: dict[str, Any], wanted: str | None, sub: str) -> str:
    name = (pod.get("metadata") or {}).get("name")
    names = [str(c.get("name")) for c in (pod.get("spec") or {}).get("containers") or []
             if isinstance(c, dict) and c.get("name")]
    if wanted:
        if wanted not in names:
            raise bad_request(f"container {wanted} is not valid for pod {name}")
        return wanted
    if len(names) == 1:
        return names[0]
    if not names:
        raise bad_request(f'pod "{name}" has no containers to {sub}')
    raise bad_request(f"a container name must be specified for pod {name}, choose one of: "
                      f"[{' '.join(names)}]")


def _log_params(query: Mapping[str, list[str]]) -> str:
    params = [(k, "true") for k in LOG_FLAGS if _flag(query, k)]
    for key in LOG_NUMBERS:
        value = _one(query, key)
        if value is not None:
            params.append((key, str(bodies.query_int({key: value}, key))))
    since_time = _one(query, "sinceTime")
    if since_time:
        params.append(("sinceTime", since_time))
    return "?" + urlencode(params) if params else ""


def _stream_params(query: Mapping[str, list[str]], sub: str) -> str:
    params = [(kubelet, "1") for ours, kubelet in STREAM_PARAMS if _flag(query, ours)]
    if not any(k in ("input", "output", "error") for k, _ in params):
        raise bad_request("you must specify at least one of stdin, stdout, stderr")
    if sub == "exec":
        commands = query.get("command") or []
        if not commands:
            raise bad_request("you must specify at least 1 command")
        params = [("command", c) for c in commands] + params
    return "?" + urlencode(params)


# --- the bytes ---------------------------------------------------------------------------------

def request_head(method: str, request: KubeletRequest, headers: Mapping[str, str],
                 upgrade: bool, body_length: int) -> bytes:
    lines = [f"{method} {request.target} HTTP/1.1", f"Host: {request.endpoint.address}"]
    for key in FORWARDED_HEADERS:
        value = headers.get(key)
        if value is not None and (upgrade or not key.startswith(("upgrade", "sec-websocket"))):
            lines.append(f"{key}: {_header_value(value)}")
    lines.append("Connection: Upgrade" if upgrade else "Connection: close")
    if body_length:
        lines.append(f"Content-Length: {body_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _header_value(value: str) -> str:
    return value.replace("\r", " ").replace("\n", " ")


def read_response_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """(head including the blank line, bytes read after it)."""
    data = bytearray()
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            return bytes(data[:end + 4]), bytes(data[end + 4:])
        if len(data) > MAX_RESPONSE_HEAD:
            raise bad_gateway(f"the kubelet's answer has a head longer than {MAX_RESPONSE_HEAD} "
                              "bytes")
        chunk = sock.recv(RELAY_BUFFER)
        if not chunk:
            raise bad_gateway("the kubelet closed the connection before it answered")
        data += chunk


def status_code(head: bytes) -> int:
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise bad_gateway(f"the kubelet answered with no HTTP status line: {head[:80]!r}")
    return int(parts[1])


def plain_head(head: bytes) -> bytes:
    """A non-upgrade answer's head for the client: hop-by-hop headers out, `Connection: close`
    in (the relay ends with the kubelet's connection)."""
    lines = head.decode("latin-1").split("\r\n")
    kept = [lines[0]]
    for line in lines[1:]:
        name = line.split(":", 1)[0].strip().lower()
        if line and name not in HOP_BY_HOP and name != "server":
            kept.append(line)
    kept.append("Connection: close")
    return ("\r\n".join(kept) + "\r\n\r\n").encode("latin-1")


def relay(client: socket.socket, upstream: socket.socket, to_upstream: bytes, both: bool,
          timeout: float) -> None:
    """Copy bytes upstream -> client (and client -> upstream when `both`) until either side
    closes or stalls for `timeout`; `to_upstream` (bytes the client sent early) goes first."""
    with contextlib.suppress(OSError):
        client.settimeout(timeout)
        upstream.settimeout(timeout)
        if to_upstream:
            upstream.sendall(to_upstream)
        with selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ)
            selector.register(upstream, selectors.EVENT_READ)
            while True:
                # TLS may hold decrypted bytes the selector cannot see.
                ready = [s for s in (upstream, client)
                         if isinstance(s, ssl.SSLSocket) and s.pending()]
                if not ready:
                    ready = [key.fileobj for key, _ in selector.select()]  # type: ignore[misc]
                for source in ready:
                    assert isinstance(source, socket.socket)
                    data = source.recv(RELAY_BUFFER)
                    if not data:
                        return
                    if source is upstream:
                        client.sendall(data)
                    elif both:
                        upstream.sendall(data)


def forward(client: socket.socket, early: bytes, upstream: ssl.SSLSocket, head: bytes,
            body: bytes, upgrade: bool, timeout: float) -> int:
    """Send the request to the kubelet and relay its answer; returns the kubelet's status."""
    try:
        try:
            upstream.sendall(head + body)
            answer, rest = read_response_head(upstream)
        except (OSError, ssl.SSLError) as exc:
            raise bad_gateway(f"the connection to the kubelet failed: {exc}") from exc
        code = status_code(answer)
        switched = upgrade and code == 101
        with contextlib.suppress(OSError):  # the client went away: nothing left to tell it
            client.sendall((answer if switched else plain_head(answer)) + rest)
            relay(client, upstream, early if switched else b"", switched, timeout)
        return code
    finally:
        close_quietly(upstream)
