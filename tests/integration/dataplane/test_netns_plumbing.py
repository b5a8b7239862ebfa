"""Namespace plumbing against the real kernel (docs/tunnel-namespace.md, step 1): named
namespaces made and removed, a veth pair across two namespaces, and the property the tunnel
namespace relies on: a tunnel device created in one namespace and moved into another keeps
carrying its outer packets through the namespace it was created in (VXLAN: its UDP socket;
wireguard-go: its UDP socket and the TUN's file descriptor).

Checked with `ip -json`, `ip netns`, `bridge`, `wg` and pings that really cross, never with the
code's own readers (except where a reader is what is under test, compared against `ip`).
Every namespace is `rvt-nsp-<6 hex>-<role>`, one prefix per test; the fixture stops the
processes a test started and deletes every namespace with its prefix, also after a failure,
and fails the test if one is left.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run, wait_for

from raven.dataplane import DataplaneError, netns
from raven.dataplane.links import Links
from raven.dataplane.wireguard.userspace import WireGuardGo

pytestmark = pytest.mark.root

UNDERLAY_A, UNDERLAY_B = "192.0.2.1", "192.0.2.2"
VNI, VXLAN_PORT = 4242, 4789
WG_PORT, WG_MTU = 51820, 1380


class Plumbing:
    """The namespaces of one test and the oracles that read them."""

    def __init__(self, tmp: Path) -> None:
        self.prefix = f"rvt-nsp-{secrets.token_hex(3)}"
        self.tmp = tmp
        self._cleanups: list[Callable[[], None]] = []

    def name(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def ns(self, role: str) -> str:
        """A namespace made by `ip netns add` (the oracle's tool), lo up."""
        name = self.name(role)
        run("ip", "netns", "add", name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def on_cleanup(self, fn: Callable[[], None]) -> None:
        self._cleanups.append(fn)

    def ours(self) -> list[str]:
        """Our namespaces as `ip netns list` shows them."""
        return sorted(e["name"] for e in json.loads(run("ip", "-j", "netns", "list").stdout
                                                      or "[]")
                      if e["name"].startswith(self.prefix))

    def close(self) -> None:
        errors: list[Exception] = []
        for fn in reversed(self._cleanups):  # processes first: they may hold a namespace
            try:
                fn()
            except Exception as exc:  # keep cleaning
                errors.append(exc)
        # By directory, not by `ip netns list`: also a stale mount point a test left behind.
        for entry in sorted(os.listdir(netns.NETNS_RUN_DIR)):
            if entry.startswith(self.prefix):
                run("ip", "netns", "del", entry, check=False)
                (netns.NETNS_RUN_DIR / entry).unlink(missing_ok=True)
        if errors:
            raise errors[0]
        assert self.ours() == [], f"namespaces left behind: {self.ours()}"


@pytest.fixture
def plumbing() -> Iterator[Plumbing]:
    tmp = Path(tempfile.mkdtemp(prefix="rvt-nsp-"))
    p = Plumbing(tmp)
    try:
        yield p
    finally:
        try:
            p.close()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


# --- oracles ----------------------------------------------------------------------------------

def ip_json(ns: str, *args: str) -> Any:
    out = run("ip", "-n", ns, "-json", *args).stdout.strip()
    return json.loads(out) if out else []


def link(ns: str, name: str) -> dict[str, Any] | None:
    """`ip -d -j link show NAME` in `ns`, or None when there is no such link there."""
    proc = run("ip", "-n", ns, "-json", "-details", "link", "show", name, check=False)
    return json.loads(proc.stdout)[0] if proc.returncode == 0 else None


def inet_addresses(ns: str, dev: str) -> set[str]:
    return {a["local"] for entry in ip_json(ns, "addr", "show", "dev", dev)
            for a in entry["addr_info"] if a["family"] == "inet"}


def tx_packets(ns: str, dev: str) -> int:
    return int(ip_json(ns, "-s", "link", "show", dev)[0]["stats64"]["tx"]["packets"])


def nsid_names(ns: str) -> dict[int, str]:
    """The ids `ns` gave other namespaces (`ip netns list-id`), with their names."""
    return {e["nsid"]: e.get("name") for e in ip_json(ns, "netns", "list-id")}


def pings(ns: str, target: str) -> bool:
    return run("ip", "netns", "exec", ns, "ping", "-n", "-q", "-c", "1", "-W", "1", target,
               check=False).returncode == 0


def underlay(a: str, b: str) -> None:
    """A veth between A and B carrying the tunnels' outer packets (192.0.2.0/24)."""
    run("ip", "-n", a, "link", "add", "name", "u0", "type", "veth", "peer", "name", "u0",
        "netns", b)
    for ns, address in ((a, UNDERLAY_A), (b, UNDERLAY_B)):
        run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "u0")
        run("ip", "-n", ns, "link", "set", "u0", "up")


# --- a. named namespaces ----------------------------------------------------------------------

def test_create_exists_delete_round_trip_is_idempotent_and_brings_lo_up(plumbing) -> None:
    name = plumbing.name("x")
    assert netns.exists(name) is False
    assert netns.create(name) is True
    assert plumbing.ours() == [name]
    assert netns.exists(name) is True
    lo = link(name, "lo")
    assert lo is not None and "UP" in lo["flags"]
    assert ip_json(name, "link", "show") == [ip_json(name, "link", "show", "lo")[0]]  # lo only

    run("ip", "-n", name, "link", "set", "lo", "down")
    assert netns.create(name) is False  # there already: nothing changes, lo included
    assert "UP" not in link(name, "lo")["flags"]

    assert netns.delete(name) is True
    assert plumbing.ours() == []
    assert not (netns.NETNS_RUN_DIR / name).exists()
    assert netns.exists(name) is False
    assert netns.delete(name) is False


def test_exists_and_create_see_a_namespace_made_by_ip_and_replace_a_stale_mount_point(
        plumbing) -> None:
    made = plumbing.ns("ip")
    assert netns.exists(made) is True
    assert netns.create(made) is False

    # What a create that died between its file and its mount leaves: an empty file.
    stale = plumbing.name("stale")
    (netns.NETNS_RUN_DIR / stale).touch()
    assert netns.exists(stale) is False
    assert netns.create(stale) is True
    assert stale in plumbing.ours() and "UP" in link(stale, "lo")["flags"]

    assert netns.delete(made) is True and made not in plumbing.ours()


def test_names_that_are_not_a_name_under_var_run_netns_are_refused(plumbing) -> None:
    for bad in ("", ".", "..", f"{plumbing.prefix}/x", "x" * 256):
        with pytest.raises(DataplaneError, match="invalid network namespace name"):
            netns.create(bad)
    assert plumbing.ours() == []


# --- b. veth across namespaces, move ----------------------------------------------------------

def test_veth_pair_across_two_namespaces_with_mtu(plumbing) -> None:
    a, b = plumbing.ns("a"), plumbing.ns("b")
    links = Links(a)
    try:
        links.add_veth("v0", "v1", b, mtu=1400)
        links.add_veth("w0", "w1", None)
    finally:
        links.close()

    here, there = link(a, "v0"), link(b, "v1")
    assert here is not None and there is not None
    assert (here["mtu"], there["mtu"]) == (1400, 1400)
    assert here["linkinfo"]["info_kind"] == there["linkinfo"]["info_kind"] == "veth"
    assert link(a, "v1") is None and link(b, "v0") is None
    # Each end's link-netnsid names the other's namespace.
    assert nsid_names(a)[here["link_netnsid"]] == b
    assert nsid_names(b)[there["link_netnsid"]] == a

    # Without a peer namespace both ends are here, with the kernel's default MTU.
    w0, w1 = link(a, "w0"), link(a, "w1")
    assert w0 is not None and w1 is not None and (w0["mtu"], w1["mtu"]) == (1500, 1500)
    assert "link_netnsid" not in w0


def test_move_takes_a_link_into_a_named_namespace_and_errors_name_the_fix(plumbing) -> None:
    a, b = plumbing.ns("a"), plumbing.ns("b")
    run("ip", "-n", a, "link", "add", "name", "m0", "type", "veth", "peer", "name", "m1")
    run("ip", "-n", b, "link", "add", "name", "m1", "type", "veth", "peer", "name", "m2")
    links = Links(a)
    try:
        index = links.get("m0").index
        links.move(index, b)
        assert link(a, "m0") is None and link(b, "m0") is not None

        with pytest.raises(DataplaneError, match="already; delete or rename"):
            links.move(links.get("m1").index, b)  # b has an m1 of its own
        assert link(a, "m1") is not None
        with pytest.raises(DataplaneError, match=f"'{plumbing.name('none')}' does not exist"):
            links.move(links.get("m1").index, plumbing.name("none"))
        with pytest.raises(DataplaneError, match="keeps this kind of link"):
            links.move(links.get("lo").index, b)
        with pytest.raises(DataplaneError, match="does not exist"):
            links.add_veth("p0", "p1", plumbing.name("none"))
    finally:
        links.close()
    assert link(a, "p0") is None


# --- c. a moved VXLAN device keeps its UDP socket where it was created ------------------------

def vxlan_endpoint(ns: str, dev: str, address: str, peer_mac: str, peer_address: str,
                   peer_underlay: str) -> None:
    """Address, FDB entry and neighbour for a point-to-point VXLAN, as the agent writes them."""
    run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", dev)
    run("ip", "-n", ns, "link", "set", dev, "up")
    run("bridge", "-n", ns, "fdb", "append", peer_mac, "dev", dev, "dst", peer_underlay)
    run("ip", "-n", ns, "neigh", "replace", peer_address, "lladdr", peer_mac, "dev", dev,
        "nud", "permanent")


def test_vxlan_moved_into_another_namespace_keeps_its_socket_where_it_was_created(
        plumbing) -> None:
    a, b, t = plumbing.ns("a"), plumbing.ns("b"), plumbing.ns("t")
    underlay(a, b)
    run("ip", "-n", b, "link", "add", "vx0", "type", "vxlan", "id", str(VNI), "dstport",
        str(VXLAN_PORT), "local", UNDERLAY_B, "nolearning")
    mac_t, mac_b = "02:00:00:00:42:01", "02:00:00:00:42:02"
    run("ip", "-n", b, "link", "set", "vx0", "address", mac_b)

    links_a, links_t = Links(a), Links(t)
    try:
        links_a.add_vxlan("vx0", VNI, VXLAN_PORT, UNDERLAY_A, mac_t, 1450)
        created = links_a.get("vx0")
        # In the namespace it was made in, a VXLAN device reports no link-netnsid.
        assert "link_netnsid" not in link(a, "vx0") and created.link_netnsid is None
        run("ip", "-n", a, "addr", "add", "10.201.0.9/24", "dev", "vx0")
        run("ip", "-n", a, "link", "set", "vx0", "up")

        links_a.move(created.index, t)

        assert link(a, "vx0") is None
        moved = link(t, "vx0")
        assert moved is not None and moved["linkinfo"]["info_kind"] == "vxlan"
        assert moved["linkinfo"]["info_data"]["id"] == VNI and moved["mtu"] == 1450
        # It arrives down and without its addresses: whoever moves it must address it again.
        assert "UP" not in moved["flags"] and inet_addresses(t, "vx0") == set()
        # T reports where its socket is: the id T gave namespace A.
        assert nsid_names(t)[moved["link_netnsid"]] == a
        assert links_t.get("vx0").link_netnsid == moved["link_netnsid"]
    finally:
        links_a.close()
        links_t.close()

    # A still holds the VNI and port: a second device there is refused (an agent must look
    # in the tunnel namespace before it creates raven0 again).
    again = run("ip", "-n", a, "link", "add", "vx1", "type", "vxlan", "id", str(VNI), "dstport",
                str(VXLAN_PORT), "local", UNDERLAY_A, "nolearning", check=False)
    assert again.returncode != 0 and link(a, "vx1") is None

    vxlan_endpoint(t, "vx0", "10.201.0.1", mac_b, "10.201.0.2", UNDERLAY_B)
    vxlan_endpoint(b, "vx0", "10.201.0.2", mac_t, "10.201.0.1", UNDERLAY_A)
    sent_before = tx_packets(a, "u0")
    assert wait_for(lambda: pings(t, "10.201.0.2"), timeout=20)
    # The outer packets left through A's underlay: T has no underlay at all.
    assert tx_packets(a, "u0") > sent_before
    assert {e["ifname"] for e in ip_json(t, "link", "show")} == {"lo", "vx0"}


# --- d. a moved wireguard-go TUN keeps carrying traffic ---------------------------------------

def wg(run_dir: Path, *args: str, input: str | None = None) -> str:
    """`wg` against the wireguard-go whose private /var/run/wireguard is `run_dir`."""
    script = 'mount --bind "$0" /var/run/wireguard && exec "$@"'
    return run("unshare", "--mount", "--propagation", "private", "sh", "-c", script,
               str(run_dir), "wg", *args, input=input).stdout


def wireguard_go(plumbing: Plumbing, ns: str, role: str) -> Path:
    """Start wireguard-go for `wg0` in `ns` the way the agent does; stopped at cleanup."""
    state = plumbing.tmp / role
    daemon = WireGuardGo(netns_name=ns, ifname="wg0", state_dir=state, run_dir=state / "run",
                         binary=shutil.which("wireguard-go") or "wireguard-go")
    plumbing.on_cleanup(daemon.stop)
    daemon.ensure_running()
    return state / "run"


def configure(run_dir: Path, key_file: Path, peer_key: str, endpoint: str,
              allowed: str) -> None:
    wg(run_dir, "set", "wg0", "private-key", str(key_file), "listen-port", str(WG_PORT),
       "peer", peer_key, "endpoint", endpoint, "allowed-ips", allowed)


def key_pair(directory: Path, role: str) -> tuple[Path, str]:
    private = run("wg", "genkey").stdout.strip()
    path = directory / f"{role}.key"
    path.write_text(private + "\n")
    path.chmod(0o600)
    return path, run("wg", "pubkey", input=private).stdout.strip()


@pytest.mark.skipif(shutil.which("wireguard-go") is None, reason="wireguard-go is not installed")
def test_wireguard_go_tun_moved_into_another_namespace_keeps_carrying_traffic(
        plumbing) -> None:
    a, b, t = plumbing.ns("a"), plumbing.ns("b"), plumbing.ns("t")
    underlay(a, b)
    run_a, run_b = wireguard_go(plumbing, a, "a"), wireguard_go(plumbing, b, "b")
    (key_a, pub_a), (key_b, pub_b) = key_pair(plumbing.tmp, "a"), key_pair(plumbing.tmp, "b")
    configure(run_a, key_a, pub_b, f"{UNDERLAY_B}:{WG_PORT}", "10.202.0.2/32")
    configure(run_b, key_b, pub_a, f"{UNDERLAY_A}:{WG_PORT}", "10.202.0.1/32")

    # The MTU is set before the move: wireguard-go's netlink listener stays in A.
    run("ip", "-n", a, "link", "set", "wg0", "mtu", str(WG_MTU))
    links = Links(a)
    try:
        links.move(links.get("wg0").index, t)
    finally:
        links.close()
    moved = link(t, "wg0")
    assert link(a, "wg0") is None
    assert moved is not None and moved["linkinfo"]["info_kind"] == "tun"
    assert moved["mtu"] == WG_MTU

    for ns, local, remote in ((t, "10.202.0.1", "10.202.0.2"), (b, "10.202.0.2", "10.202.0.1")):
        run("ip", "-n", ns, "addr", "add", f"{local}/32", "peer", remote, "dev", "wg0")
        run("ip", "-n", ns, "link", "set", "wg0", "up")
    sent_before = tx_packets(a, "u0")
    assert wait_for(lambda: pings(t, "10.202.0.2"), timeout=30)
    assert tx_packets(a, "u0") > sent_before  # the tunnel's UDP left through A's underlay
    handshakes = wg(run_a, "show", "wg0", "latest-handshakes").split()
    assert handshakes[0] == pub_b and int(handshakes[1]) > 0
    assert {e["ifname"] for e in ip_json(t, "link", "show")} == {"lo", "wg0"}
