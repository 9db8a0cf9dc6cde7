"""``insert-fake-quant``: calibrated observers -> ``fake_quantize`` nodes, for QAT.

Placement is not decided here: ``insert-observers`` (the QConfig) already put one
observer on every tensor the int8 program quantizes, and this pass replaces each
observer, one for one, by ``fake_quantize(x, scale, zero_point)`` with the parameters
``quantize-dequantize`` would give it (``observer_qparams``: the calibrated range for
activations, the weight's own min/max, or MSE, range for constants). So the trained
graph quantizes exactly where, and initially exactly how, ``convert-int8`` does, and
:func:`slimfx.convert` turns each ``fake_quantize`` back into that quantize/dequantize
pair with the trained parameters.

The scale and zero point become constants of the graph (the torch backend makes them
parameters when learnable, buffers otherwise):

- ``<x>.fq_scale``: float64 ``[C]`` (``C = 1`` per tensor): the exact scale, so that
  fixed-point multipliers computed from it at conversion equal those of post-training
  quantization;
- ``<x>.fq_zero_point``: int64 ``[C]``, or float32 when the zero point is learnable
  (rounded half to even and clamped to ``[qmin, qmax]`` when used). Only affine
  (asymmetric) schemes learn their zero point: symmetric weights keep zero point 0,
  which the integer conv/linear of ``convert-int8`` requires.

Activation observers must be calibrated first: by the ``calibrate`` pass before it (the
``qat-int8`` pipeline, which :func:`slimfx.prepare_qat` runs on its data) or by
:func:`slimfx.calibrate`. Weight (constant) observers need no data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slimfx.errors import QuantizationError
from slimfx.ir.core import Graph, Node
from slimfx.ir.types import QParams
from slimfx.passes.base import Pass, PassResult
from slimfx.passes.context import PassContext
from slimfx.passes.quant.quantize_dequantize import observer_qparams, replace_with_qdq
from slimfx.passes.registry import register_pass

__all__ = ["InsertFakeQuant", "insert_fake_quant", "fake_quant_qparams", "uncalibrated",
           "FakeQuantToQdq", "fake_quant_to_qdq"]


def uncalibrated(graph: Graph) -> list[Node]:
    """The activation observers of ``graph`` that have no range yet."""
    return [n for n in graph.find("observer")
            if not n.inputs[0].is_const and n.attrs["min_val"] is None]


def insert_fake_quant(graph: Graph, *, learn_scale: bool = False,
                      learn_zero_point: bool = False) -> int:
    """Replaces every observer of ``graph`` in place by a ``fake_quantize``; returns how many.

    Args:
        graph: a graph with observers (``insert-observers``), activation ones calibrated.
        learn_scale: the scales are trained (LSQ gradients).
        learn_zero_point: the zero points of affine schemes are trained too (float
            constants); symmetric ones (weights) keep their fixed zero point, which the
            integer program requires (``convert-int8``: weight zero point 0).

    Raises:
        QuantizationError: no observers, or activation observers without statistics.
    """
    observers = graph.find("observer")
    if not observers:
        raise QuantizationError(
            f"graph @{graph.name} has no observers to turn into fake quantization; run "
            "'insert-observers' first (or use slimfx.prepare_qat(graph, data))")
    left = uncalibrated(graph)
    if left:
        raise QuantizationError(
            f"{left[0].describe()} and {len(left) - 1} other observer(s) are not calibrated; "
            "fake quantization starts from the calibrated ranges: run "
            "slimfx.calibrate(graph, data) first, or use slimfx.prepare_qat(graph, data)")
    for node in observers:
        qp = observer_qparams(node)
        x, y = node.inputs[0], node.output
        scale = graph.add_constant(torch.tensor(qp.scale, dtype=torch.float64),
                                   f"{x.name}.fq_scale")
        learn_zp = learn_zero_point and not node.attrs["symmetric"]
        zp_dtype = torch.float32 if learn_zp else torch.int64
        zp = graph.add_constant(torch.tensor(qp.zero_point, dtype=zp_dtype),
                                f"{x.name}.fq_zero_point")
        with graph.inserting_before(node):
            fq = graph.add("fake_quantize", [x, scale, zp], dict(
                dtype=qp.dtype, qmin=qp.qmin, qmax=qp.qmax, axis=qp.axis,
                learn_scale=learn_scale, learn_zero_point=learn_zp),
                name=f"{x.name}.fq", source=node.source)
        graph.replace_all_uses_with(y, fq)
        graph.erase(node)
    return len(observers)


def fake_quant_qparams(node: Node) -> QParams:
    """The quantization parameters a ``fake_quantize`` node holds now (trained or not).

    Raises:
        QuantizationError: the scale or zero point is not a constant, or a trained scale
            is not finite and positive.
    """
    a = node.attrs
    s, z = node.inputs[1], node.inputs[2]
    if s.const is None or z.const is None:
        raise QuantizationError(f"{node.describe()}: scale and zero point must be constants "
                                "(graph parameters) to convert")
    zc = z.const.detach()
    if zc.is_floating_point():
        zc = torch.round(zc)
    zps = zc.clamp(a["qmin"], a["qmax"]).to(torch.int64).reshape(-1).tolist()
    scales = s.const.detach().to(torch.float64).reshape(-1).tolist()
    try:
        return QParams(a["dtype"], tuple(scales), tuple(zps), a["axis"], a["qmin"], a["qmax"])
    except ValueError as e:
        raise QuantizationError(
            f"{node.describe()}: the trained quantization parameters are unusable ({e}); "
            "lower the learning rate of the scales or keep them fixed "
            "(learn_scales=False)") from e


@register_pass
@dataclass(frozen=True)
class InsertFakeQuant(Pass):
    """Replaces calibrated observers by fake_quantize nodes (QAT; see the module docstring)."""

    name = "insert-fake-quant"
    learn_scale: bool = False
    learn_zero_point: bool = False

    def requires(self, graph: Graph) -> None:
        if not graph.find("observer"):
            raise QuantizationError("pass 'insert-fake-quant' needs observers: run "
                                    "'insert-observers' before it (pipeline 'qat-int8' does)")
        if uncalibrated(graph):
            raise QuantizationError(
                "pass 'insert-fake-quant' needs calibrated observers: run 'calibrate' before "
                "it (pipeline 'qat-int8' does; slimfx.prepare_qat(graph, data) runs it on "
                "data), or slimfx.calibrate(graph, data)")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        n = insert_fake_quant(graph, learn_scale=self.learn_scale,
                              learn_zero_point=self.learn_zero_point)
        return PassResult(graph, n > 0)


def fake_quant_to_qdq(graph: Graph) -> int:
    """Replaces every ``fake_quantize`` in place by the quantize / dequantize pair of its
    current parameters (a constant operand, a weight, quantized ahead of time); returns
    how many. The QDQ form computes bit for bit what the fake quantization computes.

    Raises:
        QuantizationError: a trained scale that is not positive (see
            :func:`fake_quant_qparams`).
    """
    fqs = graph.find("fake_quantize")
    for node in fqs:
        replace_with_qdq(graph, node, fake_quant_qparams(node))
    return len(fqs)


@register_pass
@dataclass(frozen=True)
class FakeQuantToQdq(Pass):
    """Trained ``fake_quantize`` -> quantize/dequantize pairs (``convert-qat``'s second pass).

    Requires BatchNorm trained on batch statistics to be folded first (``fold-conv-bn``):
    the weight must be a constant to be quantized ahead of time.
    """

    name = "fake-quant-to-qdq"

    def requires(self, graph: Graph) -> None:
        left = graph.find("fold_bn") or graph.find("conv2d_bn")
        if left:
            raise QuantizationError(f"{left[0].describe()}: BatchNorm still trains on batch "
                                    "statistics; run 'fold-conv-bn' before "
                                    "'fake-quant-to-qdq' (pipeline 'convert-qat')")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult(graph, fake_quant_to_qdq(graph) > 0)
