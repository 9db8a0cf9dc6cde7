"""``fold-bn``: folds an inference ``batch_norm`` into the conv/linear that feeds it.

With ``s = gamma / sqrt(var + eps)`` per output channel (``gamma = 1`` and
``beta = 0`` when the batch norm has no affine parameters, ``b = 0`` when the
producer has no bias)::

    W' = W * s       (along the output-channel axis of W)
    b' = (b - mean) * s + beta

so that ``bn(conv(x, W, b)) == conv(x, W', b')``. The output-channel axis is
axis 0 for ``conv1d``, ``conv2d`` and ``linear`` (``[out, in, ...]``). For
``conv_transpose2d`` the weight is ``[in, out/groups, kh, kw]``: output channel
``g * (out/groups) + j`` is weight slice ``[g*in/groups:(g+1)*in/groups, j]``, so the
scale is applied on axis 1 group by group. ``linear`` folds only with a rank-2
output ``[N, features]`` (BatchNorm1d normalizes axis 1 = the features).
``s`` and ``b'`` are computed in float64 (they are per-channel vectors); ``W * s``
is one multiply in the weight's dtype, as in ``torch.nn.utils.fusion``.
The old weight and bias constants stay for ``dce`` to remove.

The rule refuses, with a reason, when the producer's result has other users or is
a graph output, when the weight is not a constant or is shared with another node,
when the bias or any batch-norm statistic is not a constant, when the producer
already has a fused activation, or when values carry quantization parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slimfx.ir.core import Graph, Node, Value
from slimfx.passes.registry import register_pass
from slimfx.passes.rewriter import (
    Match,
    Pattern,
    RewritePass,
    Rewriter,
    RewriteRule,
    is_op,
    wildcard,
)

__all__ = ["FoldBatchNorm", "FoldBatchNormRule", "fold_bn_weights"]

_PRODUCERS = ("conv1d", "conv2d", "conv_transpose2d", "linear")


def fold_bn_weights(op: str, weight: torch.Tensor, bias: torch.Tensor | None, groups: int,
                    mean: torch.Tensor, var: torch.Tensor, gamma: torch.Tensor | None,
                    beta: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The folded ``(W', b')`` of the module docstring, in the weight's dtype."""
    f64 = torch.float64
    scale = torch.rsqrt(var.to(f64) + eps)
    if gamma is not None:
        scale = scale * gamma.to(f64)
    b = bias.to(f64) if bias is not None else torch.zeros_like(scale)
    new_b = (b - mean.to(f64)) * scale
    if beta is not None:
        new_b = new_b + beta.to(f64)
    s = scale.to(weight.dtype)
    if op == "conv_transpose2d":
        cin, per_group = weight.shape[0], weight.shape[1]
        grouped = weight.reshape(groups, cin // groups, per_group, *weight.shape[2:])
        new_w = (grouped * s.reshape(groups, 1, per_group, *([1] * (weight.dim() - 2))))
        new_w = new_w.reshape(weight.shape)
    else:
        new_w = weight * s.reshape(-1, *([1] * (weight.dim() - 1)))
    return new_w, new_b.to(bias.dtype if bias is not None else weight.dtype)


@dataclass(frozen=True)
class FoldBatchNormRule(RewriteRule):
    """batch_norm(conv|linear(x, W, b)) -> conv|linear(x, W', b')."""

    name = "fold-bn"

    def pattern(self) -> Pattern:
        producer = is_op(*_PRODUCERS)(wildcard(), wildcard()).named("conv")
        return is_op("batch_norm")(producer).named("bn")

    def check(self, match: Match) -> str | None:
        conv, bn = match.node("conv"), match.node("bn")
        out = conv.outputs[0]
        others = [u.node for u in out.uses() if u.node is not bn]
        if others or any(out is o for o in _graph(conv).outputs):
            who = ", ".join(f"%{n.name}" for n in others) or "the graph outputs"
            return (f"the result %{out.name} of {conv.op.name} is also used by {who}; folding "
                    "would change what they see")
        weight = conv.inputs[1]
        if not weight.is_const:
            return f"the weight %{weight.name} of %{conv.name} is not a constant"
        sharers = [u.node for u in weight.uses() if u.node is not conv]
        if sharers:
            return (f"the weight %{weight.name} is shared with %{sharers[0].name}; folding "
                    "would change that node too")
        bias = conv.inputs[2] if len(conv.inputs) > 2 else None
        if bias is not None and not bias.is_const:
            return f"the bias %{bias.name} of %{conv.name} is not a constant"
        for v in bn.inputs[1:]:
            if not v.is_const:
                return f"the batch-norm parameter %{v.name} of %{bn.name} is not a constant"
        if not weight.type.is_float:
            return f"the weight %{weight.name} is {weight.type.dtype}, not floating point"
        if conv.attrs.get("act_min") is not None or conv.attrs.get("act_max") is not None:
            return f"%{conv.name} has a fused activation; the batch norm comes after it"
        if any(v.qparams is not None for v in (out, bn.outputs[0], weight)):
            return "the values are already quantized"
        if conv.op.name == "linear" and out.type.rank != 2:
            return (f"linear %{conv.name} has a rank-{out.type.rank} result; batch_norm then "
                    "normalizes axis 1, which is not the feature axis")
        return None

    def rewrite(self, match: Match, rewriter: Rewriter) -> None:
        conv, bn = match.node("conv"), match.node("bn")
        weight = conv.inputs[1]
        bias = conv.inputs[2] if len(conv.inputs) > 2 else None
        const = _consts(bn.inputs[1:])
        gamma = const[2] if len(const) > 2 else None
        beta = const[3] if len(const) > 3 else None
        groups = conv.attrs.get("groups", 1)
        assert weight.const is not None
        new_w, new_b = fold_bn_weights(
            conv.op.name, weight.const, None if bias is None else bias.const, groups,
            const[0], const[1], gamma, beta, bn.attrs["eps"])
        w_val = rewriter.add_constant(new_w, f"{weight.name}_folded")
        b_val = rewriter.add_constant(new_b, f"{bias.name}_folded" if bias is not None
                                      else f"{conv.name}.bias_folded")
        rewriter.set_inputs(conv, [conv.inputs[0], w_val, b_val])
        rewriter.replace_all_uses_with(bn.outputs[0], conv.outputs[0])
        rewriter.erase(bn)


def _consts(values: list[Value]) -> list[torch.Tensor]:
    out = []
    for v in values:
        assert v.const is not None
        out.append(v.const)
    return out


def _graph(node: Node) -> Graph:
    assert node.graph is not None
    return node.graph


@register_pass
@dataclass(frozen=True)
class FoldBatchNorm(RewritePass):
    """Fold batch_norm into the preceding conv1d/conv2d/conv_transpose2d/linear weights."""

    name = "fold-bn"

    def rules(self) -> list[RewriteRule]:
        return [FoldBatchNormRule()]
