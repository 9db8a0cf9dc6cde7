"""Shape arithmetic shared by the type-inference functions of built-in ops.

Dimensions may be symbolic (:mod:`slimfx.ir.symbolic`). Broadcasting accepts a
symbol against itself (or a provably equal expression) and against 1; anything
else that cannot be proven raises :class:`~slimfx.ir.symbolic.ShapeError`.
Convolution and pooling windows need static spatial sizes (only the batch and
other leading dimensions may be symbolic): :func:`static_dims` says which dim
is not. Static shapes give exactly the results (and ``int`` types) they always did.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from slimfx.ir.symbolic import Dim, ShapeError, format_dim, provably_equal
from slimfx.ir.types import TensorType

__all__ = ["broadcast", "conv_out", "pool_out", "norm_axis", "promote", "static_dims",
           "ShapeError"]

_RANK = {"bool": 0, "u8": 1, "i8": 2, "i16": 3, "i32": 4, "i64": 5, "bf16": 6, "f16": 7,
         "f32": 8, "f64": 9}


def broadcast(*shapes: Sequence[Dim]) -> tuple[Dim, ...]:
    """numpy/torch broadcasting of several shapes.

    Raises:
        ValueError: static sizes that do not broadcast.
        ShapeError: a symbolic size against a different size (not provably equal,
            not 1), naming the dimension.
    """
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for i in range(rank):
        dims = {s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0}
        dims.discard(1)
        if len(dims) > 1:
            if all(type(d) is int for d in dims):
                raise ValueError(f"shapes {list(shapes)} do not broadcast")
            first, *rest = sorted(dims, key=lambda d: (type(d) is not int, str(d)))
            if not all(provably_equal(first, d) for d in rest):
                shown = ", ".join(format_dim(d) for d in sorted(dims, key=str))
                raise ShapeError(
                    f"dim {i - rank} of shapes {_shapes(shapes)} does not broadcast: sizes "
                    f"{shown} are not provably equal (a symbol broadcasts only with itself or 1)")
            dims = {first}
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def _shapes(shapes: Sequence[Sequence[Dim]]) -> str:
    return ", ".join("[" + ",".join(format_dim(d) for d in s) + "]" for s in shapes)


def static_dims(t: TensorType, dims: Iterable[int], what: str) -> None:
    """Raises ShapeError unless dimensions ``dims`` of ``t`` are ints.

    The op's type inference runs under a guard that prefixes the op name.
    """
    for i in dims:
        d = t.shape[i]
        if type(d) is not int:
            raise ShapeError(f"{what} dim {i % max(t.rank, 1)} of {t} is symbolic "
                             f"({format_dim(d)}); it must be static (only batch and other "
                             "leading dims may be symbolic)")


def promote(*types: TensorType) -> str:
    """Result dtype of an elementwise op, following torch's rule that 0-d tensors
    only lift the category (int -> float), never the width."""
    dims = [t for t in types if t.rank > 0]
    zero = [t for t in types if t.rank == 0]
    pool = dims or zero
    best = max(pool, key=lambda t: _RANK.get(t.dtype, 0)).dtype
    if dims and zero and not TensorType((), best).is_float:
        floats = [t for t in zero if t.is_float]
        if floats:
            return "f32" if best not in ("f16", "bf16", "f64") else best
    return best


def conv_out(size: int, kernel: int, stride: int, pad_lo: int, pad_hi: int, dilation: int,
             ceil_mode: bool = False) -> int:
    span = size + pad_lo + pad_hi - dilation * (kernel - 1) - 1
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= size + pad_lo:  # last window must start inside the input
            out -= 1
        return out
    return span // stride + 1


def pool_out(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> int:
    return conv_out(size, kernel, stride, pad, pad, dilation, ceil_mode)


def norm_axis(axis: int, rank: int) -> int:
    if not -max(rank, 1) <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} out of range for rank {rank}")
    return axis % max(rank, 1)


def prod(xs: Sequence[Dim]) -> Dim:
    return math.prod(xs)
