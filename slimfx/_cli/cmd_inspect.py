"""``slimfx inspect MODEL [--dot FILE]``: the IR text, op counts, parameters and MACs."""

from __future__ import annotations

import argparse
import math
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI imports torch only when a command runs
    from slimfx.ir.core import Graph, Node
    from slimfx.ir.symbolic import Dim

__all__ = ["add_parsers", "run_inspect", "summary", "graph_macs", "macs_formula"]

# integer ops count like the float op they replace (slimfx.passes.prune.report counts those)
_AS_FLOAT = {"qconv1d": "conv1d", "qconv2d": "conv2d", "qlinear": "linear",
             "dynamic_linear": "linear", "qmatmul": "matmul"}


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from slimfx._cli.models import MODEL_HELP

    p = sub.add_parser("inspect", parents=[common], help="print the IR, op counts, parameters "
                       "and MACs of a model", description="Prints the IR text of MODEL and a "
                       "summary: op counts, parameters, constant bytes, MACs.")
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--dot", metavar="FILE", help="also write a picture: .svg, .png or .pdf "
                   "(needs Graphviz), or .dot text")
    p.add_argument("--summary", action="store_true", help="only the summary, not the IR text")
    p.add_argument("--locations", action="store_true", help="print source locations in the IR")
    p.set_defaults(run=run_inspect)


def _macs(node: Node) -> int:
    from slimfx.passes.prune.report import node_macs

    if node.op.name not in _AS_FLOAT:
        return node_macs(node)
    out, w = node.outputs[0].type, node.inputs[1].type.shape
    kind = _AS_FLOAT[node.op.name]
    if kind.startswith("conv"):
        return out.numel * w[1] * math.prod(w[2:])
    if kind == "linear":
        return out.numel * w[-1]
    a = node.inputs[0].type.shape
    return out.numel * (a[-1] if a else 1)


def macs_formula(graph: Graph) -> Dim:
    """Multiply-accumulates of one run, integer ops included: an expression of the
    graph's symbols where its shapes are symbolic (``192*N``)."""
    from slimfx.ir.symbolic import normalize_dim

    return normalize_dim(sum(_macs(n) for n in graph.nodes))


def graph_macs(graph: Graph) -> int:
    """Multiply-accumulates of one run at the smallest size of every symbol (batch 1)."""
    from slimfx.ir.symbolic import eval_dim

    total = macs_formula(graph)
    return total if type(total) is int else eval_dim(total, _smallest(graph))


def _smallest(graph: Graph) -> dict[str, int]:
    return {s: max(r.min, 1) for s, r in graph.symbols.items()}


def _format_macs(graph: Graph) -> str:
    """``24``, or ``12 at N=1 (12*N)``: the count at the smallest sizes, and the formula."""
    total = macs_formula(graph)
    if type(total) is int:
        return f"{total:,}"
    names = {str(s) for s in total.free_symbols}
    at = ", ".join(f"{s}={v}" for s, v in sorted(_smallest(graph).items()) if s in names)
    return f"{graph_macs(graph):,} at {at} ({total})"


def summary(graph: Graph) -> str:
    """Op counts, inputs/outputs, symbols with their ranges, parameters and MACs.

    Parameters count all constant elements and bytes; MACs of a graph with symbols are
    those at the smallest size of every symbol (its range minimum, at least 1).
    """
    from slimfx.ir.symbolic import format_symbol

    ops = Counter(n.op.name for n in graph.nodes)
    width = max([len(k) for k in ops] + [8])
    lines = [f"graph @{graph.name}: {len(graph)} nodes, {len(ops)} distinct ops"]
    lines += [f"  {op:<{width}}  {k:>6}" for op, k in sorted(ops.items(), key=lambda kv: (-kv[1],
                                                                                     kv[0]))]
    for label, values in (("inputs", graph.inputs), ("outputs", graph.outputs)):
        lines.append(f"{label}: " + ", ".join(f"%{v.name} {v.type}" for v in values))
    lines.append("symbols: " + (", ".join(format_symbol(k, r) for k, r in
                                          sorted(graph.symbols.items()))
                                if graph.symbols else "none (static shapes)"))
    numel = sum(v.type.numel for v in graph.constants.values())
    nbytes = sum(v.type.numel * v.type.torch_dtype.itemsize for v in graph.constants.values())
    floats = sum(v.type.numel for v in graph.constants.values() if v.type.is_float)
    lines.append(f"parameters: {numel:,} in {len(graph.constants)} constants "
                 f"({floats:,} float), {nbytes:,} bytes")
    lines.append(f"MACs: {_format_macs(graph)}")
    return "\n".join(lines)


def run_inspect(args: argparse.Namespace) -> int:
    from slimfx._cli.common import output_path
    from slimfx._cli.models import load_model
    from slimfx.ir.dot import FORMATS

    if args.dot:  # a bad picture path fails before the model is loaded
        output_path(args.dot, tuple("." + f for f in FORMATS), "picture")
    graph = load_model(args.model).graph
    if not args.summary:
        print(graph.format(locations=args.locations), end="")
        print()
    print(summary(graph))
    if args.dot:
        from slimfx.ir.dot import draw

        path = draw(graph, args.dot)
        print(f"wrote {path}")
    return 0
