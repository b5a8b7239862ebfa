"""`kubectl exec` on a lab pod: the kubelet's WebSocket remote-command protocol over aiohttp.

The protocol (k8s.io/apimachinery wsstream, KEP-3396): every binary message starts with a
channel byte: 0 stdin, 1 stdout, 2 stderr, 3 error (v4+: a metav1.Status JSON carrying the exit
code), 4 terminal resize (JSON {"Width", "Height"}); v5 adds 255 "close" from the client, whose
payload names the channel it closes (stdin). The server sends the Status on channel 3 and closes.
Subprotocols accepted, best first: v5.channel.k8s.io, v4.channel.k8s.io, v3, v2, channel.k8s.io.

Rules kept:
- the command runs as the pod's container would (raven.lab.netns.pod_exec_argv: the network
  and UTS namespaces of the pod's sandbox, whose hostname is the pod's name) in a session of its
  own, so the whole process group is killed when the client goes away or the server stops;
- a command that cannot start is exit code 126/127 with the message on stderr, as a container
  runtime reports it; a non-zero exit is a `NonZeroExitCode` Status with the
  `ExitCode` cause kubectl turns into its own exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import struct
import termios
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import WSMsgType, web

from raven.lab import netns as nsutil

PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io",
             "v2.channel.k8s.io", "channel.k8s.io")
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
READ_SIZE = 1 << 15


@dataclass(frozen=True)
class ExecRequest:
    pod: str
    sandbox_pid: int | None  # the pod's sandbox process (lab pods); None: a UTS namespace only
    command: tuple[str, ...]
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool


def status_message(command: tuple[str, ...], code: int) -> dict[str, object]:
    """The Status the kubelet sends on the error channel when the command ends."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {}, "status": "Failure",
        "message": f"command terminated with non-zero exit code: error executing command "
                   f"[{' '.join(command)}], exit code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


async def serve_exec(request: web.Request, exec_request: ExecRequest,
                     on_process: Callable[[int, bool], None]) -> web.WebSocketResponse:
    """Run the command and stream it over a WebSocket; `on_process(pgid, started)` lets the
    server track running process groups (started=False when one ends)."""
    ws = web.WebSocketResponse(protocols=PROTOCOLS, heartbeat=None, max_msg_size=1 << 20)
    await ws.prepare(request)
    versioned = ws.ws_protocol not in (None, "channel.k8s.io")
    close_supported = ws.ws_protocol == "v5.channel.k8s.io"
    session = _Session(ws, exec_request)
    try:
        code = await session.run(on_process, close_supported)
        status = status_message(exec_request.command, code)
        if ws.ws_protocol in ("v4.channel.k8s.io", "v5.channel.k8s.io"):
            await ws.send_bytes(bytes([ERROR]) + json.dumps(status).encode())
        elif code != 0 and versioned:
            await ws.send_bytes(bytes([ERROR]) + str(status["message"]).encode())
    except (ConnectionError, RuntimeError):  # the client went away mid-stream
        pass
    finally:
        await ws.close()
    return ws


class _Session:
    def __init__(self, ws: web.WebSocketResponse, request: ExecRequest) -> None:
        self.ws = ws
        self.request = request
        self.pty_master: int | None = None

    async def run(self, on_process: Callable[[int, bool], None], close_supported: bool) -> int:
        req = self.request
        argv = [*nsutil.pod_exec_argv(req.sandbox_pid, req.pod), *req.command]
        if req.tty:
            master, slave = os.openpty()
            self.pty_master = master
            stdio: dict[str, int] = {"stdin": slave, "stdout": slave, "stderr": slave}
        else:
            pipe = asyncio.subprocess.PIPE
            stdio = {"stdin": pipe if req.stdin else asyncio.subprocess.DEVNULL,
                     "stdout": pipe, "stderr": pipe}
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, **stdio, start_new_session=True,
                preexec_fn=_controlling_tty if req.tty else None)
        finally:
            if req.tty:  # only the command may hold the terminal: its exit then ends the output
                os.close(slave)
        on_process(proc.pid, True)
        try:
            return await self._stream(proc, close_supported)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                await proc.wait()
            on_process(proc.pid, False)
            if self.pty_master is not None:
                os.close(self.pty_master)

    async def _stream(self, proc: asyncio.subprocess.Process, close_supported: bool) -> int:
        req = self.request
        pumps: list[Awaitable[None]] = []
        if self.pty_master is not None:
            pumps.append(self._pump_pty(self.pty_master))
        else:
            assert proc.stdout is not None and proc.stderr is not None
            pumps.append(self._pump(proc.stdout, STDOUT if req.stdout else None))
            pumps.append(self._pump(proc.stderr, STDERR if req.stderr else None))
        reader = asyncio.ensure_future(self._read_client(proc, close_supported))
        output = asyncio.ensure_future(asyncio.gather(*pumps))
        waiter = asyncio.ensure_future(proc.wait())
        try:
            # The command's output ends (EOF on its pipes) or the client leaves.
            done, _ = await asyncio.wait({output, reader}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done and output not in done:
                raise ConnectionError("the client closed the stream")
            return await waiter
        finally:
            for task in (reader, output, waiter):
                task.cancel()

    async def _pump(self, stream: asyncio.StreamReader, channel: int | None) -> None:
        while data := await stream.read(READ_SIZE):
            if channel is not None:
                await self.ws.send_bytes(bytes([channel]) + data)

    async def _pump_pty(self, master: int) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes] = asyncio.Queue()

        def readable() -> None:
            try:
                data = os.read(master, READ_SIZE)
            except OSError:  # EIO: every holder of the terminal closed it
                data = b""
            queue.put_nowait(data)
            if not data:
                loop.remove_reader(master)

        loop.add_reader(master, readable)
        try:
            while data := await queue.get():
                await self.ws.send_bytes(bytes([STDOUT]) + data)
        finally:
            loop.remove_reader(master)

    async def _read_client(self, proc: asyncio.subprocess.Process, close_supported: bool) -> None:
        """Client messages: stdin, resizes and (v5) the close of stdin; returns when the client
        closes the WebSocket."""
        async for msg in self.ws:
            # The Python client sends str data as TEXT frames (channel byte as a character);
            # the kubelet's wsstream accepts both kinds.
            if msg.type == WSMsgType.TEXT:
                payload = msg.data.encode()
            elif msg.type == WSMsgType.BINARY:
                payload = msg.data
            else:
                continue
            if not payload:
                continue
            channel, data = payload[0], payload[1:]
            if channel == STDIN and self.request.stdin:
                await self._write_stdin(proc, data)
            elif channel == RESIZE and self.pty_master is not None:
                _resize(self.pty_master, data)
            elif channel == CLOSE and close_supported and data[:1] == bytes([STDIN]):
                if self.pty_master is not None:
                    await self._write_stdin(proc, b"\x04")  # ^D: end of input on a terminal
                elif proc.stdin is not None:
                    proc.stdin.close()

    async def _write_stdin(self, proc: asyncio.subprocess.Process, data: bytes) -> None:
        if self.pty_master is not None:
            os.write(self.pty_master, data)
        elif proc.stdin is not None and not proc.stdin.is_closing():
            with contextlib.suppress(ConnectionError):
                proc.stdin.write(data)
                await proc.stdin.drain()


def _controlling_tty() -> None:
    """In the child (a new session): make its stdin terminal the controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _resize(master: int, data: bytes) -> None:
    try:
        size = json.loads(data)
        width, height = int(size["Width"]), int(size["Height"])
    except (ValueError, KeyError, TypeError):
        return
    if 0 < width < 65536 and 0 < height < 65536:
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
