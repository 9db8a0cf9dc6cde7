"""``dce``: removes pure nodes whose results are unused, then unused constants.

A node is removable when its op is ``Pure`` (and not opaque: an opaque torch
callable may have effects) and none of its results is used by another node or
returned by the graph. Walking the node list backwards removes whole dead
chains in one sweep. Graph inputs are never removed: they are the signature.
"""

from __future__ import annotations

from dataclasses import dataclass

from slimfx.ir.core import Graph, Node
from slimfx.ir.ops import Trait
from slimfx.passes.base import Pass, PassResult
from slimfx.passes.context import PassContext
from slimfx.passes.registry import register_pass

__all__ = ["EliminateDeadCode", "is_dead"]


def is_dead(node: Node, graph: Graph) -> bool:
    """Whether ``node`` is pure, not opaque, and none of its results is used."""
    if not node.has(Trait.PURE) or node.has(Trait.OPAQUE):
        return False
    outputs = {id(v) for v in graph.outputs}
    return all(not o.uses() and id(o) not in outputs for o in node.outputs)


@register_pass(aliases=("eliminate-dead-code",))
@dataclass(frozen=True)
class EliminateDeadCode(Pass):
    """Remove unused pure nodes and unused constants.

    Attributes:
        constants: also remove constants nothing uses.
    """

    name = "dce"
    constants: bool = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        changed = False
        for node in reversed(graph.nodes):
            if is_dead(node, graph):
                graph.erase(node)
                changed = True
        if self.constants:
            outputs = {id(v) for v in graph.outputs}
            for value in list(graph.constants.values()):
                if not value.uses() and id(value) not in outputs:
                    graph.remove_constant(value)
                    changed = True
        return PassResult(graph, changed)
