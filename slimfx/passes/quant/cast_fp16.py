"""``cast-half``: run the float part of a graph in fp16 or bf16.

Every node computes in ``dtype`` except ops listed in ``keep_fp32`` (softmax,
normalizations and reductions by default: their sums lose too much in half
precision) and ops without type inference (opaque nodes), which compute in
fp32. Float constants used only by half-precision nodes are cast ahead of time
(rounded to nearest); wherever a value reaches a node of the other precision a
``cast`` is inserted (one per value and dtype). The graph interface is kept:
float inputs are cast on entry and outputs cast back to their original dtype.
Integer and boolean values are untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from slimfx.ir.core import Graph, Value
from slimfx.ir.types import dtype_to_torch
from slimfx.passes.base import Pass, PassResult
from slimfx.passes.context import PassContext
from slimfx.passes.registry import register_pass

__all__ = ["CastHalf", "cast_half", "KEEP_FP32"]

KEEP_FP32 = ("softmax", "log_softmax", "layer_norm", "group_norm", "batch_norm", "rms_norm",
             "instance_norm", "mean", "sum", "amax", "amin")
_FLOATS = ("f32", "f16", "bf16", "f64")


def cast_half(graph: Graph, dtype: str = "f16", keep_fp32: tuple[str, ...] = KEEP_FP32) -> int:
    """Casts the graph in place (see the module docstring); returns the number of half nodes."""
    out_types = [v.type for v in graph.outputs]
    casts: dict[tuple[int, str], Value] = {}
    replaced: list[Value] = []

    def cast(v: Value, to: str, before) -> Value:
        key = (id(v), to)
        if key not in casts:
            if v.const is not None:
                casts[key] = graph.add_constant(v.const.to(dtype_to_torch(to)), f"{v.name}.{to}")
                replaced.append(v)
            else:
                with graph.inserting_before(before):
                    casts[key] = graph.add("cast", [v], dict(dtype=to), name=f"{v.name}.{to}")
        return casts[key]

    count = 0
    for node in list(graph.nodes):
        if node.op.name == "cast":
            continue
        half = node.op.name not in keep_fp32 and node.op.infer is not None
        want = dtype if half else "f32"
        for i, v in enumerate(list(node.inputs)):
            if v.dtype in _FLOATS and v.dtype != want:
                node.replace_input(i, cast(v, want, node))
        if node.op.infer is not None:
            for o, t in zip(node.outputs, node.op.infer([v.type for v in node.inputs],
                                                       node.attrs), strict=True):
                o.type = t
        count += half
    for i, (v, t) in enumerate(zip(list(graph.outputs), out_types, strict=True)):
        if v.dtype != t.dtype:
            graph.outputs[i] = graph.add("cast", [v], dict(dtype=t.dtype), name=f"{v.name}.out")
    for c in replaced:
        if not c.uses() and c not in graph.outputs:
            graph.remove_constant(c)
    return count


@register_pass
@dataclass(frozen=True)
class CastHalf(Pass):
    """Casts weights and activations to fp16/bf16, keeping listed ops in fp32."""

    name = "cast-half"
    dtype: Literal["f16", "bf16"] = "f16"
    keep_fp32: tuple[str, ...] = KEEP_FP32

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult(graph, cast_half(graph, self.dtype, self.keep_fp32) > 0)
