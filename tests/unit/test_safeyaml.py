"""The project's one YAML loader: aliases, depth, NUL bytes and malformed text are clear errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raven.safeyaml import MAX_DEPTH, YamlError, load_yaml, load_yaml_all, load_yaml_documents

# Nine levels of ten-fold aliases: about 10**9 strings if it were expanded.
ALIAS_BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{chr(ord('b') + i)}: &{chr(ord('b') + i)} [{','.join(['*' + chr(ord('a') + i)] * 10)}]\n"
    for i in range(8))


def test_plain_documents_load_with_their_lines() -> None:
    text = "a: 1\n---\n# comment\nb: [1, 2]\n---\n"
    assert load_yaml_documents(text, source="f.yaml") == [(1, {"a": 1}), (4, {"b": [1, 2]})]
    assert load_yaml_all(text) == [{"a": 1}, {"b": [1, 2]}]
    assert load_yaml("") is None
    assert load_yaml(b"x: y") == {"x": "y"}


def test_an_alias_bomb_is_refused_before_it_expands() -> None:
    with pytest.raises(YamlError, match=r"bomb.yaml: line 2: YAML aliases \(\*a\) are not"):
        load_yaml(ALIAS_BOMB, source="bomb.yaml")


def test_anchors_without_aliases_are_fine() -> None:
    assert load_yaml("a: &x 1\nb: 2") == {"a": 1, "b": 2}


@pytest.mark.parametrize("text", ["[" * 50_000, "a:\n" + "".join(
    "  " * i + f"k{i}:\n" for i in range(1, MAX_DEPTH + 5)) + "  " * (MAX_DEPTH + 5) + "v"])
def test_excessive_nesting_is_a_clear_error_not_a_recursion_error(text: str) -> None:
    with pytest.raises(YamlError, match=f"deep.yaml: line .*nested more than {MAX_DEPTH}"):
        load_yaml(text, source="deep.yaml")


def test_nesting_up_to_the_bound_loads() -> None:
    depth = MAX_DEPTH - 1
    assert load_yaml("[" * depth + "]" * depth) is not None


def test_nul_byte_is_reported_with_line_and_offset() -> None:
    with pytest.raises(YamlError, match=r"nul.yaml: line 2: contains a NUL byte \(offset 8\)"):
        load_yaml("a: 1\nb: \x00", source="nul.yaml")


def test_not_utf8_is_reported() -> None:
    with pytest.raises(YamlError, match=r"bin\.yaml: not UTF-8 text"):
        load_yaml(b"a: \xff\xfe", source="bin.yaml")


def test_unclosed_bracket_points_at_the_line_that_opened_it() -> None:
    with pytest.raises(YamlError, match=r"f.yaml:3:2: malformed YAML: .*started at line 2"):
        load_yaml("a: 1\nb: [1, 2\nc: 3\n", source="f.yaml")
    with pytest.raises(YamlError, match=r"f.yaml:2:\d+: malformed YAML: .*the file ends at line"):
        load_yaml("a: 1\nb: [1, 2\n\n", source="f.yaml")


def test_several_documents_where_one_is_expected() -> None:
    with pytest.raises(YamlError, match="holds 2 YAML documents"):
        load_yaml("a: 1\n---\nb: 2\n")


def test_python_tags_are_never_constructed() -> None:
    with pytest.raises(YamlError, match="malformed YAML"):
        load_yaml("!!python/object/apply:os.system ['true']")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("[]{}:,-&*!|>'\"#\n\t x01\x00%@`?")), max_size=200))
def test_any_text_loads_or_is_a_yaml_error(text: str) -> None:
    try:
        load_yaml_all(text, source="fuzz.yaml")
    except YamlError as exc:
        assert str(exc).startswith("fuzz.yaml")
