"""``slimfx.report``: how much each quantized layer loses, and how much smaller the model is.

For each node quantized by the static int8 flow, the float graph's output of the
node is compared with its simulated-int8 output (``dequantize(quantize(.))`` in
the QDQ graph, everything before it quantized too, so errors accumulate as
they will in the integer program):

- ``SQNR = 10 * log10(sum(ref**2) / sum((ref - sim)**2))`` in dB over all batches;
- the largest absolute error.

(the simulated output is the dequantized result of the node's output ``quantize``).

The last rows compare the graph outputs of the exact integer program with the
float ones, and the constant bytes of the float and int8 graphs. Then every op that stays
float in the int8 program is listed with the reason, its quantized neighbours and its
dequantize/quantize cost (:mod:`~slimfx.passes.quant.report_islands`). With ``budget=``,
the QConfig is the one :func:`~slimfx.passes.quant.mixed_precision.mixed_precision`
chooses, and the layers it keeps float say so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from slimfx.backends.torch import KERNELS, to_torch
from slimfx.errors import QuantizationError
from slimfx.ir.core import Graph, Value
from slimfx.ir.types import QParams
from slimfx.passes.pipeline import Pipeline
from slimfx.passes.quant.api import prepare_ptq
from slimfx.passes.quant.arguments import (
    batch_args,
    check_data,
    check_num_batches,
    expect_graph,
    no_data_error,
)
from slimfx.passes.quant.calibrate import calibrate
from slimfx.passes.quant.convert_int8 import convert_int8
from slimfx.passes.quant.qconfig import QConfig
from slimfx.passes.quant.quantize_dequantize import qparams_attrs, to_qdq
from slimfx.passes.quant.report_islands import float_islands, format_islands

if TYPE_CHECKING:
    from slimfx.passes.quant.mixed_precision import Budget

__all__ = ["report", "constant_bytes", "sqnr"]


def constant_bytes(graph: Graph) -> int:
    """Bytes held by the graph's constants."""
    return sum(v.const.numel() * v.const.element_size() for v in graph.constants.values()
               if v.const is not None)


def sqnr(signal: float, noise: float) -> float:
    """``10 log10(signal / noise)`` in dB (inf when the noise is 0)."""
    if noise == 0:
        return math.inf
    return 10 * math.log10(max(signal, 1e-30) / noise)


def _probe(graph: Graph, values: list[Value]) -> torch.nn.Module:
    g = graph.clone()
    g.set_outputs([g.value(v.name) for v in values])
    return to_torch(g, trainable=False)


def report(graph: Graph, data: Iterable[Any], qconfig: QConfig | None = None, *,
           num_batches: int | None = None, budget: Budget | None = None) -> str:
    """A table of per-layer SQNR / max abs error of simulated int8 vs float, and sizes.

    Args:
        graph: the float graph.
        data: batches, used both to calibrate and to measure.
        qconfig: as for :func:`slimfx.quantize`.
        num_batches: use at most this many batches.
        budget: choose the float layers with :func:`slimfx.passes.quant.mixed_precision`
            under this :class:`~slimfx.passes.quant.mixed_precision.Budget` first.

    Raises:
        QuantizationError: ``graph`` is not a float slimfx graph, or ``qconfig`` is not a
            QConfig.
        CalibrationError: no data, or batches that do not fit the graph inputs.
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
    prepared = prepare_ptq(graph, qconfig)
    calibrate(prepared, batches, progress=False)
    float_g = prepared.clone()
    for n in float_g.find("observer"):  # the float reference of the same (folded) graph
        float_g.replace_all_uses_with(n.output, n.inputs[0])
        float_g.erase(n)
    qdq = prepared.clone()
    to_qdq(qdq)
    int8 = qdq.clone()
    convert_int8(int8)
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
    rows = [(name, op, sqnr(s, e), m) for (name, op, _), (s, e, m) in zip(layers, stats,
                                                                          strict=True)]
    width = max([len(r[0]) for r in rows] + [24])
    lines = [f"{'layer':<{width}}  {'op':<20}  {'SQNR dB':>8}  {'max abs err':>12}",
             "-" * (width + 48)]
    lines += [f"{n:<{width}}  {op:<20}  {q:>8.2f}  {m:>12.5g}" for n, op, q, m in rows]
    lines.append("-" * (width + 48))
    lines.append(f"{'outputs (int8 program)':<{width}}  {'':<20}  "
                 f"{sqnr(out_stats[0], out_stats[1]):>8.2f}  {out_stats[2]:>12.5g}")
    fb, ib = constant_bytes(float_g), constant_bytes(int8)
    lines.append(f"model size: float {fb:,} B, int8 {ib:,} B ({fb / max(ib, 1):.2f}x smaller)")
    islands = float_islands(Pipeline("dce")(int8), qconfig, reasons)
    lines.append(format_islands(islands))
    return "\n".join(lines)


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
