"""`raven validate FILE...`: check Gateway YAML (multi-document, or a List) and lab topology files.

Exit 0 when every document is valid; otherwise every problem is printed, one a line, each naming
the file, the document's line, the object and the field, and the exit code is 1. Malformed YAML
is reported with its line and column. Nothing here ever prints a traceback for bad input.
Checks: `raven.model.gateway_problems` for each Gateway, `raven.model.fleet_problems` across all
the Gateways given together, VTEP collisions inside each pool, and `raven.lab.topology`'s
validator for lab topology files (documents with `pools` and no `kind`).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raven.errors import ValidationError
from raven.safeyaml import YamlError, load_yaml_documents, read_yaml_file

GATEWAY_KIND = "Gateway"


# Far above any real set of manifests (kube-apiserver takes 3 MiB per object).
@dataclass(frozen=True)
class Document:
    source: str  # "file.yaml:12" = file and the line where the document starts
    data: Any


def load_documents(path: str) -> tuple[list[Document], list[str]]:
    """Every YAML document of `path` (items of a `kind: *List` are documents of their own).
    Returns (documents, problems); a malformed file gives its line and column."""
    try:
        raw = read_yaml_file(Path(path))  # bounded: `raven validate /dev/zero` must end
    except OSError as exc:
        return [], [f"{path}: cannot read it: {exc.strerror or exc}"]
    except YamlError as exc:
        return [], [str(exc)]
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return [], [f"{path}: not a text file (it is not UTF-8)"]
    docs: list[Document] = []
    try:
        loaded = load_yaml_documents(text, source=path)
    except YamlError as exc:
        return docs, [str(exc)]
    for line, data in loaded:
        kind = data.get("kind") if isinstance(data, Mapping) else None
        if isinstance(kind, str) and kind.endswith("List") and isinstance(data.get("items"), list):
            for i, item in enumerate(data["items"]):
                docs.append(Document(f"{path}:{line}: items[{i}]", item))
        else:
            docs.append(Document(f"{path}:{line}", data))
    return docs, []


def is_gateway(data: Any) -> bool:
    return isinstance(data, Mapping) and data.get("kind") == GATEWAY_KIND


def is_topology(data: Any) -> bool:
    return isinstance(data, Mapping) and "kind" not in data and "pools" in data


def validate_files(paths: list[str]) -> tuple[list[str], dict[str, int]]:
    """All problems of the given files, and counts of what was checked."""
    from raven.model import Gateway, fleet_problems, gateway_problems
    from raven.topology import vtep_collisions

    problems: list[str] = []
    counts = {"gateways": 0, "topologies": 0}
    gateways: list[Gateway] = []
    for path in paths:
        docs, load_problems = load_documents(path)
        problems.extend(load_problems)
        if not docs and not load_problems:
            problems.append(f"{path}: no documents; expected Gateway objects or a lab topology")
        for doc in docs:
            if is_gateway(doc.data):
                counts["gateways"] += 1
                found = gateway_problems(doc.data)
                problems.extend(f"{doc.source}: {p}" for p in found)
                try:
                    gw = Gateway.from_k8s(doc.data)
                except ValidationError:
                    continue  # structurally broken: already reported, nothing to compare
                gateways.append(gw)
                if not found:
                    problems.extend(
                        f"{doc.source}: Gateway {gw.name}: status.nodes: {c}"
                        for c in vtep_collisions((n.node_name, n.private_ip)
                                                 for n in gw.status.nodes if n.private_ip)
                    )
            elif is_topology(doc.data):
                counts["topologies"] += 1
                problems.extend(f"{doc.source}: {p}" for p in _topology_problems(doc))
            else:
                kind = doc.data.get("kind") if isinstance(doc.data, Mapping) else None
                what = f"kind {kind!r}" if kind else f"a {type(doc.data).__name__}"
                problems.append(f"{doc.source}: {what} is neither a Gateway "
                                "(apiVersion raven.openyurt.io/v1beta1, kind Gateway) nor a lab "
                                "topology (a map with 'pools'); remove it or fix its kind")
    names: dict[str, int] = {}
    for gw in gateways:
        names[gw.name] = names.get(gw.name, 0) + 1
    problems.extend(f"Gateway {n}: defined {c} times; Gateway names are unique"
                    for n, c in sorted(names.items()) if c > 1)
    problems.extend(fleet_problems(gateways))
    return problems, counts


def _topology_problems(doc: Document) -> list[str]:
    from raven.lab.topology import parse_topology

    try:
        parse_topology(doc.data, source="topology")
    except ValidationError as exc:
        return exc.problems
    return []


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "validate", help="check Gateway YAML and lab topology files",
        description="Check Gateway objects (multi-document YAML or a List) and lab topology "
                    "files. Exit 0 when valid, otherwise list every problem and exit 1.")
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    problems, counts = validate_files(args.files)
    if problems:
        for problem in problems:
            print(problem)
        print(f"{len(problems)} problem(s) found", flush=True)
        return 1
    print(f"valid: {counts['gateways']} Gateway(s), {counts['topologies']} lab topology file(s)")
    return 0
