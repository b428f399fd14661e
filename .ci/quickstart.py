"""Print one of the README's quick-start commands: the first (demo) or second (tests) code block
under the ``## Quick start`` heading, exactly as a user would copy it."""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = {"demo": 0, "tests": 1}


def quickstart_blocks(text: str) -> list[str]:
    """The fenced code blocks of the quick-start section, in order."""
    section = re.search(r"^## Quick start\n(.*?)(?=^## )", text, flags=re.S | re.M)
    if section is None:
        raise SystemExit(f"{README}: no '## Quick start' section")
    return [block.strip() for block in re.findall(r"^```[^\n]*\n(.*?)^```", section.group(1), flags=re.S | re.M)]


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in BLOCKS:
        raise SystemExit(f"usage: {sys.argv[0]} {'|'.join(BLOCKS)}")
    blocks = quickstart_blocks(README.read_text())
    if len(blocks) < 2:
        raise SystemExit(f"{README}: the quick start needs two code blocks (demo, tests), found {len(blocks)}")
    print(blocks[BLOCKS[sys.argv[1]]])
