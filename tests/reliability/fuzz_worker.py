"""Crash isolation for the fuzzer: work runs in a worker process, a crash is an outcome.

A segfault or abort inside torch (a oneDNN kernel computing a reference) or inside TVM
(compiling or running a build) kills the process it happens in. The campaign therefore
runs each batch in a :class:`Worker`, a ``spawn``-ed child process fed through a pipe; a
child that dies is reported as a :class:`Crash` (the signal or exit status, and the last
*phase* the child announced) and a fresh child serves the next call.

The work announces what it is about to run with :func:`phase` (``"torch reference"``,
``"TVM compile"``, ``"TVM run"``, ...), so a crash names the side that crashed. ``phase``
is also the test-only injection point: a worker started with ``inject={id: (phase,
how)}`` kills itself (``how``: ``"abort"`` = ``os.abort()``, ``"segv"`` = SIGSEGV) when
a phase of that name starts for work that includes ``id``. Outside a worker ``phase`` does
nothing, so the same code runs in-process when isolation is off.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["Crash", "Worker", "phase", "SIDES"]

logger = logging.getLogger(__name__)

# Which side of the comparison each phase belongs to (the rest: the fuzzer's own code).
SIDES = {
    "torch reference": "reference (torch)",
    "TVM compile": "compiled (TVM compile)",
    "TVM run": "compiled (TVM run)",
}

_conn: Connection | None = None  # set in a worker process
_inject: dict[str, tuple[str, str]] = {}


@dataclass(frozen=True)
class Crash:
    """A worker process that died: how, and in which phase."""

    how: str  # "SIGSEGV", "SIGABRT", "exit 3", "timeout after 600 s", "Python exception ..."
    phase: str  # the last phase the worker announced ("" if none)

    @property
    def side(self) -> str:
        """``reference (torch)``, ``compiled (TVM ...)`` or the phase itself."""
        return SIDES.get(self.phase, self.phase or "worker")

    def describe(self) -> str:
        return f"crashed: {self.how} in the {self.side}"


def phase(name: str, ids: Iterable[str] = ()) -> None:
    """Announces that the work is about to run ``name`` for the items ``ids``."""
    if _conn is None:
        return
    ids = list(ids)
    _conn.send(("phase", name))
    for i in ids:
        hook = _inject.get(i)
        if hook is not None and hook[0] == name:
            if hook[1] == "abort":
                os.abort()
            os.kill(os.getpid(), signal.SIGSEGV)


def _serve(conn: Connection, inject: dict[str, tuple[str, str]]) -> None:
    global _conn
    _conn = conn
    _inject.update(inject)
    conn.send(("ready", None))
    while True:
        job = conn.recv()
        if job is None:
            return
        fn, args, kwargs = job
        try:
            result = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - a bug of the work is reported, not fatal
            conn.send(("error", f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                       if str(e) else type(e).__name__))
            continue
        conn.send(("done", result))


class Worker:
    """A child process that runs module-level functions; a crash ends it, not the caller.

    Args:
        inject: test-only crash injection, ``{item id: (phase name, "abort" | "segv")}``.
        timeout_s: a call that takes longer is a crash ("timeout"); the child is killed.
    """

    def __init__(self, inject: Mapping[str, tuple[str, str]] | None = None,
                 timeout_s: float = 3600.0) -> None:
        self.inject = dict(inject or {})
        self.timeout_s = timeout_s
        self._proc: Any = None
        self._conn: Connection | None = None

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, self.inject), daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent
        try:
            if parent.poll(self.timeout_s):
                parent.recv()  # "ready"
                return
        except (EOFError, OSError):
            pass
        self.close()
        raise RuntimeError("the fuzz worker process did not start (see its traceback above; "
                           "a script that starts workers needs `if __name__ == "
                           "'__main__':`)")

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` in the child: its result, or a :class:`Crash`."""
        if self._proc is None or not self._proc.is_alive():
            self.close()
            self._start()
        assert self._conn is not None
        last = ""
        self._conn.send((fn, args, kwargs))
        while True:
            try:
                if not self._conn.poll(self.timeout_s):
                    self._proc.kill()
                    self._proc.join()
                    crash = Crash(f"timeout after {self.timeout_s:g} s", last)
                    break
                kind, value = self._conn.recv()
            except (EOFError, OSError):
                self._proc.join()
                crash = Crash(_how(self._proc.exitcode), last)
                break
            if kind == "done":
                return value
            if kind == "error":
                crash = Crash(f"Python exception {value}", last)
                break
            last = value
        logger.warning("fuzz worker %s", crash.describe())
        self.close()
        return crash

    def close(self) -> None:
        """Stops the child (a new one starts on the next call)."""
        if self._conn is not None:
            try:
                if self._proc is not None and self._proc.is_alive():
                    self._conn.send(None)
            except OSError:
                pass
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.join(timeout=10)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
            self._proc = None

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _how(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit {exitcode}"
