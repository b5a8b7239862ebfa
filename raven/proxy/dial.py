"""The API server's side of the proxy: CONNECT through a proxy server to a kubelet.

This is kube-apiserver's egress selector in HTTPConnect mode: TLS to the proxy server's
server-facing port with a client certificate of organisation raven:proxy-user (see
`raven.proxy.certs.user_context`), `CONNECT <ip>:<port> HTTP/1.1`, and after
`200 Connection established` the socket carries raw bytes to the target.

    ctx = user_context(ca_crt, ca_key, time.time())
    for address in proxy_for(gateway_objects, node_ip):       # [] -> dial the node directly
        tunnel = open_tunnel(address, ctx, node_ip, 10250, timeout=10)
        kubelet = wrap_tls(tunnel, kubelet_ctx, server_hostname=node_name)  # TLS inside

Rules kept: the response head is read byte by byte, so no byte meant for the caller is
consumed; any status but 200 closes the socket and raises TunnelError with the status and the
proxy's reason; the server's certificate must chain to the cluster CA and be an agent's.
"""

from __future__ import annotations

import socket
import ssl

from raven.proxy.certs import ORG_AGENT, peer_identity
from raven.proxy.plan import SERVER_PORT, proxy_for

__all__ = ["SERVER_PORT", "TunnelError", "open_tunnel", "proxy_for", "wrap_tls"]

MAX_HEAD = 8192


class TunnelError(OSError):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"proxy answered {status}: {reason}" if status else reason)
        self.status = status
        self.reason = reason


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def open_tunnel(proxy_address: tuple[str, int], ssl_context: ssl.SSLContext, target_host: str,
                target_port: int, timeout: float) -> ssl.SSLSocket:
    """A connected socket whose bytes reach target_host:target_port; TunnelError otherwise."""
    raw = socket.create_connection(proxy_address, timeout=timeout)
    try:
        sock = ssl_context.wrap_socket(raw, server_hostname=None)
    except Exception:
        raw.close()
        raise
    try:
        _, org = peer_identity(sock.getpeercert(binary_form=True))
        if org != ORG_AGENT:
            raise TunnelError(0, f"proxy {proxy_address[0]}:{proxy_address[1]} presented a "
                              f"certificate of organisation {org!r}, not {ORG_AGENT!r}")
        authority = f"{_format_host(target_host)}:{target_port}"
        sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            byte = sock.recv(1)
            if not byte:
                raise TunnelError(0, f"proxy {proxy_address[0]} closed the connection before "
                                  "answering CONNECT")
            head += byte
            if len(head) > MAX_HEAD:
                raise TunnelError(0, "proxy answer head too long")
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if status != 200:
            body = b""
            try:
                sock.settimeout(min(timeout, 1.0))
                body = sock.recv(1024)
            except OSError:
                pass
            raise TunnelError(status, body.decode("utf-8", "replace").strip() or line)
        sock.settimeout(None)
        return sock
    except BaseException:
        sock.close()
        raise


def wrap_tls(tunnel: ssl.SSLSocket, context: ssl.SSLContext, server_hostname: str | None
             ) -> object:
    """TLS to the target inside the tunnel's TLS (Python's ssl cannot wrap an SSLSocket
    twice; urllib3's SSLTransport, which it uses for HTTPS through HTTPS proxies, can).
    The result has sendall/recv/makefile/close like a socket."""
    from urllib3.util.ssltransport import SSLTransport

    return SSLTransport(tunnel, context, server_hostname=server_hostname)
