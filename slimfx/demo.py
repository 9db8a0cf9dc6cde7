"""``python -m slimfx.demo`` (``make demo``): the end-to-end demo on a real, trained model.

The demo is a program that prints its steps; it lives in the command-line layer,
:mod:`slimfx._cli.cmd_demo`, and this module is its ``python -m`` entry point.
"""

from __future__ import annotations

from slimfx._cli.cmd_demo import DemoResult, main, run_demo

__all__ = ["DemoResult", "main", "run_demo"]

if __name__ == "__main__":
    raise SystemExit(main())
