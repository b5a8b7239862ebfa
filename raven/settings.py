"""The settings root: one frozen dataclass per section, each default defined exactly once.

Sections so far:
- `OverlaySettings`: what every node of a cluster must agree on (device names, VNI, ports, route
  tables, rule priority, firewall mark, nftables table, encapsulation overheads, MTU, keepalive).
  The planner (`raven.topology`) and the data plane (`raven.dataplane`) both read it from here,
  so `apply()` and `cleanup()` can never disagree about which objects are ours.
Pure: no I/O, importable by the planners.
"""

from __future__ import annotations

from dataclasses import dataclass

from raven import constants


@dataclass(frozen=True)
class OverlaySettings:
    """The cluster-wide names and numbers of the overlay; defaults are Raven's (raven.constants)."""

    vxlan_device: str = constants.VXLAN_DEVICE
    vxlan_vni: int = constants.VXLAN_VNI
    vxlan_port: int = constants.VXLAN_PORT
    vxlan_table: int = constants.VXLAN_TABLE
    wireguard_device: str = constants.WIREGUARD_DEVICE
    wireguard_port: int = constants.WIREGUARD_PORT
    wireguard_table: int = constants.WIREGUARD_TABLE
    rule_priority: int = constants.RULE_PRIORITY
    fwmark: int = constants.FWMARK
    nft_table: str = constants.NFT_TABLE
    vxlan_overhead: int = constants.VXLAN_OVERHEAD
    wireguard_overhead: int = constants.WIREGUARD_OVERHEAD
    underlay_mtu: int = constants.DEFAULT_UNDERLAY_MTU
    keepalive: int = constants.DEFAULT_KEEPALIVE_SECONDS

    @property
    def vxlan_mtu(self) -> int:
        return self.underlay_mtu - self.vxlan_overhead

    @property
    def tunnel_mtu(self) -> int:
        return self.underlay_mtu - self.wireguard_overhead

    @property
    def tables(self) -> tuple[int, ...]:
        """Every policy-routing table the overlay owns."""
        return (self.vxlan_table, self.wireguard_table)
