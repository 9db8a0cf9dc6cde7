"""TVM's native log lines (C++ ``LOG(WARNING)``) routed to Python logging at DEBUG.

TVM's C++ runtime and compiler write their log lines straight to the process's stderr
(file descriptor 2), bypassing Python: saving and loading an executable prints one
``[hh:mm:ss] .../executable.cc:276: Warning: Scope Saving:`` line per function, the Relax
``BlockBuilder`` and meta-schedule print warnings of their own. They are noise for a user
of slimfx, so :func:`native_log_to_logging` wraps the calls into TVM (``slimfx.compile``,
``Compiled.save``, ``slimfx.load``):

1. file descriptors 1 and 2 are pointed at a temporary file for the duration (C and C++
   streams are flushed first and last, so nothing is lost or reordered within a stream);
2. ``sys.stdout`` / ``sys.stderr``, when they are the process's own streams, are pointed
   at copies of the original descriptors meanwhile, so Python output (tqdm progress bars
   while tuning, warnings) still appears as it happens;
3. afterwards, each captured line in TVM's log format (``[hh:mm:ss] file:line: text``) is
   logged at DEBUG on ``slimfx.backends.tvm.native`` (``logging.basicConfig(level=DEBUG)``
   shows them); any other captured line is written back to the stream it was meant for.

The redirection is process wide, so it is taken by one thread at a time (a lock; nested
uses inside the same thread are free): output another thread writes to the raw descriptors
meanwhile is delayed until the end of the block, never dropped.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import TextIO

__all__ = ["native_log_to_logging", "LOGGER_NAME", "TVM_LINE"]

LOGGER_NAME = "slimfx.backends.tvm.native"
logger = logging.getLogger(LOGGER_NAME)

TVM_LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] \S+:\d+: ")
"""A line of TVM's native logging: ``[16:07:17] /path/executable.cc:276: Warning: ...``."""

_lock = threading.RLock()
_depth = threading.local()


def _fflush() -> None:
    """Flushes the C stdio buffers (printf output of native code) of the process."""
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no libc symbols on this platform: nothing to flush
        pass


def _real_fd(stream: TextIO | None) -> int | None:
    try:
        return stream.fileno() if stream is not None else None
    except (AttributeError, OSError, io.UnsupportedOperation):  # pytest capsys, StringIO
        return None


@contextlib.contextmanager
def native_log_to_logging() -> Iterator[None]:
    """Captures native output to fds 1 and 2 inside the block (see the module docstring)."""
    with _lock:
        if getattr(_depth, "n", 0):
            yield
            return
        _depth.n = 1
        try:
            with _captured() as lines:
                yield
        finally:
            _depth.n = 0
            _replay(lines)


@contextlib.contextmanager
def _captured() -> Iterator[list[tuple[int, str]]]:
    lines: list[tuple[int, str]] = []
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
    _fflush()
    files = {fd: tempfile.TemporaryFile() for fd in (1, 2)}
    saved = {fd: os.dup(fd) for fd in files}
    swapped: list[tuple[str, TextIO]] = []
    try:
        for fd, f in files.items():
            os.dup2(f.fileno(), fd)
        for name, fd in (("stdout", 1), ("stderr", 2)):
            stream = getattr(sys, name)
            if _real_fd(stream) == fd:  # Python writes keep going to the original stream
                copy = os.fdopen(os.dup(saved[fd]), "w", buffering=1,
                                 encoding=getattr(stream, "encoding", None) or "utf-8",
                                 errors="replace")
                swapped.append((name, stream))
                setattr(sys, name, copy)
        yield lines
    finally:
        for name, original in swapped:
            copy = getattr(sys, name)
            setattr(sys, name, original)
            with contextlib.suppress(Exception):
                copy.close()
        _fflush()
        for fd, f in files.items():
            os.dup2(saved[fd], fd)
            os.close(saved[fd])
            f.seek(0)
            text = f.read().decode("utf-8", errors="replace")
            f.close()
            lines += [(fd, line) for line in text.splitlines(keepends=True)]


def _replay(lines: list[tuple[int, str]]) -> None:
    in_tvm = {1: False, 2: False}  # inside a multi-line TVM message (indented continuation)
    for fd, line in lines:
        if TVM_LINE.match(line) or (in_tvm[fd] and line[:1] in (" ", "\t")):
            in_tvm[fd] = True
            logger.debug("%s", line.rstrip("\n"))
        else:  # not TVM's: give it back to the stream it was written to
            in_tvm[fd] = False
            os.write(fd, line.encode("utf-8", errors="replace"))
