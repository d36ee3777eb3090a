"""The command blocks of README.md and docs/*.md, read the way the tests run them.

A fenced block preceded by ``<!-- test: tests/test_x.py NAME -->`` is run as written by that
test file, which reads it with :func:`block` (tests/test_docs.py checks that the named file
does). Other blocks' commands must appear in a test or script (tests/test_docs.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
TAG = re.compile(r"<!-- (test|long): ?(.*?) -->\s*$")


@dataclass(frozen=True)
class Block:
    doc: str  # path relative to the repository root
    lang: str
    text: str
    tag: str | None  # "test" or "long" (see tests/test_docs.py), None when untagged
    tag_value: str  # for "test": "tests/test_x.py NAME"; for "long": the reason


def blocks(doc: str) -> list[Block]:
    text = (REPO / doc).read_text()
    found = []
    for match in FENCE.finditer(text):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        tag = TAG.match(before)
        found.append(Block(doc, match.group(1), match.group(2).rstrip("\n"),
                           tag.group(1) if tag else None, tag.group(2) if tag else ""))
    return found


def block(doc: str, name: str, test_file: str) -> str:
    """The text of the block of ``doc`` tagged ``<!-- test: {test_file} {name} -->``."""
    matches = [b for b in blocks(doc) if b.tag == "test" and b.tag_value == f"{test_file} {name}"]
    assert len(matches) == 1, f"{doc}: {len(matches)} blocks tagged '{test_file} {name}'"
    return matches[0].text


def commands(text: str) -> list[str]:
    """The command lines of a shell block: comments, blank lines and trailing comments dropped."""
    lines = []
    for raw in text.splitlines():
        line = re.sub(r"\s+#\s.*$", "", raw).strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines
