"""Dialling a node's kubelet the way kube-apiserver does: from the Node object to a TLS socket.

Rules kept:
- The kubelet's address is the Node's InternalIP (else ExternalIP) and its port is
  status.daemonEndpoints.kubeletEndpoint.Port (10250 when absent); nothing else is ever dialled:
  a request naming another port, or a node whose address is not a unicast address inside the
  allowed networks (`kubelet_networks`; never link-local, so a forged Node cannot point the
  server at a cloud metadata service), is refused with 403 before any connection is made.
- The kubelet's certificate is verified (the cluster CA by default, with the node's address as
  the expected name) and the server presents its kubelet client certificate.
- Nodes of NAT'd pools with a Raven proxy are reached through the proxy servers the Gateway
  status names (raven.apiserver.ravenproxy, when set up); otherwise
  nodes selected by `egress_selector` are reached through an HTTP CONNECT proxy over TLS
  (kube-apiserver's egress selector in HTTPConnect mode): proxies are tried in order; a proxy's
  403 is passed on as 403, no proxy reachable or willing (502/503) is a 503.
- Every failure is an `ApiError` whose message names the node, the address and what to check;
  nothing here blocks longer than `timeout` per connection attempt.
"""

from __future__ import annotations

import contextlib
import ipaddress
import selectors
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raven.apiserver.status import ApiError

if TYPE_CHECKING:
    from raven.apiserver.ravenproxy import RavenProxy

DEFAULT_KUBELET_PORT = 10250
ADDRESS_TYPES = ("InternalIP", "ExternalIP")  # preference order of the node's addresses
MAX_PROXY_RESPONSE = 16 << 10  # a CONNECT answer's status line and headers


@dataclass(frozen=True)
class KubeletEndpoint:
    node: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class EgressProxy:
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def forbidden(message: str) -> ApiError:
    return ApiError(403, "Forbidden", message, {})


def unavailable(message: str) -> ApiError:
    return ApiError(503, "ServiceUnavailable", message, {})


def bad_gateway(message: str) -> ApiError:
    return ApiError(502, "BadGateway", message, {})


def parse_host_port(text: str, what: str) -> tuple[str, int]:
    """HOST:PORT or [V6]:PORT -> (host, port); ValueError naming `what` otherwise."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"{what} {text!r} is not HOST:PORT (e.g. 198.18.1.10:10350)")
    return host, int(port)


def node_address(node: dict[str, Any]) -> str | None:
    addresses = (node.get("status") or {}).get("addresses") or []
    for wanted in ADDRESS_TYPES:
        for entry in addresses:
            if isinstance(entry, dict) and entry.get("type") == wanted and entry.get("address"):
                return str(entry["address"])
    return None


def kubelet_port(node: dict[str, Any]) -> int:
    endpoint = ((node.get("status") or {}).get("daemonEndpoints") or {}).get(
        "kubeletEndpoint") or {}
    port = endpoint.get("Port") if isinstance(endpoint, dict) else None
    if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
        return port
    return DEFAULT_KUBELET_PORT


def split_node_name(text: str) -> tuple[str, int | None]:
    """`NODE`, `NODE:PORT`, `https:NODE:PORT` or `https:NODE:` (kube's nodes/proxy name forms)
    -> (node, port or None); 400 for another scheme or a port that is not a number."""
    parts = text.split(":")
    if len(parts) == 3:
        scheme, name, port = parts
        if scheme != "https":
            raise ApiError(400, "BadRequest", f'nodes/proxy: scheme {scheme!r} in "{text}" is '
                           "not supported; kubelets are reached over https only", {})
    elif len(parts) == 2:
        name, port = parts
    elif len(parts) == 1:
        return text, None
    else:
        raise ApiError(400, "BadRequest", f"nodes/proxy: {text!r} is not NODE, NODE:PORT or "
                       "https:NODE:PORT", {})
    if port == "":
        return name, None
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ApiError(400, "BadRequest", f"nodes/proxy: port {port!r} in {text!r} is not a "
                       "port number", {})
    return name, int(port)


def kubelet_endpoint(node: dict[str, Any], requested_port: int | None,
                     networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
                     ) -> KubeletEndpoint:
    """Where the node's kubelet listens; 403 when the request or the Node asks for anything
    but a kubelet inside the cluster's networks."""
    name = str((node.get("metadata") or {}).get("name", ""))
    port = kubelet_port(node)
    if requested_port is not None and requested_port != port:
        raise forbidden(f"nodes/proxy to port {requested_port} of node {name!r} is refused: "
                        f"only the node's kubelet port {port} is reachable through the API "
                        "server")
    host = node_address(node)
    if host is None:
        raise unavailable(f"node {name!r} has no InternalIP or ExternalIP in "
                          "status.addresses; its kubelet cannot be reached until it reports one")
    problem = address_problem(host, networks)
    if problem:
        raise forbidden(f"node {name!r}: its address {host} {problem}; the API server dials "
                        "kubelets only inside the cluster's node networks")
    return KubeletEndpoint(name, host, port)


def address_problem(host: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network,
                                                ...]) -> str | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "is not an IP address"
    if ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        return "is a link-local, multicast or unspecified address"
    if networks and not any(ip in net for net in networks):
        return "is outside the allowed node networks (" + ", ".join(map(str, networks)) + ")"
    return None


def open_tunnel(proxy: EgressProxy, context: ssl.SSLContext, target_host: str,
                target_port: int, timeout: float) -> ssl.SSLSocket:
    """A TLS connection to the proxy, `CONNECT target` on it; the socket then carries raw bytes
    to the target. ApiError: 403 when the proxy refuses, 503 when it has no way there."""
    target = (f"[{target_host}]:{target_port}" if ":" in target_host
              else f"{target_host}:{target_port}")
    raw = socket.create_connection((proxy.host, proxy.port), timeout=timeout)
    try:
        sock = context.wrap_socket(raw, server_hostname=proxy.host)
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = read_head(sock, MAX_PROXY_RESPONSE)
    except BaseException:
        raw.close()
        raise
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    if code == 200:
        return sock
    sock.close()
    reason = parts[2] if len(parts) > 2 else ""
    if code == 403:
        raise forbidden(f"the egress proxy {proxy.address} refused the connection to {target}: "
                        f"{code} {reason}")
    raise unavailable(f"the egress proxy {proxy.address} cannot reach {target}: "
                      f"{status_line or 'no answer'}")


def read_head(sock: socket.socket, limit: int) -> bytes:
    """Bytes up to and including the blank line ending an HTTP response head, read one byte
    at a time (nothing after it is consumed: it belongs to the tunnel)."""
    head = bytearray()
    while not head.endswith(b"\r\n\r\n"):
        if len(head) >= limit:
            raise bad_gateway(f"the answer's head is longer than {limit} bytes")
        byte = sock.recv(1)
        if not byte:
            raise bad_gateway("the connection closed before the answer's head ended")
        head += byte
    return bytes(head)


@dataclass(frozen=True)
class NodeDialer:
    """Opens verified TLS connections to kubelets, directly or through an egress proxy."""

    kubelet_tls: ssl.SSLContext  # client cert + the CA kubelet certificates are verified with
    proxy_tls: ssl.SSLContext | None  # client cert + the CA of the egress proxies
    proxies: tuple[EgressProxy, ...]
    through_proxy: Callable[[dict[str, Any]], bool]  # node -> reached through a proxy?
    timeout: float  # per connection attempt (TCP, CONNECT, TLS)
    raven: RavenProxy | None = None  # Raven's proxy servers, from the Gateway status
    # How long a tunnelled connection's splice may wait on a reader that does not read (the
    # relay's write timeout): a slow `kubectl logs | less` is a stall, not a failed dial.
    stall_timeout: float = 60.0


    def dial(self, node: dict[str, Any], endpoint: KubeletEndpoint) -> ssl.SSLSocket:
        raw: socket.socket
        raven = self.raven.proxies(endpoint.host) if self.raven is not None else []
        if raven:
            assert self.raven is not None
            raw = inner_end(self.raven.tunnel(endpoint, raven, self.timeout),
                            self.stall_timeout)
            via = " through Raven's proxy"
        elif self.proxies and self.through_proxy(node):
            raw = inner_end(self._through_proxies(endpoint), self.stall_timeout)
            via = " through the egress proxy"
        else:
            via = ""
            try:
                raw = socket.create_connection((endpoint.host, endpoint.port),
                                               timeout=self.timeout)
            except OSError as exc:
                raise unavailable(f"the kubelet of node {endpoint.node!r} at {endpoint.address} "
                                  f"cannot be reached: {_why(exc)}; is the node up and its "
                                  "kubelet running?") from exc
        try:
            raw.settimeout(self.timeout)
            sock = self.kubelet_tls.wrap_socket(raw, server_hostname=endpoint.host)
        except ssl.SSLCertVerificationError as exc:
            raw.close()
            raise bad_gateway(f"the kubelet of node {endpoint.node!r} at {endpoint.address} "
                              f"presented a certificate the API server does not trust: "
                              f"{exc.verify_message}") from exc
        except (OSError, ssl.SSLError) as exc:
            raw.close()
            raise bad_gateway(f"TLS with the kubelet of node {endpoint.node!r} at "
                              f"{endpoint.address}{via} failed: {_why(exc)}") from exc
        return sock

    def _through_proxies(self, endpoint: KubeletEndpoint) -> ssl.SSLSocket:
        assert self.proxy_tls is not None
        failures = []
        for proxy in self.proxies:
            try:
                return open_tunnel(proxy, self.proxy_tls, endpoint.host, endpoint.port,
                                   self.timeout)
            except ApiError as error:
                if error.code == 403:
                    raise
                failures.append(error.message)
            except (OSError, ssl.SSLError) as exc:
                failures.append(f"the egress proxy {proxy.address}: {_why(exc)}")
        raise unavailable(f"the kubelet of node {endpoint.node!r} at {endpoint.address} is "
                          f"reached through an egress proxy and none could connect: "
                          f"{'; '.join(failures)}")


def inner_end(tunnel: socket.socket, stall_timeout: float) -> socket.socket:
    """A plain socket carrying the tunnel's bytes, for the kubelet's TLS to run over.

    The tunnel is itself TLS (to the proxy), and Python's ssl cannot stack a TLS session on an
    SSLSocket (it would write to the file descriptor under the outer session). So one end of a
    socket pair gets the inner TLS and a thread splices the other end with the tunnel until
    either closes. A write that stalls `stall_timeout` seconds (a reader that stopped reading)
    ends both; that must be the relay's write timeout, never the dial timeout: with the dial
    timeout a reader that paused longer than it got a cut stream and no error.
    """
    ours, theirs = socket.socketpair()
    thread = threading.Thread(target=splice, args=(theirs, tunnel, stall_timeout),
                              name="raven-egress-splice", daemon=True)
    thread.start()
    return ours


def splice(a: socket.socket, b: socket.socket, timeout: float) -> None:
    """Copy bytes both ways until either side closes (or a write stalls `timeout` seconds);
    then close both."""
    try:
        with contextlib.suppress(OSError), selectors.DefaultSelector() as selector:
            a.settimeout(timeout)
            b.settimeout(timeout)
            selector.register(a, selectors.EVENT_READ)
            selector.register(b, selectors.EVENT_READ)
            while True:
                # TLS may hold decrypted bytes the selector cannot see.
                ready = [s for s in (a, b) if isinstance(s, ssl.SSLSocket) and s.pending()]
                if not ready:
                    ready = [key.fileobj for key, _ in selector.select()]  # type: ignore[misc]
                for source in ready:
                    assert isinstance(source, socket.socket)
                    data = source.recv(1 << 16)
                    if not data:
                        return
                    (b if source is a else a).sendall(data)
    finally:
        close_quietly(a)
        close_quietly(b)


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.lower() if isinstance(exc, ConnectionError) else text


def client_context(ca_file: str, cert_file: str, key_file: str) -> ssl.SSLContext:
    """TLS client context: verify with `ca_file`, present `cert_file`/`key_file`."""
    context = ssl.create_default_context(cafile=ca_file)
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["http/1.1"])
    return context


def close_quietly(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
