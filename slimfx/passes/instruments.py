"""Pass instruments: the only hooks around pass execution (after TVM's ``instrument.py``).

An instrument sees each pass before it runs and after it ran. The built-in ones:

- :class:`Timing`: wall time per pass, as a table;
- :class:`PrintIRAfter`: the IR text after all or selected passes, to a logger or a stream;
- :class:`VerifyAfterEach`: ``graph.verify()`` after every pass, naming the pass that broke it;
- :class:`DumpToDir`: the IR text after each pass into numbered files.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from slimfx.errors import PassError, VerifyError
from slimfx.ir.core import Graph

if TYPE_CHECKING:
    from slimfx.passes.base import Pass, PassResult
    from slimfx.passes.context import PassContext

__all__ = ["Instrument", "PassRecord", "Timing", "PrintIRAfter", "VerifyAfterEach", "DumpToDir"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassRecord:
    """One finished pass run.

    Attributes:
        index: position of the pass in the pipeline (0-based).
        pass_: the pass.
        result: what it returned.
        seconds: wall time of ``requires`` + ``run``, instruments excluded.
        nodes_before: node count before the pass.
        nodes_after: node count after the pass.
    """

    index: int
    pass_: Pass
    result: PassResult
    seconds: float
    nodes_before: int
    nodes_after: int


class Instrument:
    """Base class: override the hooks you need."""

    def enter(self, graph: Graph, ctx: PassContext) -> None:
        """Called once before the first pass of a pipeline run."""

    def before_pass(self, index: int, pass_: Pass, graph: Graph, ctx: PassContext) -> None:
        """Called before ``pass_`` runs on ``graph``."""

    def after_pass(self, record: PassRecord, ctx: PassContext) -> None:
        """Called after a pass returned."""

    def exit(self, graph: Graph, ctx: PassContext) -> None:
        """Called once after the last pass (also when a pass failed)."""


class Timing(Instrument):
    """Records wall time per pass; :meth:`table` formats it."""

    def __init__(self) -> None:
        self.records: list[PassRecord] = []

    def after_pass(self, record: PassRecord, ctx: PassContext) -> None:
        self.records.append(record)

    @property
    def total(self) -> float:
        return sum(r.seconds for r in self.records)

    def table(self) -> str:
        """A text table: pass, milliseconds, share, changed, nodes before -> after."""
        total = self.total or 1e-12
        rows = [f"{'#':>3}  {'pass':<28} {'ms':>9} {'share':>6}  changed  nodes"]
        for r in self.records:
            rows.append(f"{r.index:>3}  {str(r.pass_):<28} {r.seconds * 1e3:>9.2f} "
                        f"{r.seconds / total:>6.1%}  {str(r.result.changed):<7}  "
                        f"{r.nodes_before} -> {r.nodes_after}")
        rows.append(f"     {'total':<28} {self.total * 1e3:>9.2f}")
        return "\n".join(rows)


class PrintIRAfter(Instrument):
    """Prints the IR after all passes, or only after the named ones.

    Args:
        passes: pass names to print after; empty means every pass.
        stream: a text stream; without one, the IR goes to this module's logger at INFO.
        only_changed: skip passes that reported no change.
    """

    def __init__(self, passes: Iterable[str] = (), stream: IO[str] | None = None,
                 only_changed: bool = False) -> None:
        self.passes = frozenset(passes)
        self.stream = stream
        self.only_changed = only_changed

    def after_pass(self, record: PassRecord, ctx: PassContext) -> None:
        if self.passes and record.pass_.name not in self.passes:
            return
        if self.only_changed and not record.result.changed:
            return
        text = f"// IR after #{record.index} {record.pass_}\n{record.result.graph}"
        if self.stream is not None:
            self.stream.write(text)
        else:
            logger.info("%s", text)


class VerifyAfterEach(Instrument):
    """Runs ``graph.verify()`` after every pass; a failure names the pass that broke the IR."""

    def after_pass(self, record: PassRecord, ctx: PassContext) -> None:
        try:
            record.result.graph.verify()
        except VerifyError as e:
            raise PassError(
                f"pass {str(record.pass_)!r} (#{record.index}) left an invalid graph: {e}\n"
                "this is a bug in the pass; report it with the IR before the pass "
                "(PassContext([DumpToDir(path)]) writes it)") from e


class DumpToDir(Instrument):
    """Writes the IR before the first pass and after each pass to numbered files.

    Files: ``000-input.slimfx``, ``001-fold-bn.slimfx``, ...
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.files: list[Path] = []

    def _write(self, index: int, label: str, graph: Graph) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.\-]", "_", label)[:80]
        f = self.path / f"{index:03d}-{safe}.slimfx"
        f.write_text(str(graph))
        self.files.append(f)

    def enter(self, graph: Graph, ctx: PassContext) -> None:
        self._write(0, "input", graph)

    def after_pass(self, record: PassRecord, ctx: PassContext) -> None:
        self._write(record.index + 1, str(record.pass_), record.result.graph)
