"""``remove-identity``: removes nodes whose result equals their first operand.

Removed: ops with ``Trait.IDENTITY`` (``identity``, ``dropout`` at inference),
``reshape``/``expand`` to the operand's own shape, ``permute`` with dims
``0..rank-1`` and ``cast`` to the operand's own dtype. Every use of the result
(graph outputs included) is pointed at the operand and the node is erased. A
result carrying quantization parameters other than its operand's is kept: the
node then still changes the meaning of the value.
"""

from __future__ import annotations

from dataclasses import dataclass

from slimfx.ir.core import Graph, Node
from slimfx.ir.ops import Trait
from slimfx.passes.base import Pass, PassResult
from slimfx.passes.context import PassContext
from slimfx.passes.registry import register_pass

__all__ = ["RemoveIdentity", "is_identity"]


def is_identity(node: Node) -> bool:
    """Whether ``node`` returns its first operand unchanged."""
    if not node.inputs or len(node.outputs) != 1:
        return False
    src, out = node.inputs[0], node.outputs[0]
    if src.type != out.type or src.qparams != out.qparams:
        return False
    if node.has(Trait.IDENTITY):
        return True
    name = node.op.name
    if name in ("reshape", "expand", "cast"):
        return True  # same type in and out
    if name == "permute":
        return tuple(node.attrs["dims"]) == tuple(range(src.type.rank))
    return False


@register_pass
@dataclass(frozen=True)
class RemoveIdentity(Pass):
    """Remove identity, dropout, and reshape/permute/cast/expand that change nothing."""

    name = "remove-identity"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        changed = False
        for node in graph.nodes:
            if is_identity(node):
                graph.replace_all_uses_with(node.outputs[0], node.inputs[0])
                graph.erase(node)
                changed = True
        return PassResult(graph, changed)
