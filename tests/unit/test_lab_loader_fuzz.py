"""Fuzz the topology loader: any bytes or text give a Topology or a ValidationError whose
messages name the source, never a traceback (bounded hypothesis runs, no deadline)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from raven.errors import ValidationError
from raven.lab.topology import Topology, load_topology, load_topology_text

VALID = """name: fuzz
pools:
  - name: cloud
    nat: none
    nodes:
      - {name: cloud-1, podCIDR: 10.244.0.0/24, gatewayCandidate: true}
"""

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(),
                    st.text(max_size=20), st.sampled_from(
                        ["none", "cone", "symmetric", "10.244.0.0/24", "wireguard", "cloud"]))
keys = st.one_of(st.sampled_from(["name", "gateway", "nat", "nodes", "pods", "podCIDR",
                                  "gatewayCandidate", "underlayMTU", "tunnel", "pools",
                                  "description"]), st.text(max_size=8), st.integers())
documents = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=6)), max_leaves=25)
# YAML-ish fragments: structure characters, aliases, tags, NUL, tabs, documents, odd bytes.
fragments = st.lists(st.sampled_from(
    ["pools:", "\n", "  - ", "name: ", "nodes:", "[", "]", "{", "}", ": ", "&a ", "*a", "!!python/"
     "object:os.system ", "!!binary ", "---\n", "...\n", "\t", "\x00", "'", '"', "#", "? ",
     "podCIDR: 10.244.0.0/24", "|", ">", "%YAML 1.1\n", "\ufeff", "\udcff", "10", "-1"]),
    max_size=40).map("".join)


def check(data: str | bytes) -> None:
    try:
        topology = load_topology_text(data, source="fuzz.yaml")
    except ValidationError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        assert all("fuzz.yaml" in p or "pool" in p for p in exc.problems), exc.problems
    else:
        assert isinstance(topology, Topology) and topology.pools


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300), fragments))
@example(VALID)
@example("[" * 5000)
@example("a: &x [1]\nb: *x\n")
@example(b"\xff\xfe")
@example("\x1f")  # a control character: refused while the loader is made (was a traceback)
@example("pools: [\n")
@example(VALID.replace("cloud-1", "cloud-1\x00"))
def test_any_text_is_a_topology_or_a_clear_error(data: str | bytes) -> None:
    check(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_any_yaml_document_is_a_topology_or_a_clear_error(doc: object) -> None:
    try:
        text = yaml.safe_dump(doc)
    except (yaml.YAMLError, UnicodeEncodeError):
        return  # not representable as YAML: nothing to load
    check(text)


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=200) | fragments)
def test_files_go_through_the_same_loader(data: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.yaml"
        path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8", "replace"))
        try:
            load_topology(path)
        except ValidationError as exc:
            assert exc.problems and all(str(path) in p or "pool" in p for p in exc.problems)


def test_aliases_and_nul_are_refused_with_their_line() -> None:
    for text, needle in (("a: &x [1]\nb: *x\npools: []\n", "aliases"),
                         ("name: x\npools: [\x00]\n", "NUL"),
                         ("[" * 5000, "nested")):
        try:
            load_topology_text(text, source="t.yaml")
        except ValidationError as exc:
            assert needle in exc.problems[0] and "t.yaml" in exc.problems[0], exc.problems
        else:
            raise AssertionError(f"{text[:20]!r} was accepted")
