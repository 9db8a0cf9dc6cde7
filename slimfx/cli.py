"""The ``slimfx`` command line (the argparse front; the model commands live in ``slimfx._cli``).

- ``slimfx pipelines [NAME]``: named pipelines and the explicit pass list each expands to;
- ``slimfx passes``: registered passes with their options and one line of doc;
- ``slimfx models``: the bundled model zoo;
- ``slimfx demo [--retrain] [--target x86] [--no-compile]``: the end-to-end demo;
- ``slimfx inspect MODEL [--dot FILE.svg]``: the IR, op counts, parameters, MACs, a picture;
- ``slimfx quantize MODEL --calib FILE [--pipeline P] [--qconfig x86|arm] -o G.safetensors``;
- ``slimfx prune MODEL --ratio 0.5 [--importance l2] -o G.safetensors``;
- ``slimfx compile MODEL_OR_GRAPH --target x86|arm|cuda|JSON [--tune N] -o M.slim``;
- ``slimfx run M.slim --input X.npy [...] -o Y.npy [...]``;
- ``slimfx bench M.slim [--compare torch,ort --model MODEL]``: a latency table;
- ``slimfx report MODEL --calib FILE``: per-layer int8 error table.

MODEL is a ``torch.export`` program (``.pt2``), a slimfx graph (``.safetensors``) or a
Python entry point ``package.module:factory`` returning ``(model, example_inputs)``; array
files are ``.npy`` / ``.npz`` / ``.safetensors`` (see :mod:`slimfx._cli`). Long steps show
progress bars on stderr; ``-q`` turns them off.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from slimfx.errors import SlimfxError

__all__ = ["build_parser", "main"]


def _pipelines(name: str | None) -> int:
    from slimfx.passes import Pipeline, known_pipelines

    named = known_pipelines()
    if name is not None and name not in named:
        # any pipeline string is accepted: `slimfx pipelines "fold-bn,cleanup"`
        print(Pipeline(name).describe())
        return 0
    for n, p in named.items():
        if name is not None and n != name:
            continue
        print(f"{n}: {p.doc}" if p.doc else n)
        print(f"  = {p.text}")
        for line in Pipeline(p.text).describe().splitlines()[1:]:
            if not line.startswith("        "):  # keep the pass lines, drop their docs
                print("  " + line)
        print()
    return 0


def _passes() -> int:
    from slimfx.passes import Pass, known_passes

    by_class: dict[type[Pass], list[str]] = {}
    for name, cls in known_passes().items():
        by_class.setdefault(cls, []).append(name)
    for cls, names in sorted(by_class.items(), key=lambda kv: kv[0].name):
        aliases = [n for n in names if n != cls.name]
        head = cls.name + (f" (alias: {', '.join(aliases)})" if aliases else "")
        print(f"{head}  [{cls.__module__}.{cls.__qualname__}]")
        if cls.summary():
            print(f"    {cls.summary()}")
        for spec in cls.option_specs():
            print(f"    {spec.name} = {spec.default!r}")
    return 0


def _models() -> int:
    from slimfx.models.zoo import ZOO

    for name, entry in ZOO.items():
        print(f"{name:<14} {entry.doc}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage in one line (``slimfx: error: ...``), status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _report(e: SlimfxError, verbose: bool) -> int:
    """Prints ``e`` as one line on stderr (the whole traceback with ``-v``); returns 2."""
    if verbose:
        traceback.print_exception(e)
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    first = lines[0] if lines else type(e).__name__
    more = " (run with -v for details)" if len(lines) > 1 and not verbose else ""
    print(f"slimfx: error: {first}{more}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    """The ``slimfx`` argument parser (every subcommand), without running anything."""
    from slimfx import __version__
    from slimfx._cli import add_parsers

    parser = _Parser(prog="slimfx", description="slimfx: compress and compile "
                     "PyTorch models through one IR")
    parser.add_argument("--version", action="version", version=f"slimfx {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level; "
                        "errors show their traceback")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    # the same options after the command name (`slimfx quantize ... -q`); SUPPRESS keeps a
    # subcommand from resetting what was given before it
    common = _Parser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log at INFO level; errors show their traceback")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("pipelines", help="named pipelines and their expansion")
    p.add_argument("name", nargs="?", help="one pipeline name, or any pipeline string")
    sub.add_parser("passes", help="registered passes and their options")
    sub.add_parser("models", help="the bundled model zoo")
    d = sub.add_parser("demo", help="train/trace/optimize/quantize/compile the digits CNN")
    d.add_argument("--retrain", action="store_true", help="ignore cached weights")
    d.add_argument("--target", default="x86", help="TVM target (default x86)")
    d.add_argument("--no-compile", action="store_true", help="stop after int8")
    d.add_argument("--threads", type=int, default=1, help="CPU threads (0 = library defaults)")
    add_parsers(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``slimfx`` script; returns the exit status.

    Bad input (unknown pipeline or pass names, malformed pipeline strings, bad
    arguments, any :class:`~slimfx.errors.SlimfxError`) prints one line to stderr
    and returns 2; ``-v`` prints the traceback too.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or bad usage already reported in one line
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "pipelines":
            return _pipelines(args.name)
        if args.command == "passes":
            return _passes()
        if args.command == "models":
            return _models()
        run = getattr(args, "run", None)
        if run is not None:
            return int(run(args))
        from slimfx._cli.cmd_demo import main as demo_main

        return demo_main([*(["--retrain"] if args.retrain else []), "--target", args.target,
                          *(["--no-compile"] if args.no_compile else []),
                          "--threads", str(args.threads)])
    except SlimfxError as e:
        return _report(e, args.verbose)
    except BrokenPipeError:  # `slimfx inspect model.pt2 | head`: the reader went away
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
