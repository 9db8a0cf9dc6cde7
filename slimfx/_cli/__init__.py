"""The commands of the ``slimfx`` program that work on models and files.

``slimfx/cli.py`` is the argparse front; this package holds what the commands do:

- :mod:`.models`: ``MODEL`` arguments (``.pt2``, ``.safetensors`` graphs, ``pkg.mod:factory``);
- :mod:`.arrays`: ``.npy`` / ``.npz`` / ``.safetensors`` input and output arrays;
- :mod:`.common`: progress bars and small shared helpers;
- one module per group of commands: :mod:`.cmd_inspect`, :mod:`.cmd_compress` (quantize,
  prune, report), :mod:`.cmd_deploy` (compile, run), :mod:`.cmd_bench`;
- :mod:`.cmd_docs`: the command line of ``python -m slimfx._docs`` (the API pages);
- :mod:`.cmd_demo`: ``slimfx demo`` / ``python -m slimfx.demo``, the end-to-end demo.

Each command module has ``add_parsers(sub, common)``, which adds its subcommands and sets
``run`` (a function of the parsed arguments returning the exit status) on each. Nothing
heavy is imported until a command runs, so ``slimfx --help`` stays quick.
"""

from __future__ import annotations

import argparse

from slimfx._cli import cmd_bench, cmd_compress, cmd_deploy, cmd_inspect

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Adds every model/file command to ``sub``; ``common`` holds the shared options."""
    for module in (cmd_inspect, cmd_compress, cmd_deploy, cmd_bench):
        module.add_parsers(sub, common)
