"""Relative links of README.md and docs/ point at files that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_relative_links_resolve() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = []
    checked = 0
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL or an anchor of the same page
            checked += 1
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []
    assert checked >= 10  # README -> docs, tutorials -> each other, api index -> pages


SHELL_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)


def _shell_lines() -> list[tuple[str, str]]:
    """``(page, command)`` of every command line of the ```sh blocks, comments removed."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    lines = []
    for page in pages:
        for block in SHELL_BLOCK.findall(page.read_text()):
            for line in block.splitlines():
                command = line.split(" #", 1)[0].strip()
                if command and not command.startswith("#"):
                    lines.append((str(page.relative_to(ROOT)), command))
    return lines


def test_readme_starts_with_make_demo_and_make_test() -> None:
    first = SHELL_BLOCK.search((ROOT / "README.md").read_text())
    assert first is not None
    commands = [c.split()[:2] for c in first.group(1).splitlines()]
    assert commands[:2] == [["make", "demo"], ["make", "test"]]


def test_documented_commands_exist() -> None:
    """Every ``slimfx ...`` line parses with the real CLI, every ``make X`` is a target,
    every script a documented command runs exists."""
    import shlex

    from slimfx.cli import build_parser

    makefile = (ROOT / "Makefile").read_text()
    bad = []
    checked = {"slimfx": 0, "make": 0}
    for page, command in _shell_lines():
        words = shlex.split(command)
        if words[0] == "slimfx":
            checked["slimfx"] += 1
            try:
                build_parser().parse_args(words[1:])
            except SystemExit:  # the parser already printed why
                bad.append(f"{page}: {command}")
        elif words[0] == "make":
            checked["make"] += 1
            if not re.search(rf"^{re.escape(words[1])}:", makefile, re.M):
                bad.append(f"{page}: {command} (no such Makefile target)")
        for word in words:
            if word.endswith(".py") and "/" in word and not (ROOT / word).exists():
                bad.append(f"{page}: {command} ({word} does not exist)")
    assert bad == []
    assert checked["slimfx"] >= 7 and checked["make"] >= 5
