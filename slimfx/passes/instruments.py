"""Pass instruments: the only hooks around pass execution (after TVM's ``instrument.py``).

An instrument sees each pass before it runs and after it ran. The built-in ones:

- :class:`Timing`: wall time per pass, as a table;
- :class:`PrintIRAfter`: the IR text after all or selected passes, to a logger or a stream;
- :class:`VerifyAfterEach`: ``graph.verify()`` after every pass, naming the pass that broke it;
- :class:`DumpToDir`: the IR text after each pass into numbered files;
- :class:`PassReport`: per pass, the graph's constant bytes, its output error against the
  input graph on given data (SQNR, max abs error) and, with a target, its compiled latency.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from slimfx.errors import PassError, SlimfxError, VerifyError
from slimfx.ir.core import Graph

if TYPE_CHECKING:
    from slimfx.passes.base import Pass, PassResult
    from slimfx.passes.context import PassContext

__all__ = ["Instrument", "PassRecord", "Timing", "PrintIRAfter", "VerifyAfterEach", "DumpToDir",
           "PassReport", "PassReportRow"]

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


@dataclass(frozen=True)
class PassReportRow:
    """What :class:`PassReport` measured after one pass (row 0: the input graph).

    Attributes:
        index: 0 for the input graph, ``k + 1`` after pass ``#k``.
        pass_name: the pass with its options (``input`` for row 0).
        changed: whether the pass reported a change.
        nodes: node count of the graph.
        constant_bytes: bytes of its constants as stored (4-bit weights packed).
        sqnr: output SQNR in dB against the input graph on the data (``inf``: identical;
            nan: the graph could not run, see ``note``).
        max_abs_error: the largest absolute output difference (nan: could not run).
        latency_ms: median latency of the compiled graph (None: no target, or it did not
            compile, see ``note``).
        note: why a figure is missing, else empty.
    """

    index: int
    pass_name: str
    changed: bool
    nodes: int
    constant_bytes: int
    sqnr: float
    max_abs_error: float
    latency_ms: float | None = None
    note: str = ""


class PassReport(Instrument):
    """After each pass: graph size, output error against the input graph and, with a target,
    the compiled latency; :meth:`table` prints them as one table.

    The input graph of the run is the reference (for :func:`slimfx.quantize`, the float
    graph). After each pass the graph runs on ``data`` through the torch backend
    (:func:`slimfx.to_torch`; observers are pass-through, so a prepared graph computes the
    float function) and, over every output of every batch::

        SQNR = 10 * log10(sum(ref**2) / sum((ref - out)**2))   dB
        max abs error = max |ref - out|

    With ``target`` each graph is also compiled (:func:`slimfx.compile`) and timed
    (``Compiled.benchmark(repeat, number)``, median in ms, on this machine). A pass that
    reports no change reuses the figures of the row before it. A graph the torch backend or
    the compiler cannot take (e.g. uncalibrated observers) gets nan / no latency and the
    reason in ``note``; the run goes on. One run fills :attr:`rows` (a new run starts over).

    Args:
        data: batches as for :func:`slimfx.calibrate` (tensors, tuples, dicts, or
            ``(inputs, labels)``); None: the run's ``ctx.data`` (what ``slimfx.quantize``
            sets).
        target: a :func:`slimfx.compile` target runnable here (``"x86"``), or None.
        num_batches: use at most this many batches.
        repeat: timed measurements per graph (with ``target``).
        number: calls per measurement.

    Example::

        rep = PassReport(batches)
        g8 = slimfx.quantize(g, batches, ctx=PassContext([rep]))
        text = rep.table()  # one row per pass
    """

    def __init__(self, data: Iterable[Any] | None = None, target: str | None = None, *,
                 num_batches: int | None = None, repeat: int = 5, number: int = 5) -> None:
        if target is not None and not isinstance(target, str):
            raise PassError(f"PassReport: target must be a slimfx.compile target name such as "
                            f"'x86', got {type(target).__name__}")
        if repeat < 1 or number < 1:
            raise PassError(f"PassReport: repeat ({repeat}) and number ({number}) must be >= 1")
        self.data = data
        self.target = target
        self.num_batches = num_batches
        self.repeat, self.number = repeat, number
        self.rows: list[PassReportRow] = []
        self._depth = 0
        self._batches: list[tuple[Any, ...]] = []
        self._ref: list[list[Any]] = []

    # ------------------------------------------------------------ hooks
    def enter(self, graph: Graph, ctx: PassContext) -> None:
        self._depth += 1
        if self._depth > 1:  # a pass running a pipeline of its own under the same context
            return
        from slimfx.passes.quant.arguments import batch_args, check_data, check_num_batches

        data = self.data if self.data is not None else getattr(ctx, "data", None)
        if data is None:
            raise PassError("PassReport needs data: PassReport(batches), or a context whose "
                            "data is set (slimfx.quantize(graph, batches, ctx=...) sets it)")
        check_num_batches(self.num_batches, "PassReport")
        raw = list(check_data(data, "PassReport"))[:self.num_batches]
        if not raw:
            raise PassError("PassReport: the data has no batch; give it at least one")
        self._batches = [batch_args(graph, b, i) for i, b in enumerate(raw)]
        self._ref = self._outputs(graph)
        self.rows = []
        self._measure(0, "input", False, graph, None)

    def after_pass(self, record: PassRecord, ctx: PassContext) -> None:
        if self._depth == 1:
            prev = self.rows[-1] if self.rows and not record.result.changed else None
            self._measure(record.index + 1, str(record.pass_), record.result.changed,
                          record.result.graph, prev)

    def exit(self, graph: Graph, ctx: PassContext) -> None:
        self._depth -= 1

    # ------------------------------------------------------------ measuring
    def _outputs(self, graph: Graph) -> list[list[Any]]:
        import torch

        from slimfx.backends.torch import to_torch

        module = to_torch(graph, trainable=False)
        out = []
        with torch.no_grad():
            for args in self._batches:
                res = module(*args)
                res = list(res) if isinstance(res, tuple | list) else [res]
                out.append([r.detach().to(torch.float64) for r in res])
        return out

    def _error(self, graph: Graph) -> tuple[float, float]:
        from slimfx.passes.quant.report import sqnr

        signal = noise = worst = 0.0
        for ref, got in zip(self._ref, self._outputs(graph), strict=True):
            if len(ref) != len(got):
                raise PassError(f"graph @{graph.name} has {len(got)} outputs, the input graph "
                                f"{len(ref)}: no output error")
            for r, o in zip(ref, got, strict=True):
                if r.shape != o.shape:
                    raise PassError(f"an output of graph @{graph.name} has shape "
                                    f"{tuple(o.shape)}, the input graph's {tuple(r.shape)}")
                signal += float((r * r).sum())
                noise += float(((r - o) ** 2).sum())
                if r.numel():
                    worst = max(worst, float((r - o).abs().max()))
        return sqnr(signal, noise), worst

    def _measure(self, index: int, name: str, changed: bool, graph: Graph,
                 prev: PassReportRow | None) -> None:
        from slimfx.passes.quant.report import compiled_latency_ms, constant_bytes

        if prev is not None:  # unchanged graph: the same figures
            self.rows.append(PassReportRow(index, name, changed, len(graph), prev.constant_bytes,
                                           prev.sqnr, prev.max_abs_error, prev.latency_ms,
                                           prev.note))
            return
        notes = []
        try:
            db, worst = self._error(graph)
        except SlimfxError as e:
            db = worst = math.nan
            notes.append(f"not run: {str(e).splitlines()[0]}")
        latency = None
        if self.target is not None:
            try:
                latency = compiled_latency_ms(graph, self.target, repeat=self.repeat,
                                              number=self.number)
            except SlimfxError as e:
                notes.append(f"not compiled: {str(e).splitlines()[0]}")
        self.rows.append(PassReportRow(index, name, changed, len(graph), constant_bytes(graph),
                                       db, worst, latency, "; ".join(notes)))
        logger.debug("pass report: #%d %s: %d B, SQNR %.4g dB", index, name,
                     self.rows[-1].constant_bytes, db)

    # ------------------------------------------------------------ output
    def table(self) -> str:
        """A text table: #, pass, changed, nodes, bytes, SQNR dB, max abs error, and the
        latency in ms (with a target); notes under it."""
        width = max([len(r.pass_name) for r in self.rows] + [24])
        head = (f"{'#':>3}  {'pass':<{width}}  changed  {'nodes':>5}  {'bytes':>12}  "
                f"{'SQNR dB':>8}  {'max abs err':>11}")
        if self.target is not None:
            head += f"  {'latency ms':>10}"
        lines = [head]
        for r in self.rows:
            line = (f"{r.index:>3}  {r.pass_name:<{width}}  {str(r.changed):<7}  {r.nodes:>5}  "
                    f"{r.constant_bytes:>12,}  {r.sqnr:>8.2f}  {r.max_abs_error:>11.4g}")
            if self.target is not None:
                line += f"  {'-' if r.latency_ms is None else f'{r.latency_ms:.4g}':>10}"
            lines.append(line)
        lines += [f"  #{r.index}: {r.note}" for r in self.rows if r.note]
        return "\n".join(lines)
