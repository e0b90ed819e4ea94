"""The docs stay true: every flag docs/ci.md uses exists on `gradhealth check`."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from gradhealth.sdk.check import configure_parser

DOCS = Path(__file__).resolve().parents[2] / "docs"


def fenced_blocks(text: str) -> list[str]:
    """The contents of the ``` fenced code blocks of a Markdown text."""
    blocks: list[str] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def test_ci_doc_uses_only_real_flags() -> None:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    known = {option for action in parser._actions for option in action.option_strings}
    text = (DOCS / "ci.md").read_text()
    commands = [b for b in fenced_blocks(text) if "gradhealth check" in b]
    assert len(commands) >= 4
    used = {flag for block in commands for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", block)}
    used -= {"--index-url", "--out"}  # pip's, and the packaging script's
    assert used and used <= known, sorted(used - known)
