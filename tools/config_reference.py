#!/usr/bin/env python
"""Print the configuration reference (every key r2ios_d2 adds, default, meaning) as Markdown.

    python tools/config_reference.py              # print the table
    python tools/config_reference.py --check README.md   # fail if README's table is stale

The text comes from the comments above each key in ``r2ios_d2/config.py`` and the defaults
from ``add_r2ios_config``, so the README table cannot drift from the code.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

CONFIG_PY = Path(__file__).resolve().parents[1] / "r2ios_d2" / "config.py"
BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"


def config_rows() -> list[tuple[str, str, str]]:
    """(key, default, description) for every key assigned in config.py, in file order."""
    from detectron2.config import get_cfg

    from r2ios_d2 import add_r2ios_config

    cfg = get_cfg()
    add_r2ios_config(cfg)
    rows: list[tuple[str, str, str]] = []
    comment: list[str] = []
    shared = ""  # a comment above several consecutive keys applies to each of them
    for line in CONFIG_PY.read_text().splitlines():
        s = line.strip()
        m = re.match(r"_C\.([A-Z0-9_.]+) = (?!CN\(\))", s)
        if s.startswith("# ") and not s.startswith("# ---"):
            comment.append(s[2:])
        elif m:
            value = cfg
            for part in m.group(1).split("."):
                value = value[part]
            shared = " ".join(comment) or shared
            rows.append((m.group(1), repr(value), shared))
            comment = []
        else:
            comment, shared = [], ""
    return rows


def markdown() -> str:
    lines = [BEGIN, "", "| key | default | meaning |", "|---|---|---|"]
    for key, default, desc in config_rows():
        lines.append(f"| `{key}` | `{default}` | {desc.replace('|', '/')} |")
    lines += ["", END]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", metavar="README", help="exit 1 if README's table differs")
    parser.add_argument("--write", metavar="README", help="replace README's table in place")
    args = parser.parse_args()
    table = markdown()
    target = args.check or args.write
    if not target:
        print(table)
        return 0
    text = Path(target).read_text()
    if BEGIN not in text or END not in text:
        print(f"{target} has no {BEGIN} ... {END} block", file=sys.stderr)
        return 1
    current = text[text.index(BEGIN) : text.index(END) + len(END)]
    if args.write:
        Path(target).write_text(text.replace(current, table))
        return 0
    if current != table:
        print(
            f"{target}: configuration reference is stale; run {sys.argv[0]} --write",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
