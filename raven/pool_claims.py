"""PURE: which candidate carries a pool's traffic when the pool decided on its own and a
gateway comes back: claims advertised in probe replies.

Rules kept:
- every node advertises, in the replies to the data-path probes it answers
  (raven.healthprobe), its claim: the gateway its pool uses as it applies it, the controller's
  choice it was made under (the head of `status.activeEndpoints`) and the claim's age (ages,
  not times: nodes compare claims without comparing clocks);
- the incumbent of a pool is, among candidates not seen DOWN with a self-claim (a candidate
  naming itself) made under the controller's current choice: the controller's choice itself,
  else the oldest claim (ties: the controller's order). Every observer (members, the other
  candidates, remote gateways) puts the incumbent first in the failover order
  (`raven.failover.choose`), so a gateway that comes back while its pool uses another becomes
  a standby: nothing moves while the incumbent answers, and the pool never has two nodes
  carrying its traffic;
- a claim made under another controller choice is void: when the controller's choice changes
  (it adopted the pool's decision, or elected another), every node follows the controller;
- a candidate without a standing claim (it just came back: its responder had to be started
  again, so what it claimed before is void) counts itself alive only once it has heard from
  every other candidate of its pool (a reply or a DOWN verdict): it never takes the role from
  its cached inputs before learning what its pool uses.
Known limit: two candidates that each saw the other DOWN (a blackholed gateway whose own probes
were dropped too) both claim; when it is repaired before the controller hears from the pool,
the controller's choice (the blackholed one) wins and the pool moves back once,
deterministically. Repaired after the controller adopted the pool's decision, nothing moves.
Pure: no I/O; ages are arguments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from raven.failover import Verdict


@dataclass(frozen=True)
class Claim:
    gateway: str  # the gateway the advertising node's pool uses, as that node applies it
    head: str  # the controller's choice it was made under
    age: float  # seconds since the node made it


def render(gateway: str, head: str, since: float) -> str:
    """The claim file the agent writes for its responder (`since`: unix seconds)."""
    return f"{gateway} {head or '-'} {since:.3f}\n"


def parse_advert(text: str | None) -> tuple[str, str, float] | None:
    """(gateway, head, age seconds) from a reply's advertisement, or None when malformed."""
    if not text:
        return None
    parts = text.split()
    if len(parts) != 3 or not parts[2].isdigit():
        return None
    return parts[0], parts[1], int(parts[2]) / 1000.0


def incumbent(order: Sequence[str], verdicts: Mapping[str, Verdict],
              claims: Mapping[str, Claim], me: str, mine: Claim | None) -> str | None:
    """The candidate of `order` (the controller's failover order) holding the oldest standing
    self-claim, or None. `claims`: what the candidates this node probes advertise; `mine`:
    this node's own claim (counted when it names this node)."""
    if not order:
        return None
    head = order[0]
    held: list[tuple[bool, float, int, str]] = []
    for i, node in enumerate(order):
        claim = mine if node == me else claims.get(node)
        if claim is None or claim.gateway != node or claim.head != head:
            continue
        if node != me and verdicts.get(node, Verdict.UNKNOWN) == Verdict.DOWN:
            continue
        held.append((node != head, -claim.age, i, node))
    return min(held)[3] if held else None


def first(order: Sequence[str], leader: str | None) -> list[str]:
    """`order` with `leader` moved to the front."""
    if leader is None or leader not in order:
        return list(order)
    return [leader, *(n for n in order if n != leader)]
