"""Many byte streams over one TLS connection: HTTP/2 (the `h2` library, sans-IO) on asyncio.

Roles are reversed on purpose: the proxy client at the edge dials out (that is what crosses a
NAT), but the cloud side opens the streams, so the dialled side (the proxy server) is the
HTTP/2 *client* ("opener") and the dialling side is the HTTP/2 *server* ("acceptor"). Each
stream is an HTTP/2 CONNECT request (RFC 9113 §8.5): `:method CONNECT`, `:authority ip:port`;
the acceptor answers `:status 200` and DATA frames then carry the bytes both ways, or it
answers an error status with the reason in `raven-reason` and ends the stream.

Rules kept:
- HTTP/2 flow control is real backpressure: received bytes are acknowledged (window credit
  returned) only after the consumer wrote them on, so one slow kubelet or API client stalls only
  its own stream; a sender never exceeds the peer's window;
- both ends PING every `keepalive` seconds and drop the connection when an answer is
  `2 * keepalive` late (a NAT that forgot the mapping is found in seconds, not at the next TCP
  timeout); the pings also keep the NAT mapping alive;
- a connection that ends ends every stream on it (readers see EOF, openers an error);
- `close_gracefully` waits for the open streams, then closes (certificate rotation).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

log = logging.getLogger(__name__)

REASON_HEADER = "raven-reason"
READ_SIZE = 65536


class MuxClosed(ConnectionError):
    pass


class Stream:
    """One tunnelled byte stream."""

    def __init__(self, mux: Mux, stream_id: int, authority: str) -> None:
        self.mux = mux
        self.id = stream_id
        self.authority = authority
        self._incoming: asyncio.Queue[bytes] = asyncio.Queue()
        self.response: asyncio.Future[tuple[int, str]] = (
            asyncio.get_running_loop().create_future())
        self._window = asyncio.Event()
        self.reset_seen = False
        self.local_ended = False
        self.remote_ended = False

    # -- events from the connection --------------------------------------------------------
    def _data(self, data: bytes, flow: int) -> None:
        self._incoming.put_nowait(data)
        padding = flow - len(data)
        if padding > 0:
            self.mux._ack(self.id, padding)

    def _eof(self) -> None:
        self.remote_ended = True
        self._incoming.put_nowait(b"")
        self._maybe_forget()

    def _reset(self, why: str = "stream reset by the peer") -> None:
        self.reset_seen = True
        self._incoming.put_nowait(b"")
        self._window.set()
        if not self.response.done():
            self.response.set_result((502, why))
        self.mux._forget(self.id)

    def _maybe_forget(self) -> None:
        if self.local_ended and self.remote_ended:
            self.mux._forget(self.id)

    # -- API ---------------------------------------------------------------------------------
    async def read(self) -> bytes:
        """The next chunk; b'' at the end (or after a reset: check `reset_seen`). Call
        `consumed(len(chunk))` once the chunk is written on."""
        return await self._incoming.get()

    def consumed(self, n: int) -> None:
        self.mux._ack(self.id, n)

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.reset_seen or self.mux.closed.is_set():
                raise MuxClosed(f"stream {self.id} to {self.authority} is closed")
            try:
                window = min(self.mux.h2.local_flow_control_window(self.id),
                             self.mux.h2.max_outbound_frame_size)
            except h2.exceptions.StreamClosedError as exc:
                raise MuxClosed(f"stream {self.id} is closed") from exc
            if window <= 0:
                self._window.clear()
                await self._window.wait()
                continue
            chunk, view = view[:window], view[window:]
            self.mux.h2.send_data(self.id, bytes(chunk))
            self.mux.bytes_out += len(chunk)
            await self.mux.flush()

    async def end(self) -> None:
        if self.local_ended or self.reset_seen or self.mux.closed.is_set():
            return
        with contextlib.suppress(h2.exceptions.StreamClosedError,
                                 h2.exceptions.ProtocolError):
            self.mux.h2.end_stream(self.id)
        self.local_ended = True
        self._maybe_forget()
        await self.mux.flush()

    async def respond(self, status: int, reason: str = "") -> None:
        """Acceptor: answer the CONNECT; any status but 200 ends the stream."""
        headers = [(":status", str(status))]
        if reason:
            headers.append((REASON_HEADER, reason.encode("ascii", "replace").decode()[:200]))
        if self.reset_seen:
            raise MuxClosed(f"stream {self.id} to {self.authority} was reset before the answer")
        try:
            self.mux.h2.send_headers(self.id, headers, end_stream=status != 200)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as exc:
            raise MuxClosed(f"stream {self.id} to {self.authority} is closed") from exc
        if status != 200:
            self.local_ended = True
            self._maybe_forget()
        await self.mux.flush()

    def reset(self) -> None:
        if self.reset_seen:
            return
        self.reset_seen = True
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.mux.h2.reset_stream(self.id, h2.errors.ErrorCodes.CANCEL)
        self._incoming.put_nowait(b"")
        self.mux._forget(self.id)
        self.mux._schedule_flush()


Handler = Callable[[Stream], Awaitable[None]]


class Mux:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, opener: bool,
                 name: str, handler: Handler | None = None, max_streams: int = 1000,
                 window: int = 1 << 20, keepalive: float = 10.0) -> None:
        self.reader, self.writer, self.opener, self.name = reader, writer, opener, name
        self.handler = handler
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=opener, header_encoding="utf-8"))
        self.max_streams = max_streams
        self.window = window
        self.keepalive = keepalive
        self.streams: dict[int, Stream] = {}
        self.closed = asyncio.Event()
        self.going_away = False
        self.bytes_in = 0
        self.bytes_out = 0
        self._pings: dict[bytes, asyncio.Future[None]] = {}
        self._ping_count = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.h2.initiate_connection()
        self.h2.update_settings({
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.window,
        })
        # The connection window is shared by all streams: give it room for many of them.
        self.h2.increment_flow_control_window(self.window * 16)
        await self.flush()

    async def flush(self) -> None:
        data = self.h2.data_to_send()
        if not data or self.closed.is_set():
            return
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError) as exc:
            self._close(f"write failed: {exc}")

    def _schedule_flush(self) -> None:
        self._spawn(self.flush())

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _ack(self, stream_id: int, n: int) -> None:
        if n <= 0 or self.closed.is_set():
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.acknowledge_received_data(n, stream_id)
        self._schedule_flush()

    def _forget(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)

    @property
    def open_streams(self) -> int:
        return len(self.streams)

    async def open(self, authority: str, timeout: float) -> Stream:
        """Opener: a CONNECT stream to `authority`; returns once the peer answered. Raises
        MuxClosed, or asyncio.TimeoutError; a refusal is `stream.response` != 200."""
        if self.closed.is_set() or self.going_away:
            raise MuxClosed(f"{self.name}: connection closed")
        if self.h2.open_outbound_streams >= self.h2.remote_settings.max_concurrent_streams:
            raise MuxClosed(f"{self.name}: {self.h2.open_outbound_streams} streams open, the "
                            "peer's limit")
        sid = self.h2.get_next_available_stream_id()
        stream = Stream(self, sid, authority)
        self.streams[sid] = stream
        self.h2.send_headers(sid, [(":method", "CONNECT"), (":authority", authority)])
        await self.flush()
        try:
            await asyncio.wait_for(asyncio.shield(stream.response), timeout)
        except (TimeoutError, asyncio.CancelledError):
            stream.reset()
            raise
        return stream

    async def ping(self, timeout: float) -> bool:
        self._ping_count += 1
        data = struct.pack(">Q", self._ping_count)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pings[data] = fut
        try:
            self.h2.ping(data)
        except h2.exceptions.ProtocolError:  # the peer said GOAWAY: nothing left to keep alive
            self._pings.pop(data, None)
            return True
        await self.flush()
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._pings.pop(data, None)

    async def _keepalive(self) -> None:
        while not self.closed.is_set():
            await asyncio.sleep(self.keepalive)
            if not await self.ping(2 * self.keepalive):
                self._close(f"no PING answer in {2 * self.keepalive:g}s")
                return

    async def run(self) -> None:
        """Read until the connection ends; then end every stream."""
        self._spawn(self._keepalive())
        try:
            while not self.closed.is_set():
                data = await self.reader.read(READ_SIZE)
                if not data:
                    self._close("peer closed the connection")
                    break
                self.bytes_in += len(data)
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError as exc:
                    log.warning("%s: HTTP/2 protocol error: %s", self.name, exc)
                    self._close(f"protocol error: {exc}")
                    break
                for event in events:
                    self._dispatch(event)
                await self.flush()
        except (ConnectionError, OSError) as exc:
            self._close(f"read failed: {exc}")
        finally:
            self._close("done")
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                self.writer.close()

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            headers = dict(event.headers or [])
            stream = Stream(self, event.stream_id, str(headers.get(":authority", "")))
            self.streams[event.stream_id] = stream
            if self.opener or headers.get(":method") != "CONNECT" or self.handler is None:
                stream.reset()
                return
            self._spawn(self._handle(stream))
        elif isinstance(event, h2.events.ResponseReceived):
            stream = self.streams.get(event.stream_id)
            headers = dict(event.headers or [])
            if stream is not None and not stream.response.done():
                status = str(headers.get(":status", "0"))
                stream.response.set_result((int(status) if status.isdigit() else 0,
                                            str(headers.get(REASON_HEADER, ""))))
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self._ack(event.stream_id, event.flow_controlled_length)
            else:
                stream._data(event.data, event.flow_controlled_length)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream._eof()
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream._reset()
        elif isinstance(event, h2.events.WindowUpdated):
            targets = (self.streams.values() if event.stream_id == 0
                       else [s for s in (self.streams.get(event.stream_id),) if s])
            for stream in targets:
                stream._window.set()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            for stream in self.streams.values():
                stream._window.set()
        elif isinstance(event, h2.events.PingAckReceived):
            fut = self._pings.get(event.ping_data)
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.going_away = True
            if not self.streams:
                self._close("GOAWAY from the peer")

    async def _handle(self, stream: Stream) -> None:
        assert self.handler is not None
        try:
            await self.handler(stream)
        except (MuxClosed, ConnectionError, OSError):
            stream.reset()
        except Exception:
            log.exception("%s: stream %d to %s failed", self.name, stream.id, stream.authority)
            stream.reset()

    def _close(self, why: str) -> None:
        if self.closed.is_set():
            return
        log.debug("%s: connection closed: %s", self.name, why)
        self.closed.set()
        for stream in list(self.streams.values()):
            stream._reset(f"{self.name}: connection closed ({why})")
        self.streams.clear()
        with contextlib.suppress(Exception):
            self.writer.close()

    def abort(self, why: str) -> None:
        self._close(why)

    async def close_gracefully(self, timeout: float) -> None:
        """Wait (up to `timeout`) for the open streams to finish, then close. No GOAWAY is
        sent first: h2 refuses to send DATA after its own GOAWAY, and the peer needs no hint
        (the proxy server already prefers the newer connection)."""
        self.going_away = True
        end = asyncio.get_running_loop().time() + timeout
        while self.streams and asyncio.get_running_loop().time() < end:
            await asyncio.sleep(0.05)
        self._close("closed gracefully")


async def relay(stream: Stream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                ) -> tuple[int, int]:
    """Copy bytes both ways between `stream` and a socket until both directions ended; returns
    (bytes to the stream, bytes from the stream)."""
    sent = received = 0

    async def up() -> None:
        nonlocal sent
        try:
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    break
                await stream.write(data)
                sent += len(data)
            await stream.end()
        except (ConnectionError, OSError, MuxClosed):
            stream.reset()

    async def down() -> None:
        nonlocal received
        try:
            while True:
                data = await stream.read()
                if not data:
                    break
                writer.write(data)
                await writer.drain()
                received += len(data)
                stream.consumed(len(data))
            if stream.reset_seen:
                writer.transport.abort()
            elif writer.can_write_eof():
                writer.write_eof()
            else:  # TLS cannot half-close: the peer's end ends the connection
                writer.close()
        except (ConnectionError, OSError):
            stream.reset()
            writer.transport.abort()

    up_task = asyncio.ensure_future(up())
    down_task = asyncio.ensure_future(down())
    try:
        await asyncio.wait({up_task, down_task}, return_when=asyncio.FIRST_COMPLETED)
        if down_task.done() and not up_task.done() and (stream.reset_seen
                                                        or writer.is_closing()):
            up_task.cancel()
        await asyncio.gather(up_task, down_task, return_exceptions=True)
        if up_task.cancelled() and not stream.reset_seen:
            # The socket is closed (TLS cannot half-close) after the peer's end: nothing more
            # will be read from it, so our direction ends too. Without this END_STREAM the
            # stream stays half-open on both connections, and the far end keeps its socket
            # (to the kubelet) open until the connection dies.
            await stream.end()
    finally:
        up_task.cancel()
        down_task.cancel()
        if not stream.reset_seen and not (stream.local_ended and stream.remote_ended):
            stream.reset()  # cancelled or failed half-way: never leave the stream open
        with contextlib.suppress(Exception):
            writer.close()
    return sent, received
