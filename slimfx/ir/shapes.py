"""Shape arithmetic shared by the type-inference functions of built-in ops."""

from __future__ import annotations

import math
from collections.abc import Sequence

from slimfx.ir.types import TensorType

__all__ = ["broadcast", "conv_out", "pool_out", "norm_axis", "promote"]

_RANK = {"bool": 0, "u8": 1, "i8": 2, "i16": 3, "i32": 4, "i64": 5, "bf16": 6, "f16": 7,
         "f32": 8, "f64": 9}


def broadcast(*shapes: Sequence[int]) -> tuple[int, ...]:
    """numpy/torch broadcasting of several shapes."""
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(rank):
        dims = {s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0}
        dims.discard(1)
        if len(dims) > 1:
            raise ValueError(f"shapes {list(shapes)} do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


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


def prod(xs: Sequence[int]) -> int:
    return math.prod(xs)
