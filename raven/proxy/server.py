"""The proxy server (cloud): accepts proxy clients on the agent-facing port and CONNECT requests
on the server-facing port, and carries each allowed request over the target pool's client.

Rules kept (docs/proxy.md):
- both ports require a certificate from the cluster CA; the agent-facing port accepts only an
  agent (O=raven:proxy-agent) whose CN is an active proxy endpoint of a NAT'd pool, the
  server-facing port only a user (O=raven:proxy-user): an agent cannot use the proxy as a relay;
- a CONNECT target must pass `View.check` (kubelet ports of nodes of proxied pools, IP
  literals only); every refusal is answered with its status and reason, logged and counted;
- a pool's newest connection that is not going away carries new streams (a rotating client
  opens its new connection before it closes the old one);
- the request head is bounded (8 KiB) and must arrive within the dial timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

from raven.proxy.certs import ORG_AGENT, ORG_USER, not_after, peer_identity
from raven.proxy.metrics import ProxyMetrics
from raven.proxy.mux import Mux, MuxClosed, relay
from raven.proxy.plan import View

log = logging.getLogger(__name__)

MAX_HEAD = 8192
READ_LIMIT = 1 << 16  # StreamReader buffer of a proxy client's connection
REASONS = {200: "Connection established", 400: "Bad Request", 403: "Forbidden",
           502: "Bad Gateway", 503: "Service Unavailable"}


@dataclass
class ServerOptions:
    keepalive: float = 10.0
    dial_timeout: float = 5.0
    max_streams: int = 1000


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


class ProxyServer:
    def __init__(self, node: str, context: ssl.SSLContext, metrics: ProxyMetrics,
                 options: ServerOptions | None = None) -> None:
        self.node = node
        self.context = context
        self.metrics = metrics
        self.options = options or ServerOptions()
        self.view = View()
        self.pools: dict[str, list[tuple[str, Mux]]] = {}  # pool -> [(client node, mux)]
        self._sockets: list[socket.socket] = []  # listening sockets
        self._accepting: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()  # CONNECT callers, aborted at stop

    async def start(self, tunnel: tuple[str, int], user: tuple[str, int]) -> None:
        # Our own accept loops (not asyncio.start_server(ssl=...)): asyncio drops a failed TLS
        # handshake silently, and a refused peer must be logged and counted.
        self._listen(tunnel, self._on_agent, "client", READ_LIMIT)
        self._listen(user, self._on_user, "CONNECT", MAX_HEAD * 2)
        log.info("proxy server %s: clients on %s:%d, CONNECT on %s:%d", self.node,
                 tunnel[0] or "*", tunnel[1], user[0] or "*", user[1])

    def _listen(self, address: tuple[str, int], handler: Any, port: str, limit: int) -> None:
        host, number = address
        if not host:
            sock = socket.create_server(("::", number), family=socket.AF_INET6,
                                        dualstack_ipv6=True, reuse_port=False) \
                if socket.has_dualstack_ipv6() else socket.create_server(("0.0.0.0", number))
        else:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.create_server((host, number), family=family)
        sock.setblocking(False)
        self._sockets.append(sock)
        task = asyncio.ensure_future(self._accept(sock, handler, port, limit))
        self._accepting.append(task)

    async def _accept(self, sock: socket.socket, handler: Any, port: str, limit: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:  # e.g. EMFILE: say so, breathe, go on
                log.warning("proxy server: accept on the %s port failed: %s", port, exc)
                await asyncio.sleep(0.5)
                continue
            # Small request/response messages must not wait for delayed ACKs (Nagle).
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = asyncio.ensure_future(self._handshake(conn, handler, port, limit))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handshake(self, conn: socket.socket, handler: Any, port: str, limit: int
                         ) -> None:
        loop = asyncio.get_running_loop()
        try:
            peer = conn.getpeername()
            where = f"{peer[0]}:{peer[1]}"
        except OSError:
            where = "?"
        reader = asyncio.StreamReader(limit=limit)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, conn, ssl=self.context,
                ssl_handshake_timeout=self.options.dial_timeout)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            log.warning("proxy server: refused %s on the %s port: TLS handshake failed: %s",
                        where, port, str(exc) or type(exc).__name__)
            self.metrics.requests.labels("server", "refused-tls").inc()
            conn.close()
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        await handler(reader, writer)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        out = []
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                out.append(tuple(sock.getsockname()[:2]))
        return out  # type: ignore[return-value]

    async def stop(self) -> None:
        for task in self._accepting:
            task.cancel()
        for sock in self._sockets:
            sock.close()
        self._accepting.clear()
        self._sockets.clear()
        for conns in self.pools.values():
            for _, mux in conns:
                mux.abort("server stopping")
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)

    def update(self, view: View) -> None:
        self.view = view
        for pool, conns in list(self.pools.items()):
            for node, mux in conns:
                if view.clients.get(node) != pool:
                    log.info("proxy server: client %s is no longer a proxy endpoint of %s; "
                             "closing its connection", node, pool)
                    mux.abort("no longer an active proxy endpoint")

    def connected(self) -> dict[str, list[str]]:
        return {pool: [n for n, m in conns if not m.closed.is_set()]
                for pool, conns in self.pools.items()}

    def _track(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # -- proxy clients -----------------------------------------------------------------------
    async def _on_agent(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio (3.11) logs a cancelled connection handler as an error: end quietly instead.
        with contextlib.suppress(asyncio.CancelledError):
            await self._agent(reader, writer)

    async def _agent(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._track()
        peer = _peer(writer)
        ssl_obj = writer.get_extra_info("ssl_object")
        der = ssl_obj.getpeercert(binary_form=True) if ssl_obj else None
        cn, org = peer_identity(der)
        pool = self.view.clients.get(cn)
        if org != ORG_AGENT or pool is None:
            log.warning("proxy server: refused client %s (certificate CN=%r O=%r): not an "
                        "active proxy endpoint of a NAT'd pool", peer, cn, org)
            self.metrics.requests.labels("server", "refused-client").inc()
            writer.close()
            return
        mux = Mux(reader, writer, opener=True, name=f"proxy-server<-{cn}",
                  max_streams=self.options.max_streams, keepalive=self.options.keepalive)
        try:
            await mux.start()
        except (ConnectionError, OSError):
            writer.close()
            return
        self.pools.setdefault(pool, []).append((cn, mux))
        self.metrics.connections.labels("server").inc()
        log.info("proxy server: client %s of pool %s connected from %s", cn, pool, peer)
        # TLS checks a certificate only at the handshake: end the connection when the
        # client's certificate expires (a healthy client has rotated and reconnected long before).
        assert der is not None
        expiry = asyncio.get_running_loop().call_later(
            max(0.0, not_after(der) - time.time()), mux.abort, "client certificate expired")
        try:
            await mux.run()
        finally:
            expiry.cancel()
            self.metrics.connections.labels("server").dec()
            conns = self.pools.get(pool, [])
            if (cn, mux) in conns:
                conns.remove((cn, mux))
            log.info("proxy server: client %s of pool %s disconnected", cn, pool)

    def _mux_for(self, pool: str) -> Mux | None:
        for _, mux in reversed(self.pools.get(pool, [])):
            if not mux.closed.is_set() and not mux.going_away:
                return mux
        return None

    # -- CONNECT requests --------------------------------------------------------------------
    async def _answer(self, writer: asyncio.StreamWriter, status: int, reason: str) -> None:
        body = (reason + "\n").encode() if status != 200 else b""
        head = f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
        if status != 200:
            head += f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n" \
                    "Connection: close\r\n"
        writer.write(head.encode() + b"\r\n" + body)
        with contextlib.suppress(ConnectionError, OSError):
            await writer.drain()

    async def _refuse(self, writer: asyncio.StreamWriter, status: int, reason: str,
                      caller: str, target: str, result: str) -> None:
        log.warning("proxy server: %d for %s -> %s: %s", status, caller, target[:100], reason)
        self.metrics.requests.labels("server", result).inc()
        await self._answer(writer, status, reason)
        writer.close()

    async def _on_user(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._user(reader, writer)

    async def _user(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._track()
        self._writers.add(writer)
        try:
            await self._connect(reader, writer)
        finally:
            self._writers.discard(writer)

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                       ) -> None:
        peer = _peer(writer)
        ssl_obj = writer.get_extra_info("ssl_object")
        cn, org = peer_identity(ssl_obj.getpeercert(binary_form=True) if ssl_obj else None)
        caller = f"{cn or '?'}@{peer}"
        if org != ORG_USER:
            await self._refuse(writer, 403, f"certificate O={org!r} may not use the proxy "
                               f"(needs {ORG_USER})", caller, "-", "refused")
            return
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"),
                                          self.options.dial_timeout)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError, OSError, ValueError):
            await self._refuse(writer, 400, "no complete request head", caller, "-", "refused")
            return
        if len(head) > MAX_HEAD:
            await self._refuse(writer, 400, "request head too long", caller, "-", "refused")
            return
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != "CONNECT" or not parts[2].startswith("HTTP/1."):
            await self._refuse(writer, 400, f"expected 'CONNECT ip:port HTTP/1.1', got "
                               f"{line[:60]!r}", caller, line, "refused")
            return
        target = parts[1]
        decision = self.view.check(target)
        if not decision.ok:
            await self._refuse(writer, decision.status, decision.reason, caller, target,
                               "refused")
            return
        mux = self._mux_for(decision.pool)
        if mux is None:
            await self._refuse(writer, 503, f"no proxy client of pool {decision.pool} is "
                               f"connected to {self.node}", caller, target, "unavailable")
            return
        try:
            # Longer than the client's own dial timeout, so its 502 and reason arrive first.
            stream = await mux.open(target, 2 * self.options.dial_timeout)
        except (MuxClosed, TimeoutError) as exc:
            why = str(exc) or (f"no answer from the proxy client in "
                               f"{2 * self.options.dial_timeout:g}s")
            await self._refuse(writer, 502, f"tunnel to pool {decision.pool} failed: {why}",
                               caller, target, "failed")
            return
        status, reason = stream.response.result()
        if status != 200:
            answered = not stream.reset_seen  # else our end of the connection gave up
            stream.reset()
            why = (f"proxy client answered {status}: {reason}" if answered
                   else f"tunnel to pool {decision.pool} failed: {reason}")
            await self._refuse(writer, 502, why, caller, target, "failed")
            return
        self.metrics.requests.labels("server", "ok").inc()
        self.metrics.streams.labels("server").inc()
        log.debug("proxy server: %s -> %s via %s", caller, target, mux.name)
        try:
            await self._answer(writer, 200, "")
            sent, received = await relay(stream, reader, writer)
            self.metrics.bytes.labels("server", "to-node").inc(sent)
            self.metrics.bytes.labels("server", "from-node").inc(received)
        finally:
            self.metrics.streams.labels("server").dec()
