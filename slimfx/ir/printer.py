"""The deterministic text form of a graph.

::

    graph @main(%x: f32[1,3,8,8]) {
      const %conv.weight : f32[4,3,3,3]
      const %two : f32[] = dense<[2.0]>
      %conv = conv2d(%x, %conv.weight) {stride=[1,1], padding=[1,1], dilation=[1,1], groups=1, act_min=none, act_max=none} : f32[1,4,8,8]
      return %conv
    }

Shape symbols and their ranges follow the inputs, sorted by name
(``graph @main(%x: f32[N,3,8,8]) where N in [1, 64] {``; ``N >= 1`` when
unbounded; see :mod:`slimfx.ir.symbolic`); a static graph has no ``where``.
Every attribute is printed, defaults included, in declaration order. Constants
with at most ``inline_limit`` elements carry their data; larger ones carry only
their type (``slimfx.ir.parse`` takes their tensors separately). Quantization
parameters follow the type (``: i8[4] q<i8, scale=0.1, zp=0, range=[-128,127]>``).
"""

from __future__ import annotations

import json
import math
from typing import Any

import sympy

from slimfx.ir.core import Graph, Node, Source, Value
from slimfx.ir.symbolic import format_dim, format_symbol

__all__ = ["format_graph", "format_node", "format_attr"]


def format_attr(value: Any) -> str:
    if value is None:
        return "none"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple):
        return "[" + ",".join(format_attr(v) for v in value) + "]"
    if isinstance(value, sympy.Expr):  # a symbolic dimension (``dims`` attributes)
        return format_dim(value)
    raise TypeError(f"cannot print attribute value {value!r}")


def _type(v: Value) -> str:
    s = str(v.type)
    if v.qparams is not None:
        s += f" {v.qparams}"
    return s


def _loc(src: Source) -> str:
    return f" loc({json.dumps(src.module)}, {json.dumps(src.location)}, {json.dumps(src.torch_op)})"


def format_node(node: Node, *, locations: bool = False) -> str:
    outs = ", ".join(f"%{o.name}" for o in node.outputs)
    ins = ", ".join(f"%{i.name}" for i in node.inputs)
    attrs = ", ".join(f"{k}={format_attr(v)}" for k, v in node.attrs.items())
    attrs = f" {{{attrs}}}" if attrs else ""
    types = ", ".join(_type(o) for o in node.outputs)
    loc = _loc(node.source) if locations else ""
    lhs = f"{outs} = " if node.outputs else ""
    return f"{lhs}{node.op.name}({ins}){attrs} : {types}{loc}"


def _format_const(v: Value, inline_limit: int) -> str:
    line = f"const %{v.name} : {_type(v)}"
    assert v.const is not None
    if v.const.numel() <= inline_limit:
        flat = v.const.detach().reshape(-1).tolist()
        items = []
        for x in flat:
            if isinstance(x, bool):
                items.append("1" if x else "0")
            elif isinstance(x, float):
                items.append(format_attr(x))
            else:
                items.append(str(x))
        line += f" = dense<[{','.join(items)}]>"
    return line


def format_graph(graph: Graph, *, locations: bool = False, inline_limit: int = 8) -> str:
    ins = ", ".join(f"%{v.name}: {_type(v)}" for v in graph.inputs)
    where = ""
    if graph.symbols:
        where = " where " + ", ".join(format_symbol(k, graph.symbols[k])
                                      for k in sorted(graph.symbols))
    lines = [f"graph @{graph.name}({ins}){where} {{"]
    for v in graph.constants.values():
        lines.append("  " + _format_const(v, inline_limit))
    for n in graph.nodes:
        lines.append("  " + format_node(n, locations=locations))
    ret = ", ".join(f"%{v.name}" for v in graph.outputs)
    if graph.output_names is not None:
        ret += " names " + format_attr(tuple(graph.output_names))
    lines.append(f"  return {ret}")
    lines.append("}")
    return "\n".join(lines) + "\n"
