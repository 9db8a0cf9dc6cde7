"""Fast, bit-exact int8 convolutions for the TVM backend: im2col + a packed u8 x s8 dense.

A ``qconv1d``/``qconv2d`` with a constant int8 weight and ``groups == 1`` is lowered as

1. ``col = im2col(u)``: a ``[N*OH*OW, Kp]`` uint8 matrix of the input windows, where
   ``u = x + 128`` (int8 -> uint8; ``u = x`` for a uint8 input), out-of-image taps hold
   ``off = x_zero_point + 128`` (``x_zero_point`` for uint8), i.e. exactly 0 after the
   zero-point shift, and ``K = C*KH*KW`` is padded to ``Kp`` (a multiple of 4) with zeros;
2. ``acc = col @ packed(W)^T``, a u8 x s8 -> s32 dense on the weight packed
   ``[OC/16, Kp/4, 16, 4]``: the form meta-schedule tensorizes with VNNI (``vpdpbusd``),
   the same as ``qlinear`` (:func:`slimfx.backends.tvm.lower_int8._packed_qlinear`);
3. ``acc += bias - off * sum_k W[o, k]`` (a constant per output channel), then
   ``[N, OH, OW, OC] -> [N, OC, OH, OW]``.

Every step is exact in int32: ``sum_k (x - zp) * w = sum_k u * w - off * sum_k w`` and
``|sum_k u * w| <= 255 * 128 * K`` fits int32 for any real convolution.

On an x86 target with AVX-512 VNNI (the lowering context's target, :func:`x86_isa`) the dense is
a PrimFunc scheduled here by hand around ``dot_16x4_vnni`` (:func:`vnni_dense_func`), marked
``tirx.is_scheduled`` so that tuning leaves it alone: it is fast without any tuning trial.
On x86 (VNNI, or AVX2 with the int16 ``vpmaddwd`` dense) the im2col is the channels-last one
of :mod:`.im2col_nhwc` (:func:`nhwc_conv`): ``k`` ordered ``(kh, kw, c)``, the weight
reordered to match at compile time, 1x1 convolutions without any im2col; the integer sums are
the same, in another order. Elsewhere (``lower_graph`` without an x86 target: ARM, CUDA) the
im2col and dense are the plain TE computes above (meta-schedule may tensorize the dense). Depthwise and other
grouped convolutions, run-time weights and out channels not a multiple of 16 keep the
direct int32 convolution (:func:`grouped_conv`), scheduled by meta-schedule like any conv.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.relax import Expr

from slimfx.backends.tvm.kernels import hand_kernel
from slimfx.backends.tvm.lower import LowerContext

__all__ = ["Requant", "requant_value", "x86_isa", "packable", "packed_conv",
           "nhwc_conv", "grouped_conv", "vnni_dense_func", "avx2_dense_func", "avx2_matmul",
           "vnni_matmul", "dense_tiles"]

R = relax.op


def x86_isa(ctx: LowerContext) -> str | None:
    """The x86 int8 kernel family for the context's target: ``"vnni"`` (AVX-512 VNNI,
    ``vpdpbusd``), ``"avx2"`` (``vpmaddwd``), or ``None`` (no target, not x86: the
    portable lowerings)."""
    if ctx.has("avx512vnni"):
        return "vnni"
    return "avx2" if ctx.has("avx2") else None


@dataclass(frozen=True)
class Requant:
    """A ``requantize`` fused into a dense kernel's epilogue, per output channel.

    ``out[j] = clamp(((acc[j] + cb[j]) * mul[j] + half[j]) >> shift[j] + zero_point, qmin,
    qmax)`` in int64, ``half = 2**(shift-1)`` (0 for a shift of 0): the formula of the
    ``requantize`` lowering (:func:`slimfx.backends.tvm.lower_int8.requantize_expr`), applied
    to the int32 accumulator while it is still in registers, so the kernel writes int8.
    """

    mul: np.ndarray    # int64 [OC]
    shift: np.ndarray  # int64 [OC]
    zero_point: int
    qmin: int
    qmax: int
    dtype: str         # "int8" or "uint8"

    @staticmethod
    def per_channel(channels: int, multiplier: Sequence[int], shift: Sequence[int],
                    zero_point: int, qmin: int, qmax: int, dtype: str) -> Requant:
        """From ``requantize`` attributes (one entry per channel, or one for all)."""
        def full(v: Sequence[int]) -> np.ndarray:
            return np.broadcast_to(np.asarray(v, dtype=np.int64), (channels,)).copy()
        return Requant(full(multiplier), full(shift), zero_point, qmin, qmax, dtype)

    @property
    def key(self) -> str:
        """What the kernel bakes in (the rest are operands), for its name."""
        return f"{self.dtype}_z{self.zero_point}_{self.qmin}_{self.qmax}".replace("-", "m")

    @property
    def half(self) -> np.ndarray:
        return np.where(self.shift > 0, np.left_shift(np.int64(1),
                                                      np.maximum(self.shift - 1, 0)), 0)

    def constants(self, ctx: LowerContext) -> list[Expr]:
        """The kernel's epilogue operands ``mul, half, shift`` (int64 ``[OC]``)."""
        return [ctx.const(a.astype(np.int64), "int64") for a in (self.mul, self.half, self.shift)]


def _epilogue(acc: te.Tensor, cb: te.Tensor, rq: Requant | None) -> tuple[list[te.Tensor],
                                                                           te.Tensor]:
    """``acc + cb`` (int32), or with ``rq`` requantized to int8: (extra inputs, output)."""
    m, oc = acc.shape
    if rq is None:
        return [], te.compute((m, oc), lambda i, j: acc[i, j] + cb[j], name="qdense_bias")
    mul, half, sh = (te.placeholder((oc,), "int64", name=n) for n in ("MUL", "HALF", "SHIFT"))
    return [mul, half, sh], te.compute((m, oc), lambda i, j: requant_value(
        acc[i, j] + cb[j], mul[j], half[j], sh[j], rq), name="qdense_bias")


def requant_value(v: tirx.PrimExpr, mul: tirx.PrimExpr, half: tirx.PrimExpr,
                  shift: tirx.PrimExpr, rq: Requant) -> tirx.PrimExpr:
    """``clamp(((int64(v) * mul + half) >> shift) + zp, qmin, qmax)`` in ``rq.dtype``."""
    y = ((v.astype("int64") * mul + half) >> shift) + tirx.const(rq.zero_point, "int64")
    y = tirx.min(tirx.max(y, tirx.const(rq.qmin, "int64")), tirx.const(rq.qmax, "int64"))
    return y.astype(rq.dtype)


def packable(ctx: LowerContext, x_dtype: str, w: np.ndarray, groups: int) -> bool:
    """Whether :func:`packed_conv` applies: a dense int8 weight whose out channels divide 16
    (on x86 any number: :func:`nhwc_conv` pads them to the kernel's lanes)."""
    return (groups == 1 and w.dtype == np.int8 and x_dtype in ("int8", "uint8")
            and (w.shape[0] % 16 == 0 or x86_isa(ctx) is not None))


def _as_2d(stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
           nd: int) -> tuple[tuple[int, int], ...]:
    if nd == 2:
        return tuple(stride), tuple(padding), tuple(dilation)
    return (1, stride[0]), (0, padding[0]), (1, dilation[0])


def packed_conv(ctx: LowerContext, x: Expr, w: np.ndarray, b: Expr | None, *,
                stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                x_zero_point: int, requant: Requant | None = None) -> Expr | None:
    """``qconv{1,2}d`` (groups 1) as im2col + a VNNI-shaped dense; int32 NC(H)W result.

    With ``requant`` (x86 only: ``None`` is returned elsewhere) the kernel's epilogue
    requantizes and the result is int8/uint8.

    Args:
        ctx: the lowering context.
        x: the int8/uint8 input, ``[N, C, L]`` or ``[N, C, H, W]``.
        w: the constant int8 weight, ``[OC, C, KL]`` or ``[OC, C, KH, KW]``; ``OC % 16 == 0`` off x86.
        b: the int32 bias or None.
        stride, padding, dilation: the convolution's attributes (1 or 2 entries).
        x_zero_point: the input zero point.
        requant: a ``requantize`` of the result to fuse into the kernel.
    """
    isa = x86_isa(ctx)
    if requant is not None and isa is None:
        return None
    nd = w.ndim - 2
    shape = ctx.shape_of(x)
    if nd == 1:
        x = ctx.emit(R.reshape(x, [shape[0], shape[1], 1, shape[2]]))
        w = w.reshape(w.shape[0], w.shape[1], 1, w.shape[2])
    if isa is not None:
        out = nhwc_conv(ctx, x, w, b, stride=_as_2d(stride, padding, dilation, nd),
                        x_zero_point=x_zero_point, vnni=isa == "vnni", requant=requant)
        if nd == 1:
            n_, oc_, _, ow_ = ctx.shape_of(out)
            return R.reshape(out, [n_, oc_, ow_])
        return out
    (sh, sw), (ph, pw), (dh, dw) = _as_2d(stride, padding, dilation, nd)
    n, c, h, wd = ctx.shape_of(x)
    oc, _, kh, kw = w.shape
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    k0 = c * kh * kw
    kp = -(-k0 // 4) * 4
    m = n * oh * ow
    unsigned = ctx.dtype_of(x) == "uint8"
    off = x_zero_point if unsigned else x_zero_point + 128

    def im2col(xt: te.Tensor) -> te.Tensor:
        def body(i, k):
            b_, p = i // (oh * ow), i % (oh * ow)
            y, xx = p // ow, p % ow
            ci, r = k // (kh * kw), k % (kh * kw)
            hi = y * sh - ph + (r // kw) * dh
            wi = xx * sw - pw + (r % kw) * dw
            v = xt[b_, ci, hi, wi]
            u = v if unsigned else (v.astype("int16") + tirx.const(128, "int16")).astype("uint8")
            inside = tirx.all(k < k0, hi >= 0, hi < h, wi >= 0, wi < wd)
            fill = tirx.if_then_else(k < k0, tirx.const(off, "uint8"), tirx.const(0, "uint8"))
            return tirx.if_then_else(inside, u, fill)
        return te.compute((m, kp), body, name="im2col_u8")

    # opaque: FuseOps must not fuse the producer in, which would recompute it per tap
    col = ctx.bb.emit_te(im2col, x, primfunc_name_hint="qconv_im2col",
                         primfunc_attrs={"op_pattern": 8})
    w2 = np.zeros((oc, kp), dtype=np.int8)
    w2[:, :k0] = w.reshape(oc, k0)
    packed = w2.reshape(oc // 16, 16, kp // 4, 4).transpose(0, 2, 1, 3)
    wp = ctx.const(np.ascontiguousarray(packed), "int8")

    corr = -off * w2.astype(np.int64).sum(axis=1)
    if b is not None:
        bias = b.value.numpy() if isinstance(b, tvm.ir.expr.Constant) else None
        if bias is not None:
            corr = corr + bias.astype(np.int64)
    cb = ctx.const(corr.astype(np.int32), "int32")
    # target-neutral form (meta-schedule may still tensorize it)
    # one row on cuda (a 1x1 map, batch 1): dlight's GEMV rule fails on the packed weight,
    # so a zero second row (sliced off) takes its GEMM rule, on dp4a
    one_row = m == 1 and ctx.target is not None and ctx.target.kind.name == "cuda"
    if one_row:
        col = ctx.emit(R.nn.pad(col, [0, 1, 0, 0]))
    acc = ctx.bb.emit_te(_dense_te, col, wp, cb, primfunc_name_hint="qconv_dense_packed")
    if one_row:
        acc = ctx.emit(R.strided_slice(acc, [0], [0], [1]))
    if b is not None and not isinstance(b, tvm.ir.expr.Constant):
        acc = ctx.emit(R.add(acc, R.reshape(ctx.cast(b, "int32"), [1, oc])))
    acc = ctx.emit(R.reshape(acc, [n, oh, ow, oc]))
    out = ctx.emit(R.permute_dims(acc, [0, 3, 1, 2]))
    if nd == 1:
        return R.reshape(out, [n, oc, ow])
    return out


def nhwc_conv(ctx: LowerContext, x: Expr, w: np.ndarray, b: Expr | None, *,
              stride: tuple[tuple[int, ...], ...], x_zero_point: int, vnni: bool,
              requant: Requant | None = None) -> Expr:
    """2-D ``qconv2d`` (groups 1, constant int8 weight, any ``OC``) on x86: the
    channels-last im2col of :mod:`.im2col_nhwc` + the hand-scheduled dense; int32 NCHW.

    ``stride`` is the ``(stride, padding, dilation)`` triple of 2-tuples. ``vnni``: uint8
    ``u = x + 128`` (``x`` for uint8) into :func:`vnni_dense_func` with the correction
    ``-off * sum_k w`` folded into the bias (``off = x_zero_point (+ 128)``, the value of the
    out-of-image taps); otherwise int16 ``x - x_zero_point`` (0 outside the image) into
    :func:`avx2_dense_func`. 1x1 convolutions need no im2col: the channels-last sampled
    input is the GEMM's ``A``. With ``requant`` (the bias, if any, must be a constant) the
    dense's epilogue requantizes: the result is int8/uint8 NCHW.
    """
    from slimfx.backends.tvm import im2col_nhwc as nh

    (sh, sw), (ph, pw), (dh, dw) = stride
    n, c, h, wd = ctx.shape_of(x)
    oc = w.shape[0]
    unsigned = ctx.dtype_of(x) == "uint8"
    if vnni:
        dtype, q = "uint8", 4
        shift, fill = (0, x_zero_point) if unsigned else (128, x_zero_point + 128)
    else:
        dtype, q, shift, fill = "int16", 2, -x_zero_point, 0
    p = nh.plan((n, c, h, wd), w.shape, (sh, sw), (ph, pw), (dh, dw), q)
    src = ctx.channels_last(x)  # the previous kernel's NHWC result: no transpose
    xp = ctx.bb.emit_te(lambda xt: nh.prep_te(xt, p, dtype, shift, fill, src is not None),
                        x if src is None else src, primfunc_name_hint="qconv_nhwc_pack")
    if p.mode == "1x1":
        col = xp
    else:
        key = f"{p.mode}_{n}x{c}x{h}x{wd}_k{p.kh}x{p.kw}_s{sh}x{sw}_d{dh}x{dw}_{dtype}"
        name = f"qconv_im2col_nhwc_{key}"
        src = ctx.emit(relax.op.reshape(xp, [n, p.hp, p.wp * p.c])) if p.mode == "rows" else xp
        func = nh.im2col_func(p, dtype).with_attr("global_symbol", name)
        shape = (n, p.oh, p.ow, p.kh, p.lp) if p.mode == "rows" else \
            (n, p.oh, p.ow, p.kh, p.kw, p.cq)
        col = ctx.emit(relax.call_tir(ctx.bb.add_func(func, name), [src],
                                      relax.TensorType(shape, dtype)))
    m, kp = p.m, p.kp
    col = ctx.emit(R.reshape(col, [m, kp]))
    w2 = nh.reorder_weight(w, p)
    bias = b.value.numpy().astype(np.int64) if isinstance(b, tvm.ir.expr.Constant) else 0
    # out channels padded to the kernel's lanes with zero weights (and a zero multiplier),
    # sliced off after the kernel: the real channels' sums are unchanged
    real_oc, oc = oc, -(-oc // (16 if vnni else 8)) * (16 if vnni else 8)
    if oc != real_oc:
        w2 = np.concatenate([w2, np.zeros((oc - real_oc, kp), w2.dtype)])
        bias = np.concatenate([np.broadcast_to(np.asarray(bias, np.int64), (real_oc,)),
                               np.zeros(oc - real_oc, np.int64)])
        if requant is not None:
            pad = np.zeros(oc - real_oc, np.int64)
            requant = Requant(np.concatenate([requant.mul, pad]),
                              np.concatenate([requant.shift, pad]), requant.zero_point,
                              requant.qmin, requant.qmax, requant.dtype)
    if vnni:
        packed = w2.reshape(oc // 16, 16, kp // 4, 4).transpose(0, 2, 1, 3)
        wp = ctx.const(np.ascontiguousarray(packed), "int8")
        corr = -fill * w2.astype(np.int64).sum(axis=1) + bias
        cb = ctx.const(np.asarray(corr, np.int64).astype(np.int32), "int32")
        name = f"qconv_vnni_dense_{m}x{kp}x{oc}"
        func = vnni_dense_func(m, kp, oc, requant, kernel="qconv_vnni_dense")
    else:
        packed = w2.astype(np.int16).reshape(oc // 8, 8, kp // 2, 2).transpose(0, 2, 1, 3)
        wp = ctx.const(np.ascontiguousarray(packed), "int16")
        cb = ctx.const(np.broadcast_to(np.asarray(bias, np.int64), (oc,)).astype(np.int32),
                       "int32")
        name = f"qconv_avx2_dense_{m}x{kp}x{oc}"
        func = avx2_dense_func(m, kp, oc, requant, kernel="qconv_avx2_dense")
    args = [col, wp, cb]
    out_dtype = "int32"
    if requant is not None:
        name += "_rq_" + requant.key
        args += requant.constants(ctx)
        out_dtype = requant.dtype
    gv = ctx.bb.add_func(func.with_attr("global_symbol", name), name)
    acc = ctx.emit(relax.call_tir(gv, args, relax.TensorType((m, oc), out_dtype)))
    if oc != real_oc:
        acc = ctx.emit(R.strided_slice(acc, [1], [0], [real_oc]))
    if b is not None and not isinstance(b, tvm.ir.expr.Constant):
        acc = ctx.emit(R.add(acc, R.reshape(ctx.cast(b, "int32"), [1, real_oc])))
    acc = ctx.emit(R.reshape(acc, [n, p.oh, p.ow, real_oc]))
    return ctx.emit(R.permute_dims(acc, [0, 3, 1, 2]))


def grouped_conv(ctx: LowerContext, x: Expr, w: Expr, b: Expr | None, *,
                 stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                 groups: int, x_zero_point: int, nd: int) -> Expr:
    """The direct int32 convolution of ``x - x_zero_point`` (any groups); int32 result."""
    xs = ctx.cast(x, "int32")
    if x_zero_point:
        xs = ctx.emit(R.subtract(xs, ctx.scalar(x_zero_point, "int32")))
    conv = R.nn.conv1d if nd == 1 else R.nn.conv2d
    acc = ctx.emit(conv(xs, ctx.cast(w, "int32"), stride, padding, dilation, groups,
                        out_dtype="int32"))
    if b is None:
        return acc
    shape = [1] * (nd + 2)
    shape[1] = -1
    return ctx.emit(R.add(acc, R.reshape(ctx.cast(b, "int32"), shape)))


def _dense_te(a: te.Tensor, bw: te.Tensor, cb: te.Tensor) -> te.Tensor:
    m, kp = a.shape
    oc = cb.shape[0]
    r = te.reduce_axis((0, kp), "k")
    acc = te.compute((m, oc), lambda i, j: te.sum(
        a[i, r].astype("int32") * bw[j // 16, r // 4, j % 16, r % 4].astype("int32"), axis=r),
        name="qdense_vnni")
    return _epilogue(acc, cb, None)[1]


def _divisor(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def vnni_dense_func(m: int, kp: int, oc: int, requant: Requant | None = None, *,
                    kernel: str = "qdense_vnni") -> tirx.PrimFunc:
    """``out[i, j] = sum_k A[i, k] * B[j//16, k//4, j%16, k%4] + cb[j]`` (u8 x s8 -> s32),
    scheduled by hand around the VNNI intrinsic ``dot_16x4_vnni``; with ``requant`` the
    sum is requantized in the epilogue (extra inputs ``mul, half, shift``, int8 result).
    ``kernel`` names the path it serves (:mod:`.kernels`): ``qdense_vnni`` for a matmul,
    ``qconv_vnni_dense`` for a convolution's GEMM.

    Tiles: ``mi`` rows (a divisor of ``m``, <= 4) x ``nb`` blocks of 16 output channels
    (<= 4) accumulate over chunks of ``kc`` groups of 4 reduction elements (<= 16), so the
    accumulator tile stays in a small buffer; the outer (row tile, channel tile) loop is
    parallel, the bias add is done per tile. The function is marked ``tirx.is_scheduled``
    and opaque so that neither fusion nor meta-schedule replaces this schedule; the VNNI
    intrinsic is registered (with the LLVM 22 fix) if needed.
    """
    from slimfx.backends.tvm.tuning import register_vnni_fix

    register_vnni_fix()
    a = te.placeholder((m, kp), "uint8", name="A")
    bw = te.placeholder((oc // 16, kp // 4, 16, 4), "int8", name="B")
    cb = te.placeholder((oc,), "int32", name="CB")
    r = te.reduce_axis((0, kp), "k")
    acc = te.compute((m, oc), lambda i, j: te.sum(
        a[i, r].astype("int32") * bw[j // 16, r // 4, j % 16, r % 4].astype("int32"), axis=r),
        name="qdense_vnni")
    extra, out = _epilogue(acc, cb, requant)
    mi, nb, kc = _divisor(m, 4), _divisor(oc // 16, 4), _divisor(kp // 4, 16)
    return _schedule_packed_dense([a, bw, cb, *extra, out], "qdense_vnni", (16, 4),
                                  (mi, nb, kc), "dot_16x4_vnni", kernel)


def _schedule_packed_dense(tensors: list[te.Tensor], name: str, block: tuple[int, int],
                           tiles: tuple[int, int, int], intrin: str,
                           kernel: str) -> tirx.PrimFunc:
    """The hand schedule shared by the VNNI and AVX2 dense kernels.

    ``block = (lanes, taps)``: one intrinsic call computes ``lanes`` output channels over
    ``taps`` reduction elements. ``tiles = (mi, nb, kc)``: ``mi`` rows x ``nb`` channel blocks
    accumulate over chunks of ``kc`` intrinsic steps; the (row tile, channel tile) loop is
    parallel (fused before ``decompose_reduction``/``tensorize``, after which ``parallel``
    fails), the bias is added per tile. Marked ``tirx.is_scheduled`` and opaque
    (``op_pattern`` 8) so that neither fusion nor meta-schedule replaces it, and named
    ``kernel`` (:func:`.kernels.hand_kernel`).
    """
    lanes, taps = block
    mi, nb, kc = tiles
    sch = tvm.s_tir.Schedule(te.create_prim_func(tensors))
    blk = sch.get_sblock(name)
    i, j, k = sch.get_loops(blk)
    j0, j1 = sch.split(j, [None, lanes])
    k0, k1 = sch.split(k, [None, taps])
    i0, i1 = sch.split(i, [None, mi])
    j0o, j0i = sch.split(j0, [None, nb])
    k0o, k0i = sch.split(k0, [None, kc])
    sch.reorder(i0, j0o, k0o, k0i, i1, j0i, j1, k1)
    epi = sch.get_sblock("qdense_bias")
    sch.reverse_compute_at(epi, j0o)
    sch.parallel(sch.fuse(i0, j0o))
    sch.decompose_reduction(blk, k0o)
    sch.tensorize(j1, intrin)
    sch.unroll(j0i)
    sch.unroll(i1)
    _, inner = sch.split(sch.get_loops(epi)[-1], [None, lanes])
    sch.vectorize(inner)
    sch.vectorize(sch.get_loops(sch.get_sblock(f"{name}_init"))[-1])
    return hand_kernel(sch.mod["main"], kernel)


# ------------------------------------------------------------------- AVX2 (no VNNI): vpmaddwd
# Without VNNI, the exact x86 int8 product is vpmaddwd: 16 int16 x int16 products summed in
# pairs into 8 int32 lanes. (vpmaddubsw, u8 x s8 summed into int16, saturates on full-range
# operands: 2 * 255 * 128 > 32767.) The activations enter as int16 ``x - x_zero_point``, so
# padding taps are plain zeros and no correction term is needed; the weight is packed
# ``[OC/8, Kp/2, 8, 2]`` int16, one 32-byte load per 8 output channels x 2 taps.
_PMADDWD = "slimfx_pmaddwd_8x2"
_PMADDWD_REGISTERED = False


def _register_pmaddwd() -> None:
    global _PMADDWD_REGISTERED
    if _PMADDWD_REGISTERED:
        return
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((2,), "int16", offset_factor=1),  # type: ignore[valid-type]
             b: T.Buffer((8, 2), "int16", offset_factor=1),  # type: ignore[valid-type]
             c: T.Buffer((8,), "int32", offset_factor=1)) -> None:  # type: ignore[valid-type]
        with T.sblock("root"):
            T.reads(c[0:8], a[0:2], b[0:8, 0:2])
            T.writes(c[0:8])
            for i in T.serial(0, 8):
                for k in T.serial(0, 2):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        c[vi] = c[vi] + T.cast(a[vk], "int32") * T.cast(b[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((2,), "int16", offset_factor=1),  # type: ignore[valid-type]
             b: T.Buffer((8, 2), "int16", offset_factor=1),  # type: ignore[valid-type]
             c: T.Buffer((8,), "int32", offset_factor=1)) -> None:  # type: ignore[valid-type]
        with T.sblock("root"):
            T.reads(c[0:8], a[0:2], b[0:8, 0:2])
            T.writes(c[0:8])
            pair = T.reinterpret(a.vload([0], "int16x2"), dtype="int32")
            c[T.ramp(T.int32(0), 1, 8)] = c.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                T.reinterpret(T.broadcast(pair, 8), dtype="int16x16"),
                b.vload([0, 0], dtype="int16x16"), dtype="int32x8")

    TensorIntrin.register(_PMADDWD, desc, impl, override=True)
    _PMADDWD_REGISTERED = True


def dense_tiles(m: int, blocks: int) -> tuple[int, int]:
    """Row tile ``mi`` (divides ``m``, <= 8) x channel blocks ``nb`` (divides ``blocks``,
    <= 4) with the most accumulators ``mi * nb <= 12`` (16 ymm registers in all)."""
    best = (1, 1)
    for mi in range(1, 9):
        for nb in range(1, 5):
            if m % mi == 0 and blocks % nb == 0 and mi * nb <= 12 \
                    and (mi * nb, nb) > (best[0] * best[1], best[1]):
                best = (mi, nb)
    return best


def avx2_dense_func(m: int, kp: int, oc: int, requant: Requant | None = None, *,
                    kernel: str = "qdense_avx2") -> tirx.PrimFunc:
    """``out[i, j] = sum_k A[i, k] * B[j//8, k//2, j%8, k%2] + cb[j]`` (int16 -> int32),
    scheduled by hand around ``vpmaddwd``; ``requant`` and ``kernel`` as in
    :func:`vnni_dense_func` (``qdense_avx2``, ``qconv_avx2_dense``).

    ``kp % 2 == 0``, ``oc % 8 == 0``. A tile of ``mi`` rows x ``nb`` blocks of 8 output
    channels (:func:`dense_tiles`, e.g. 4 x 2: 8 accumulator registers) runs over chunks of
    up to 32 taps; the (row tile, channel tile) loop is parallel. Marked
    ``tirx.is_scheduled`` and opaque, like :func:`vnni_dense_func`.
    """
    _register_pmaddwd()
    a = te.placeholder((m, kp), "int16", name="A")
    bw = te.placeholder((oc // 8, kp // 2, 8, 2), "int16", name="B")
    cb = te.placeholder((oc,), "int32", name="CB")
    r = te.reduce_axis((0, kp), "k")
    acc = te.compute((m, oc), lambda i, j: te.sum(
        a[i, r].astype("int32") * bw[j // 8, r // 2, j % 8, r % 2].astype("int32"), axis=r),
        name="qdense_pmaddwd")
    extra, out = _epilogue(acc, cb, requant)
    mi, nb = dense_tiles(m, oc // 8)
    return _schedule_packed_dense([a, bw, cb, *extra, out], "qdense_pmaddwd", (8, 2),
                                  (mi, nb, _divisor(kp // 2, 16)), _PMADDWD, kernel)


def avx2_matmul(ctx: LowerContext, a: Expr, w: np.ndarray, bias: np.ndarray | None) -> Expr:
    """``a @ w.T (+ bias)`` for an int16 ``a`` ``[M, K]`` and a constant integer ``w``
    ``[N, K]`` (|w| < 2**15) on :func:`avx2_dense_func`; int32 ``[M, N]``.

    Used by ``qlinear`` (``a = x - x_zero_point``) and the dynamic int8 matmuls
    (``a`` = the run-time quantized activations). An odd ``K`` gets one zero column; ``N``
    is padded to a multiple of 8 (:func:`_packed_matmul`).
    """
    return _packed_matmul(ctx, a, w, bias, "avx2")


def vnni_matmul(ctx: LowerContext, u: Expr, w: np.ndarray, bias: np.ndarray | None) -> Expr:
    """``u @ w.T + bias`` for a uint8 ``u`` ``[M, K]`` and a constant int8 ``w`` ``[N, K]``
    on :func:`vnni_dense_func` (``N`` padded to a multiple of 16); int32 ``[M, N]``.

    The caller folds its zero-point correction into ``bias`` (``-off * sum_k w``, see
    :func:`packed_conv`). A ``K`` that is not a multiple of 4 gets zero columns (zero weights:
    they add exactly 0). Exact: ``|sum_k u * w| <= 255 * 128 * K`` fits int32.
    """
    return _packed_matmul(ctx, u, w, bias, "vnni")


# isa -> (output channels per intrinsic call, reduction elements per call, weight dtype,
# kernel builder)
_MATMUL = {"avx2": (8, 2, np.int16, avx2_dense_func), "vnni": (16, 4, np.int8, vnni_dense_func)}


def _packed_matmul(ctx: LowerContext, a: Expr, w: np.ndarray, bias: np.ndarray | None,
                   isa: str) -> Expr:
    """``a @ w.T + bias`` on the hand dense of ``isa``: ``K`` padded to the kernel's
    reduction step with zero columns of ``a`` and ``w``, ``N`` to its lanes with zero rows
    of ``w`` (and of the bias), sliced off after the kernel. Zero weights add exactly 0, so
    the real columns' sums are unchanged; int32 ``[M, N]``."""
    lanes, taps, w_dtype, build = _MATMUL[isa]
    m, k = ctx.shape_of(a)
    n = w.shape[0]
    kp = -(-k // taps) * taps
    if kp != k:
        a = ctx.emit(R.nn.pad(a, [0, 0, 0, kp - k]))
    np_ = -(-n // lanes) * lanes
    w2 = np.zeros((np_, kp), dtype=w_dtype)
    w2[:n, :k] = w
    packed = w2.reshape(np_ // lanes, lanes, kp // taps, taps).transpose(0, 2, 1, 3)
    wp = ctx.const(np.ascontiguousarray(packed), str(np.dtype(w_dtype)))
    cb = np.zeros(np_, np.int32)
    if bias is not None:
        cb[:n] = bias.astype(np.int32)
    name = f"qdense_{isa}_{m}x{kp}x{np_}"
    gv = ctx.bb.add_func(build(m, kp, np_).with_attr("global_symbol", name), name)
    acc = ctx.emit(relax.call_tir(gv, [a, wp, ctx.const(cb, "int32")],
                                  relax.TensorType((m, np_), "int32")))
    return acc if np_ == n else ctx.emit(R.strided_slice(acc, [1], [0], [n]))
