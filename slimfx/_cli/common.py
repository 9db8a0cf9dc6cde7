"""Small helpers shared by the CLI commands: progress bars, quiet loggers, output paths."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slimfx.errors import SlimfxError

__all__ = ["show_progress", "steps", "captured_logs", "output_path", "positive_int",
           "non_negative_int"]


def show_progress(args: argparse.Namespace) -> bool:
    """Whether long steps draw progress bars: on a terminal (stderr), unless ``--quiet``.

    Not when stderr is a file or a pipe: logs stay free of bar redraws, and an error stays
    the one line on stderr.
    """
    if getattr(args, "quiet", False):
        return False
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


@contextlib.contextmanager
def steps(args: argparse.Namespace, desc: str, names: list[str]) -> Iterator[Any]:
    """A progress bar over named steps: ``bar.step("building")`` before each one.

    Yields an object with ``step(name)``; the bar closes when the block ends.
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=len(names), desc=desc, disable=not show_progress(args), leave=False,
               bar_format="{desc} [{elapsed}]")

    class _Steps:
        def step(self, name: str) -> None:
            k = names.index(name) + 1 if name in names else bar.n + 1
            bar.set_description_str(f"{desc} ({k}/{len(names)}): {name}")
            bar.update(k - 1 - bar.n)

    try:
        yield _Steps()
        bar.update(bar.total - bar.n)
    finally:
        bar.close()


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self.messages.append(text)
        except Exception:  # noqa: BLE001 - a record that cannot format is dropped
            pass


@contextlib.contextmanager
def captured_logs(*names: str) -> Iterator[list[str]]:
    """Keeps what the named loggers say (torch's noisy loaders) off the console.

    Yields the list their messages are collected into, for error messages.
    """
    handler = _Collect()
    saved = []
    for name in names:
        log = logging.getLogger(name)
        saved.append((log, log.propagate, list(log.handlers)))
        log.handlers = [handler]
        log.propagate = False
    try:
        yield handler.messages
    finally:
        for log, propagate, handlers in saved:
            log.handlers = handlers
            log.propagate = propagate


def output_path(path: str, suffixes: tuple[str, ...], what: str) -> Path:
    """``path`` as a Path, checked to end in one of ``suffixes`` and to be writable there.

    Raises:
        SlimfxError: another suffix, or a parent directory that does not exist.
    """
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise SlimfxError(f"{what} {path!r} must end in {' or '.join(suffixes)}")
    if not p.parent.is_dir():
        parent = next((a for a in (p.parent, *p.parent.parents) if a.exists()), None)
        if parent is not None and not parent.is_dir():
            raise SlimfxError(f"cannot write {path!r}: {str(parent)!r} is a file, not a "
                              "directory; choose another output path")
        raise SlimfxError(f"cannot write {path!r}: directory {str(p.parent)!r} does not exist")
    return p


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an int >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value
