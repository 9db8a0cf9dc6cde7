"""``python -m slimfx._docs``: write the API reference pages, or ``--check`` them.

The pages are built by :mod:`slimfx._docs`; this is its command line (``make docs``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from slimfx import _docs

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Writes the pages, or with ``--check`` exits 1 (naming them) when some are out of date."""
    ap = argparse.ArgumentParser(prog="python -m slimfx._docs",
                                 description=(_docs.__doc__ or "").split("\n")[0])
    ap.add_argument("--out", type=Path, default=_docs.DEFAULT_OUT, help="directory of the "
                    "pages (default: docs/api of the repository)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page is "
                    "out of date")
    args = ap.parse_args(argv)
    if args.check:
        stale = _docs.stale_pages(args.out)
        if stale:
            print(f"out of date in {args.out}: {', '.join(stale)}; run python -m slimfx._docs",
                  file=sys.stderr)
            return 1
        return 0
    print(f"wrote {_docs.write_pages(args.out)} pages to {args.out}")
    return 0
