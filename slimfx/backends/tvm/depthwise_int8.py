"""Depthwise int8 convolution for CPUs: one scheduled kernel, requantization in its epilogue.

A ``qconv2d`` with ``groups == C_in == C_out`` (MobileNet, EfficientNet) and a constant int8
weight ``[C, 1, KH, KW]`` is lowered to one PrimFunc (:func:`depthwise_func`):

1. ``xp[n, c, y, x] = int16(x[n, c, y - ph, x - pw]) - x_zero_point``, 0 outside the image
   (the zero-point shift makes the padding exactly 0), one padded plane per channel;
2. ``acc[n, c, y, x] = sum_{r,s} int32(xp[n, c, y*sh + r*dh, x*sw + s*dw]) * w[c, r, s]``;
3. ``out = acc + bias``, or with a fused ``requantize``
   (:class:`slimfx.backends.tvm.conv_int8.Requant`) its int8 result.

Exact: ``|x - zp| <= 255`` fits int16, each product fits int32 and so does the sum of
``KH * KW`` of them; the requantization is the ``requantize`` formula on the same int32 sums.

Schedule: the (n, c) planes run in parallel; each computes its padded plane (cache-local),
then output rows with a vector of output columns innermost, below the unrolled taps
(``acc[y, x:x+v] += xp[y*sh+r, (x:x+v)*sw+s] * w[r, s]``), then the epilogue on the plane.
When the input is the channels-last result of the previous convolution (and ``C % 8 == 0``)
the channels-last kernel (:func:`depthwise_nhwc_func`) reads it directly and the result
stays channels-last for the next one. Degenerate extents (a 1x1 output or kernel) keep
plain loops. The function is marked
``tirx.is_scheduled`` and opaque, like the packed dense kernels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.relax import Expr

from slimfx.backends.tvm.conv_int8 import Requant, requant_value
from slimfx.backends.tvm.kernels import hand_kernel
from slimfx.backends.tvm.lower import LowerContext

__all__ = ["applies", "depthwise_conv", "depthwise_func", "depthwise_nhwc_func"]

R = relax.op

logger = logging.getLogger(__name__)


def applies(x_shape: Sequence[int], w: np.ndarray, groups: int, x_dtype: str) -> bool:
    """Whether :func:`depthwise_conv` takes this ``qconv2d``: depthwise, int8 weight."""
    return (len(x_shape) == 4 and w.ndim == 4 and w.dtype == np.int8 and groups > 1
            and groups == x_shape[1] == w.shape[0] and w.shape[1] == 1
            and x_dtype in ("int8", "uint8"))


def _vector(ow: int) -> int:
    """Output columns per vector: 16/8/4 dividing ``ow``, else the whole row when short."""
    for v in (16, 8, 4):
        if ow % v == 0:
            return v
    return ow if ow <= 16 else 1


def depthwise_func(x_shape: Sequence[int], x_dtype: str, kernel: tuple[int, int],
                   stride: tuple[int, int], padding: tuple[int, int],
                   dilation: tuple[int, int], x_zero_point: int,
                   requant: Requant | None) -> tirx.PrimFunc:
    """The scheduled PrimFunc ``(x, w, cb[, mul, half, shift]) -> out`` (see module doc).

    ``w`` is int8 ``[C, KH, KW]``, ``cb`` the int32 bias ``[C]``; ``out`` is int32, or the
    ``requant`` dtype.
    """
    n, c, h, wd = (int(d) for d in x_shape)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    hp, wp = h + 2 * ph, wd + 2 * pw
    x = te.placeholder((n, c, h, wd), x_dtype, name="X")
    w = te.placeholder((c, kh, kw), "int8", name="W")
    cb = te.placeholder((c,), "int32", name="CB")
    zp = tirx.const(x_zero_point, "int16")

    def pad(b_, ch, y, xx):
        inside = tirx.all(y >= ph, y < ph + h, xx >= pw, xx < pw + wd)
        v = x[b_, ch, tirx.min(tirx.max(y - ph, 0), h - 1), tirx.min(tirx.max(xx - pw, 0), wd - 1)]
        return tirx.if_then_else(inside, v.astype("int16") - zp, tirx.const(0, "int16"))

    xp = te.compute((n, c, hp, wp), pad, name="dw_pad")
    r = te.reduce_axis((0, kh), "r")
    s = te.reduce_axis((0, kw), "s")
    acc = te.compute((n, c, oh, ow), lambda b_, ch, y, xx: te.sum(
        xp[b_, ch, y * sh + r * dh, xx * sw + s * dw].astype("int32")
        * w[ch, r, s].astype("int32"), axis=[r, s]), name="dw_acc")
    extra: list[te.Tensor] = []
    if requant is None:
        out = te.compute((n, c, oh, ow), lambda b_, ch, y, xx: acc[b_, ch, y, xx] + cb[ch],
                         name="dw_out")
    else:
        extra = [te.placeholder((c,), "int64", name=nm) for nm in ("MUL", "HALF", "SHIFT")]
        mul, half, shift = extra
        out = te.compute((n, c, oh, ow), lambda b_, ch, y, xx: requant_value(
            acc[b_, ch, y, xx] + cb[ch], mul[ch], half[ch], shift[ch], requant), name="dw_out")
    func = te.create_prim_func([x, w, cb, *extra, out])
    try:
        return hand_kernel(_schedule(func, _vector(ow)), "qconv_depthwise_nchw")
    except (RuntimeError, ValueError) as e:  # degenerate extents: a 1x1 output or kernel
        logger.debug("depthwise %s: plain loops (%s)", tuple(x_shape), e)
    return hand_kernel(func, "qconv_depthwise_plain")


def _schedule(func: tirx.PrimFunc, vec: int) -> tirx.PrimFunc:
    sch = tvm.s_tir.Schedule(func)
    blk_out = sch.get_sblock("dw_out")
    b0, c0, _, x0 = sch.get_loops(blk_out)
    plane = sch.fuse(b0, c0)
    sch.parallel(plane)
    blk_acc = sch.get_sblock("dw_acc")
    sch.compute_at(blk_acc, plane)
    sch.compute_at(sch.get_sblock("dw_pad"), plane)
    _, ya, xa, ra, sa = sch.get_loops(blk_acc)
    xo, xi = sch.split(xa, [None, vec])
    sch.reorder(ya, xo, ra, sa, xi)
    sch.unroll(ra)
    sch.unroll(sa)
    if vec > 1:
        sch.vectorize(xi)  # before decompose_reduction, which would refuse it
        _, xe = sch.split(x0, [None, vec])
        sch.vectorize(xe)
    init = sch.decompose_reduction(blk_acc, ra)
    if vec > 1:
        sch.vectorize(sch.get_loops(init)[-1])
    return sch.mod["main"]


def depthwise_nhwc_func(x_shape: Sequence[int], x_dtype: str, kernel: tuple[int, int],
                        stride: tuple[int, int], padding: tuple[int, int],
                        dilation: tuple[int, int], x_zero_point: int,
                        requant: Requant | None) -> tirx.PrimFunc:
    """The channels-last kernel ``(x [N, H, W, C], w [KH, KW, C], cb[, ...]) -> out
    [N, OH, OW, C]``: the same sums as :func:`depthwise_func`, vectorized over channels.

    No padded copy: a tap outside the image reads a clamped in-bounds element and is
    replaced by 0 (the shifted padding value). Rows of output pixels run in parallel; each
    pixel's ``C`` sums stay in a small buffer, the taps unrolled outside the vector of
    channels, then the epilogue. ``x_shape`` is given NCHW.
    """
    n, c, h, wd = (int(d) for d in x_shape)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    x = te.placeholder((n, h, wd, c), x_dtype, name="X")
    w = te.placeholder((kh, kw, c), "int8", name="W")
    cb = te.placeholder((c,), "int32", name="CB")
    zp = tirx.const(x_zero_point, "int32")
    r = te.reduce_axis((0, kh), "r")
    s = te.reduce_axis((0, kw), "s")

    def tap(b_, y, xx, ch):
        hi, wi = y * sh + r * dh - ph, xx * sw + s * dw - pw
        v = x[b_, tirx.min(tirx.max(hi, 0), h - 1), tirx.min(tirx.max(wi, 0), wd - 1), ch]
        inside = tirx.all(hi >= 0, hi < h, wi >= 0, wi < wd)
        shifted = tirx.Select(inside, v.astype("int32") - zp, tirx.const(0, "int32"))
        return te.sum(shifted * w[r, s, ch].astype("int32"), axis=[r, s])

    acc = te.compute((n, oh, ow, c), tap, name="dw_acc")
    extra: list[te.Tensor] = []
    if requant is None:
        out = te.compute((n, oh, ow, c), lambda b_, y, xx, ch: acc[b_, y, xx, ch] + cb[ch],
                         name="dw_out")
    else:
        extra = [te.placeholder((c,), "int64", name=nm) for nm in ("MUL", "HALF", "SHIFT")]
        mul, half, shift = extra
        out = te.compute((n, oh, ow, c), lambda b_, y, xx, ch: requant_value(
            acc[b_, y, xx, ch] + cb[ch], mul[ch], half[ch], shift[ch], requant), name="dw_out")
    func = te.create_prim_func([x, w, cb, *extra, out])
    vec = 16 if c % 16 == 0 else 8
    try:
        sch = tvm.s_tir.Schedule(func)
        blk_out = sch.get_sblock("dw_out")
        b0, y0, x0, c0 = sch.get_loops(blk_out)
        rows = sch.fuse(b0, y0)
        sch.parallel(rows)
        blk_acc = sch.get_sblock("dw_acc")
        sch.compute_at(blk_acc, x0)
        ca, ra, sa = sch.get_loops(blk_acc)[-3:]
        co, ci = sch.split(ca, [None, vec])
        sch.reorder(co, ra, sa, ci)
        sch.unroll(ra)
        sch.unroll(sa)
        sch.vectorize(ci)
        _, ce = sch.split(c0, [None, vec])
        sch.vectorize(ce)
        init = sch.decompose_reduction(blk_acc, ra)
        sch.vectorize(sch.get_loops(init)[-1])
        return hand_kernel(sch.mod["main"], "qconv_depthwise_nhwc")
    except (RuntimeError, ValueError) as e:  # degenerate extents: a 1x1 output or kernel
        logger.debug("depthwise nhwc %s: plain loops (%s)", tuple(x_shape), e)
    return hand_kernel(func, "qconv_depthwise_plain")


def depthwise_conv(ctx: LowerContext, x: Expr, w: np.ndarray, b: Expr | None, *,
                   stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                   x_zero_point: int, requant: Requant | None = None) -> Expr | None:
    """A depthwise ``qconv2d`` on :func:`depthwise_func`; ``None`` for a run-time bias.

    The result is int32 NCHW, or int8/uint8 with ``requant``.
    """
    if b is not None and not isinstance(b, tvm.ir.expr.Constant):
        return None
    shape = ctx.shape_of(x)
    n, c, h, wd = shape
    bias = np.zeros(c, np.int32) if b is None else b.value.numpy().astype(np.int32)
    kernel = (int(w.shape[2]), int(w.shape[3]))
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    args = (tuple(shape), ctx.dtype_of(x), kernel, tuple(stride), tuple(padding),
            tuple(dilation), x_zero_point, requant)
    # channels-last when the input already is (the previous conv's NHWC result) and the
    # channels fill vectors: no transpose on either side
    src = ctx.channels_last(x) if c % 8 == 0 else None
    if src is not None:
        func, x, wk = depthwise_nhwc_func(*args), src, w[:, 0].transpose(1, 2, 0)
        layout, out_shape = "nhwc", (n, oh, ow, c)
    else:
        func, wk = depthwise_func(*args), w[:, 0]
        layout, out_shape = "nchw", (n, c, oh, ow)
    key = "_".join(str(v) for v in (*shape, *kernel, *stride, *padding, *dilation))
    name = f"qconv_depthwise_{layout}_{key}_z{x_zero_point}".replace("-", "m")
    out_dtype = "int32" if requant is None else requant.dtype
    operands = [x, ctx.const(np.ascontiguousarray(wk), "int8"), ctx.const(bias, "int32")]
    if requant is not None:
        name += "_rq_" + requant.key
        operands += requant.constants(ctx)
    gv = ctx.bb.add_func(func.with_attr("global_symbol", name), name)
    out = ctx.emit(relax.call_tir(gv, operands, relax.TensorType(out_shape, out_dtype)))
    return out if layout == "nchw" else ctx.emit(R.permute_dims(out, [0, 3, 1, 2]))
