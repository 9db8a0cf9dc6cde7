"""``slimfx.report``: how much each quantized layer loses, and how much smaller the model is.

For each node quantized by the static int8 flow, the float graph's output of the
node is compared with its simulated-int8 output (``dequantize(quantize(.))`` in
the QDQ graph, everything before it quantized too, so errors accumulate as
they will in the integer program):

- ``SQNR = 10 * log10(sum(ref**2) / sum((ref - sim)**2))`` in dB over all batches;
- the largest absolute error.

(the simulated output is the dequantized result of the node's output ``quantize``).

The last rows compare the graph outputs of the exact integer program with the
float ones, and the constant bytes of the float and int8 graphs as they are stored
(4-bit weights packed two per byte, ``slimfx/ir/int4.py``). Then every op that stays
float in the int8 program is listed with the reason, its quantized neighbours and its
dequantize/quantize cost (:mod:`~slimfx.passes.quant.report_islands`). With ``budget=``,
the QConfig is the one :func:`~slimfx.passes.quant.mixed_precision.mixed_precision`
chooses, and the layers it keeps float say so.

:func:`measure` computes all of it as a :class:`QuantReport` (with the graphs and the time
each step took); :func:`report` formats it as text, and with ``html=path`` also writes the
one-file HTML report of :mod:`slimfx.passes.quant.report_html`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from slimfx.backends.torch import KERNELS, to_torch
from slimfx.errors import QuantizationError
from slimfx.ir.core import Graph, Value
from slimfx.ir.int4 import stored_nbytes
from slimfx.ir.types import QParams
from slimfx.passes.context import PassContext
from slimfx.passes.instruments import Timing
from slimfx.passes.pipeline import Pipeline
from slimfx.passes.quant.api import _PREPARE_FLOAT, _nothing_selected
from slimfx.passes.quant.arguments import (
    batch_args,
    check_data,
    check_num_batches,
    expect_graph,
    no_data_error,
)
from slimfx.passes.quant.calibrate import calibrate
from slimfx.passes.quant.convert_int8 import convert_int8
from slimfx.passes.quant.insert_observers import insert_observers
from slimfx.passes.quant.qconfig import QConfig
from slimfx.passes.quant.quantize_dequantize import qparams_attrs, to_qdq
from slimfx.passes.quant.report_islands import FloatIsland, float_islands, format_islands

if TYPE_CHECKING:
    from slimfx.passes.quant.mixed_precision import Budget

__all__ = ["report", "measure", "QuantReport", "LayerError", "Step", "constant_bytes", "sqnr",
           "compiled_latency_ms"]


def constant_bytes(graph: Graph) -> int:
    """Bytes the graph's constants take in a graph file (4-bit weights packed)."""
    return sum(stored_nbytes(v) for v in graph.constants.values() if v.const is not None)


def compiled_latency_ms(graph: Graph, target: str, *, repeat: int = 5, number: int = 5) -> float:
    """Median latency in ms of ``graph`` compiled (untuned) for ``target``, measured here."""
    from slimfx.backends.tvm import compile as tvm_compile

    compiled = tvm_compile(graph, target, progress=False)
    return compiled.benchmark(repeat=repeat, number=number).median_ms


def sqnr(signal: float, noise: float) -> float:
    """``10 log10(signal / noise)`` in dB (inf when the noise is 0)."""
    if noise == 0:
        return math.inf
    return 10 * math.log10(max(signal, 1e-30) / noise)


def _probe(graph: Graph, values: list[Value]) -> torch.nn.Module:
    g = graph.clone()
    g.set_outputs([g.value(v.name) for v in values])
    return to_torch(g, trainable=False)


@dataclass(frozen=True)
class LayerError:
    """The error int8 adds at one node's output, everything before it quantized too.

    Attributes:
        name: the node (its first result's name in the prepared float graph).
        op: its op.
        sqnr: signal-to-quantization-noise ratio in dB (``inf``: no error).
        max_abs_error: the largest absolute difference from the float output.
    """

    name: str
    op: str
    sqnr: float
    max_abs_error: float


@dataclass(frozen=True)
class Step:
    """One step of the static int8 flow as :func:`measure` ran it.

    Attributes:
        name: the pass (with its options) or step (``calibrate``).
        seconds: wall time.
        nodes: node count of the graph after the step.
    """

    name: str
    seconds: float
    nodes: int


@dataclass(frozen=True)
class QuantReport:
    """What :func:`measure` found: per-layer errors, output error, sizes, and the graphs.

    Attributes:
        layers: one entry per quantized node, in graph order.
        output_sqnr: SQNR (dB) of the exact integer program's outputs against float.
        output_max_abs_error: their largest absolute difference.
        float_bytes: constant bytes of the (BN-folded) float graph.
        int8_bytes: constant bytes of the int8 graph.
        float_graph: the prepared float graph (BN folded, activations fused).
        int8_graph: the exact integer program.
        steps: the passes and steps run, with their times.
        batches: how many batches calibrated and measured.
        islands: the ops that stay float in the int8 program, with their reasons.
    """

    layers: tuple[LayerError, ...]
    output_sqnr: float
    output_max_abs_error: float
    float_bytes: int
    int8_bytes: int
    float_graph: Graph
    int8_graph: Graph
    steps: tuple[Step, ...]
    batches: int
    islands: tuple[FloatIsland, ...] = ()

    def text(self) -> str:
        """The text table :func:`report` returns."""
        width = max([len(r.name) for r in self.layers] + [24])
        lines = [f"{'layer':<{width}}  {'op':<20}  {'SQNR dB':>8}  {'max abs err':>12}",
                 "-" * (width + 48)]
        lines += [f"{r.name:<{width}}  {r.op:<20}  {r.sqnr:>8.2f}  {r.max_abs_error:>12.5g}"
                  for r in self.layers]
        lines.append("-" * (width + 48))
        lines.append(f"{'outputs (int8 program)':<{width}}  {'':<20}  "
                     f"{self.output_sqnr:>8.2f}  {self.output_max_abs_error:>12.5g}")
        fb, ib = self.float_bytes, self.int8_bytes
        lines.append(f"model size: float {fb:,} B, quantized {ib:,} B ({fb / max(ib, 1):.2f}x "
                     "smaller)")
        lines.append(format_islands(list(self.islands)))
        return "\n".join(lines)


def report(graph: Graph, data: Iterable[Any], qconfig: QConfig | None = None, *,
           num_batches: int | None = None, html: str | os.PathLike[str] | None = None,
           budget: Budget | None = None) -> str:
    """A table of per-layer SQNR / max abs error of simulated int8 vs float, and sizes.

    Args:
        graph: the float graph.
        data: batches, used both to calibrate and to measure.
        qconfig: as for :func:`slimfx.quantize`.
        num_batches: use at most this many batches.
        html: also write the one-file HTML report here (per-node and per-layer tables,
            the steps run, an SQNR plot and the graph picture; see
            :mod:`slimfx.passes.quant.report_html`).
        budget: choose the float layers with :func:`slimfx.passes.quant.mixed_precision`
            under this :class:`~slimfx.passes.quant.mixed_precision.Budget` first.

    Returns:
        The text table (the same whether or not ``html`` is given).

    Raises:
        QuantizationError: ``graph`` is not a float slimfx graph, or ``qconfig`` is not a
            QConfig.
        CalibrationError: no data, or batches that do not fit the graph inputs.
        SlimfxError: the HTML file cannot be written.
    """
    rep = measure(graph, data, qconfig, num_batches=num_batches, budget=budget)
    if html is not None:
        from slimfx.passes.quant.report_html import write_html

        write_html(rep, html)
    return rep.text()


def measure(graph: Graph, data: Iterable[Any], qconfig: QConfig | None = None, *,
            num_batches: int | None = None, budget: Budget | None = None) -> QuantReport:
    """Runs the static int8 flow on ``graph`` and measures it (see the module docstring).

    Arguments and errors are those of :func:`report`.
    """
    graph = expect_graph(graph, "slimfx.report", QuantizationError)
    data = check_data(data, "slimfx.report")
    check_num_batches(num_batches, "slimfx.report")
    if qconfig is not None and not isinstance(qconfig, QConfig):
        raise QuantizationError(f"slimfx.report: qconfig must be a QConfig (e.g. "
                                f"QConfig.preset('x86')), got {type(qconfig).__name__}")
    raw = list(data)[:num_batches]
    if not raw:
        raise no_data_error(graph, data, "slimfx.report")
    # checked once, up front: the same batches calibrate and then measure
    batches = [batch_args(graph, b, i) for i, b in enumerate(raw)]
    reasons: dict[str, str] = {}
    if budget is not None:
        from slimfx.passes.quant.mixed_precision import mixed_precision

        chosen = mixed_precision(graph, batches, budget, qconfig=qconfig)
        qconfig, reasons = chosen.qconfig, chosen.float_layers
    timing = Timing()
    prepared = graph.clone()
    Pipeline(_PREPARE_FLOAT).run(prepared, PassContext([timing]))
    steps = [Step(str(r.pass_), r.seconds, r.nodes_after) for r in timing.records]

    def step(name: str, fn: Any, g: Graph) -> Any:
        t0 = time.perf_counter()
        out = fn(g)
        steps.append(Step(name, time.perf_counter() - t0, len(g)))
        return out

    if step("insert-observers", lambda g: insert_observers(g, qconfig), prepared) == 0:
        raise _nothing_selected(prepared, "the qconfig")
    step("calibrate", lambda g: calibrate(g, batches, progress=False), prepared)
    float_g = prepared.clone()
    for n in float_g.find("observer"):  # the float reference of the same (folded) graph
        float_g.replace_all_uses_with(n.output, n.inputs[0])
        float_g.erase(n)
    qdq = prepared.clone()
    step("quantize-dequantize", to_qdq, qdq)
    int8 = qdq.clone()
    step("convert-int8", convert_int8, int8)
    layers = []
    for n in qdq.nodes:
        users = n.outputs[0].uses() if len(n.outputs) == 1 else []
        if len(users) == 1 and users[0].node.op.name == "quantize" and n.op.name != "quantize":
            qv = users[0].node.output
            if qv.qparams is not None:
                layers.append((n.name, n.op.name, qv))
    f_mod = _probe(float_g, [float_g.value(name) for name, _, _ in layers])
    q_mod = _probe(qdq, [v for _, _, v in layers])
    stats = [[0.0, 0.0, 0.0] for _ in layers]
    out_stats = [0.0, 0.0, 0.0]
    ref_mod, int_mod = to_torch(float_g, trainable=False), to_torch(int8, trainable=False)
    with torch.no_grad():
        for batch in batches:
            args = batch
            fs = _tuple(f_mod(*args))
            qs = [KERNELS["dequantize"](t, **qparams_attrs(_qp(v)))
                  for t, (_, _, v) in zip(_tuple(q_mod(*args)), layers, strict=True)]
            for st, f, s in zip(stats, fs, qs, strict=True):
                _accumulate(st, f, s)
            for f, s in zip(_tuple(ref_mod(*args)), _tuple(int_mod(*args)), strict=True):
                _accumulate(out_stats, f, s)
    rows = tuple(LayerError(name, op, sqnr(s, e), m)
                 for (name, op, _), (s, e, m) in zip(layers, stats, strict=True))
    return QuantReport(rows, sqnr(out_stats[0], out_stats[1]), out_stats[2],
                       constant_bytes(float_g), constant_bytes(int8), float_g, int8,
                       tuple(steps), len(batches),
                       tuple(float_islands(Pipeline("dce")(int8), qconfig, reasons)))


def _qp(v: Value) -> QParams:
    assert v.qparams is not None  # only values with qparams are listed as layers
    return v.qparams


def _tuple(x: Any) -> tuple[torch.Tensor, ...]:
    return x if isinstance(x, tuple) else (x,)


def _accumulate(st: list[float], f: torch.Tensor, q: torch.Tensor) -> None:
    f, q = f.to(torch.float64), q.to(torch.float64)
    st[0] += float((f ** 2).sum())
    st[1] += float(((f - q) ** 2).sum())
    st[2] = max(st[2], float((f - q).abs().max())) if f.numel() else st[2]
