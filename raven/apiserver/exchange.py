"""One request and its answer, as the HTTP layer hands them to the request semantics and back.

Pure: no socket, no store, no clock. Rules kept:
- `Request` is what the handler read and authenticated: the method served (HEAD is served as
  GET), the verb as sent, the headers, the parsed query and the whole body.
- `Response` is what a request's semantics answer; the handler alone frames it on the wire
  (headers, HEAD without a payload, Connection: close after an unread body).
- The request target is decoded once: raw non-ASCII bytes are percent-encoded again
  (`percent_encode_raw`) so that path segments and query values go through one strict UTF-8
  decoding; more than `MAX_QUERY_FIELDS` query parameters are a 400.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import Message
from typing import Any
from urllib.parse import parse_qs, quote

from raven.apiserver.status import ApiError, bad_request
from raven.apiserver.store import encode

MAX_QUERY_FIELDS = 100
JSON = "application/json"
# Printable ASCII (with '%', so existing escapes stay as they are).
_TARGET_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))


@dataclass(frozen=True)
class Request:
    method: str  # the method served: HEAD is served as GET
    command: str  # the method as sent (HEAD stays HEAD)
    target: str  # the raw request target, for logs
    path: str  # the URL path, not yet percent-decoded (routing.route decodes it)
    raw_query: str
    query: Mapping[str, str]  # the last value of each parameter
    headers: Message
    body: bytes


@dataclass(frozen=True)
class Response:
    code: int
    payload: bytes
    content_type: str = JSON
    headers: Mapping[str, str] = field(default_factory=dict)


def json_response(code: int, obj: Any) -> Response:
    return Response(code, encode(obj))


def error_response(error: ApiError) -> Response:
    return Response(error.code, encode(error.to_status()), headers=error.headers)


def percent_encode_raw(target: str) -> str:
    """The request target with raw non-ASCII bytes (and controls) percent-encoded.

    http.server decodes the request line as Latin-1, so the raw UTF-8 bytes of `ü` arrived as
    `Ã¼` and named another object; encoded back to their bytes and percent-escaped, they go
    through the one strict UTF-8 decoding of path segments and query values (routing.py,
    parse_qs), as if the client had escaped them itself.
    """
    if target.isascii() and target.isprintable():
        return target
    return quote(target, safe=_TARGET_SAFE, encoding="latin-1")


def query_lists(text: str) -> dict[str, list[str]]:
    """Every value of every query parameter; 400 beyond MAX_QUERY_FIELDS."""
    try:
        return parse_qs(text, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
    except ValueError as exc:  # too many fields
        raise bad_request(f"the query is not valid: {exc}") from exc


def parse_query(text: str) -> dict[str, str]:
    """The query parameters (the last of repeated ones); 400 beyond MAX_QUERY_FIELDS."""
    return {k: v[-1] for k, v in query_lists(text).items()}
