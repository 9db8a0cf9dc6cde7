"""Fast fp32 convolutions and linear layers on x86 (AVX2/FMA): im2col + a register-tiled dense.

TVM's default CPU pipeline leaves ``conv2d`` and ``matmul`` as scalar loops (slimfx's default
schedule only spreads them over the cores). For a ``conv2d`` (groups 1) or ``linear`` whose
weight is a constant, this module writes instead:

1. for a convolution, ``col[n, y, x, c, r, s] = X[n, c, y*sh - ph + r*dh, x*sw - pw + s*dw]``
   (0 outside the image), viewed as the ``[N*OH*OW, C*KH*KW]`` matrix (:func:`im2col_func`);
2. ``out[i, j] = sum_k A[i, k] * W[j // 8, k, j % 8] + bias[j]``, with the weight packed in
   blocks of 8 output channels, scheduled by hand (:func:`dense_func`): a tile of ``mi`` rows
   x ``nb`` blocks of 8 channels is accumulated in vector registers (one broadcast of
   ``A[i, k]`` and one 8-wide FMA per row and block), tiles run in parallel;
3. for a convolution, ``[N, OH, OW, OC] -> [N, OC, OH, OW]``.

The sum runs over ``k`` in order, as in the direct convolution; results match torch within
fp32 rounding (the accumulation order differs from oneDNN's). Both PrimFuncs are marked
``tirx.is_scheduled`` and opaque: fusion and tuning leave them alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.relax import Expr

from slimfx.backends.tvm.conv_int8 import dense_tiles
from slimfx.backends.tvm.kernels import hand_kernel
from slimfx.backends.tvm.lower import LowerContext

__all__ = ["fast_fp32", "conv2d_fp32", "linear_fp32", "dense_func", "im2col_func"]

R = relax.op


def fast_fp32(ctx: LowerContext) -> bool:
    """Whether the context's target is an x86 CPU with AVX2 and FMA (8-wide fp32 FMA)."""
    return ctx.has("avx2") and ctx.has("fma")


def dense_func(m: int, k: int, n: int) -> tirx.PrimFunc:
    """``out[i, j] = sum_k A[i, k] * B[j//8, k, j%8] + bias[j]`` (fp32), scheduled by hand."""
    a = te.placeholder((m, k), "float32", name="A")
    bw = te.placeholder((n // 8, k, 8), "float32", name="B")
    bias = te.placeholder((n,), "float32", name="bias")
    r = te.reduce_axis((0, k), "k")
    acc = te.compute((m, n), lambda i, j: te.sum(a[i, r] * bw[j // 8, r, j % 8], axis=r),
                     name="dense_f32")
    out = te.compute((m, n), lambda i, j: acc[i, j] + bias[j], name="dense_bias")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, bw, bias, out]))
    mi, nb = dense_tiles(m, n // 8)
    blk = sch.get_sblock("dense_f32")
    i, j, kk = sch.get_loops(blk)
    j0, j1 = sch.split(j, [None, 8])
    i0, i1 = sch.split(i, [None, mi])
    j0o, j0i = sch.split(j0, [None, nb])
    sch.reorder(i0, j0o, kk, i1, j0i, j1)
    epi = sch.get_sblock("dense_bias")
    sch.reverse_compute_at(epi, j0o)
    sch.parallel(sch.fuse(i0, j0o))
    sch.vectorize(j1)  # before decompose_reduction: after it, vectorize refuses the update
    sch.decompose_reduction(blk, kk)
    sch.unroll(j0i)
    sch.unroll(i1)
    _, inner = sch.split(sch.get_loops(epi)[-1], [None, 8])
    sch.vectorize(inner)
    return hand_kernel(sch.mod["main"], "dense_f32_fma")


def im2col_func(n: int, c: int, h: int, wd: int, kh: int, kw: int, sh: int, sw: int,
                ph: int, pw: int, dh: int, dw: int) -> tirx.PrimFunc:
    """The 6-D fp32 im2col (module docstring, step 1); rows ``(n, y)`` in parallel."""
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xt = te.placeholder((n, c, h, wd), "float32", name="X")

    def body(b_, y, xx, ci, r, s_):
        hi = y * sh - ph + r * dh
        wi = xx * sw - pw + s_ * dw
        inside = tirx.all(hi >= 0, hi < h, wi >= 0, wi < wd)
        return tirx.if_then_else(inside, xt[b_, ci, hi, wi], tirx.const(0.0, "float32"))

    col = te.compute((n, oh, ow, c, kh, kw), body, name="im2col_f32")
    sch = tvm.s_tir.Schedule(te.create_prim_func([xt, col]))
    loops = sch.get_loops(sch.get_sblock("im2col_f32"))
    sch.parallel(sch.fuse(loops[0], loops[1]))
    if kh * kw > 1:
        sch.unroll(loops[-1])
    return hand_kernel(sch.mod["main"], "im2col_f32")


def _pack(w: np.ndarray) -> np.ndarray:
    """``[N, K]`` -> ``[N/8, K, 8]``."""
    n, k = w.shape
    return np.ascontiguousarray(w.reshape(n // 8, 8, k).transpose(0, 2, 1))


def _dense(ctx: LowerContext, a: Expr, w: np.ndarray, bias: np.ndarray | None) -> Expr:
    m, k = ctx.shape_of(a)
    n = w.shape[0]
    name = f"dense_f32_{m}x{k}x{n}"
    gv = ctx.bb.add_func(dense_func(m, k, n).with_attr("global_symbol", name), name)
    b = np.zeros(n, np.float32) if bias is None else bias.astype(np.float32)
    return ctx.emit(relax.call_tir(gv, [a, ctx.const(_pack(w.astype(np.float32)), "float32"),
                                        ctx.const(b, "float32")],
                                   relax.TensorType((m, n), "float32")))


def _const(e: Expr | None) -> np.ndarray | None:
    return e.value.numpy() if isinstance(e, tvm.ir.expr.Constant) else None


def applies(ctx: LowerContext, x: Expr, w: Expr, b: Expr | None, groups: int = 1) -> bool:
    """The fast path: fp32 with static shapes, a constant weight with ``out channels % 8 == 0``,
    a constant or no bias, groups 1, on an AVX2/FMA target."""
    if groups != 1 or ctx.dtype_of(x) != "float32" or _const(w) is None:
        return False
    if not ctx.is_static_shape(x):  # symbolic dims: the generic Relax op
        return False
    if b is not None and _const(b) is None:
        return False
    return ctx.shape_of(w)[0] % 8 == 0 and fast_fp32(ctx)


def conv2d_fp32(ctx: LowerContext, x: Expr, w: Expr, b: Expr | None, *,
                stride: Sequence[int], padding: Sequence[int],
                dilation: Sequence[int]) -> Expr:
    """``conv2d`` (groups 1, :func:`applies`) as im2col + :func:`dense_func`; NCHW result."""
    wn = _const(w)
    assert wn is not None
    n, c, h, wd = ctx.shape_of(x)
    oc, _, kh, kw = wn.shape
    (sh, sw), (ph, pw), (dh, dw) = tuple(stride), tuple(padding), tuple(dilation)
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    key = (n, c, h, wd, kh, kw, sh, sw, ph, pw, dh, dw)
    name = "im2col_f32_" + "_".join(str(v) for v in key)
    gv = ctx.bb.add_func(im2col_func(*key).with_attr("global_symbol", name), name)
    col = ctx.emit(relax.call_tir(gv, [x], relax.TensorType((n, oh, ow, c, kh, kw), "float32")))
    col = ctx.emit(R.reshape(col, [n * oh * ow, c * kh * kw]))
    y = _dense(ctx, col, wn.reshape(oc, -1), _const(b))
    y = ctx.emit(R.reshape(y, [n, oh, ow, oc]))
    return ctx.emit(R.permute_dims(y, [0, 3, 1, 2]))


def linear_fp32(ctx: LowerContext, x: Expr, w: Expr, b: Expr | None) -> Expr:
    """``linear`` (:func:`applies`) on :func:`dense_func`; any leading dimensions."""
    wn = _const(w)
    assert wn is not None
    shape = ctx.shape_of(x)
    m = int(np.prod(shape[:-1]))
    a = ctx.emit(R.reshape(x, [m, shape[-1]]))
    y = _dense(ctx, a, wn, _const(b))
    return ctx.emit(R.reshape(y, [*shape[:-1], wn.shape[0]]))
