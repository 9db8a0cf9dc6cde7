"""4-bit weights in compiled models: stored packed, unpacked to int8 once, at load time.

A ``qconv*`` / ``qlinear`` whose weight is 4-bit (``slimfx/ir/int4.py``: an ``i8`` constant
whose qparams range fits in ``[-8, 7]``) is lowered by its usual int8 lowering, with one
difference: every integer constant that lowering creates whose values all lie in
``[-8, 7]`` (the weight, in whatever layout the kernel wants: the VNNI ``[N/16, K/4, 16, 4]``
int8 blocks, the AVX2 int16 pairs, the plain int32 weight of the generic conv) is stored
as a ``uint8`` constant of ``ceil(n / 2)`` bytes, packed as ``int4.py`` describes, and
unpacked by Relax ops of the module's load function (:data:`.lower.LOAD_FN`, see
:meth:`.lower.LowerContext.load_time`)::

    b = int8(packed[i]);  pairs[i] = [(b << 4) >> 4, b >> 4] as dtype   (arithmetic shifts)
    w = reshape(reshape(pairs, [2 * n_bytes])[:n], shape)

The load function runs once per loaded library and hands the unpacked weight to every call
of the entry functions as a parameter: a call computes exactly what it would with the int8
constant, and unpacks nothing. Packing is lossless for any integer array within
``[-8, 7]``, so the integers the kernel sees are exactly the IR's and the program stays
bit-exact; the library keeps only the packed bytes (weights take half the bytes of the int8
program's); the unpacked copy lives in memory while the model is loaded.

The packed constant goes through ``vm.builtin.copy`` (the VM's identity on objects) before
the unpack: TVM's ``FoldConstant`` (run by ``tuning.prepare``) folds every operator whose
operands are all constants, and would otherwise unpack at build time and store the int8
weights in the library again.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
from tvm import relax, te, tirx
from tvm.relax import Expr

from slimfx.backends.tvm.lower import LowerContext
from slimfx.ir.core import Node
from slimfx.ir.int4 import INT4_RANGE, is_int4, pack_int4

__all__ = ["int4_weights", "unpacked"]

R = relax.op

_MIN_PACKED = 16  # smaller arrays (scalars, short per-channel vectors) stay as they are
_INTEGER = ("int8", "int16", "int32", "int64")


def unpacked(ctx: LowerContext, values: np.ndarray, dtype: str) -> Expr:
    """``values`` (integers in [-8, 7]) as a load-time weight of ``dtype`` and the shape of
    ``values``, unpacked from a packed ``uint8`` constant (module docstring)."""
    import torch

    shape = [int(d) for d in values.shape]
    n = int(values.size)
    packed = pack_int4(torch.from_numpy(np.ascontiguousarray(values).astype(np.int8))).numpy()
    key = ("int4", dtype, tuple(shape), hashlib.sha256(packed.tobytes()).hexdigest())

    def build(bb: relax.BlockBuilder) -> Expr:
        const = relax.const(packed, "uint8")
        opaque = bb.emit(R.call_pure_packed("vm.builtin.copy", const,
                                            ty_args=relax.TensorType(packed.shape, "uint8")))

        def unpack(p: te.Tensor) -> te.Tensor:  # [bytes, 2]: the low, then the high nibble
            four = tirx.const(4, "int8")

            def value(i: Any, j: Any) -> Any:
                byte = p[i].astype("int8")
                up = tirx.if_then_else(j == 0, byte << four, byte)  # the nibble to the top
                return (up >> four).astype(dtype)  # arithmetic shift: sign-extends
            return te.compute((packed.shape[0], 2), value, name="unpack_int4")

        pairs = bb.emit_te(unpack, opaque, primfunc_name_hint="unpack_int4")
        flat = bb.emit(R.reshape(pairs, [2 * packed.shape[0]]))
        if 2 * packed.shape[0] != n:
            flat = bb.emit(R.strided_slice(flat, axes=[0], begin=[0], end=[n]))
        return bb.emit(R.reshape(flat, shape))

    return ctx.load_time(key, relax.TensorType(shape, dtype), build)


class _PackingContext(LowerContext):
    """The lowering context of one 4-bit layer: integer constants within [-8, 7] are
    created packed (:func:`unpacked`); everything else as usual."""

    __slots__ = ()

    def const(self, array: Any, dtype: str) -> relax.Expr:
        arr = np.asarray(array, dtype=dtype)
        if (dtype in _INTEGER and arr.size >= _MIN_PACKED
                and INT4_RANGE[0] <= int(arr.min()) and int(arr.max()) <= INT4_RANGE[1]):
            return unpacked(self, arr, dtype)
        return super().const(arr, dtype)


def _packing(ctx: LowerContext) -> _PackingContext:
    p = _PackingContext.__new__(_PackingContext)
    for cls in type(ctx).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            if hasattr(ctx, slot):
                setattr(p, slot, getattr(ctx, slot))  # shared: the builder, the caches
    return p


def int4_weights(fn: Callable[..., Expr]) -> Callable[..., Expr]:
    """Wraps the lowering of a weighted integer op (operand 1 the weight) so that a 4-bit
    weight is stored packed (module docstring)."""
    @functools.wraps(fn)
    def lower(ctx: LowerContext, node: Node, *args: Expr) -> Expr:
        if len(node.inputs) > 1 and is_int4(node.inputs[1]):
            ctx = _packing(ctx)
        return fn(ctx, node, *args)
    return lower
