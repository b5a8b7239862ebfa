"""Backend-neutral WireGuard state and the peer diff shared by both backends.

Rules kept: a peer that is equal to the desired one produces no write at all (a rewrite resets
the session and interrupts traffic); an endpoint of None in the desired peer means "learned from
the handshake" and never causes a write; an allowed IP that moves between peers is only added
to its new peer (which takes it from the old one in the same write); allowed IPs that are only
added are sent without replacing the list (no window without routes); a removal replaces the
list, or, with `move_removed` (wireguard-go, whose UAPI has no single-IP removal), moves only the
removed IPs to a throwaway peer that the same write deletes: O(removed), and the peer's other
IPs never leave. A desired peer that cannot be written (malformed key or endpoint, e.g. from a
bad Node annotation) is skipped with a reason (`split_peers`); it never stops the other peers.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from dataclasses import dataclass, field

from raven.constants import ANNOTATION_PUBLIC_KEY
from raven.desired import WireGuardPeer


@dataclass(frozen=True)
class LivePeer:
    public_key: str  # base64
    endpoint: str | None
    allowed_ips: frozenset[str]
    keepalive: int
    preshared_key: str | None  # base64, None when unset
    last_handshake: float = 0.0  # unix seconds, 0 = never
    rx_bytes: int = 0
    tx_bytes: int = 0


@dataclass(frozen=True)
class LiveDevice:
    private_key: str | None  # base64
    listen_port: int
    peers: dict[str, LivePeer] = field(default_factory=dict)


@dataclass(frozen=True)
class PeerWrite:
    """One peer's change: everything a backend needs to encode it."""

    public_key: str
    remove: bool = False
    endpoint: str | None = None  # set only when it must change
    keepalive: int | None = None
    preshared_key: str | None = None  # "" = clear it
    replace_allowed_ips: bool = False
    allowed_ips: tuple[str, ...] = ()  # the full list when replacing, else only the additions
    removed_allowed_ips: tuple[str, ...] = ()  # taken away one by one (not with replace)


@dataclass(frozen=True)
class DeviceWrite:
    private_key: str | None = None
    listen_port: int | None = None
    peers: tuple[PeerWrite, ...] = ()

    def empty(self) -> bool:
        return self.private_key is None and self.listen_port is None and not self.peers


def canonical_cidr(cidr: str) -> str:
    return str(ipaddress.ip_network(cidr, strict=False))


def canonical_endpoint(endpoint: str) -> str:
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]")
    addr = ipaddress.ip_address(host)
    return f"[{addr}]:{int(port)}" if addr.version == 6 else f"{addr}:{int(port)}"


def diff_device(private_key: str, listen_port: int, desired: tuple[WireGuardPeer, ...],
                live: LiveDevice, *, move_removed: bool = False
                ) -> tuple[DeviceWrite, list[str]]:
    changes: list[str] = []
    write_key = None if live.private_key == private_key else private_key
    if write_key:
        changes.append("wireguard private key set")
    write_port = None if live.listen_port == listen_port else listen_port
    if write_port is not None:
        changes.append(f"wireguard listen port {live.listen_port} -> {listen_port}")
    peers: list[PeerWrite] = []
    wanted = {p.public_key: p for p in desired}
    # An allowed IP moving to another peer is taken by that peer's addition (one IP belongs to
    # one peer): it must not ALSO be removed, or with move_removed the throwaway peer would
    # take it from its new owner and the write would leave it routed nowhere.
    claimed = {ip: p.public_key for p in desired for ip in p.allowed_ips}
    for key in sorted(set(live.peers) - set(wanted)):
        peers.append(PeerWrite(public_key=key, remove=True))
        changes.append(f"wireguard peer {key} remove")
    for key, peer in sorted(wanted.items()):
        have = live.peers.get(key)
        want_ips = frozenset(peer.allowed_ips)  # canonical by the NodeState contract
        want_endpoint = canonical_endpoint(peer.endpoint) if peer.endpoint else None
        if have is None:
            peers.append(PeerWrite(public_key=key, endpoint=want_endpoint,
                                   keepalive=peer.keepalive,
                                   preshared_key=peer.preshared_key or None,
                                   replace_allowed_ips=True, allowed_ips=tuple(sorted(want_ips))))
            changes.append(f"wireguard peer {key} add ({len(want_ips)} allowed IPs)")
            continue
        endpoint = want_endpoint if want_endpoint and want_endpoint != have.endpoint else None
        keepalive = peer.keepalive if peer.keepalive != have.keepalive else None
        psk = None
        if (peer.preshared_key or None) != have.preshared_key:
            psk = peer.preshared_key or ""
        removed = frozenset(ip for ip in have.allowed_ips - want_ips if ip not in claimed)
        added = want_ips - have.allowed_ips
        if endpoint is None and keepalive is None and psk is None and not removed and not added:
            continue
        replace_all = bool(removed) and not move_removed
        peers.append(PeerWrite(
            public_key=key, endpoint=endpoint, keepalive=keepalive, preshared_key=psk,
            replace_allowed_ips=replace_all,
            allowed_ips=tuple(sorted(want_ips if replace_all else added)),
            removed_allowed_ips=() if replace_all else tuple(sorted(removed)),
        ))
        what = [n for n, v in (("endpoint", endpoint), ("keepalive", keepalive), ("psk", psk))
                if v is not None]
        if removed or added:
            what.append(f"allowed IPs +{len(added)} -{len(removed)}")
        changes.append(f"wireguard peer {key} update: {', '.join(what)}")
    return DeviceWrite(write_key, write_port, tuple(peers)), changes


def is_key(text: str) -> bool:
    """A base64 32-byte WireGuard key (public or preshared)."""
    try:
        return len(base64.b64decode(text, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def peer_problem(peer: WireGuardPeer) -> str | None:
    """Why this desired peer cannot be written, or None. Never prints a preshared key."""
    if not is_key(peer.public_key):
        return f"public key {peer.public_key!r} is not a base64 32-byte WireGuard key"
    if peer.preshared_key and not is_key(peer.preshared_key):
        return "its preshared key is not a base64 32-byte key"
    if peer.endpoint:
        try:
            canonical_endpoint(peer.endpoint)
        except ValueError:
            return f"endpoint {peer.endpoint!r} is not address:port"
    return None


def split_peers(peers: tuple[WireGuardPeer, ...]
                ) -> tuple[tuple[WireGuardPeer, ...], tuple[str, ...]]:
    """(peers we can write, one message per skipped peer naming it, the reason and the fix)."""
    valid: list[WireGuardPeer] = []
    skipped: list[str] = []
    for peer in peers:
        problem = peer_problem(peer)
        if problem is None:
            valid.append(peer)
        else:
            skipped.append(
                f"wireguard peer of Gateway {peer.pool or '(unknown)'!r} skipped: {problem}; "
                "the other peers are applied. Fix what its gateway node publishes (Node "
                f"annotation {ANNOTATION_PUBLIC_KEY}) or the Gateway's endpoint")
    return tuple(valid), tuple(skipped)
