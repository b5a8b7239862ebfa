"""The agent's failover without the API: its data-path prober, the Gateways as the probes see
them, and this node's claim.

Rules kept:
- the decisions are pure (`raven.failover.effective_gateways`, `raven.pool_claims`); this
  module owns the prober thread, the probe responder process and the claim file;
- the responder is its own process, left running like wireguard-go: a restart of the agent
  must not silence the probes other nodes send (they would fail over). When it survived, so
  does our claim; a new responder voids it;
- a node back after being down (no standing claim of its own) counts itself alive only once
  every other candidate of its pool was heard from (raven.pool_claims);
- the claim (gateway we use, the controller's choice, since when in unix seconds) is written
  whole and renamed, for the responder to advertise; each change of the decision is logged once.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from raven import failover, pool_claims
from raven.desired import NodeState
from raven.errors import DataplaneError
from raven.model import Gateway
from raven.settings import AgentSettings
from raven.topology import vtep_for

if TYPE_CHECKING:
    from raven.healthprobe.prober import Prober

log = logging.getLogger(__name__)

Claim = tuple[str, str, float]  # (gateway we use, controller's choice, since unix seconds)


def read_claim(path: Path) -> Claim | None:
    """The claim a previous agent wrote (pool_claims.render), or None."""
    try:
        gateway, head, since = path.read_text().split()
        return gateway, "" if head == "-" else head, float(since)
    except (OSError, ValueError):
        return None


class ProbeFailover:
    def __init__(self, settings: AgentSettings, prober: Prober,
                 claim: Claim | None = None) -> None:
        self.settings = settings
        self.prober = prober
        self.claim = claim
        self.heads: dict[str, str] = {}  # the controller's choice per pool, as last read
        self.switches: tuple[str, ...] = ()  # pools whose active gateway this node replaced
        # {remote pool: node} reached over a punched direct path (the path manager sets it):
        # probed over the path, and their verdicts feed the path manager only (`direct_down`),
        # never the choice of the pool's gateway: a pool reached through a relay is the
        # relay's concern, and a direct path that broke (a NAT rebound) is no dead gateway.
        self.direct: dict[str, str] = {}
        self._direct_only: frozenset[tuple[str, str]] = frozenset()
        self._last: tuple[list[Gateway], NodeState] | None = None
        self.wake_on_change: list[threading.Event] = []  # also set when a verdict changes
        self._responder_lock = threading.Lock()

    @classmethod
    def start(cls, settings: AgentSettings, on_change: Callable[[], None]) -> ProbeFailover:
        """Start (or keep) the responder and start the prober; `on_change` is called when a
        probe target becomes or stops being DOWN."""
        from raven.healthprobe import responder
        from raven.healthprobe.prober import Prober

        s = settings
        claim = None
        try:
            if responder.ensure(s.state_dir, s.probe.port, s.netns, forget_claim=True) is None:
                claim = read_claim(s.state_dir / responder.ADVERT_FILE)
        except OSError as exc:
            log.warning("probe responder not started: %s; other nodes cannot probe this one",
                        exc)
        wake: list[threading.Event] = []  # the path manager's (set_direct): it looks at once

        def changed() -> None:
            on_change()
            for event in wake:
                event.set()

        prober = Prober(s.probe, changed, s.netns)
        prober.start()
        out = cls(settings, prober, claim)
        out.wake_on_change = wake
        return out

    def ensure_responder(self) -> None:
        """A responder that died is started again."""
        from raven.healthprobe import responder

        s = self.settings
        try:
            responder.ensure(s.state_dir, s.probe.port, s.netns)
        except OSError as exc:
            log.warning("probe responder not started: %s", exc)
        if self._last is not None and self._last[1].tunnel is not None:
            self._tunnel_responder(s.tunnel_netns)

    def effective(self, gateways: list[Gateway], wall: float) -> list[Gateway]:
        """The Gateways as this node's probes see them (raven.failover), logging each change
        of the decision. `wall` (unix seconds) ages our claim."""
        me = self.settings.node
        self.heads = {g.name: next(iter(g.status.tunnel_names), "") for g in gateways}
        mine_pool = next((g.name for g in gateways
                          if me in {n.node_name for n in g.status.nodes}), None)
        claim = self.claim
        mine = None if claim is None else pool_claims.Claim(
            claim[0], claim[1], max(0.0, wall - claim[2]))
        heard = self.prober.heard()
        others = [(t.pool, t.node) for t in self._targets(gateways) if t.pool == mine_pool]
        self_alive = (claim is not None and claim[0] == me) or all(
            heard.get(key, False) for key in others)
        skip = self._direct_only
        verdicts = {k: v for k, v in self.prober.verdicts().items() if k not in skip}
        claims = {k: v for k, v in self.prober.claims().items() if k not in skip}
        effective, switches = failover.effective_gateways(
            gateways, verdicts, me, claims, mine, self_alive)
        described = tuple(str(s) for s in switches)
        if described != self.switches:
            for text in described:
                log.warning("failover without the API: %s", text)
            if not described:
                log.info("failover: every pool follows the controller's choice again")
            self.switches = described
        return effective

    def _targets(self, gateways: list[Gateway]) -> tuple[failover.Target, ...]:
        o = self.settings.overlay
        return failover.probe_targets(gateways, self.settings.node, lambda ip: vtep_for(ip)[0],
                                      o.vxlan_device, o.wireguard_device, self.direct)

    def retarget(self, gateways: list[Gateway], state: NodeState) -> None:
        """Probe what the plan just applied reaches, from its VTEP address."""
        self._last = (gateways, state)
        devices = state.devices()  # a tunnel namespace's part: the probes leave from there
        source = devices.vxlan.vtep_ip if devices.vxlan is not None else None
        targets = self._targets(gateways) if source else ()
        o = self.settings.overlay
        plain = set(failover.probe_targets(gateways, self.settings.node,
                                           lambda ip: vtep_for(ip)[0], o.vxlan_device,
                                           o.wireguard_device)) if self.direct else set(targets)
        self._direct_only = frozenset((t.pool, t.node) for t in targets if t not in plain)
        tunnel = self.settings.tunnel_netns if state.tunnel is not None else None
        self._tunnel_responder(tunnel)
        self.prober.set_targets(targets, source, tunnel or self.settings.netns)

    def _tunnel_responder(self, tunnel: str | None) -> None:
        """A responder in the tunnel namespace while the plan has one (the probes to our VTEP
        arrive there), none otherwise."""
        from raven.healthprobe import responder

        s = self.settings
        try:
            with self._responder_lock:  # retarget runs on the main and the path threads
                if tunnel is not None:
                    responder.ensure(s.state_dir, s.probe.port, tunnel,
                                     pid_file=responder.TUNNEL_PID_FILE)
                elif (s.state_dir / responder.TUNNEL_PID_FILE).exists():
                    responder.stop(s.state_dir, s.probe.port, responder.TUNNEL_PID_FILE)
        except (OSError, DataplaneError) as exc:
            log.warning("probe responder in the tunnel namespace: %s", exc)

    def set_direct(self, direct: dict[str, str], wake: threading.Event | None = None) -> None:
        """The remote gateways we now reach over punched direct paths ({pool: node}); probed
        from now on (a path that is no longer direct is no longer probed, and its verdict is
        forgotten: the next direct path starts UNKNOWN). `wake` is set whenever a verdict
        changes (the path manager then looks at once, not at its next poll)."""
        if wake is not None and wake not in self.wake_on_change:
            self.wake_on_change.append(wake)
        if direct == self.direct:
            return
        self.direct = dict(direct)
        if self._last is not None:
            self.retarget(*self._last)

    def direct_down(self) -> set[str]:
        """The remote pools whose direct-path gateway our probes see DOWN, after it answered
        over this path: one that never did (an agent of a version that does not allow our
        probe address on its direct peer, during an upgrade) has only its silence timeout."""
        answered = {(r["pool"], r["node"]) for r in self.prober.report()
                    if r["verdict"] == str(failover.Verdict.DOWN) and r["replies"]}
        return {pool for pool, node in self.direct.items()
                if (pool, node) in self._direct_only and (pool, node) in answered}

    def note(self, chosen: str | None, pool: str | None, wall: float) -> None:
        """The gateway our pool uses now: a new claim when it or the controller's choice
        changed."""
        head = self.heads.get(pool or "", "")
        if chosen and (self.claim is None or self.claim[:2] != (chosen, head)):
            self.claim = (chosen, head, wall)
            self._write_claim()

    def _write_claim(self) -> None:
        from raven.healthprobe import responder

        if self.claim is None:
            return
        path = self.settings.state_dir / responder.ADVERT_FILE
        try:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(pool_claims.render(*self.claim))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc)

    def down(self, pool: str) -> frozenset[str]:
        """The candidates of `pool` our probes see DOWN now (our vote on its active set)."""
        return frozenset(n for (p, n), v in self.prober.verdicts().items()
                         if p == pool and v == failover.Verdict.DOWN)

    def report(self) -> list[dict[str, object]]:
        return self.prober.report()

    def stop(self) -> None:
        self.prober.stop()
