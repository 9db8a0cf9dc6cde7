"""``hoist-passthrough``: moves value-moving ops across the per-tensor ``dequantize`` feeding
them, so that they run on int8.

Every op of ``PASSTHROUGH_OPS`` (max-pool, reshape, permute, slice, select, expand,
identity, dropout) whose input is a per-tensor ``dequantize`` is rewritten::

    op(dequantize(q))  ->  dequantize(op(q))

which is exact: those ops only move or select values, and max-pool commutes with the
increasing map ``dequantize``. The moved op's result shares the quantization parameters of
``q``. Run after ``quantize-dequantize`` (it requires no observer left) and before
``qdq-to-int8``, which requires it: the ``convert-int8`` pipeline is those three passes.
"""

from __future__ import annotations

from dataclasses import dataclass

from slimfx.errors import QuantizationError
from slimfx.ir.core import Graph, Node
from slimfx.passes.base import Pass, PassResult
from slimfx.passes.context import PassContext
from slimfx.passes.quant.qconfig import PASSTHROUGH_OPS
from slimfx.passes.registry import register_pass

__all__ = ["HoistPassthrough", "hoist_passthrough", "hoistable"]


def _is_hoistable(node: Node) -> bool:
    if node.op.name not in PASSTHROUGH_OPS or len(node.outputs) != 1:
        return False
    d = node.inputs[0].producer
    return d is not None and d.op.name == "dequantize" and d.attrs["axis"] is None


def hoistable(graph: Graph) -> list[Node]:
    """The ``PASSTHROUGH_OPS`` nodes of ``graph`` fed by a per-tensor ``dequantize``."""
    return [n for n in graph.nodes if _is_hoistable(n)]


def hoist_passthrough(graph: Graph) -> int:
    """Rewrites every :func:`hoistable` node in place (module docstring), chains included
    (in graph order, so ``reshape(max_pool(dequantize(q)))`` moves both); returns how many."""
    count = 0
    for node in list(graph.nodes):
        if not _is_hoistable(node):
            continue
        d = node.inputs[0].producer
        assert d is not None
        with graph.inserting_before(node):
            moved = graph.add(node.op, [d.inputs[0]], dict(node.attrs), name=node.name,
                              source=node.source)
            moved.qparams = d.inputs[0].qparams
            nd = graph.add("dequantize", [moved], dict(d.attrs), name=f"{node.name}.dq",
                           source=node.source)
        graph.replace_all_uses_with(node.output, nd)
        name = node.name
        graph.erase(node)
        graph.rename(moved, name)
        if not d.output.uses() and d.output not in graph.outputs:
            graph.erase(d)
        count += 1
    return count


@register_pass
@dataclass(frozen=True)
class HoistPassthrough(Pass):
    """Moves max-pool / reshape / ... across the dequantize feeding them (they run on int8)."""

    name = "hoist-passthrough"

    def requires(self, graph: Graph) -> None:
        left = graph.find("observer")
        if left:
            raise QuantizationError(f"{left[0].describe()}: observers left; run "
                                    "'quantize-dequantize' before 'hoist-passthrough'")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult(graph, hoist_passthrough(graph) > 0)
