"""4-bit weights in compiled models: stored packed, unpacked to int8 at run time.

A weight of a ``qconv*`` / ``qlinear`` that is 4-bit (``slimfx/ir/int4.py``: an ``i8``
constant whose qparams range fits in ``[-8, 7]``) becomes a ``uint8`` Relax constant of
``ceil(n / 2)`` bytes, packed as ``int4.py`` describes, followed by the unpack, in Relax:

    b = int8(packed);  lo = (b << 4) >> 4;  hi = b >> 4       (arithmetic shifts)
    w = reshape(stack([lo, hi], axis=1)[:n], shape)

So the library keeps the packed bytes (the artifact is ~half the size of the int8 one for
the weights), and the integer program is unchanged: the unpacked int8 values are exactly the
IR's, and the conv/dense that follows is the exact int32 one of ``lower_int8.py``.

The constant first goes through ``vm.builtin.copy`` (the VM's identity on objects): TVM's
``FoldConstant`` (run by ``tuning.prepare``) only folds operators whose operands are all
constants, so it would otherwise unpack every weight at build time and store int8 again.
The cost: the weights are unpacked on every call (one elementwise pass over the weight
bytes), and since the weight is no longer a constant when the conv/dense is lowered, the
hand-scheduled VNNI / AVX2 kernels (which lay their weights out at build time) are not
used; 4-bit layers run on the generic int32 conv/dense with the default CPU schedule.
"""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.relax import Expr

from slimfx.backends.tvm.lower import LowerContext
from slimfx.ir.core import Node
from slimfx.ir.int4 import is_int4, pack_int4

__all__ = ["packed_weight"]

R = relax.op


def packed_weight(ctx: LowerContext, node: Node, w: Expr, index: int = 1) -> Expr:
    """``w`` (operand ``index`` of ``node``), unpacked at run time from 4-bit storage when the
    IR value is a 4-bit constant; ``w`` itself otherwise."""
    v = node.inputs[index]
    if not is_int4(v):
        return w
    assert v.const is not None
    shape = [int(d) for d in v.type.shape]
    n = int(np.prod(shape)) if shape else 1
    packed = pack_int4(v.const).numpy()
    const = ctx.const(packed, "uint8")
    opaque = ctx.emit(R.call_pure_packed("vm.builtin.copy", const,
                                         ty_args=relax.TensorType(packed.shape, "uint8")))
    b = ctx.emit(R.astype(opaque, "int8"))
    four = ctx.scalar(4, "int8")
    lo = ctx.emit(R.right_shift(R.left_shift(b, four), four))
    hi = ctx.emit(R.right_shift(b, four))
    flat = ctx.emit(R.reshape(R.stack([lo, hi], axis=1), [2 * packed.shape[0]]))
    if 2 * packed.shape[0] != n:
        flat = ctx.emit(R.strided_slice(flat, axes=[0], begin=[0], end=[n]))
    return ctx.emit(R.reshape(flat, shape))
