"""docs/architecture.md's module map names every module under raven/ (issue 10, deliverable 7).

A module counts as listed when the map names it in code spans (`...`) in one of these ways:
- its full path, `raven/pkg/mod.py` (`raven/mod.py` for a top-level module);
- inside a section whose heading names its package (`### Kernel: \\`raven/dataplane/\\``), its
  path relative to that package (`appliers/vxlan.py`, `drift.py`; a subpackage as `appliers/`).
A package's `__init__.py` is listed by the package's path (`raven/healthprobe/`). So a new
module fails this test until the map says where it lives and which rules it keeps.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
SPAN = re.compile(r"`([^`\n]+)`")
TOKEN = re.compile(r"[\w./]+")


def sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) for every `#`-heading of the document, the preamble under ''."""
    out: list[tuple[str, str]] = []
    heading, body = "", []
    for line in text.splitlines():
        if line.startswith("#"):
            out.append((heading, "\n".join(body)))
            heading, body = line, []
        else:
            body.append(line)
    out.append((heading, "\n".join(body)))
    return out


def names(text: str) -> set[str]:
    """Every path-like token inside a code span (`a.py`, `b.py` and `raven/x/` alike)."""
    return {token for span in SPAN.findall(text) for token in TOKEN.findall(span)}


def listed(text: str) -> set[str]:
    """The module paths (relative to the repository) the map names."""
    found: set[str] = set()
    for heading, body in sections(text):
        spans = names(heading + "\n" + body)
        found |= {n for n in spans if n.startswith("raven/")}
        for package in (n for n in names(heading) if n.startswith("raven/") and n.endswith("/")):
            found |= {package + n for n in spans if n.endswith((".py", "/")) and not
                      n.startswith("raven/")}
    return found


def modules() -> list[str]:
    return sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "raven").rglob("*.py"))


def missing(text: str, wanted: list[str]) -> list[str]:
    have = listed(text)
    out = []
    for rel in wanted:
        if rel.endswith("/__init__.py"):
            package = rel.removesuffix("__init__.py")
            if package != "raven/" and package not in have:
                out.append(package)
        elif rel not in have:
            out.append(rel)
    return out


def test_every_module_under_raven_is_in_the_module_map() -> None:
    absent = missing(DOC.read_text(), modules())
    assert absent == [], (
        f"docs/architecture.md's module map does not name {absent}; add each to the section of "
        "its package (its job and the rules it keeps)")


def test_the_map_check_can_fail() -> None:
    doc = ("# Map\n`raven/a.py` plain.\n### Kernel: `raven/dp/`\n`x.py`, `sub/y.py` and\n"
           "`sub/` itself\n### Other\n`z.py` is not in raven/dp/, nor `w/`.\n")
    assert missing(doc, ["raven/__init__.py", "raven/a.py", "raven/b.py", "raven/dp/__init__.py",
                         "raven/dp/x.py", "raven/dp/sub/__init__.py", "raven/dp/sub/y.py",
                         "raven/dp/z.py", "raven/dp/w/__init__.py", "raven/q/__init__.py"]
                   ) == ["raven/b.py", "raven/dp/z.py", "raven/dp/w/", "raven/q/"]
