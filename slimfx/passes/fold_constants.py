"""``fold-constants``: evaluates nodes whose operands are all constants.

A node folds when its op is ``Pure``, not opaque, has a torch kernel
(``slimfx.backends.torch.kernels.KERNELS``), every operand is a constant, and its
results hold at most ``max_numel`` elements in all. The kernel runs once, under
``torch.no_grad()``; each result becomes a constant of the same name, type and
quantization parameters, and the node is erased. Constants left unused are not
removed here: run ``dce`` (the ``cleanup`` pipeline does). Quantization
bookkeeping ops (``Trait.QUANT``) are left alone unless ``fold_quant`` is set,
because later passes read the quantize/dequantize structure.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from slimfx.ir.core import Graph, Node
from slimfx.ir.ops import Trait
from slimfx.ir.types import TensorType
from slimfx.passes.base import Pass, PassResult
from slimfx.passes.context import PassContext
from slimfx.passes.registry import register_pass

__all__ = ["FoldConstants"]

logger = logging.getLogger(__name__)


@register_pass
@dataclass(frozen=True)
class FoldConstants(Pass):
    """Evaluate pure nodes on constant operands and replace them by constants.

    Attributes:
        max_numel: largest folded result, in elements (all results of a node together).
        fold_quant: also fold quantization ops (quantize of a constant weight, ...).
    """

    name = "fold-constants"
    max_numel: int = 1 << 22
    fold_quant: bool = False

    def foldable(self, node: Node) -> bool:
        """Whether this pass would fold ``node``."""
        from slimfx.backends.torch.kernels import KERNELS

        op = node.op
        if not op.has(Trait.PURE) or op.has(Trait.OPAQUE) or op.name not in KERNELS:
            return False
        if op.has(Trait.QUANT) and not self.fold_quant:
            return False
        if not node.inputs or not all(v.is_const for v in node.inputs):
            return False
        if not all(o.type.is_static for o in node.outputs):  # e.g. buffer[:, :S]
            return False
        return sum(o.type.numel for o in node.outputs) <= self.max_numel

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        from slimfx.backends.torch.kernels import KERNELS

        changed = False
        for node in graph.nodes:
            if not self.foldable(node):
                continue
            with torch.no_grad():
                result = KERNELS[node.op.name](*(v.const for v in node.inputs), **node.attrs)
            results = list(result) if isinstance(result, tuple | list) else [result]
            got = [TensorType.of(r) if isinstance(r, torch.Tensor) else None for r in results]
            if got != [o.type for o in node.outputs]:
                logger.warning("fold-constants: kernel of %s returned %s, expected %s; not folded",
                               node.describe(), got, [str(o.type) for o in node.outputs])
                continue
            new = []
            for out, tensor in zip(node.outputs, results, strict=True):
                c = graph.add_constant(tensor.contiguous(), out.name + "_folded", out.qparams)
                graph.replace_all_uses_with(out, c)
                new.append((c, out.name))
            graph.erase(node)
            for c, name in new:
                graph.rename(c, name)
            changed = True
        return PassResult(graph, changed)
