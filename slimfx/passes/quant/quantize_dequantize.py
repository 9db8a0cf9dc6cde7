"""``quantize-dequantize``: calibrated observers -> quantize/dequantize pairs (the QDQ form).

Each ``observer`` becomes ``dequantize(quantize(x))`` with the parameters of its
range (``observers.qparams_from_range``); the ``quantize`` result carries them
in ``Value.qparams`` too. An observer of a constant (a weight) is folded: the
constant is quantized ahead of time into an int8 constant (per output channel
for weights) followed by a ``dequantize``; its range comes from the constant
itself, so weights need no calibration: min/max, or with ``method="mse"`` the
per-channel clipping that minimises the squared weight error (``mse_weight_range``).

Moving the ops of ``PASSTHROUGH_OPS`` across the dequantize is the next pass,
``hoist-passthrough`` (``hoist_passthrough.py``); :func:`to_qdq`, the helper, runs both.

The QDQ graph computes the simulated-quantization result in float.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slimfx.backends.torch.kernels import KERNELS
from slimfx.errors import QuantizationError
from slimfx.ir.core import Graph, Node
from slimfx.ir.types import QParams
from slimfx.passes.base import Pass, PassResult
from slimfx.passes.context import PassContext
from slimfx.passes.quant.hoist_passthrough import hoist_passthrough
from slimfx.passes.quant.observers import EPS, qparams_from_range
from slimfx.passes.registry import register_pass

__all__ = ["QuantizeDequantize", "to_qdq", "observer_qparams", "qparams_attrs", "attrs_qparams",
           "mse_weight_range", "replace_with_qdq", "hoist_passthrough", "observers_to_qdq"]


def qparams_attrs(qp: QParams) -> dict:
    """The ``quantize``/``dequantize`` attributes spelling ``qp``."""
    return dict(dtype=qp.dtype, scale=qp.scale, zero_point=qp.zero_point, axis=qp.axis,
                qmin=qp.qmin, qmax=qp.qmax)


def attrs_qparams(node: Node) -> QParams:
    """The QParams spelled by a ``quantize``/``dequantize`` node's attributes."""
    a = node.attrs
    return QParams(a["dtype"], a["scale"], a["zero_point"], a["axis"], a["qmin"], a["qmax"])


def observer_qparams(node: Node) -> QParams:
    """Quantization parameters of a calibrated observer (or of one watching a constant).

    Raises:
        QuantizationError: the observer has no statistics (not calibrated).
    """
    a = node.attrs
    x = node.inputs[0]
    if x.is_const:
        assert x.const is not None
        c = x.const.detach().to(torch.float32)
        if a["axis"] is None:
            lo, hi = [float(c.min())], [float(c.max())]
        else:
            flat = c.movedim(a["axis"], 0).reshape(c.shape[a["axis"]], -1)
            lo, hi = flat.amin(1).tolist(), flat.amax(1).tolist()
        if a["method"] == "mse":
            lo, hi = mse_weight_range(c, a["axis"], qmin=a["qmin"], qmax=a["qmax"],
                                      symmetric=a["symmetric"])
    elif a["min_val"] is None or a["max_val"] is None:
        raise QuantizationError(
            f"{node.describe()}: the observer has no statistics; run "
            "slimfx.calibrate(graph, data) before converting (or use slimfx.quantize)")
    else:
        lo, hi = list(a["min_val"]), list(a["max_val"])
    return qparams_from_range(lo, hi, dtype=a["dtype"], qmin=a["qmin"], qmax=a["qmax"],
                              symmetric=a["symmetric"], axis=a["axis"])


def mse_weight_range(w: torch.Tensor, axis: int | None, *, qmin: int, qmax: int,
                     symmetric: bool, steps: int = 100) -> tuple[list[float], list[float]]:
    """Per-channel (or per-tensor) clipping range of a constant minimising the squared
    rounding + clipping error: ``[a * lo, a * hi]`` for the best ``a`` of ``steps`` values in
    ``[0.2, 1]``, chosen per channel (``a = 1`` is the min/max range)."""
    flat = (w.reshape(1, -1) if axis is None
            else w.movedim(axis, 0).reshape(w.shape[axis], -1)).to(torch.float64)
    lo0 = flat.amin(1).clamp(max=0.0)
    hi0 = flat.amax(1).clamp(min=0.0)
    best_err = torch.full_like(lo0, float("inf"))
    best_a = torch.ones_like(lo0)
    for a in torch.linspace(1.0, 0.2, steps, dtype=torch.float64):
        lo, hi = lo0 * a, hi0 * a
        if symmetric:
            scale = (torch.maximum(-lo, hi) / ((qmax - qmin) / 2)).clamp(min=EPS)
            zp = torch.full_like(scale, float((qmin + qmax + 1) // 2))
        else:
            scale = ((hi - lo) / (qmax - qmin)).clamp(min=EPS)
            zp = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)
        q = torch.clamp(torch.round(flat / scale[:, None]) + zp[:, None], qmin, qmax)
        err = (((q - zp[:, None]) * scale[:, None] - flat) ** 2).sum(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_a = torch.where(better, a, best_a)
    return (lo0 * best_a).tolist(), (hi0 * best_a).tolist()


def to_qdq(graph: Graph) -> int:
    """``quantize-dequantize`` then ``hoist-passthrough`` in place; returns how many observers
    were rewritten."""
    count = observers_to_qdq(graph)
    hoist_passthrough(graph)
    return count


def observers_to_qdq(graph: Graph) -> int:
    """Rewrites every observer in place (see the module docstring); returns how many."""
    count = 0
    for node in list(graph.nodes):
        if node.op.name != "observer":
            continue
        replace_with_qdq(graph, node, observer_qparams(node))
        count += 1
    return count


def replace_with_qdq(graph: Graph, node: Node, qp: QParams) -> None:
    """Replaces ``node`` (an observer or a ``fake_quantize`` of its operand 0) in place by
    ``dequantize(quantize(x))`` with ``qp``; a constant ``x`` is quantized ahead of time.

    Constant operands left unused (the float weight, a fake_quantize's scale) are removed.
    """
    x, y = node.inputs[0], node.output
    operands = list(node.inputs)
    attrs = qparams_attrs(qp)
    with graph.inserting_before(node):
        if x.is_const:
            q_tensor = KERNELS["quantize"](x.const, **attrs)
            q = graph.add_constant(q_tensor, f"{x.name}.q", qparams=qp)
        else:
            q = graph.add("quantize", [x], attrs, name=f"{x.name}.q", source=node.source)
            q.qparams = qp
        d = graph.add("dequantize", [q], attrs, name=f"{x.name}.dq", source=node.source)
    graph.replace_all_uses_with(y, d)
    graph.erase(node)
    for v in operands:
        if v.is_const and not v.uses() and v not in graph.outputs and v.name in graph.constants:
            graph.remove_constant(v)


def check_no_observers_left(graph: Graph) -> None:
    """Raises if the graph is not in QDQ form yet."""
    left = graph.find("observer")
    if left:
        raise QuantizationError(f"{left[0].describe()}: observers left; run "
                                "'quantize-dequantize' first")


@register_pass
@dataclass(frozen=True)
class QuantizeDequantize(Pass):
    """Turns calibrated observers into quantize/dequantize pairs (simulated int8).

    Activation observers need statistics: run ``calibrate`` (or :func:`slimfx.calibrate`)
    first.
    """

    name = "quantize-dequantize"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult(graph, observers_to_qdq(graph) > 0)
