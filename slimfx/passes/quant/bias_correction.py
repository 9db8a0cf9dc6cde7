"""``bias-correction``: cancel the mean output shift that int8 weights cause (Nagel et al. 2019).

Rounding the weights of a conv/linear to int8 moves the mean of its output:
``E[y_q] - E[y] = E[op(x, W_q - W)] = op(E[x], W_q - W)`` averaged over output
positions (the ops are linear in ``x``, so only the mean input matters). This pass
measures ``E[x]`` (the float input, averaged over the batch dimension) on
calibration data, computes that shift per output channel with ``W_q`` the weight
exactly as ``quantize-dequantize`` will round it, and subtracts it from the bias (a
zero bias is added where the node had none). Activations and ranges are untouched:
only the int32 bias of the integer program changes.

It runs on a *calibrated* graph (weight observers still in place, before
``quantize-dequantize``). :func:`slimfx.quantize` runs it when asked
(``bias_correction=True``, or ``bias-correction`` in its pipeline string); as a
registered pass it needs the calibration data in ``ctx.data`` (a list of batches),
which :func:`slimfx.quantize` provides.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from slimfx.backends.torch import KERNELS, to_torch
from slimfx.errors import CalibrationError
from slimfx.ir.core import Graph, Node
from slimfx.passes.base import Pass, PassResult
from slimfx.passes.context import PassContext
from slimfx.passes.quant.arguments import batch_args, check_data, check_num_batches, no_data_error
from slimfx.passes.quant.quantize_dequantize import observer_qparams, qparams_attrs
from slimfx.passes.registry import register_pass

__all__ = ["BiasCorrection", "bias_correction"]

logger = logging.getLogger(__name__)

_WEIGHTED = ("conv1d", "conv2d", "linear")


def _targets(graph: Graph) -> list[tuple[Node, Node]]:
    """(node, weight observer) of every conv/linear whose constant weight is observed."""
    out = []
    for n in graph.nodes:
        if n.op.name not in _WEIGHTED:
            continue
        obs = n.inputs[1].producer
        if obs is None or obs.op.name != "observer" or not obs.inputs[0].is_const:
            continue
        if len(n.inputs) > 2 and not n.inputs[2].is_const:
            continue
        out.append((n, obs))
    return out


def _input_means(graph: Graph, nodes: list[Node], data: Iterable[Any],
                 num_batches: int | None) -> list[torch.Tensor]:
    """The batch-mean (dim 0, kept) of the first input of each node, over ``data``."""
    g = graph.clone()
    g.set_outputs([g.node(n.name).inputs[0] for n in nodes])
    module = to_torch(g, trainable=False)
    sums: list[torch.Tensor] | None = None
    seen = 0
    with torch.no_grad():
        for batch in data:
            if num_batches is not None and seen >= num_batches:
                break
            args = batch_args(graph, batch, seen)
            outs = module(*args)
            outs = [outs] if isinstance(outs, torch.Tensor) else list(outs)
            means = [o.to(torch.float64).mean(0, keepdim=True) for o in outs]
            sums = means if sums is None else [s + m for s, m in zip(sums, means, strict=True)]
            seen += 1
    if sums is None:
        raise no_data_error(graph, data, "bias correction")
    return [s / seen for s in sums]


def _shift(node: Node, x_mean: torch.Tensor, dw: torch.Tensor) -> torch.Tensor:
    """Mean output change per output channel caused by the weight change ``dw``."""
    a = node.attrs
    if node.op.name == "linear":
        flat = x_mean.reshape(-1, x_mean.shape[-1]).mean(0)
        return dw @ flat
    conv = F.conv1d if node.op.name == "conv1d" else F.conv2d
    y = conv(x_mean, dw, None, a["stride"], a["padding"], a["dilation"], a["groups"])
    return y.mean(dim=[d for d in range(y.dim()) if d != 1])


def bias_correction(graph: Graph, data: Iterable[Any], num_batches: int | None = None) -> int:
    """Corrects the biases of ``graph`` in place (see the module docstring); returns how many.

    Args:
        graph: a calibrated graph with weight observers (before ``quantize-dequantize``).
        data: calibration batches, as for :func:`slimfx.calibrate`.
        num_batches: use at most this many batches.

    Raises:
        CalibrationError: no data, or batches that do not fit the graph inputs.
    """
    data = check_data(data, "bias-correction")
    check_num_batches(num_batches, "bias-correction")
    targets = _targets(graph)
    if not targets:
        return 0
    means = _input_means(graph, [n for n, _ in targets], data, num_batches)
    for (node, obs), x_mean in zip(targets, means, strict=True):
        w = obs.inputs[0].const
        assert w is not None
        attrs = qparams_attrs(observer_qparams(obs))
        w_q = KERNELS["dequantize"](KERNELS["quantize"](w, **attrs), **attrs)
        dw = (w_q.to(torch.float64) - w.to(torch.float64))
        shift = _shift(node, x_mean, dw)
        if len(node.inputs) > 2:
            b = node.inputs[2]
            assert b.const is not None
            new = (b.const.to(torch.float64) - shift).to(b.const.dtype)
            name = b.name
        else:
            new = (-shift).to(w.dtype)
            name = f"{node.name}.bias"
        c = graph.add_constant(new, f"{name}.corrected")
        if len(node.inputs) > 2:
            old = node.inputs[2]
            node.replace_input(2, c)
            if not old.uses() and old not in graph.outputs:
                graph.remove_constant(old)
        else:
            node.set_inputs(list(node.inputs) + [c])
        logger.debug("bias-correction: %s mean shift %.3g", node.describe(),
                     float(shift.abs().max()))
    logger.info("bias-correction: corrected %d biases of @%s", len(targets), graph.name)
    return len(targets)


@register_pass
@dataclass(frozen=True)
class BiasCorrection(Pass):
    """Subtracts the mean output shift of int8 weights from conv/linear biases.

    Needs calibration batches in ``ctx.data``; :func:`slimfx.quantize` runs it itself.
    """

    name = "bias-correction"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        data = getattr(ctx, "data", None)
        if data is None:
            raise CalibrationError("pass 'bias-correction' needs calibration data; use "
                                   "slimfx.quantize(graph, data) (it runs the pass itself)")
        return PassResult(graph, bias_correction(graph, data) > 0)
