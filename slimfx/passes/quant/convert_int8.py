"""``qdq-to-int8``: QDQ form -> the exact integer program (DESIGN.md §4).

The ``convert-int8`` pipeline is ``quantize-dequantize,hoist-passthrough,qdq-to-int8``:
calibrated observers become QDQ pairs, value-moving ops move onto int8, then this pass
rewrites the integer-capable ops. It requires the first two to have run (no observer
left, no pass-through op still fed by a per-tensor dequantize) and says so otherwise.

A node of ``INTEGER_OPS`` whose float operands all come from ``dequantize`` and
whose only user is a per-tensor ``quantize`` becomes integer ops (``s`` scales,
``z`` zero points; multipliers are fixed point, ``fixed_point.py``):

- conv1d/conv2d/linear: ``acc = q{conv,linear}(x_q, w_q, bias_q)`` (int32) with
  ``bias_q[c] = round(bias[c] / (s_x * s_w[c]))`` (int32, weights symmetric so
  ``z_w = 0``), then ``requantize`` per output channel with ``M[c] = s_x *
  s_w[c] / s_out``. A fused activation (``act_min``/``act_max``) only narrows the
  clamp: ``lo = max(qmin, z_out + ceil(act_min / s_out))``, ``hi = min(qmax,
  z_out + floor(act_max / s_out))``, i.e. ReLU clamps at the zero point;
- matmul: ``qmatmul`` (int32) then ``requantize`` with ``M = s_a * s_b / s_out``;
- add: ``qadd`` with ``M_a = s_a / s_out``, ``M_b = s_b / s_out`` sharing one shift;
- mul: ``qmul`` with ``M = s_a * s_b / s_out``;
- cat: ``qcat`` with ``M_i = s_i / s_out``;
- avg_pool2d (no ceil mode, no divisor override, padding only if it is
  counted) and adaptive_avg_pool2d with output sizes dividing the input:
  ``qavg_pool2d``, ``M = s_in / (s_out * kh * kw)``.

Anything else stays float between its dequantize/quantize nodes (a float island:
normalizations such as ``layer_norm``, ``group_norm`` and ``instance_norm``,
softmax, ...).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from slimfx.errors import QuantizationError
from slimfx.ir.core import Graph, Node, Value
from slimfx.ir.types import QParams
from slimfx.passes.base import Pass, PassResult
from slimfx.passes.context import PassContext
from slimfx.passes.quant.fixed_point import quantize_multiplier, quantize_multipliers_shared
from slimfx.passes.quant.hoist_passthrough import hoistable
from slimfx.passes.quant.qconfig import INTEGER_OPS
from slimfx.passes.quant.quantize_dequantize import attrs_qparams
from slimfx.passes.registry import register_pass

__all__ = ["QdqToInt8", "convert_int8", "check_qdq_form"]

logger = logging.getLogger(__name__)
_I32 = (-(2**31), 2**31 - 1)


@dataclass
class _Match:
    node: Node
    ins: list[tuple[Value, QParams]]  # (int8 value, its qparams) per float operand
    out_q: Node  # the quantize node consuming the result
    out: QParams


def _match(node: Node, graph: Graph) -> _Match | str:
    """The integer operands of ``node``, or the reason it stays float."""
    if len(node.outputs) != 1:
        return "several results"
    res = node.output
    users = res.uses()
    if len(users) != 1 or users[0].node.op.name != "quantize" or res in graph.outputs:
        return "its result is not quantized (only user must be a quantize node)"
    out_q = users[0].node
    out = attrs_qparams(out_q)
    if out.per_channel:
        return "per-channel output quantization"
    operands = node.inputs[:2] if node.op.name in ("conv1d", "conv2d", "linear") else node.inputs
    ins = []
    for i, v in enumerate(operands):
        d = v.producer
        if d is None or d.op.name != "dequantize":
            return f"operand {i} (%{v.name}) is not dequantized int8"
        qp = attrs_qparams(d)
        if qp.per_channel and not (i == 1 and qp.axis == 0):
            return f"operand {i} is quantized per channel"
        ins.append((d.inputs[0], qp))
    return _Match(node, ins, out_q, out)


def _clamp(node: Node, out: QParams) -> tuple[int, int]:
    lo, hi = out.qmin, out.qmax
    zp, s = out.zero_point[0], out.scale[0]
    if "act_min" in node.attrs and node.attrs["act_min"] is not None:
        lo = max(lo, min(hi, zp + math.ceil(node.attrs["act_min"] / s - 1e-9)))
    if "act_max" in node.attrs and node.attrs["act_max"] is not None:
        hi = min(hi, max(lo, zp + math.floor(node.attrs["act_max"] / s + 1e-9)))
    return lo, hi


def _requant_attrs(out: QParams, lo: int, hi: int) -> dict:
    return dict(out_zero_point=out.zero_point[0], qmin=lo, qmax=hi, out_dtype=out.dtype)


def _weighted(graph: Graph, m: _Match) -> Value:
    node = m.node
    (x, xq), (w, wq) = m.ins
    if any(z != 0 for z in wq.zero_point):
        raise _Skip("weights with a non-zero zero point")
    s_x = xq.scale[0]
    out_ch = node.output.shape[1] if node.op.name != "linear" else node.output.shape[-1]
    s_w = list(wq.scale) if wq.per_channel else [wq.scale[0]] * out_ch
    inputs = [x, w]
    if len(node.inputs) > 2:
        b = node.inputs[2]
        if not b.is_const:
            raise _Skip("the bias is not a constant")
        assert b.const is not None
        denom = torch.tensor([s_x * s for s in s_w], dtype=torch.float64)
        bq = torch.round(b.const.to(torch.float64) / denom).clamp(*_I32).to(torch.int32)
        inputs.append(graph.add_constant(bq, f"{b.name}.q"))
    pairs = [quantize_multiplier(s_x * s / m.out.scale[0], what=node.describe()) for s in s_w]
    if node.op.name == "linear":
        acc = graph.add("qlinear", inputs, dict(x_zero_point=xq.zero_point[0]),
                        name=f"{node.name}.acc", source=node.source)
        axis = node.output.type.rank - 1
    else:
        a = node.attrs
        acc = graph.add(f"q{node.op.name}", inputs, dict(
            stride=a["stride"], padding=a["padding"], dilation=a["dilation"],
            groups=a["groups"], x_zero_point=xq.zero_point[0]),
            name=f"{node.name}.acc", source=node.source)
        axis = 1
    lo, hi = _clamp(node, m.out)
    return graph.add("requantize", [acc], dict(
        multiplier=[p[0] for p in pairs], shift=[p[1] for p in pairs], axis=axis,
        **_requant_attrs(m.out, lo, hi)), name=node.name, source=node.source)


def _matmul(graph: Graph, m: _Match) -> Value:
    (a, aq), (b, bq) = m.ins
    acc = graph.add("qmatmul", [a, b], dict(a_zero_point=aq.zero_point[0],
                                             b_zero_point=bq.zero_point[0]),
                    name=f"{m.node.name}.acc", source=m.node.source)
    m0, n = quantize_multiplier(aq.scale[0] * bq.scale[0] / m.out.scale[0],
                                what=m.node.describe())
    return graph.add("requantize", [acc], dict(multiplier=[m0], shift=[n],
                                                **_requant_attrs(m.out, m.out.qmin, m.out.qmax)),
                     name=m.node.name, source=m.node.source)


def _add(graph: Graph, m: _Match) -> Value:
    (a, aq), (b, bq) = m.ins
    (ma, mb), n = quantize_multipliers_shared(
        [aq.scale[0] / m.out.scale[0], bq.scale[0] / m.out.scale[0]], what=m.node.describe())
    return graph.add("qadd", [a, b], dict(
        a_zero_point=aq.zero_point[0], b_zero_point=bq.zero_point[0], a_multiplier=ma,
        b_multiplier=mb, shift=n, **_requant_attrs(m.out, m.out.qmin, m.out.qmax)),
        name=m.node.name, source=m.node.source)


def _mul(graph: Graph, m: _Match) -> Value:
    (a, aq), (b, bq) = m.ins
    m0, n = quantize_multiplier(aq.scale[0] * bq.scale[0] / m.out.scale[0],
                                what=m.node.describe())
    return graph.add("qmul", [a, b], dict(
        a_zero_point=aq.zero_point[0], b_zero_point=bq.zero_point[0], multiplier=m0, shift=n,
        **_requant_attrs(m.out, m.out.qmin, m.out.qmax)), name=m.node.name,
        source=m.node.source)


def _cat(graph: Graph, m: _Match) -> Value:
    pairs = [quantize_multiplier(q.scale[0] / m.out.scale[0], what=m.node.describe())
             for _, q in m.ins]
    return graph.add("qcat", [v for v, _ in m.ins], dict(
        axis=m.node.attrs["axis"], zero_points=[q.zero_point[0] for _, q in m.ins],
        multipliers=[p[0] for p in pairs], shifts=[p[1] for p in pairs],
        **_requant_attrs(m.out, m.out.qmin, m.out.qmax)), name=m.node.name,
        source=m.node.source)


def _avg_pool(graph: Graph, m: _Match) -> Value:
    node = m.node
    (x, xq), = m.ins
    a = node.attrs
    if node.op.name == "adaptive_avg_pool2d":
        h, w = x.shape[-2:]
        oh, ow = a["output_size"]
        if h % oh or w % ow:
            raise _Skip("adaptive pooling with non-uniform windows")
        kernel, stride, padding = (h // oh, w // ow), (h // oh, w // ow), (0, 0)
    else:
        if a["ceil_mode"] or a["divisor_override"] is not None:
            raise _Skip("ceil_mode or divisor_override")
        if any(a["padding"]) and not a["count_include_pad"]:
            raise _Skip("padding not counted in the divisor")
        kernel, stride, padding = a["kernel"], a["stride"], a["padding"]
    size = kernel[0] * kernel[1]
    m0, n = quantize_multiplier(xq.scale[0] / (m.out.scale[0] * size), what=node.describe())
    return graph.add("qavg_pool2d", [x], dict(
        kernel=kernel, stride=stride, padding=padding, in_zero_point=xq.zero_point[0],
        multiplier=m0, shift=n, **_requant_attrs(m.out, m.out.qmin, m.out.qmax)),
        name=node.name, source=node.source)


class _Skip(Exception):  # noqa: N818  (internal control flow: the node stays float)
    pass


_RULES = {"conv1d": _weighted, "conv2d": _weighted, "linear": _weighted, "matmul": _matmul,
          "add": _add, "mul": _mul, "cat": _cat, "avg_pool2d": _avg_pool,
          "adaptive_avg_pool2d": _avg_pool}
assert set(_RULES) == INTEGER_OPS


def check_qdq_form(graph: Graph) -> None:
    """What ``qdq-to-int8`` requires: no observer left, pass-through ops hoisted.

    Raises:
        QuantizationError: naming the pass to run first.
    """
    left = graph.find("observer")
    if left:
        raise QuantizationError(
            f"{left[0].describe()}: observers left; run 'quantize-dequantize' and "
            "'hoist-passthrough' before 'qdq-to-int8' (the 'convert-int8' pipeline runs all "
            "three)")
    pending = hoistable(graph)
    if pending:
        raise QuantizationError(
            f"{pending[0].describe()} reads a dequantize; run 'hoist-passthrough' before "
            "'qdq-to-int8' (the 'convert-int8' pipeline does) so that it runs on int8")


def convert_int8(graph: Graph) -> int:
    """Rewrites matching nodes in place (see the module docstring); returns how many.

    Raises:
        QuantizationError: the graph is not in hoisted QDQ form (:func:`check_qdq_form`).
    """
    check_qdq_form(graph)
    count = 0
    for node in list(graph.nodes):
        rule = _RULES.get(node.op.name)
        if rule is None:
            continue
        m = _match(node, graph)
        if isinstance(m, str):
            logger.debug("convert-int8: %s stays float: %s", node.describe(), m)
            continue
        with graph.inserting_before(node):
            try:
                new = rule(graph, m)
            except _Skip as e:
                logger.debug("convert-int8: %s stays float: %s", node.describe(), e)
                continue
        new.qparams = m.out
        dqs = [v.producer for v in node.inputs if v.producer is not None
               and v.producer.op.name == "dequantize"]
        consts = [v for v in node.inputs if v.is_const]
        graph.replace_all_uses_with(m.out_q.output, new)
        graph.erase(m.out_q)
        name = node.name
        graph.erase(node)
        graph.rename(new, name)
        for d in dqs:
            if d.graph is graph and not d.output.uses() and d.output not in graph.outputs:
                graph.erase(d)
        for c in consts:  # the float bias, replaced by its int32 version
            if not c.uses() and c not in graph.outputs:
                graph.remove_constant(c)
        count += 1
    return count


@register_pass
@dataclass(frozen=True)
class QdqToInt8(Pass):
    """Lowers the QDQ form to exact int8/int32 integer ops (the last pass of ``convert-int8``)."""

    name = "qdq-to-int8"

    def requires(self, graph: Graph) -> None:
        check_qdq_form(graph)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult(graph, convert_int8(graph) > 0)

