"""``fuse-activation`` (alias ``fuse-conv-relu``): moves a clamp-like activation into its producer.

Ops with ``Trait.FUSABLE_ACTIVATION`` (conv1d/conv2d/conv_transpose2d/linear)
carry ``act_min``/``act_max``: their result is ``clamp(y, act_min, act_max)``
(``None`` = unbounded). An activation right after such a node folds into it:

- ``relu``  -> ``[0, +inf)``
- ``relu6`` -> ``[0, 6]``
- ``clamp{min=a,max=b}`` (also ``hardtanh``) -> ``[a, b]``

An existing fused range ``[a0, b0]`` composes by intersection:
``clamp(clamp(y, a0, b0), a, b) == clamp(y, max(a0, a), min(b0, b))`` whenever the
two ranges overlap. The rule refuses, with a reason, when the producer's result
has other users (or is a graph output), when the ranges do not overlap, or when
the values carry quantization parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

from slimfx.ir.core import Node
from slimfx.ir.ops import Trait
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

__all__ = ["FuseActivation", "FuseActivationRule", "activation_range"]

Range = tuple[float | None, float | None]


def activation_range(node: Node) -> Range:
    """The ``(min, max)`` clamp range of a relu/relu6/clamp node (None = unbounded)."""
    name = node.op.name
    if name == "relu":
        return 0.0, None
    if name == "relu6":
        return 0.0, 6.0
    if name == "clamp":
        return node.attrs["min"], node.attrs["max"]
    raise ValueError(f"{node.describe()} is not a clamp-like activation")


def intersect(a: Range, b: Range) -> Range | None:
    """The intersection of two ranges, or None when they do not overlap."""
    lo = a[0] if b[0] is None else b[0] if a[0] is None else max(a[0], b[0])
    hi = a[1] if b[1] is None else b[1] if a[1] is None else min(a[1], b[1])
    if lo is not None and hi is not None and lo > hi:
        return None
    return lo, hi


@dataclass(frozen=True)
class FuseActivationRule(RewriteRule):
    """relu|relu6|clamp(conv|linear(...)) -> conv|linear(...){act_min, act_max}."""

    name = "fuse-activation"

    def pattern(self) -> Pattern:
        producer = is_op(Trait.FUSABLE_ACTIVATION)(wildcard()).named("producer")
        return is_op("relu", "relu6", "clamp")(producer).named("act")

    def check(self, match: Match) -> str | None:
        producer, act = match.node("producer"), match.node("act")
        out = producer.outputs[0]
        others = [u.node for u in out.uses() if u.node is not act]
        graph = producer.graph
        if others or (graph is not None and any(out is o for o in graph.outputs)):
            who = ", ".join(f"%{n.name}" for n in others) or "the graph outputs"
            return (f"the result %{out.name} of {producer.op.name} is also used by {who}, "
                    "which must see it before the activation")
        old = (producer.attrs["act_min"], producer.attrs["act_max"])
        if intersect(old, activation_range(act)) is None:
            return (f"the fused range {old} of %{producer.name} and the range "
                    f"{activation_range(act)} of %{act.name} do not overlap")
        if out.qparams is not None or act.outputs[0].qparams is not None:
            return "the values are already quantized"
        return None

    def rewrite(self, match: Match, rewriter: Rewriter) -> None:
        producer, act = match.node("producer"), match.node("act")
        rng = intersect((producer.attrs["act_min"], producer.attrs["act_max"]),
                        activation_range(act))
        assert rng is not None
        rewriter.set_attrs(producer, act_min=rng[0], act_max=rng[1])
        rewriter.replace_all_uses_with(act.outputs[0], producer.outputs[0])
        rewriter.erase(act)


@register_pass(aliases=("fuse-conv-relu",))
@dataclass(frozen=True)
class FuseActivation(RewritePass):
    """Fuse relu/relu6/clamp into the act_min/act_max of the preceding conv or linear."""

    name = "fuse-activation"

    def rules(self) -> list[RewriteRule]:
        return [FuseActivationRule()]
