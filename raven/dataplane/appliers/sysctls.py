"""sysctls under /proc/sys/net: the plan's own, plus what our mechanisms need.

Rules kept: a key is written only when its value differs; no cache (a read is one small file in
the node's namespace); an absent per-device key is reported as a change (the device is about to
be created) and is an error only if it is still absent when written.
"""

from __future__ import annotations

from dataclasses import dataclass

from raven.dataplane import sysctl
from raven.dataplane.appliers import Pass, Scope
from raven.desired import NodeState

Sysctl = tuple[str, str]


def wanted(state: NodeState) -> tuple[Sysctl, ...]:
    """The plan's sysctls and the implicit ones: where the firewall marks traffic (a member),
    the reverse-path check on our devices must see the mark it puts on traffic from remote
    pools (see firewall.py). An active gateway's rule has no mark and needs none (a gateway
    upgraded from the marked shape keeps the harmless 1 until its devices are made again)."""
    implicit: tuple[Sysctl, ...] = ()
    if state.firewall is not None and state.firewall.marks:
        devices = [d.name for d in (state.vxlan, state.wireguard) if d is not None]
        implicit = tuple((f"net.ipv4.conf.{d}.src_valid_mark", "1") for d in devices)
    return (*state.sysctls, *implicit)


@dataclass(frozen=True)
class SysctlChanges:
    writes: tuple[Sysctl, ...] = ()
    lines: tuple[str, ...] = ()

    def empty(self) -> bool:
        return not self.writes


def diff(desired: tuple[Sysctl, ...], live: dict[str, str | None]) -> SysctlChanges:
    writes = tuple((k, v) for k, v in desired if live.get(k) != v)
    return SysctlChanges(writes, tuple(f"sysctl {k} {live.get(k)} -> {v}" for k, v in writes))


class SysctlApplier:
    invalidated_by: frozenset[str] = frozenset()

    def __init__(self, netns_name: str | None) -> None:
        self.netns = netns_name

    def forget(self) -> None:
        pass

    def read(self, keys: tuple[Sysctl, ...]) -> dict[str, str | None]:
        return {key: sysctl.read(self.netns, key) for key, _value in keys}

    def apply(self, changes: SysctlChanges) -> int:
        for key, value in changes.writes:
            sysctl.write(self.netns, key, value)
        return len(changes.writes)

    def remove(self, scope: Scope) -> list[str]:
        """Cleanup's part: nothing to write. The per-device keys go with our devices; the
        node-wide ones (forwarding) are not put back, since the previous value was never ours
        to record and the node may rely on them."""
        return []

    def step(self, state: NodeState, p: Pass) -> None:
        want = wanted(state)
        changes = diff(want, self.read(want))
        if p.take(changes, changes.lines):
            p.writes += self.apply(changes)
