"""The lab's ICMP echo probe builds and reads packets as scapy (an independent encoder) does."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP

from raven.lab.icmp import checksum, echo_request, parse_reply


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=64))
def test_echo_request_is_what_scapy_builds(ident: int, seq: int, payload: bytes) -> None:
    ours = echo_request(ident, seq, payload)
    assert ours == bytes(ICMP(type=8, code=0, id=ident, seq=seq) / payload)
    assert checksum(ours) == 0  # a packet with its checksum in place sums to zero


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 3))
def test_parse_reply_reads_scapy_replies(ident: int, seq: int, options: int) -> None:
    packet = IP(src="10.244.1.2", dst="10.244.0.2", options=b"\x01" * 4 * options) / \
        ICMP(type=0, id=ident, seq=seq) / b"x"
    assert parse_reply(bytes(packet)) == ("10.244.1.2", ident, seq)


def test_other_icmp_and_short_packets_are_not_replies() -> None:
    unreachable = IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=3, code=1)
    request = IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=8, id=1, seq=1)
    assert parse_reply(bytes(unreachable)) is None
    assert parse_reply(bytes(request)) is None
    assert parse_reply(b"\x45" + b"\0" * 10) is None
