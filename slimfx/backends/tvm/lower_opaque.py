"""Relax lowerings of ``opaque`` nodes whose torch callable has a known meaning.

The frontend keeps ATen ops it does not normalise as ``opaque`` nodes (target name + JSON
arguments). Those that real models use for index arithmetic get a lowering here, keyed by
the target name; others are still reported by :func:`slimfx.compile` as unsupported.
Users add their own with :func:`register_opaque_lowering`.

- ``aten.gather.default(x, dim, index)``: ``gather_elements``;
- ``aten.index.Tensor(x, [i0, i1, ...])``: advanced indexing by adjacent index tensors
  (``None`` entries before them allowed): the indices broadcast together, negative ones
  wrap, and the indexed dimensions are flattened into one ``take``;
- ``aten.cumsum.default(x, dim, dtype=None)``: ``cumsum`` in the output's dtype;
- ``aten._weight_norm.default(v, g, dim)``: ``v * g / ||v||`` (norm over every other axis).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from tvm import relax
from tvm.relax import Expr

from slimfx.backends.tvm.lower import LowerContext, register_lowering, to_tvm_dtype
from slimfx.errors import LoweringError
from slimfx.ir.core import Node
from slimfx.ir.opaque import decode_spec

__all__ = ["register_opaque_lowering", "has_opaque_lowering"]

R = relax.op

OpaqueLowering = Callable[..., Expr]
_OPAQUE: dict[str, OpaqueLowering] = {}


def register_opaque_lowering(target: str, *,
                             override: bool = False) -> Callable[[OpaqueLowering], OpaqueLowering]:
    """Decorator: the Relax lowering of ``opaque`` nodes calling ``target`` (its name as the
    node's ``target`` attribute shows it, e.g. ``"aten.gather.default"``).

    The function is called as ``fn(ctx, node, *args, **kwargs)`` with the call's decoded
    arguments, tensor operands replaced by their Relax expressions.
    """
    def deco(fn: OpaqueLowering) -> OpaqueLowering:
        if target in _OPAQUE and not override:
            raise ValueError(f"an opaque lowering for {target!r} is already registered "
                             "(pass override=True)")
        _OPAQUE[target] = fn
        return fn
    return deco


def has_opaque_lowering(node: Node) -> bool:
    """Whether the opaque ``node`` has a lowering for its target."""
    return node.attrs["target"] in _OPAQUE


@register_lowering("opaque")
def _opaque(ctx: LowerContext, node: Node, *inputs: Expr) -> Expr:
    fn = _OPAQUE.get(node.attrs["target"])
    if fn is None:
        raise LoweringError(f"no TVM lowering for the torch callable {node.attrs['target']!r}; "
                            "register one with register_opaque_lowering")
    args, kwargs = decode_spec(node.attrs["spec"], list(inputs))
    return fn(ctx, node, *args, **kwargs)


@register_opaque_lowering("aten.gather.default")
def _gather(ctx: LowerContext, node: Node, x: Expr, dim: int, index: Expr,
            sparse_grad: bool = False) -> Expr:
    rank = ctx.rank_of(x)
    return R.gather_elements(x, index, axis=dim % rank)


@register_opaque_lowering("aten.index.Tensor")
def _index(ctx: LowerContext, node: Node, x: Expr, indices: list[Expr | None]) -> Expr:
    shape = ctx.shape_of(x)
    first = next((i for i, v in enumerate(indices) if v is not None), None)
    used = [i for i, v in enumerate(indices) if v is not None]
    if first is None or used != list(range(first, first + len(used))):
        raise LoweringError("index: only adjacent index tensors are supported (torch moves "
                            "the result dimensions of separated ones to the front)")
    idx = [indices[i] for i in used]
    if any(ctx.dtype_of(v) == "bool" for v in idx):
        raise LoweringError("index: boolean masks give data-dependent shapes; not supported")
    dims = [shape[i] for i in used]
    out = tuple(np.broadcast_shapes(*(tuple(ctx.shape_of(v)) for v in idx)))
    flat: Expr | None = None
    stride = 1
    for v, d in reversed(list(zip(idx, dims, strict=True))):
        v = ctx.cast(v, "int64")
        v = ctx.emit(R.where(R.less(v, ctx.scalar(0, "int64")),
                             R.add(v, ctx.scalar(d, "int64")), v))
        term = ctx.emit(R.broadcast_to(R.multiply(v, ctx.scalar(stride, "int64")), out))
        flat = term if flat is None else ctx.emit(R.add(flat, term))
        stride *= d
    assert flat is not None
    merged = [*shape[:first], stride, *shape[first + len(used):]]
    xs = ctx.emit(R.reshape(x, merged))
    return R.take(xs, flat, axis=first)


@register_opaque_lowering("aten.cumsum.default")
def _cumsum(ctx: LowerContext, node: Node, x: Expr, dim: int, dtype: Any = None) -> Expr:
    rank = ctx.rank_of(x)
    out = to_tvm_dtype(node.outputs[0].dtype)
    return R.cumsum(ctx.cast(x, out), axis=dim % rank, dtype=out)


@register_opaque_lowering("aten._weight_norm.default")
def _weight_norm(ctx: LowerContext, node: Node, v: Expr, g: Expr, dim: int = 0) -> Expr:
    rank = ctx.rank_of(v)
    axes = [a for a in range(rank) if a != dim % rank]
    norm = ctx.emit(R.sqrt(R.sum(R.multiply(v, v), axes, keepdims=True)))
    return R.multiply(v, R.divide(g, norm))
