"""``quantize-dynamic-int8``: int8 weights ahead of time, activation scales at run time.

Weights are quantized symmetric int8 per output row: ``s_w[o] = max(max|W[o]| /
127, EPS)``, ``W_q = clamp(round_half_even(W / s_w), -127, 127)``. At run time the
activation gets ``s_x = max|x| / 127`` (per tensor, or per row of the last axis
with ``per_token=true``, which keeps outlier tokens of transformer embeddings
from crushing the others), ``x_q = clamp(round(x / s_x), -127, 127)``, and
``y = (x_q @ W_q.T) * s_x * s_w + bias`` with an exact integer sum (see
``dynamic_linear`` in ``slimfx/ir/opset_quant.py``).

Rewritten: ``linear`` with a constant weight (the linears of attention
included), ``matmul(x, W)`` with a constant 2-D ``W`` (as a linear with ``W.T``),
``lstm`` and ``gru`` with constant weights. Nodes matching ``exclude`` (regexes
on node names / module paths) stay float.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from slimfx.ir.core import Graph, Node, Value
from slimfx.passes.base import Pass, PassResult
from slimfx.passes.context import PassContext
from slimfx.passes.quant.observers import EPS
from slimfx.passes.registry import register_pass

__all__ = ["QuantizeDynamicInt8", "quantize_weight_per_row", "quantize_dynamic"]


def quantize_weight_per_row(w: torch.Tensor) -> tuple[torch.Tensor, tuple[float, ...]]:
    """Symmetric int8 per-row quantization of a 2-D weight: ``(W_q, row scales)``."""
    w = w.detach().to(torch.float32)
    scale = torch.clamp(w.abs().amax(dim=1) / 127.0, min=EPS)
    q = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)
    return q, tuple(scale.tolist())


def _excluded(node: Node, exclude: tuple[str, ...]) -> bool:
    names = [o.name for o in node.outputs] + [node.source.module]
    return any(re.fullmatch(p, n) for p in exclude for n in names if n)


def _linear(graph: Graph, node: Node, w: torch.Tensor, bias: Value | None,
            per_token: bool) -> Value:
    q, scales = quantize_weight_per_row(w)
    wq = graph.add_constant(q, f"{node.name}.weight.q")
    a = node.attrs
    inputs = [node.inputs[0], wq] + ([bias] if bias is not None else [])
    return graph.add("dynamic_linear", inputs, dict(
        w_scale=scales, per_token=per_token, act_min=a.get("act_min"), act_max=a.get("act_max")),
        name=node.name, source=node.source)


def quantize_dynamic(graph: Graph, *, per_token: bool = False, ops: tuple[str, ...] = (
        "linear", "matmul", "lstm", "gru"), exclude: tuple[str, ...] = ()) -> int:
    """Rewrites matching nodes in place (see the module docstring); returns how many."""
    count = 0
    for node in list(graph.nodes):
        kind = node.op.name
        if kind not in ops or _excluded(node, exclude):
            continue
        old_consts = [v for v in node.inputs if v.is_const]
        with graph.inserting_before(node):
            w = node.inputs[1].const if len(node.inputs) > 1 else None
            if kind == "linear" and w is not None:
                bias = node.inputs[2] if len(node.inputs) > 2 else None
                new = [_linear(graph, node, w, bias, per_token)]
            elif (kind == "matmul" and w is not None and w.dim() == 2
                  and node.inputs[0].type.rank >= 2):
                new = [_linear(graph, node, w.t(), None, per_token)]
            elif kind in ("lstm", "gru") and all(v.is_const for v in node.inputs[
                    3 if kind == "lstm" else 2:]):
                new = _rnn(graph, node, per_token)
            else:
                continue
        for old, nv in zip(node.outputs, new, strict=True):
            graph.replace_all_uses_with(old, nv)
        names = [o.name for o in node.outputs]
        graph.erase(node)
        for nv, name in zip(new, names, strict=True):
            graph.rename(nv, name)
        for c in old_consts:
            if not c.uses() and c not in graph.outputs:
                graph.remove_constant(c)
        count += 1
    return count


def _rnn(graph: Graph, node: Node, per_token: bool) -> list[Value]:
    nstate = 2 if node.op.name == "lstm" else 1
    weights: list[Value] = []
    scales: list[float] = []
    for v in node.inputs[1 + nstate:]:
        assert v.const is not None
        if v.type.rank == 2:
            q, s = quantize_weight_per_row(v.const)
            weights.append(graph.add_constant(q, f"{v.name}.q"))
            scales.extend(s)
        else:
            weights.append(v)
    res = graph.create(f"dynamic_{node.op.name}", [*node.inputs[:1 + nstate], *weights],
                       dict(node.attrs, w_scales=scales, per_token=per_token),
                       [o.type for o in node.outputs], names=[o.name for o in node.outputs],
                       source=node.source)
    return list(res.outputs)


@register_pass
@dataclass(frozen=True)
class QuantizeDynamicInt8(Pass):
    """Dynamic int8: int8 weights, activation scales computed from each input at run time."""

    name = "quantize-dynamic-int8"
    per_token: bool = False
    ops: tuple[str, ...] = ("linear", "matmul", "lstm", "gru")
    exclude: tuple[str, ...] = ()

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        n = quantize_dynamic(graph, per_token=self.per_token, ops=self.ops, exclude=self.exclude)
        return PassResult(graph, n > 0)
