"""Body framing, body decoding and query parameters of the API server (raven.apiserver.bodies)."""

from __future__ import annotations

import io
import json
from email.message import Message

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raven.apiserver import bodies
from raven.apiserver.status import ApiError

LIMIT = 1024
DEPTH = 200


def headers(*pairs: tuple[str, str]) -> Message:
    message = Message()
    for key, value in pairs:
        message[key] = value
    return message


def refused(call: object, *args: object) -> ApiError:
    with pytest.raises(ApiError) as err:
        call(*args)  # type: ignore[operator]
    return err.value


def test_framing_by_content_length_and_chunked() -> None:
    assert bodies.framing(headers(), LIMIT) == bodies.Framing()
    assert bodies.framing(headers(("Content-Length", "10")), LIMIT).length == 10
    assert bodies.framing(headers(("Transfer-Encoding", "Chunked")), LIMIT).chunked
    assert not bodies.framing(headers(("Content-Length", "0")), LIMIT).has_body


@pytest.mark.parametrize("value", ["-1", "abc", "1e3", "0x10", " ", "²", "٣", "+5", "1_0"])
def test_bogus_content_lengths_are_400(value: str) -> None:
    error = refused(bodies.framing, headers(("Content-Length", value)), LIMIT)
    assert error.code == 400 and "Content-Length" in error.message


def test_conflicting_framings_are_400() -> None:
    assert refused(bodies.framing, headers(("Content-Length", "5"), ("Content-Length", "6")),
                   LIMIT).code == 400
    assert refused(bodies.framing, headers(("Content-Length", "5"),
                                           ("Transfer-Encoding", "chunked")), LIMIT).code == 400
    assert refused(bodies.framing, headers(("Transfer-Encoding", "gzip, chunked")),
                   LIMIT).code == 400


def test_declared_length_above_the_limit_is_413_unread() -> None:
    error = refused(bodies.framing, headers(("Content-Length", str(200 << 20))), LIMIT)
    assert error.code == 413 and str(LIMIT) in error.message


def chunked(*parts: bytes, trailer: bytes = b"") -> io.BytesIO:
    wire = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts)
    return io.BytesIO(wire + b"0\r\n" + trailer + b"\r\n")


def test_chunked_bodies_are_joined_and_trailers_skipped() -> None:
    frame = bodies.Framing(chunked=True)
    assert bodies.read(chunked(b'{"a":', b"1}"), frame, LIMIT) == b'{"a":1}'
    assert bodies.read(chunked(b"x", trailer=b"X-T: 1\r\n"), frame, LIMIT) == b"x"


def test_chunked_body_past_the_limit_is_413_without_reading_on() -> None:
    stream = chunked(*[b"y" * 100] * 50)
    error = refused(bodies.read, stream, bodies.Framing(chunked=True), LIMIT)
    assert error.code == 413
    assert stream.tell() <= LIMIT + 200  # stopped at the chunk that crossed the limit


@pytest.mark.parametrize("wire", [
    b"zz\r\nabc\r\n0\r\n\r\n", b"-1\r\n", b"3\r\nab", b"3\r\nabcdef\r\n0\r\n\r\n",
    b"5\r\nabcde\r\n", b"1" * 5000 + b"\r\n",
])
def test_broken_chunked_encodings_are_400(wire: bytes) -> None:
    assert refused(bodies.read, io.BytesIO(wire), bodies.Framing(chunked=True), LIMIT).code == 400


def test_short_content_length_body_is_400() -> None:
    assert refused(bodies.read, io.BytesIO(b"abc"), bodies.Framing(length=10), LIMIT).code == 400


def test_deep_json_is_400_not_a_recursion_error() -> None:
    for depth in (DEPTH + 1, 100_000):
        error = refused(bodies.decode, b"[" * depth + b"]" * depth, "application/json", DEPTH)
        assert error.code == 400 and "nested" in error.message
    nested = b'{"a":' * (DEPTH - 1) + b"1" + b"}" * (DEPTH - 1)
    assert isinstance(bodies.decode(nested, "application/json", DEPTH), dict)


def test_yaml_bodies_use_the_safe_loader() -> None:
    bomb = b'a: &a ["x","x"]\nb: &b [*a,*a]\nc: &c [*b,*b]\nd: [*c,*c]\n'
    error = refused(bodies.decode, bomb, "application/yaml", DEPTH)
    assert error.code == 400 and "aliases" in error.message
    deep = refused(bodies.decode, b"[" * 50_000, "application/yaml", DEPTH)
    assert deep.code == 400
    value = bodies.decode(b"kind: ConfigMap\nwhen: 2024-01-02T03:04:05Z\nday: 2024-01-02\n"
                          b"1: one\n", "application/yaml; charset=utf-8", DEPTH)
    assert value == {"kind": "ConfigMap", "when": "2024-01-02T03:04:05Z", "day": "2024-01-02",
                     "1": "one"}
    assert refused(bodies.decode, b"x: !!binary aGk=\n", "application/yaml", DEPTH).code == 400
    assert refused(bodies.decode, b"x: .nan\n", "application/yaml", DEPTH).code == 400
    # A control character is refused by PyYAML's reader as the loader is made (found by fuzzing).
    assert refused(bodies.decode, b"\x01", "application/yaml", DEPTH).code == 400


@pytest.mark.parametrize("body", [b"", b"  ", b"{", b"\xff\xfe", b"NaN", b'{"a": Infinity}'])
def test_undecodable_json_is_400(body: bytes) -> None:
    assert refused(bodies.decode, body, "application/json", DEPTH).code == 400


def test_require_object_and_array_name_what_was_sent() -> None:
    assert bodies.require_object({"a": 1}, "x") == {"a": 1}
    error = refused(bodies.require_object, [1], "the body of a POST of configmaps")
    assert error.code == 400 and "configmaps" in error.message and "array" in error.message
    assert refused(bodies.require_array, {}, "a JSON patch").code == 400


@pytest.mark.parametrize("text", ["²", "٣", "-1", "1.5", "abc", " 1", "1" * 19])
def test_query_counts_are_ascii_decimal(text: str) -> None:
    error = refused(bodies.query_int, {"limit": text}, "limit")
    assert error.code == 400 and "limit" in error.message


def test_query_count_values() -> None:
    assert bodies.query_int({}, "limit") is None
    assert bodies.query_int({"limit": ""}, "limit") is None
    assert bodies.query_int({"limit": "25"}, "limit") == 25


@settings(max_examples=300, deadline=None)
@given(body=st.one_of(st.binary(max_size=200),
                      st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                                   lambda inner: st.lists(inner, max_size=3)
                                   | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                                   max_leaves=20).map(lambda v: json.dumps(v).encode())),
       media=st.sampled_from(["application/json", "application/yaml",
                              "application/merge-patch+json", "application/apply-patch+yaml",
                              None]))
def test_decoding_any_body_gives_json_or_a_400(body: bytes, media: str | None) -> None:
    try:
        value = bodies.decode(body, media, DEPTH)
    except ApiError as error:
        assert error.code == 400
        return
    json.dumps(value, allow_nan=False)  # whatever decodes is JSON again
