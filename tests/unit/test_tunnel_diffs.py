"""The pure diffs of the tunnel-namespace shape (docs/tunnel-namespace.md): the VXLAN device of a
tunnel namespace (made in the node's namespace and moved in; one of ours found there moved in,
not made again) and the veth pair joining the two namespaces."""

from __future__ import annotations

from dataclasses import replace

import pytest

from raven.dataplane import DataplaneError
from raven.dataplane.appliers import vxlan
from raven.dataplane.appliers.veth import VethEnd, diff
from raven.dataplane.links import LinkFacts
from raven.desired import VethPair
from tests.unit.test_dataplane_diffs import WANT_VX, vx_link

PAIR = VethPair(name="raven-tun0", peer="raven-tun1", address="169.254.77.1",
                peer_address="169.254.77.2", prefixlen=30, mtu=1500)


def end(name: str, index: int, *addresses: str, mtu: int = 1500, up: bool = True,
        kind: str = "veth", gro: bool | None = True) -> VethEnd:
    link = LinkFacts(index=index, name=name, kind=kind, mtu=mtu, mac="", up=up)
    return VethEnd(link, frozenset((a, 30) for a in addresses), gro)


def test_vxlan_in_a_tunnel_namespace_moves_ours_in_from_the_node() -> None:
    stray = vx_link(index=4, mtu=1400, up=True)
    moved = vxlan.diff(WANT_VX, "raven0", vxlan.VxlanLive(None, stray=stray), moved=True)
    assert moved.adopt == 4 and moved.create is None and moved.delete_stray is None
    assert dict(moved.fix) == {"up": True, "mtu": 1450}  # a moved device arrives down
    assert moved.addresses_add == (("100.96.0.1", 24),)  # and without its addresses
    assert "vxlan raven0: move in from the node's namespace" in moved.lines


def test_vxlan_in_a_tunnel_namespace_replaces_a_node_device_that_does_not_fit() -> None:
    stray = vx_link(index=4, vni=999)
    made = vxlan.diff(WANT_VX, "raven0", vxlan.VxlanLive(None, stray=stray), moved=True)
    assert made.delete_stray == 4 and made.adopt is None and made.create == WANT_VX


def test_vxlan_made_inside_the_tunnel_namespace_is_recreated() -> None:
    """One without link-netnsid was made in the tunnel namespace: its socket has no underlay."""
    live = vxlan.VxlanLive(vx_link(), frozenset({("100.96.0.1", 24)}))
    again = vxlan.diff(WANT_VX, "raven0", live, moved=True)
    assert again.delete == 7 and again.create == WANT_VX
    moved_in = vxlan.VxlanLive(replace(vx_link(), link_netnsid=0),
                               frozenset({("100.96.0.1", 24)}))
    assert vxlan.diff(WANT_VX, "raven0", moved_in, moved=True).empty()
    assert vxlan.diff(WANT_VX, "raven0", live).empty()  # the node's own shape: as before


def test_veth_created_with_both_addresses_and_up() -> None:
    made = diff(PAIR, "raven-tun0", VethEnd(None), VethEnd(None))
    assert made.create == PAIR and made.delete is None
    assert made.addresses_add == (("169.254.77.1", 30),)
    assert made.peer_addresses_add == (("169.254.77.2", 30),)
    assert made.fix == made.peer_fix == (("up", True), ("gro", True))
    without = diff(replace(PAIR, gro=False), "raven-tun0", VethEnd(None), VethEnd(None))
    assert without.fix == without.peer_fix == (("up", True),)


def test_veth_receive_offload_is_turned_on_where_it_is_off() -> None:
    """A veth has rx-gro off by default; each end that has it off gets it on, one that cannot
    have it (None) is left alone."""
    here, there = end("raven-tun0", 5, "169.254.77.1"), end("raven-tun1", 2, "169.254.77.2")
    off = diff(PAIR, "raven-tun0", replace(here, gro=False), there)
    assert off.fix == (("gro", True),) and off.peer_fix == ()
    assert "veth raven-tun0: set gro True" in off.lines
    assert diff(PAIR, "raven-tun0", replace(here, gro=None), replace(there, gro=None)).empty()
    assert diff(replace(PAIR, gro=False), "raven-tun0", here, there).peer_fix == (
        ("gro", False),)


def test_veth_steady_fixed_and_recreated() -> None:
    here, there = end("raven-tun0", 5, "169.254.77.1"), end("raven-tun1", 2, "169.254.77.2")
    assert diff(PAIR, "raven-tun0", here, there).empty()
    fixed = diff(PAIR, "raven-tun0", end("raven-tun0", 5, "169.254.77.1", "10.9.9.9", up=False),
                 end("raven-tun1", 2, mtu=1400))
    assert fixed.create is None and fixed.fix == (("up", True),)
    assert fixed.addresses_del == (("10.9.9.9", 30),)
    assert fixed.peer_fix == (("mtu", 1500),)
    assert fixed.peer_addresses_add == (("169.254.77.2", 30),)
    # an end without its peer (the tunnel namespace made again) cannot be re-paired
    orphan = diff(PAIR, "raven-tun0", here, VethEnd(None))
    assert orphan.delete == 5 and orphan.create == PAIR


def test_veth_removed_and_foreign_links_refused() -> None:
    here = end("raven-tun0", 5, "169.254.77.1")
    assert diff(None, "raven-tun0", here, VethEnd(None)).delete == 5
    assert diff(None, "raven-tun0", VethEnd(None), VethEnd(None)).empty()
    with pytest.raises(DataplaneError, match="not the veth pair"):
        diff(PAIR, "raven-tun0", end("raven-tun0", 5, kind="bridge"), VethEnd(None))
