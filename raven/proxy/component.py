"""The proxy as one component of the agent: its own thread and asyncio loop, driven by the
agent's plans (`apply(ProxyPlan)`), with its certificate issued and rotated here.

Rules kept:
- the agent thread only hands over plans (thread-safe); every socket lives on the component's
  loop, and `stop()` closes every listener, connection and stream before it returns;
- the role follows the plan: a server on the active proxy endpoints of public pools, a client on
  those of NAT'd pools, nothing elsewhere; a change of role or port restarts the component's
  listeners, a change of targets or servers only updates them;
- the leaf certificate (CN = node, O = raven:proxy-agent) is issued from the cluster CA when a
  role needs it and re-issued at two thirds of its lifetime; the listening context is reloaded
  in place and a client reconnects make-before-break. A CA that cannot be read is logged and
  retried with backoff; the role then waits, it never runs without mutual TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import resource
import threading
import time
from collections.abc import Callable
from typing import Any

from raven.proxy import certs
from raven.proxy.client import ClientOptions, ProxyClient
from raven.proxy.metrics import ProxyMetrics
from raven.proxy.plan import CLIENT, NONE, SERVER, ProxyPlan
from raven.proxy.server import ProxyServer, ServerOptions
from raven.settings import BackoffSettings, ProxySettings

log = logging.getLogger(__name__)

CALoader = Callable[[], certs.CA]


def raise_fd_limit() -> None:
    """Every tunnelled stream costs a socket at each end: lift the soft descriptor limit (often
    1024) to the hard one, as servers do."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class ProxyComponent:
    def __init__(self, node: str, settings: ProxySettings, metrics: ProxyMetrics,
                 load_ca: CALoader) -> None:
        self.node = node
        self.settings = settings
        self.metrics = metrics
        self.load_ca = load_ca
        self.plan = ProxyPlan(node=node)
        self.server: ProxyServer | None = None
        self.client: ProxyClient | None = None
        self.leaf: certs.Leaf | None = None
        self.ca: certs.CA | None = None
        self.last_error: str | None = None
        self._context: Any = None
        self._running_key: tuple[Any, ...] = ()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="proxy", daemon=True)
        self._lock: asyncio.Lock | None = None
        self._rotation: asyncio.Task[None] | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._ca_attempt = 0
        for role in (SERVER, CLIENT, NONE):
            self.metrics.role.labels(role).set(1 if role == NONE else 0)

    # -- thread ------------------------------------------------------------------------------
    def start(self) -> None:
        raise_fd_limit()
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._lock = asyncio.Lock()
        self._loop.run_forever()

    def apply(self, plan: ProxyPlan) -> None:
        """From any thread: make the component follow `plan` (the latest plan wins)."""
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._apply(plan)))

    def stop(self, timeout: float = 10.0) -> None:
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        with contextlib.suppress(Exception):
            future.result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()

    def run_sync(self, coro: Any, timeout: float = 10.0) -> Any:
        """Run a coroutine on the component's loop and wait for it (tests, status)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- on the loop -------------------------------------------------------------------------
    async def _apply(self, plan: ProxyPlan) -> None:
        assert self._lock is not None
        async with self._lock:
            self.plan = plan
            if self._retry is not None:
                self._retry.cancel()
                self._retry = None
            key: tuple[Any, ...] = (plan.role, plan.node_ip, plan.tunnel_port)
            if key != self._running_key:
                await self._stop_role()
                if plan.role == NONE:
                    self._running_key = key
                    self._set_role(NONE)
                    return
                if not await self._ensure_certificate():
                    return  # retried later by _retry
                try:
                    await self._start_role(plan)
                except OSError as exc:
                    self.last_error = f"proxy {plan.role}: cannot listen: {exc}"
                    log.error("%s", self.last_error)
                    self._schedule_retry()
                    return
                self._running_key = key
                self._set_role(plan.role)
            if self.server is not None:
                self.server.update(plan.view)
            if self.client is not None:
                self.client.update(plan.view, plan.servers)
            self.last_error = None

    def _set_role(self, role: str) -> None:
        for r in (SERVER, CLIENT, NONE):
            self.metrics.role.labels(r).set(1 if r == role else 0)

    def _schedule_retry(self) -> None:
        delay = BackoffSettings(initial=1.0, maximum=30.0).delay(self._ca_attempt, random.random)
        self._ca_attempt += 1
        plan = self.plan
        self._retry = self._loop.call_later(
            delay, lambda: asyncio.ensure_future(self._apply(plan)))

    async def _ensure_certificate(self) -> bool:
        if self.leaf is not None and time.time() < self.leaf.renew_at():
            return True
        try:
            self.ca = await self._loop.run_in_executor(None, self.load_ca)
            self._issue()
        except Exception as exc:  # a CA we cannot read: say so, retry, never run without TLS
            self.last_error = f"proxy certificate: {exc}"
            log.error("%s; the proxy %s waits for it", self.last_error, self.plan.role)
            self._schedule_retry()
            return False
        self._ca_attempt = 0
        return True

    def _issue(self) -> None:
        assert self.ca is not None
        ips = [self.plan.node_ip] if self.plan.node_ip else []
        self.leaf = certs.issue(self.ca, self.node, certs.ORG_AGENT,
                                self.settings.cert_lifetime, time.time(), ips)
        self.metrics.rotations.inc()
        self.metrics.cert_expiry.set(self.leaf.not_after)
        if self._context is not None:
            certs.load_leaf(self._context, self.leaf)  # listeners use it from the next handshake
        log.info("proxy certificate for %s issued, valid until %s", self.node,
                 time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.leaf.not_after)))

    async def _rotate_loop(self) -> None:
        while True:
            assert self.leaf is not None
            await asyncio.sleep(max(0.0, self.leaf.renew_at() - time.time()))
            try:
                self.ca = await self._loop.run_in_executor(None, self.load_ca)
                self._issue()
            except Exception as exc:
                self.last_error = f"proxy certificate renewal: {exc}"
                log.error("%s; retrying", self.last_error)
                await asyncio.sleep(5.0)
                continue
            if self.client is not None:
                self.client.rotate()

    async def _start_role(self, plan: ProxyPlan) -> None:
        assert self.ca is not None and self.leaf is not None
        s = self.settings
        self._context = certs.context(self.ca, self.leaf, server=plan.role == SERVER)
        if plan.role == SERVER:
            server = ProxyServer(self.node, self._context, self.metrics, ServerOptions(
                keepalive=s.keepalive, dial_timeout=s.dial_timeout, max_streams=s.max_streams))
            await server.start(("", plan.tunnel_port), (plan.node_ip, s.server_port))
            self.server = server
        else:
            self.client = ProxyClient(self.node, self._context, self.metrics, ClientOptions(
                keepalive=s.keepalive, dial_timeout=s.dial_timeout, max_streams=s.max_streams))
        self._rotation = asyncio.ensure_future(self._rotate_loop())

    async def _stop_role(self) -> None:
        if self._rotation is not None:
            self._rotation.cancel()
            self._rotation = None
        if self.server is not None:
            await self.server.stop()
            self.server = None
        if self.client is not None:
            await self.client.stop()
            self.client = None
        self._context = None
        self._running_key = ()

    async def _shutdown(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        await self._stop_role()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- status ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """For `raven status` (read from the agent thread: plain values only)."""
        out: dict[str, Any] = {"role": self.plan.role, "pool": self.plan.pool,
                               "lastError": self.last_error}
        if self.leaf is not None:
            out["certificateNotAfter"] = self.leaf.not_after
        server, client = self.server, self.client
        if server is not None:
            out["clients"] = server.connected()
            out["listen"] = [f"{h}:{p}" for h, p in server.addresses]
        if client is not None:
            out["servers"] = [f"{s.node} {s.host}:{s.port}" for s in self.plan.servers]
            out["connected"] = sorted(s.node for s in list(client.connected))
        return out
