"""The planner's fast IPv4 CIDR parse agrees with `ipaddress` (strict=False) wherever it answers,
and leaves every non-canonical spelling to `ipaddress` (returns None)."""

from __future__ import annotations

import ipaddress
import random

import pytest

from raven.topology import _cidr, _cidr_v4

ODD = ["1.2.3.4", "1.2.3.5/24", "256.1.1.1/2", "1.2.3.4/33", "01.2.3.4/8", "0.0.0.0/0",
       "255.255.255.255/32", "10.1.2.3/8", "1.2.3.4/", "1.2.3/8", "1.2.3.4.5/8", "1.2.3.4/08",
       "\u0661.2.3.4/8", " 1.2.3.4/8", "1.2.3.4/8/9", "+1.2.3.4/8", "1.2.3.4/-1", "", "/", "...",
       "fd00::/64", "1.2.3.4 /8", "1_0.2.3.4/8", "0x1.2.3.4/8"]


def reference(text: str) -> tuple[int, int, int, str] | None:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    return (net.version, int(net.network_address), int(net.broadcast_address), str(net))


@pytest.mark.parametrize("text", ODD)
def test_fast_path_agrees_or_defers(text: str) -> None:
    fast = _cidr_v4(text)
    if fast is not None:
        assert tuple(fast) == reference(text)
    assert (tuple(c) if (c := _cidr(text)) else None) == reference(text)


def test_random_cidrs_agree_with_ipaddress() -> None:
    rng = random.Random(7)
    for _ in range(5000):
        octets = ".".join(str(rng.randrange(256)) for _ in range(4))
        text = octets if rng.random() < 0.1 else f"{octets}/{rng.randrange(33)}"
        fast = _cidr_v4(text)
        assert fast is not None, text
        assert tuple(fast) == reference(text), text
