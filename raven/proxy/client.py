"""The proxy client (edge): dials every proxy server, keeps one multiplexed connection to each,
and carries the streams they open to the kubelets of its own pool.

Rules kept (docs/proxy.md):
- it only dials out, so it works behind cone and symmetric NAT alike; keepalive PINGs keep the
  NAT mapping and find a dead path;
- a lost connection is redialled with exponential backoff and jitter (reset after a
  connection that lived); the server's certificate must be an agent's (O=raven:proxy-agent)
  with CN = the server node it meant to dial;
- every stream is checked again here against its own pool's allow-list (never trust the far
  end to be the only guard), then dialled with a timeout; refusals answer 403, failures 502;
- `rotate()` (a new certificate) opens a new connection to every server before the old one is
  closed with GOAWAY, so no stream is cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from dataclasses import dataclass, field

from raven.proxy.certs import ORG_AGENT, peer_identity
from raven.proxy.metrics import ProxyMetrics
from raven.proxy.mux import Mux, Stream, relay
from raven.proxy.plan import ServerAddress, View, parse_authority
from raven.settings import BackoffSettings

log = logging.getLogger(__name__)


@dataclass
class ClientOptions:
    keepalive: float = 10.0
    dial_timeout: float = 5.0
    max_streams: int = 1000
    backoff: BackoffSettings = field(default_factory=lambda: BackoffSettings(
        initial=0.5, maximum=30.0))


class ProxyClient:
    def __init__(self, node: str, context: ssl.SSLContext, metrics: ProxyMetrics,
                 options: ClientOptions | None = None) -> None:
        self.node = node
        self.context = context
        self.metrics = metrics
        self.options = options or ClientOptions()
        self.view = View()
        self._loops: dict[ServerAddress, asyncio.Task[None]] = {}
        self._rotate: dict[ServerAddress, asyncio.Event] = {}
        self.connected: dict[ServerAddress, Mux] = {}
        self.connects = 0  # successful connections so far (tests and status)
        self._retiring: set[asyncio.Task[None]] = set()  # old connections after a rotation

    def update(self, view: View, servers: tuple[ServerAddress, ...]) -> None:
        self.view = view
        for server in list(self._loops):
            if server not in servers:
                self._loops.pop(server).cancel()
                self._rotate.pop(server, None)
        for server in servers:
            if server not in self._loops:
                self._rotate[server] = asyncio.Event()
                self._loops[server] = asyncio.ensure_future(self._maintain(server))

    def rotate(self) -> None:
        for event in self._rotate.values():
            event.set()

    async def stop(self) -> None:
        tasks = list(self._loops.values())
        self._loops.clear()
        for task in tasks:
            task.cancel()
        for mux in list(self.connected.values()):
            mux.abort("client stopping")
        tasks += list(self._retiring)
        for task in self._retiring:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _dial(self, server: ServerAddress) -> Mux:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            server.host, server.port, ssl=self.context, server_hostname=None,
            ssl_handshake_timeout=self.options.dial_timeout), self.options.dial_timeout * 2)
        ssl_obj = writer.get_extra_info("ssl_object")
        cn, org = peer_identity(ssl_obj.getpeercert(binary_form=True) if ssl_obj else None)
        if org != ORG_AGENT or cn != server.node:
            writer.close()
            raise ConnectionError(f"proxy server {server.host}:{server.port} presented CN={cn!r} "
                                  f"O={org!r}, expected CN={server.node!r} O={ORG_AGENT!r}")
        mux = Mux(reader, writer, opener=False, name=f"proxy-client->{server.node}",
                  handler=self._serve, max_streams=self.options.max_streams,
                  keepalive=self.options.keepalive)
        await mux.start()
        return mux

    async def _maintain(self, server: ServerAddress) -> None:
        attempt = 0
        rotate = self._rotate[server]
        where = f"{server.node} ({server.host}:{server.port})"
        while True:
            try:
                mux = await self._dial(server)
            except (OSError, ConnectionError, TimeoutError, ssl.SSLError) as exc:
                self.metrics.dials.labels("failed").inc()
                delay = self.options.backoff.delay(attempt, random.random)
                attempt += 1
                log.warning("proxy client %s: cannot connect to proxy server %s: %s; retry in "
                            "%.1fs", self.node, where, exc, delay)
                await asyncio.sleep(delay)
                continue
            self.metrics.dials.labels("ok").inc()
            self.connects += 1
            attempt = 0
            rotate.clear()
            self.connected[server] = mux
            self.metrics.connections.labels("client").inc()
            log.info("proxy client %s: connected to proxy server %s", self.node, where)
            runner = asyncio.ensure_future(mux.run())
            rotation = asyncio.ensure_future(rotate.wait())
            try:
                await asyncio.wait({runner, rotation}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                mux.abort("client stopping")
                runner.cancel()
                raise
            finally:
                rotation.cancel()
                self.metrics.connections.labels("client").dec()
                if self.connected.get(server) is mux:
                    del self.connected[server]
            if not runner.done():
                # New certificate: the next loop turn dials with it; the old connection finishes
                # its streams under GOAWAY meanwhile.
                log.info("proxy client %s: certificate rotated; reconnecting to %s", self.node,
                         where)
                retiring = asyncio.ensure_future(self._retire(mux, runner))
                self._retiring.add(retiring)
                retiring.add_done_callback(self._retiring.discard)
                continue
            log.warning("proxy client %s: connection to proxy server %s lost", self.node, where)
            delay = self.options.backoff.delay(0, random.random)
            await asyncio.sleep(delay)

    async def _retire(self, mux: Mux, runner: asyncio.Future[None]) -> None:
        try:
            await mux.close_gracefully(60.0)
            with contextlib.suppress(Exception):
                await runner
        finally:
            mux.abort("retired")
            runner.cancel()

    async def _serve(self, stream: Stream) -> None:
        decision = self.view.check(stream.authority)
        if not decision.ok:
            log.warning("proxy client %s: refused stream to %s: %s", self.node,
                        stream.authority[:100], decision.reason)
            self.metrics.requests.labels("client", "refused").inc()
            await stream.respond(decision.status, decision.reason)
            return
        host, port = parse_authority(stream.authority) or ("", 0)
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                    self.options.dial_timeout)
        except (OSError, TimeoutError) as exc:
            log.warning("proxy client %s: cannot reach %s: %s", self.node, stream.authority,
                        exc or "timeout")
            self.metrics.requests.labels("client", "failed").inc()
            await stream.respond(502, f"{decision.node} {stream.authority}: {exc or 'timeout'}")
            return
        self.metrics.requests.labels("client", "ok").inc()
        self.metrics.streams.labels("client").inc()
        try:
            await stream.respond(200)
            sent, received = await relay(stream, reader, writer)
            self.metrics.bytes.labels("client", "to-cloud").inc(sent)
            self.metrics.bytes.labels("client", "from-cloud").inc(received)
        finally:
            self.metrics.streams.labels("client").dec()
