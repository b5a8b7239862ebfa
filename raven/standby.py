"""PURE warm standby: what a node holds beyond its plan so that a gateway switch is small and
the data-path probes (raven.failover) travel the paths traffic takes.

`warm(state, gateways, me, options)` adds to a `NodeState` made by `raven.topology.plan_node`
(from the Gateways as this node sees them after `raven.failover.effective_gateways`):
- every pool node: an FDB entry and a neighbour on raven0 for every other gateway candidate of
  its pool, so probes reach each candidate's VTEP over VXLAN and a switch only moves routes;
- a standby candidate: FDB entries and neighbours for every pool member (it can answer their
  probes and forward for them at once) and a WireGuard device whose peers are the candidates of
  the remote pools it may peer with directly, each allowing only that candidate's VTEP /32
  (the probe address): sessions and NAT mappings are up before it is needed;
- the active gateway: each peer also allows its candidate's VTEP /32, and the remote pools'
  standby candidates are extra peers that allow only their VTEP /32; a punched direct path's
  peer (both pools behind NAT) also allows the far gateway's VTEP /32 (the path manager has it
  probed over the path, raven.path_agent).
The pod subnets stay on the active peers only (WireGuard allows an address on one peer), so no
standby carries cross-pool traffic. Pure: no I/O; IPv4 underlays only (IPv6 ones are unchanged).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import replace

from raven import constants
from raven.desired import FdbEntry, NeighEntry, NodeState, Role, WireGuardDevice, WireGuardPeer
from raven.failover import candidates, valid_key
from raven.model import Endpoint, Gateway
from raven.settings import OverlaySettings
from raven.topology import source_check, vtep_for


def _v4(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).version == 4
    except ValueError:
        return False


def _dial(ep: Endpoint) -> str | None:
    if ep.under_nat or not ep.public_ip or not _v4(ep.public_ip):
        return None
    return f"{ep.public_ip}:{ep.public_port or ep.port or constants.WIREGUARD_PORT}"


def _ips(gw: Gateway) -> dict[str, str]:
    return {n.node_name: n.private_ip for n in gw.status.nodes if _v4(n.private_ip)}


_DEFAULT_OPTIONS = OverlaySettings()


def warm(state: NodeState, gateways: Sequence[Gateway], me: str,
         options: OverlaySettings = _DEFAULT_OPTIONS) -> NodeState:
    if state.role == Role.ALONE or state.vxlan is None or not _v4(state.vxlan.local_ip):
        return state
    pool = next((g for g in gateways if g.name == state.pool), None)
    if pool is None:
        return state
    ips = _ips(pool)
    cands = candidates(pool)
    names = [ep.node_name for ep in cands]
    fdb, neigh = set(state.fdb), set(state.neighbours)

    def know(node: str) -> None:
        ip = ips.get(node)
        if node == me or ip is None:
            return
        vtep, mac = vtep_for(ip)
        fdb.add(FdbEntry(mac=mac, dst=ip))
        neigh.add(NeighEntry(ip=vtep, mac=mac))

    for node in names:
        know(node)
    me_ep = next((ep for ep in cands if ep.node_name == me), None)
    standby = state.role == Role.MEMBER and me_ep is not None
    if standby:
        for node in ips:
            know(node)
    state = replace(state, fdb=tuple(sorted(fdb)), neighbours=tuple(sorted(neigh)))
    if me_ep is None or not (standby or state.wireguard is not None):
        return state
    return _warm_peers(state, gateways, pool, me_ep, options)


def _warm_peers(state: NodeState, gateways: Sequence[Gateway], pool: Gateway, me_ep: Endpoint,
                options: OverlaySettings) -> NodeState:
    """Every remote candidate we may peer with directly gets a peer allowing its VTEP /32."""
    peers = {p.public_key: p for p in (state.wireguard.peers if state.wireguard else ())}
    used = {a for p in peers.values() for a in p.allowed_ips}
    keepalive = options.keepalive if me_ep.under_nat else 0
    my_key = me_ep.public_key
    for gw in gateways:
        if gw.name == pool.name:
            continue
        ips = _ips(gw)
        for ep in candidates(gw):
            key, ip = ep.public_key, ips.get(ep.node_name)
            if not valid_key(key) or key == my_key or ip is None:
                continue
            punched = key in peers and bool(peers[key].allowed_ips)
            if _dial(me_ep) is None and _dial(ep) is None and not punched:
                # Both behind NAT: reached through the relay, not probed; unless a punched
                # direct path (raven.paths) carries the pool: its gateway is probed over it.
                continue
            probe = f"{vtep_for(ip)[0]}/32"
            if probe in used:
                continue  # an address allowed on two peers would move between them
            used.add(probe)
            old = peers.get(key)
            if old is not None:
                peers[key] = replace(old, allowed_ips=tuple(sorted({*old.allowed_ips, probe})))
            else:
                peers[key] = WireGuardPeer(public_key=key, endpoint=_dial(ep),
                                           allowed_ips=(probe,), keepalive=keepalive,
                                           pool=gw.name)
    device = state.wireguard or WireGuardDevice(
        name=options.wireguard_device, listen_port=options.wireguard_port,
        mtu=options.tunnel_mtu, peers=())
    # The active gateway's settings of its WireGuard device (raven.topology.source_check:
    # rp_filter 0, not loose, since the device has no address; accept_local 1), so a switch
    # to active does not have to write them.
    sysctls = dict(state.sysctls) | dict(source_check(options.wireguard_device))
    return replace(state, wireguard=replace(device, peers=tuple(peers[k] for k in sorted(peers))),
                   sysctls=tuple(sorted(sysctls.items())))
