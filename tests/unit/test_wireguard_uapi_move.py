"""wireguard-go UAPI: an allowed IP that moves from one peer to another in one write (a gateway
failover on a remote pool) must end on its new peer. The UAPI has no single-IP removal; the
removal goes through a throwaway peer, which must take the IP from the OLD owner, i.e. before
the new owner gets it (found in the lab: the subnets vanished until the next resync)."""

from __future__ import annotations

import base64

from raven.dataplane.wireguard.model import DeviceWrite, PeerWrite
from raven.dataplane.wireguard.uapi import encode_set

OLD = base64.b64encode(b"\x01" * 32).decode()
NEW = base64.b64encode(b"\x02" * 32).decode()


def owners(text: str) -> dict[str, str]:
    """Replay a UAPI set as wireguard-go does: an allowed IP belongs to the last peer given it;
    a removed peer takes its IPs with it."""
    owner: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "public_key":
            current = value
        elif key == "allowed_ip":
            owner[value] = current
        elif key == "remove" and value == "true":
            owner = {ip: peer for ip, peer in owner.items() if peer != current}
    return owner


def test_a_subnet_moved_between_peers_in_one_write_ends_on_the_new_peer() -> None:
    write = DeviceWrite(peers=(
        PeerWrite(public_key=NEW, allowed_ips=("10.244.10.0/24",)),
        PeerWrite(public_key=OLD, removed_allowed_ips=("10.244.10.0/24",)),
    ))
    assert owners(encode_set(write)) == {"10.244.10.0/24": bytes([2] * 32).hex()}


def test_a_plain_removal_still_drops_the_ip() -> None:
    write = DeviceWrite(peers=(PeerWrite(public_key=OLD, removed_allowed_ips=("10.0.0.0/24",)),))
    assert owners(encode_set(write)) == {}
