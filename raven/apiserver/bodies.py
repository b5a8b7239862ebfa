"""Request bodies and query parameters: framing, size limits, decoding. No sockets opened here.

Rules kept:
- A body is framed by exactly one of Content-Length (ASCII decimal, one value) or
  `Transfer-Encoding: chunked`; anything else (negative, bogus or conflicting lengths, both
  framings, another transfer coding) is a 400 before a byte of the body is read.
- No framing ever reads more than `limit` bytes of body into memory: a declared length above it
  is refused (413) unread, a chunked body is refused (413) as soon as its chunks pass it.
- JSON and YAML bodies decode to JSON values only: YAML goes through raven.safeyaml (no aliases,
  bounded depth), JSON refuses NaN/Infinity, and nesting deeper than `max_depth` is a 400 before
  any code recurses into the value. Decoding never raises anything but an `ApiError`.
- Count-like query parameters (limit, timeoutSeconds, resourceVersion) are ASCII decimal
  integers; "²" or "٣" (which str.isdigit accepts) are a 400, not a crash.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass
from email.message import Message
from typing import IO, Any

from raven.apiserver.status import ApiError, bad_request
from raven.safeyaml import YamlError, load_yaml

YAML_TYPES = ("application/yaml", "application/apply-patch+yaml")
DECIMAL = re.compile(r"[0-9]{1,18}")  # ASCII only; 18 digits fit an int64
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}")
MAX_CHUNK_LINE = 4096  # a chunk-size line with extensions; far more than any client sends
MAX_TRAILERS = 64
# An escape that can spell a UTF-16 surrogate (JSON \ud800, YAML \ud800 or \U0000d800): only a
# body holding one is searched for lone surrogates, which no response or stored row can encode.
_SURROGATE_ESCAPE = re.compile(rb"\\(?:u[dD][89a-fA-F]|U0000[dD][89a-fA-F])")
_SURROGATE = re.compile("[\ud800-\udfff]")


def too_large(size: str, limit: int) -> ApiError:
    return ApiError(413, "RequestEntityTooLarge",
                    f"the request body is {size}; the limit is {limit} bytes "
                    "(send a smaller object, or raise the server's max_body_bytes)")


@dataclass(frozen=True)
class Framing:
    """How the body of one request is delimited: `length` bytes, or chunked."""

    length: int = 0
    chunked: bool = False

    @property
    def has_body(self) -> bool:
        return self.chunked or self.length > 0


def declares_body(headers: Message) -> bool:
    """Whether the request claims any body at all (even with a framing we will refuse)."""
    lengths = [v.strip() for v in headers.get_all("Content-Length") or []]
    return bool(headers.get_all("Transfer-Encoding")) or any(v != "0" for v in lengths)


def framing(headers: Message, limit: int) -> Framing:
    """The body framing of a request from its headers; 400 or 413 without reading the body."""
    codings = [v.strip().lower() for v in headers.get_all("Transfer-Encoding") or []]
    lengths = [v.strip() for v in headers.get_all("Content-Length") or []]
    if codings:
        if codings != ["chunked"]:
            raise bad_request(f"Transfer-Encoding {', '.join(codings)!r} is not supported; "
                              "send the body with Content-Length or chunked")
        if lengths:
            raise bad_request("a request may not have both Content-Length and "
                              "Transfer-Encoding: chunked; send one of them")
        return Framing(chunked=True)
    if not lengths:
        return Framing()
    if len(set(lengths)) != 1 or not DECIMAL.fullmatch(lengths[0]):
        raise bad_request(f"Content-Length {', '.join(lengths)!r} is not one non-negative "
                          "decimal number of bytes")
    length = int(lengths[0])
    if length > limit:
        raise too_large(f"{length} bytes", limit)
    return Framing(length=length)


def read(rfile: IO[bytes], frame: Framing, limit: int) -> bytes:
    """The whole body; 400 for a broken chunked encoding or an early end, 413 past `limit`."""
    if frame.chunked:
        return _read_chunked(rfile, limit)
    if not frame.length:
        return b""
    data = rfile.read(frame.length)
    if len(data) != frame.length:
        raise bad_request(f"the body ended after {len(data)} of its {frame.length} bytes")
    return data


def _line(rfile: IO[bytes]) -> bytes:
    line = rfile.readline(MAX_CHUNK_LINE + 1)
    if len(line) > MAX_CHUNK_LINE:
        raise bad_request(f"a chunked-encoding line is longer than {MAX_CHUNK_LINE} bytes")
    if not line.endswith(b"\n"):
        raise bad_request("the chunked body ended before its last chunk")
    return line.rstrip(b"\r\n")


def _read_chunked(rfile: IO[bytes], limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        size_text = _line(rfile).split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(size_text):
            raise bad_request(f"the chunk size {size_text[:40]!r} is not a hexadecimal number")
        size = int(size_text, 16)
        if size == 0:
            break
        total += size
        if total > limit:
            raise too_large(f"more than {limit} bytes (chunked)", limit)
        data = rfile.read(size)
        if len(data) != size or _line(rfile) != b"":
            raise bad_request("a chunk of the chunked body is shorter than its size says")
        chunks.append(data)
    for _ in range(MAX_TRAILERS):  # trailers, ignored, up to the empty line
        if _line(rfile) == b"":
            return b"".join(chunks)
    raise bad_request(f"the chunked body has more than {MAX_TRAILERS} trailer lines")


# ---------------------------------------------------------------------------------- decoding


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _jsonable(value: Any) -> Any:
    """YAML scalars as JSON values (timestamps as RFC 3339 text, as kubectl would send them)."""
    if isinstance(value, datetime.datetime):
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        raise bad_request("the request body holds .nan or .inf, which JSON cannot carry")
    if value is None or isinstance(value, str | int | float | bool | dict | list):
        return value
    raise bad_request(f"the request body holds a YAML {type(value).__name__}, which JSON "
                      "cannot carry; write it as a string")


def _check_tree(root: Any, max_depth: int, yaml_source: bool) -> Any:
    """Iteratively check depth (and, for YAML, convert to JSON types) without recursion."""
    root = _jsonable(root) if yaml_source else root
    stack: list[tuple[Any, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise bad_request(f"the request body is nested more than {max_depth} levels deep; "
                              "flatten it")
        if isinstance(node, dict):
            if yaml_source:
                converted = {}
                for key, value in node.items():
                    if isinstance(key, bool) or not isinstance(key, str | int | float):
                        raise bad_request(f"the request body has a map key {key!r}; "
                                          "keys must be strings")
                    converted[str(key)] = _jsonable(value)
                node.clear()
                node.update(converted)
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            if yaml_source:
                node[:] = [_jsonable(v) for v in node]
            stack.extend((v, depth + 1) for v in node)
    return root


def media_type(content_type: str | None) -> str:
    return (content_type or "application/json").split(";")[0].strip().lower()


def decode(body: bytes, content_type: str | None, max_depth: int) -> Any:
    """The JSON value of a request body; every failure is a 400 naming the media type."""
    if not body.strip():
        raise bad_request("the request needs a body")
    media = media_type(content_type)
    value = _parse(body, media, max_depth)
    if _SURROGATE_ESCAPE.search(body):
        _refuse_surrogates(value)
    return value


def _parse(body: bytes, media: str, max_depth: int) -> Any:
    try:
        if media in YAML_TYPES:
            return _check_tree(load_yaml(body, source="the request body"), max_depth, True)
        value = json.loads(body, parse_constant=_refuse_constant)
    except YamlError as exc:
        raise bad_request(f"the request body is not valid {media}: {exc}") from exc
    except RecursionError as exc:
        raise bad_request(f"the request body is nested more than {max_depth} levels deep; "
                          "flatten it") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN
        raise bad_request(f"the request body is not valid {media}: {exc}") from exc
    return _check_tree(value, max_depth, False)


def _refuse_surrogates(root: Any) -> None:
    """400 for a string or key holding a lone UTF-16 surrogate (it cannot be encoded as UTF-8)."""
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            strings: Any = (node,)
        elif isinstance(node, dict):
            strings = node.keys()
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
            continue
        else:
            continue
        for text in strings:
            if _SURROGATE.search(text):
                raise bad_request(f"the request body holds the string {ascii(text)[:80]} with a "
                                  "lone UTF-16 surrogate escape, which is not valid Unicode; "
                                  "send the character itself or a valid surrogate pair")


def require_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad_request(f"{what} must be a JSON object ({{...}}), not a JSON "
                          f"{_json_kind(value)}")
    return value


def require_array(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise bad_request(f"{what} must be a JSON array ([...]), not a JSON "
                          f"{_json_kind(value)}")
    return value


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number"


# ---------------------------------------------------------------------------------- query


def query_int(query: dict[str, str], name: str) -> int | None:
    """A non-negative decimal query parameter; None when absent or empty; 400 otherwise."""
    text = query.get(name, "")
    if text == "":
        return None
    if not DECIMAL.fullmatch(text):
        raise bad_request(f"{name}={text!r} is not a non-negative decimal integer; "
                          f"send e.g. {name}=10")
    return int(text)
