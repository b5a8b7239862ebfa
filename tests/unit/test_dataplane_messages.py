"""Pure message building and diffing of the data plane (no root, no kernel).

The kernel WireGuard backend cannot run on this machine (no module), so its generic netlink
messages are checked here byte by byte against the layout of uapi/linux/wireguard.h, and
round-tripped through our decoder.
"""

from __future__ import annotations

import base64
import ipaddress
import socket
import struct
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raven import constants
from raven.dataplane import rtnl
from raven.dataplane.errors import DataplaneError
from raven.dataplane.firewall import LiveFirewall, collapse, plan_firewall, skeleton
from raven.dataplane.netlink import NLA_F_NESTED, iter_attrs, parse_attrs
from raven.dataplane.nftnl import batch, element_messages, interval_keys
from raven.dataplane.wireguard import genl, keys, uapi
from raven.dataplane.wireguard.model import (
    DeviceWrite,
    LiveDevice,
    LivePeer,
    PeerWrite,
    diff_device,
)
from raven.desired import Firewall, Route, Rule, WireGuardPeer

K1 = base64.b64encode(bytes([1] * 32)).decode()
K2 = base64.b64encode(bytes([2] * 32)).decode()
PSK = base64.b64encode(bytes([9] * 32)).decode()


# --- WireGuard generic netlink -----------------------------------------------------------------


def test_genl_set_device_layout() -> None:
    write = DeviceWrite(private_key=K1, listen_port=4500, peers=(
        PeerWrite(public_key=K2, endpoint="198.51.100.2:4500", keepalive=25, preshared_key=PSK,
                  replace_allowed_ips=True, allowed_ips=("10.2.0.0/16", "fd00:2::/64")),
        PeerWrite(public_key=K1, remove=True),
    ))
    [body] = genl.encode_set("raven-wg0", write)
    cmd, version, _ = struct.unpack_from("=BBH", body)
    assert (cmd, version) == (genl.WG_CMD_SET_DEVICE, 1)
    top = parse_attrs(body, 4)
    assert top[genl.WGDEVICE_A_IFNAME] == b"raven-wg0\0"
    assert top[genl.WGDEVICE_A_PRIVATE_KEY] == bytes([1] * 32)
    assert struct.unpack("=H", top[genl.WGDEVICE_A_LISTEN_PORT][:2])[0] == 4500
    # Nested attributes carry NLA_F_NESTED, as the kernel's strict policy requires.
    raw_types = [struct.unpack_from("=HH", body, off)[1] for off in _offsets(body, 4)]
    assert genl.WGDEVICE_A_PEERS | NLA_F_NESTED in raw_types
    peers = [parse_attrs(p) for _, p in iter_attrs(top[genl.WGDEVICE_A_PEERS])]
    first, second = peers
    assert first[genl.WGPEER_A_PUBLIC_KEY] == bytes([2] * 32)
    assert first[genl.WGPEER_A_PRESHARED_KEY] == bytes([9] * 32)
    assert struct.unpack("=I", first[genl.WGPEER_A_FLAGS])[0] == genl.WGPEER_F_REPLACE_ALLOWEDIPS
    assert struct.unpack("=H", first[genl.WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL][:2])[0] == 25
    endpoint = first[genl.WGPEER_A_ENDPOINT]
    assert struct.unpack_from("=H", endpoint)[0] == socket.AF_INET
    assert struct.unpack_from("!H", endpoint, 2)[0] == 4500 and endpoint[4:8] == bytes(
        [198, 51, 100, 2]) and len(endpoint) == 16  # struct sockaddr_in
    ips = [parse_attrs(a) for _, a in iter_attrs(first[genl.WGPEER_A_ALLOWEDIPS])]
    assert [(struct.unpack("=H", i[genl.WGALLOWEDIP_A_FAMILY][:2])[0],
             i[genl.WGALLOWEDIP_A_IPADDR], i[genl.WGALLOWEDIP_A_CIDR_MASK][0]) for i in ips] == [
        (socket.AF_INET, bytes([10, 2, 0, 0]), 16),
        (socket.AF_INET6, socket.inet_pton(socket.AF_INET6, "fd00:2::"), 64)]
    assert struct.unpack("=I", second[genl.WGPEER_A_FLAGS])[0] == genl.WGPEER_F_REMOVE_ME
    assert genl.WGPEER_A_ALLOWEDIPS not in second


def _offsets(data: bytes, start: int) -> list[int]:
    out, off = [], start
    while off + 4 <= len(data):
        out.append(off)
        off += (struct.unpack_from("=H", data, off)[0] + 3) & ~3
    return out


def test_genl_decode_reads_what_the_kernel_sends() -> None:
    # A GET_DEVICE reply has the SET layout plus counters: build one and decode it.
    [body] = genl.encode_set("raven-wg0", DeviceWrite(private_key=K1, listen_port=51820, peers=(
        PeerWrite(public_key=K2, endpoint="[2001:db8::1]:4500", keepalive=0,
                  allowed_ips=("10.2.0.0/16",)),)))
    live = genl.decode_get([body])
    assert live.private_key == K1 and live.listen_port == 51820
    peer = live.peers[K2]
    assert peer.endpoint == "[2001:db8::1]:4500"
    assert peer.allowed_ips == frozenset({"10.2.0.0/16"}) and peer.preshared_key is None


def _tiles(data: bytes, start: int, end: int) -> None:
    """Independent check of one message's framing: the attributes of every nest exactly tile
    their parent (no length overruns its parent, none is truncated), recursively."""
    off = start
    while off < end:
        assert off + 4 <= end, "truncated attribute header"
        length, kind = struct.unpack_from("=HH", data, off)
        assert length >= 4 and off + length <= end, (off, length, end)
        if kind & NLA_F_NESTED:
            _tiles(data, off + 4, off + length)
        off += (length + 3) & ~3
    assert off in (end, (end + 3) & ~3)


def _chunks(messages: list[bytes]) -> list[tuple[int, dict[int, bytes], list[str]]]:
    """(message index, peer attributes, allowed IPs in order) of every peer chunk sent."""
    out = []
    for index, body in enumerate(messages):
        for _, raw in iter_attrs(parse_attrs(body, 4).get(genl.WGDEVICE_A_PEERS, b"")):
            p = parse_attrs(raw)
            ips = []
            for _, raw_ip in iter_attrs(p.get(genl.WGPEER_A_ALLOWEDIPS, b"")):
                a = parse_attrs(raw_ip)
                addr = a[genl.WGALLOWEDIP_A_IPADDR]
                family = socket.AF_INET6 if len(addr) == 16 else socket.AF_INET
                ips.append(f"{socket.inet_ntop(family, addr)}/{a[genl.WGALLOWEDIP_A_CIDR_MASK][0]}")
            out.append((index, p, ips))
    return out


def _flags(p: dict[int, bytes]) -> int:
    return struct.unpack("=I", p[genl.WGPEER_A_FLAGS])[0] if genl.WGPEER_A_FLAGS in p else 0


def _key_of(i: int) -> str:
    return base64.b64encode(i.to_bytes(4, "big") * 8).decode()


def _check_messages(messages: list[bytes], limit: int = genl.MESSAGE_LIMIT) -> None:
    for index, body in enumerate(messages):
        assert genl.NLMSG_HDRLEN + len(body) <= limit
        assert struct.unpack_from("=BB", body) == (genl.WG_CMD_SET_DEVICE, 1)
        _tiles(body, 4, len(body))
        top = parse_attrs(body, 4)
        assert top[genl.WGDEVICE_A_IFNAME] == b"raven-wg0\0"  # every message names the device
        if index:  # device-level attributes in the first message only, as wg(8) sends them
            assert genl.WGDEVICE_A_PRIVATE_KEY not in top
            assert genl.WGDEVICE_A_LISTEN_PORT not in top


def test_genl_one_peer_with_10000_allowed_ips_splits_like_wg() -> None:
    # One message used to carry it all and fail with struct.error (16-bit lengths) at ~2,400.
    nets = tuple(f"10.{i // 256}.{i % 256}.0/24" for i in range(9_990)) + tuple(
        f"fd00:{i:x}::/64" for i in range(10))
    write = DeviceWrite(private_key=K1, listen_port=4500, peers=(
        PeerWrite(public_key=K2, endpoint="198.51.100.2:4500", keepalive=25, preshared_key=PSK,
                  replace_allowed_ips=True, allowed_ips=nets),))
    messages = genl.encode_set("raven-wg0", write)
    _check_messages(messages)
    assert len(messages) > 1
    first = parse_attrs(messages[0], 4)
    assert first[genl.WGDEVICE_A_PRIVATE_KEY] == bytes([1] * 32)
    chunks = _chunks(messages)
    assert [index for index, _, _ in chunks] == list(range(len(messages)))  # one per message
    assert all(p[genl.WGPEER_A_PUBLIC_KEY] == bytes([2] * 32) for _, p, _ in chunks)
    # Replace only with the first chunk (the later ones add to it); the peer's other settings
    # once; every allowed IP exactly once, in order.
    assert [_flags(p) for _, p, _ in chunks] == [genl.WGPEER_F_REPLACE_ALLOWEDIPS] + [0] * (
        len(chunks) - 1)
    for attr_type in (genl.WGPEER_A_PRESHARED_KEY, genl.WGPEER_A_ENDPOINT,
                      genl.WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL):
        assert [attr_type in p for _, p, _ in chunks] == [True] + [False] * (len(chunks) - 1)
    sent = [ip for _, _, ips in chunks for ip in ips]
    assert sent == [str(ipaddress.ip_network(n)) for n in nets]


def test_genl_1000_peers_split_without_splitting_small_peers() -> None:
    peers = (*(PeerWrite(public_key=_key_of(i), endpoint=f"198.51.{i // 250}.{i % 250}:4500",
                         keepalive=0, replace_allowed_ips=True,
                         allowed_ips=(f"10.{i // 256}.{i % 256}.0/24",))
               for i in range(1, 1001)), PeerWrite(public_key=K2, remove=True))
    messages = genl.encode_set("raven-wg0", DeviceWrite(listen_port=4500, peers=peers))
    _check_messages(messages)
    assert len(messages) > 1
    chunks = _chunks(messages)
    assert [base64.b64encode(p[genl.WGPEER_A_PUBLIC_KEY]).decode() for _, p, _ in chunks] == [
        w.public_key for w in peers]
    assert [_flags(p) for _, p, _ in chunks] == [genl.WGPEER_F_REPLACE_ALLOWEDIPS] * 1000 + [
        genl.WGPEER_F_REMOVE_ME]


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 400), min_size=0, max_size=6),
       limit=st.integers(512, 0xFFFF), replace=st.booleans(), with_key=st.booleans())
def test_genl_split_is_equivalent_to_one_write(sizes: list[int], limit: int, replace: bool,
                                               with_key: bool) -> None:
    """Applying the messages in order, with the kernel's semantics, gives what the write says."""
    write = DeviceWrite(private_key=K1 if with_key else None, peers=tuple(
        PeerWrite(public_key=_key_of(p + 1), keepalive=5, replace_allowed_ips=replace,
                  allowed_ips=tuple(f"10.{p}.{i // 256}.{i % 256}/32" for i in range(n)))
        for p, n in enumerate(sizes)))
    messages = genl.encode_set("raven-wg0", write, limit=limit)
    _check_messages(messages, limit)
    old = {"10.255.0.0/16"}  # what each peer had before: replaced, or kept and added to
    device: dict[str, set[str]] = {w.public_key: set(old) for w in write.peers}
    for _, p, ips in _chunks(messages):
        key = base64.b64encode(p[genl.WGPEER_A_PUBLIC_KEY]).decode()
        if _flags(p) & genl.WGPEER_F_REPLACE_ALLOWEDIPS:
            device[key] = set()
        device[key] |= set(ips)
    for w in write.peers:
        assert device[w.public_key] == set(w.allowed_ips) | (set() if replace else old)
    assert sum(genl.WGDEVICE_A_PRIVATE_KEY in parse_attrs(m, 4) for m in messages) == with_key


@pytest.mark.parametrize(("peer", "words"), [
    (PeerWrite(public_key="not-a-key", allowed_ips=("10.0.0.0/8",)), ["not-a-key", "public key"]),
    (PeerWrite(public_key=K2, allowed_ips=("10.0.0.300/8",)), [K2, "10.0.0.300/8"]),
    (PeerWrite(public_key=K2, keepalive=70_000), [K2, "keepalive", "70000"]),
    (PeerWrite(public_key=K2, endpoint="198.51.100.2:99999"), [K2, "198.51.100.2:99999"]),
    (PeerWrite(public_key=K2, preshared_key="c2hvcnQ="), [K2, "pre-shared key"]),
])
def test_genl_bad_peer_is_a_clear_error_naming_the_peer(peer: PeerWrite, words: list[str]) -> None:
    with pytest.raises(DataplaneError) as info:
        genl.encode_set("raven-wg0", DeviceWrite(peers=(peer,)))
    assert all(w in str(info.value) for w in words), str(info.value)


def test_genl_bad_device_settings_are_clear_errors() -> None:
    with pytest.raises(DataplaneError, match="listen port 70000"):
        genl.encode_set("raven-wg0", DeviceWrite(listen_port=70_000))
    with pytest.raises(DataplaneError, match="private key"):
        genl.encode_set("raven-wg0", DeviceWrite(private_key="AAAA"))
    with pytest.raises(DataplaneError, match="1-15 bytes"):
        genl.encode_set("a-much-too-long-name", DeviceWrite(listen_port=1))


def test_genl_family_lookup_message() -> None:
    body = genl.family_request_body()
    assert struct.unpack_from("=BB", body) == (genl.CTRL_CMD_GETFAMILY, 1)
    assert parse_attrs(body, 4)[genl.CTRL_ATTR_FAMILY_NAME] == b"wireguard\0"


# --- WireGuard UAPI and diff -------------------------------------------------------------------


def test_uapi_encoding_uses_hex_keys_and_minimal_lines() -> None:
    text = uapi.encode_set(DeviceWrite(peers=(
        PeerWrite(public_key=K2, allowed_ips=("10.3.0.0/24",)),
        PeerWrite(public_key=K1, remove=True))))
    assert text == (f"set=1\npublic_key={'02' * 32}\nallowed_ip=10.3.0.0/24\n"
                    f"public_key={'01' * 32}\nremove=true\n\n")


def test_uapi_get_parsing() -> None:
    text = (f"private_key={'01' * 32}\nlisten_port=4500\n"
            f"public_key={'02' * 32}\npreshared_key={'00' * 32}\nprotocol_version=1\n"
            "endpoint=198.51.100.2:4500\nlast_handshake_time_sec=100\n"
            "last_handshake_time_nsec=500000000\ntx_bytes=10\nrx_bytes=20\n"
            "persistent_keepalive_interval=25\nallowed_ip=10.2.0.0/16\nallowed_ip=10.3.0.0/24\n")
    live = uapi.parse_get(text)
    assert live.private_key == K1 and live.listen_port == 4500
    peer = live.peers[K2]
    assert (peer.endpoint, peer.keepalive, peer.preshared_key) == ("198.51.100.2:4500", 25, None)
    assert peer.allowed_ips == {"10.2.0.0/16", "10.3.0.0/24"}
    assert (peer.last_handshake, peer.rx_bytes, peer.tx_bytes) == (100.5, 20, 10)


def _live(**peer: object) -> LiveDevice:
    base = {"public_key": K2, "endpoint": "198.51.100.2:4500",
            "allowed_ips": frozenset({"10.2.0.0/16"}), "keepalive": 0, "preshared_key": None}
    base.update(peer)
    return LiveDevice(private_key=K1, listen_port=4500, peers={K2: LivePeer(**base)})  # type: ignore[arg-type]


def _want(**changes: object) -> tuple[WireGuardPeer, ...]:
    base = {"public_key": K2, "endpoint": "198.51.100.2:4500", "allowed_ips": ("10.2.0.0/16",)}
    base.update(changes)
    return (WireGuardPeer(**base),)  # type: ignore[arg-type]


def test_equal_peers_write_nothing_and_none_endpoint_keeps_the_learned_one() -> None:
    write, changes = diff_device(K1, 4500, _want(), _live())
    assert write.empty() and changes == []
    write, _ = diff_device(K1, 4500, _want(endpoint=None), _live(endpoint="203.0.113.7:1234"))
    assert write.empty()


def test_additions_do_not_replace_removals_do() -> None:
    write, _ = diff_device(K1, 4500, _want(allowed_ips=("10.2.0.0/16", "10.4.0.0/24")), _live())
    (peer,) = write.peers
    assert not peer.replace_allowed_ips and peer.allowed_ips == ("10.4.0.0/24",)
    write, _ = diff_device(K1, 4500, _want(allowed_ips=("10.4.0.0/24",)), _live())
    (peer,) = write.peers
    assert peer.replace_allowed_ips and peer.allowed_ips == ("10.4.0.0/24",)


def test_psk_keepalive_endpoint_key_port_and_stale_peers() -> None:
    write, _ = diff_device(K2, 4501, _want(preshared_key=PSK, keepalive=25,
                                           endpoint="198.51.100.3:4500"), _live())
    assert write.private_key == K2 and write.listen_port == 4501
    (peer,) = write.peers
    assert (peer.preshared_key, peer.keepalive, peer.endpoint) == (PSK, 25, "198.51.100.3:4500")
    write, _ = diff_device(K1, 4500, _want(), _live(preshared_key=PSK))
    assert write.peers[0].preshared_key == ""  # clear it
    write, changes = diff_device(K1, 4500, (), _live())
    assert write.peers == (PeerWrite(public_key=K2, remove=True),) and "remove" in changes[0]


# --- keys ----------------------------------------------------------------------------------------


def test_key_is_created_once_private_and_matches_wg_pubkey(tmp_path) -> None:
    first = keys.load_or_create_private_key(tmp_path)
    assert keys.load_or_create_private_key(tmp_path) == first
    assert (tmp_path / keys.KEY_FILE).stat().st_mode & 0o777 == 0o600
    try:
        derived = subprocess.run(["wg", "pubkey"], input=keys.b64(first) + "\n", text=True,
                                 capture_output=True, check=True).stdout.strip()
    except FileNotFoundError:
        pytest.skip("wg (wireguard-tools) not installed: no independent key oracle")
    assert keys.b64(keys.public_key_of(first)) == derived


def test_corrupt_key_file_is_an_error_not_replaced(tmp_path) -> None:
    (tmp_path / keys.KEY_FILE).write_text("not a key\n")
    with pytest.raises(DataplaneError, match="not a base64 WireGuard private key"):
        keys.load_or_create_private_key(tmp_path)
    assert (tmp_path / keys.KEY_FILE).read_text() == "not a key\n"


# --- routes and rules -------------------------------------------------------------------------


def test_route_message_carries_our_protocol_onlink_gateway_and_locked_mtu() -> None:
    req = rtnl.route_request(Route("10.2.0.0/16", 9027, "raven0", "100.96.0.3", 1420), 7)
    family, dst_len, _, _, table, proto, scope, rtype, flags = struct.unpack_from(
        "=BBBBBBBBI", req.body)
    assert (family, dst_len, proto, scope, rtype) == (socket.AF_INET, 16, rtnl.RTPROT_RAVEN,
                                                      0, rtnl.RTN_UNICAST)
    assert flags & rtnl.RTNH_F_ONLINK and table == 0  # the table is in RTA_TABLE (> 255)
    attrs = parse_attrs(req.body, 12)
    assert struct.unpack("=I", attrs[rtnl.RTA_TABLE])[0] == 9027
    assert attrs[rtnl.RTA_DST] == bytes([10, 2, 0, 0])
    assert attrs[rtnl.RTA_GATEWAY] == bytes([100, 96, 0, 3])
    assert struct.unpack("=I", attrs[rtnl.RTA_OIF])[0] == 7
    metrics = parse_attrs(attrs[rtnl.RTA_METRICS])
    assert struct.unpack("=I", metrics[rtnl.RTAX_MTU])[0] == 1420
    assert struct.unpack("=I", metrics[rtnl.RTAX_LOCK])[0] == 1 << rtnl.RTAX_MTU
    assert rtnl.RTA_PREFSRC not in attrs
    delete = rtnl.route_request(Route("10.2.0.0/16", 9027, "raven0"), 0, delete=True)
    assert delete.op == "delete" and delete.body[6] == rtnl.RT_SCOPE_NOWHERE


def test_route_message_carries_the_preferred_source() -> None:
    req = rtnl.route_request(Route("10.2.0.0/16", 9027, "raven0", "100.96.0.3", 1420,
                                   src="192.0.2.2"), 7)
    assert parse_attrs(req.body, 12)[rtnl.RTA_PREFSRC] == bytes([192, 0, 2, 2])
    assert req.what.endswith(" src 192.0.2.2")
    with pytest.raises(DataplaneError, match="source address must have the destination's"):
        rtnl.route_request(Route("fd00:2::/64", 9027, "raven0", src="192.0.2.2"), 7)


def test_a_route_in_main_carries_our_metric_and_its_delete_names_protocol_and_metric() -> None:
    """main is everyone's table: ours are told apart by protocol and metric, and a delete names
    both, so the kernel can never match another's route for the same prefix with it."""
    req = rtnl.route_request(Route("10.2.0.0/16", 254, "raven0", "100.96.0.3", 1420), 7)
    assert req.body[5] == rtnl.RTPROT_RAVEN
    attrs = parse_attrs(req.body, 12)
    assert struct.unpack("=I", attrs[rtnl.RTA_TABLE])[0] == constants.MAIN_TABLE
    assert struct.unpack("=I", attrs[rtnl.RTA_PRIORITY])[0] == constants.MAIN_ROUTE_METRIC
    assert req.what.endswith(f" metric {constants.MAIN_ROUTE_METRIC}")
    delete = rtnl.route_request(Route("10.2.0.0/16", 254, "raven0"), 0, delete=True)
    assert delete.body[5] == rtnl.RTPROT_RAVEN
    assert struct.unpack("=I", parse_attrs(delete.body, 12)[rtnl.RTA_PRIORITY])[0] == \
        constants.MAIN_ROUTE_METRIC
    # In our own tables nothing changes: any protocol, no metric (the whole table is ours).
    ours = rtnl.route_request(Route("10.2.0.0/16", 9027, "raven0"), 0, delete=True)
    assert ours.body[5] == 0 and rtnl.RTA_PRIORITY not in parse_attrs(ours.body, 12)
    assert rtnl.RTA_PRIORITY not in parse_attrs(
        rtnl.route_request(Route("10.2.0.0/16", 9027, "raven0"), 7).body, 12)


def test_rule_message() -> None:
    req = rtnl.rule_request(Rule(priority=100, table=9028, fwmark=0x40, fwmask=0x40))
    assert req.body[7] == rtnl.FR_ACT_TO_TBL
    attrs = parse_attrs(req.body, 12)
    assert {k: struct.unpack("=I", attrs[k])[0] for k in (
        rtnl.FRA_PRIORITY, rtnl.FRA_TABLE, rtnl.FRA_FWMARK, rtnl.FRA_FWMASK)} == {
        rtnl.FRA_PRIORITY: 100, rtnl.FRA_TABLE: 9028, rtnl.FRA_FWMARK: 0x40,
        rtnl.FRA_FWMASK: 0x40}


def test_rule_message_without_a_mark_has_no_mark_attributes() -> None:
    req = rtnl.rule_request(Rule(priority=100, table=9027, family=6))
    assert req.body[0] == socket.AF_INET6
    attrs = parse_attrs(req.body, 12)
    assert rtnl.FRA_FWMARK not in attrs and rtnl.FRA_FWMASK not in attrs
    assert struct.unpack("=I", attrs[rtnl.FRA_TABLE])[0] == 9027
    assert req.what == "rule add -6 lookup 9027 priority 100"
    assert rtnl.FRA_IIFNAME not in attrs


def test_rule_message_with_an_input_device() -> None:
    # `iif raven-wg0 lookup 9027`: the name NUL-terminated, as iproute2 sends it; the delete
    # names it too, so the kernel deletes exactly that rule
    for delete in (False, True):
        req = rtnl.rule_request(Rule(priority=100, table=9027, iif="raven-wg0"), delete=delete)
        attrs = parse_attrs(req.body, 12)
        assert attrs[rtnl.FRA_IIFNAME] == b"raven-wg0\0"
        assert rtnl.FRA_FWMARK not in attrs
    assert req.what == "rule del iif raven-wg0 lookup 9027 priority 100"


# --- nftables -----------------------------------------------------------------------------------


def test_collapse_drops_nested_subnets_per_family() -> None:
    got = collapse(("10.0.0.0/16", "10.0.1.0/24", "10.1.0.0/24", "10.1.1.0/24", "fd00::/48",
                    "fd00::/64"))
    assert got == {4: frozenset({"10.0.0.0/16", "10.1.0.0/24", "10.1.1.0/24"}),
                   6: frozenset({"fd00::/48"})}
    with pytest.raises(DataplaneError, match="not a CIDR"):
        collapse(("10.0.0.0/33",))


def test_interval_keys_are_start_and_end_elements() -> None:
    assert interval_keys("10.2.0.0/16") == [(bytes([10, 2, 0, 0]), False),
                                            (bytes([10, 3, 0, 0]), True)]
    assert interval_keys("0.0.0.0/0") == [(bytes(4), False)]  # ends at the top: no end element
    messages = batch(element_messages("raven", "remote4", ["10.2.0.0/16"], delete=False))
    assert [m.msg_type for m in messages] == [0x10, (10 << 8) | 12, 0x11]


def test_firewall_plan_creates_then_only_changes_elements() -> None:
    fw = Firewall(table="raven", mark=0x40, mark_mask=0x40, local_subnets=("10.1.0.0/16",),
                  remote_subnets=("10.2.0.0/16", "10.3.0.0/24"))
    plan = plan_firewall(fw, None)
    assert plan.build == "create"  # the whole table with its elements, one transaction
    assert plan.elements == (("remote4", ("10.2.0.0/16", "10.3.0.0/24"), False),)
    script = skeleton(fw)[0]  # the nft script the netlink messages are equivalent to
    assert script.startswith("table inet raven {")
    assert "meta mark set" in script and "snat" not in script  # a member, nothing masquerades
    with_snat = skeleton(fw, snat=True)[0]
    assert "snat ip to ip saddr" in with_snat and "srcnat - 10" in with_snat
    gateway = skeleton(replace(fw, marks=False))[0]
    assert "set remote4" in gateway and "chain" not in gateway  # no hook: no per-packet cost
    live = LiveFirewall(True, {4: frozenset({"10.2.0.0/16", "10.9.0.0/24"}), 6: frozenset()})
    plan = plan_firewall(fw, live)
    assert plan.build is None
    assert plan.elements == (("remote4", ("10.9.0.0/24",), True),
                             ("remote4", ("10.3.0.0/24",), False))
    same = LiveFirewall(True, collapse(fw.remote_subnets))
    assert plan_firewall(fw, same).empty()
    broken = LiveFirewall(False, same.elements)
    rebuilt = plan_firewall(fw, broken)
    assert rebuilt.build == "rebuild"  # declare, delete and define in one transaction
    assert rebuilt.elements == (("remote4", ("10.2.0.0/16", "10.3.0.0/24"), False),)
    # The fingerprint identifies the skeleton; a different mark, the SNAT chain or no mark
    # chains make a different skeleton.
    fingerprints = {skeleton(fw)[1], skeleton(fw, snat=True)[1],
                    skeleton(replace(fw, marks=False))[1],
                    skeleton(Firewall("raven", 0x80, 0x80, (), ()))[1]}
    assert len(fingerprints) == 4


def test_incremental_collapser_agrees_with_full_collapse_on_random_walks() -> None:
    import random

    from raven.dataplane.firewall import Collapser

    rng = random.Random(5)
    pool = [f"10.{a}.{b}.0/24" for a in range(3) for b in range(0, 256, 32)]
    pool += ["10.1.0.0/16", "10.0.0.0/8", "10.2.64.0/18", "fd00::/64", "fd00::/48", "fd01::/64"]
    collapser = Collapser()
    current: set[str] = set()
    for _ in range(3000):
        for _ in range(rng.randint(1, 3)):  # small steps, like reconciles
            item = rng.choice(pool)
            current.symmetric_difference_update({item})
        state = tuple(sorted(current))
        assert collapser(state) == collapse(state), state


@pytest.mark.parametrize("make", ["directory", "device", "unreadable-symlink"])
def test_a_key_file_that_is_not_a_file_is_a_clear_error(tmp_path: Path, make: str) -> None:
    from raven.dataplane.errors import DataplaneError
    from raven.dataplane.wireguard.keys import KEY_FILE, load_or_create_private_key

    path = tmp_path / KEY_FILE
    if make == "directory":
        path.mkdir()
    elif make == "device":
        path.symlink_to("/dev/zero")  # endless: must not be read to the end
    else:
        path.symlink_to(tmp_path / "missing" / "key")  # O_EXCL refuses, reading finds nothing
    with pytest.raises(DataplaneError, match=f"{path}: "):
        load_or_create_private_key(tmp_path)
