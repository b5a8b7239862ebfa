"""The planner's fast paths give exactly what the slow ones give: the IPv4 CIDR parse agrees with
`ipaddress` (strict=False) wherever it answers and defers every odd spelling; routes built by
filling __dict__ equal Route(...) in value, hash, order, repr and pickling."""

from __future__ import annotations

import ipaddress
import pickle
import random

import pytest

from raven.desired import Route
from raven.topology import _ROUTE_DICT_OK, _cidr, _cidr_v4, _routes

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


def test_routes_built_fast_equal_the_constructor() -> None:
    assert _ROUTE_DICT_OK  # else the fast path is off and this test proves nothing new
    dsts = ["10.0.0.0/24", "10.0.2.0/24", "fd00::/64"]
    for gateway, mtu in ((None, None), ("169.254.1.1", 1420)):
        fast = _routes(dsts, 9027, "raven0", gateway, mtu)
        slow = tuple(Route(dst=d, table=9027, dev="raven0", gateway=gateway, mtu=mtu)
                     for d in dsts)
        assert fast == slow
        assert [hash(r) for r in fast] == [hash(r) for r in slow]
        assert [repr(r) for r in fast] == [repr(r) for r in slow]
        assert [vars(r) for r in fast] == [vars(r) for r in slow]
        assert sorted(reversed(fast)) == list(slow)
        assert pickle.loads(pickle.dumps(fast)) == slow
        with pytest.raises(AttributeError):
            fast[0].dst = "x"  # type: ignore[misc]  # still frozen
