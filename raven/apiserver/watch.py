"""Watch requests: from the query to a fan-out subscription, and the stream's end.

Rules kept:
- A watch is `?watch=true|1` on a GET or the legacy `/watch/` path; a watch of one named object
  is a watch of its collection with `metadata.name=NAME` added to the field selector. A watch
  has no HEAD form (405).
- Everything that can refuse a watch (selectors, resourceVersion, timeoutSeconds) is checked in
  `open_watch`, before the handler sends the response head: a refused watch is a plain Status.
- `resourceVersion` is "" or "0" (from now), or a decimal the store still holds (410 Expired
  otherwise); with `sendInitialEvents=true` it only has to be one the store has reached.
- The timeout is `timeoutSeconds`, or a random one in the settings' default range so that
  clients do not all come back at once.
- A watch the store cannot start (history trimmed meanwhile, or the server stopping) ends
  with one ERROR event and the terminating chunk, as kube-apiserver ends it.
"""

from __future__ import annotations

import contextlib
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from raven.apiserver import bodies, negotiation
from raven.apiserver.context import ServerContext
from raven.apiserver.exchange import Request
from raven.apiserver.fanout import Subscription
from raven.apiserver.routing import ResourceRoute
from raven.apiserver.selectors import escape_field_value, make_filter
from raven.apiserver.status import ApiError, bad_request, expired, method_not_allowed
from raven.apiserver.store import encode
from raven.apiserver.watchlines import WatchLines


def requested(request: Request, route: ResourceRoute) -> bool:
    return route.watch_path or (request.method == "GET"
                                and request.query.get("watch") in ("true", "1"))


@dataclass(frozen=True)
class Watch:
    """A checked watch, not yet started: the subscription and where it starts."""

    context: ServerContext
    subscription: Subscription
    since: int | None  # None: from now (or with the initial events)

    def stream(self, write: Callable[[bytes], object]) -> bool:
        """Run the watch until it ends, after the handler sent the response head; `write`
        writes raw bytes to the client. True when it ended cleanly (the connection may serve
        another request)."""
        context, sub = self.context, self.subscription
        if context.is_stopping() or not context.store.watch(sub, self.since):
            # Trimmed between the check and now (or stopping): an ERROR event, as kube does.
            error = too_old(self.since or 0, context.store.history_floor).to_status()
            line = encode({"type": "ERROR", "object": error}) + b"\n"
            write(f"{len(line):x}\r\n".encode() + line + b"\r\n0\r\n\r\n")
            return True
        sub.done.wait()
        with contextlib.suppress(OSError):
            sub.sock.settimeout(context.settings.write_timeout)
        return sub.clean


def open_watch(context: ServerContext, request: Request, route: ResourceRoute,
               sock: socket.socket) -> Watch:
    """Check a watch request and prepare its subscription on `sock`; ApiError when refused."""
    if request.command == "HEAD":  # a stream of events has no headers-only form
        raise method_not_allowed()
    query = request.query
    field_selector = query.get("fieldSelector")
    if route.name is not None:
        field_selector = ",".join(
            s for s in (field_selector, f"metadata.name={escape_field_value(route.name)}") if s
        )
    rtype = route.rtype
    keep = make_filter(query.get("labelSelector"), field_selector, rtype.kind)
    initial = query.get("sendInitialEvents") == "true"
    bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
    since = _start(context, query.get("resourceVersion", ""), initial)
    timeout_seconds = bodies.query_int(query, "timeoutSeconds")
    if timeout_seconds is not None:
        timeout = float(timeout_seconds)
    else:
        timeout = random.uniform(*context.settings.default_watch_timeout)
    writer = WatchLines(context.api, rtype, keep,
                        negotiation.wanted_form(request.headers) == negotiation.TABLE,
                        query.get("includeObject", "PartialObjectMetadata"))
    sub = Subscription(
        key=rtype.storage_key, namespace=route.namespace, sock=sock,
        format_event=writer.event_line, format_bookmark=writer.bookmark_line,
        deadline=time.monotonic() + timeout,
        bookmark_interval=context.settings.bookmark_interval if bookmarks else None,
        initial_end_bookmark=initial and bookmarks,
    )
    return Watch(context, sub, since)


def _start(context: ServerContext, rv_text: str, initial: bool) -> int | None:
    """The resourceVersion the watch resumes after, or None; 400 or 410 when it cannot."""
    if initial:
        # The initial events are the current state; the resourceVersion still has to be a
        # number the store has reached (garbage or a future one was accepted silently).
        context.store.check_read_at(rv_text)
        return None
    if rv_text in ("", "0"):
        return None
    if not bodies.DECIMAL.fullmatch(rv_text):
        raise bad_request(f"resourceVersion {rv_text!r} is not a valid resourceVersion; use one from a previous list or watch")  # noqa: E501
    since = int(rv_text)
    context.store.check_watch_start(since)
    return since


def too_old(since: int, floor: int) -> ApiError:
    return expired(f"too old resource version: {since} ({floor + 1})")
