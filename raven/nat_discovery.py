"""PURE. What public gateways see of NAT'd gateways, and what the controller makes of it.

No public STUN or IP-echo service is used: a public (dialable) gateway already receives the
handshakes of every NAT'd gateway, and WireGuard reports the source each came from: the NAT'd
gateway's mapped (public) address and port. Rules kept:
- an agent publishes what it observes on its OWN Node, annotation
  `raven.openyurt.io/observed-endpoints`: a JSON object {peer public key: "ip:port"}, sorted,
  only for peers it has no configured endpoint for (peers under NAT), and only while it is the
  active gateway of a dialable pool (a NAT'd observer would see paths through its own NAT);
- the controller copies, for each NAT'd active endpoint, the observations of its key into the
  endpoint's config: `mapped-endpoint` (the one seen by the observer first by name, so the value
  is stable) and `nat-mapping`: `independent` when two or more observers saw the same address
  and port, `dependent` when they saw different ones (symmetric NAT: a new port per
  destination), `unknown` with a single observer;
- malformed annotations are ignored entry by entry; nothing here raises on input.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping

from raven.timefmt import to_time

ANNOTATION_OBSERVED = "raven.openyurt.io/observed-endpoints"
# Published by a NAT'd active gateway: {remote Gateway: {"path": "direct" | "probing" |
# "relayed", "via"? (the relay that carries a relayed or probing pair's traffic), "rttMs"?,
# "loss"?, "handshake"? (unix s), "rxBytes"?, "txBytes"?}} (an older agent wrote "direct" |
# "probing" | "relayed:<via>" strings; both are read), written when a path changes; the
# controller turns it into the Gateway's status.paths.
ANNOTATION_PATHS = "raven.openyurt.io/paths"
PATH_FIGURES = {"rttMs": float, "loss": float, "rxBytes": int, "txBytes": int}
PATH_MODES = ("direct", "probing", "relayed")
CONFIG_MAPPED_ENDPOINT = "mapped-endpoint"
CONFIG_NAT_MAPPING = "nat-mapping"
INDEPENDENT, DEPENDENT, UNKNOWN = "independent", "dependent", "unknown"
MAX_ANNOTATION = 64 * 1024  # bytes of one observed-endpoints annotation we read


def valid_endpoint(text: object) -> str | None:
    """'ip:port' (IPv6 in brackets) in canonical form, or None."""
    if not isinstance(text, str):
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return f"[{addr}]:{int(port)}" if addr.version == 6 else f"{addr}:{int(port)}"


def encode(observed: Mapping[str, str]) -> str:
    return json.dumps(dict(sorted(observed.items())), separators=(",", ":"))


def decode(text: object) -> dict[str, str]:
    """{public key: endpoint} from an annotation value; bad entries dropped."""
    if not isinstance(text, str) or len(text) > MAX_ANNOTATION:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    out = {}
    for key, value in data.items():
        endpoint = valid_endpoint(value)
        if isinstance(key, str) and endpoint is not None:
            out[key] = endpoint
    return out


def observations(annotations: Iterable[tuple[str, Mapping[str, object]]]
                 ) -> dict[str, dict[str, str]]:
    """(observer node, its annotations)... -> {observed key: {observer: endpoint}}."""
    out: dict[str, dict[str, str]] = {}
    for observer, notes in annotations:
        for key, endpoint in decode(notes.get(ANNOTATION_OBSERVED)).items():
            out.setdefault(key, {})[observer] = endpoint
    return out


def mapping_kind(seen: Mapping[str, str]) -> str:
    """NAT mapping behaviour from what several observers saw of one socket."""
    if len(seen) < 2:
        return UNKNOWN
    return INDEPENDENT if len(set(seen.values())) == 1 else DEPENDENT


def endpoint_config(seen: Mapping[str, str]) -> dict[str, str]:
    """The config entries the controller writes for a NAT'd endpoint ({} when nobody saw it)."""
    if not seen:
        return {}
    first = min(seen)
    return {CONFIG_MAPPED_ENDPOINT: seen[first], CONFIG_NAT_MAPPING: mapping_kind(seen)}


def status_paths(text: object) -> list[dict[str, object]]:
    """The Gateway's `status.paths` from its active gateway's paths annotation (bad entries and
    bad figures dropped): [{"gateway", "path", "via"?, "rttMs"?, "loss"?, "lastHandshake"?,
    "rxBytes"?, "txBytes"?}] sorted by gateway."""
    if not isinstance(text, str) or len(text) > MAX_ANNOTATION:
        return []
    try:
        data = json.loads(text)
    except ValueError:
        return []
    out: list[dict[str, object]] = []
    for gateway, value in sorted(data.items()) if isinstance(data, dict) else ():
        if isinstance(value, str):  # an older agent: "mode" or "relayed:<via>"
            mode, _, via = value.partition(":")
            value = {"path": mode, "via": via}
        if not isinstance(gateway, str) or not isinstance(value, dict):
            continue
        mode, via = value.get("path"), value.get("via")
        if mode not in PATH_MODES:
            continue
        entry: dict[str, object] = {"gateway": gateway, "path": mode}
        if isinstance(via, str) and via:
            entry["via"] = via
        for name, kind in PATH_FIGURES.items():
            figure = value.get(name)
            if isinstance(figure, int | float) and not isinstance(figure, bool) and figure >= 0:
                entry[name] = kind(figure)
        handshake = value.get("handshake")
        if isinstance(handshake, int | float) and not isinstance(handshake, bool) \
                and 0 < handshake < 1e11:
            entry["lastHandshake"] = to_time(handshake)
        out.append(entry)
    return out
