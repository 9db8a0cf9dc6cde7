"""Relax lowerings of the quantization ops (``slimfx/ir/opset_quant.py``), bit-exact.

The integer program is lowered with the exact semantics of the torch kernels
(``slimfx/backends/torch/kernels_quant.py``), so every target produces the same integers:

- accumulating ops (``qconv*``, ``qlinear``, ``qmatmul``) shift operands by their zero
  points in int32 and accumulate in int32 (``out_dtype="int32"``), then add the int32 bias;
  a ``qlinear`` with a constant int8 weight whose sizes divide (N % 16, K % 4) is written as
  a u8 x s8 dense on a packed weight instead, the form meta-schedule tensorizes with VNNI
  (see :func:`_packed_qlinear`); on an x86 VNNI target it is the hand-scheduled vpdpbusd
  kernel (:func:`.conv_int8.vnni_matmul`, any N and K), on AVX2 the int16 vpmaddwd kernel;
- ``requantize`` and the int8 -> int8 ops compute in int64:
  ``clamp(rshift_round(v * M0, n) + zp, qmin, qmax)`` with
  ``rshift_round(v, n) = (v + 2**(n-1)) >> n`` (arithmetic shift, half up; ``v`` for n = 0);
- ``qavg_pool2d`` sums each window of ``x - zp`` with a depthwise int32 convolution by ones
  (zero padding after the shift), then requantizes;
- ``quantize`` is ``clamp(round_half_even(float32(x) / scale) + zp, qmin, qmax)`` in float32,
  with NaN mapped to ``zp`` and +-inf saturating to qmax / qmin (DESIGN.md §4);
  ``dequantize`` is ``float32(q - zp) * scale``;
- ``dynamic_linear`` quantizes ``x`` at run time (``s = max(max|x|, 1e-8) / 127``), sums the
  integer products exactly in float64 and scales by ``s * w_scale`` in float64, like torch
  (on x86 the products are summed by the int32 VNNI / AVX2 kernels: the same integers, as
  ``|sum| <= 127 * 127 * K`` is exact in both int32 and float64);
  NaN as in torch: a NaN input makes ``s`` NaN (per tensor, or its row per token) and a NaN
  ``q`` makes every output of its row NaN.

``dynamic_lstm``/``dynamic_gru`` reuse the unrolled RNN of :mod:`.lower_rnn` with every
weight product done like ``dynamic_linear``. ``observer`` is the identity.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax import Expr

from slimfx.backends.tvm import conv_int8, depthwise_int8
from slimfx.backends.tvm.lower import (
    LowerContext,
    register_fusion,
    register_lowering,
    to_tvm_dtype,
)
from slimfx.backends.tvm.lower_elementwise import clamp, propagate_nan, round_half_even
from slimfx.backends.tvm.lower_int4 import int4_weights
from slimfx.backends.tvm.lower_rnn import rnn
from slimfx.errors import LoweringError
from slimfx.ir.core import Node

__all__ = ["requantize_expr", "dynamic_matmul"]

R = relax.op

_DYN_EPS = 1e-8


def _channel(ctx: LowerContext, values: tuple, axis: int | None, rank: int, dtype: str) -> Expr:
    arr = np.asarray(values, dtype=dtype)
    if axis is None:
        return ctx.const(arr.reshape(()), dtype)
    shape = [1] * rank
    shape[axis % rank] = -1
    return ctx.const(arr.reshape(shape), dtype)


def _half(shift: tuple[int, ...]) -> np.ndarray:
    n = np.asarray(shift, dtype=np.int64)
    return np.where(n > 0, np.left_shift(np.int64(1), np.maximum(n - 1, 0)), 0).astype(np.int64)


def requantize_expr(ctx: LowerContext, v: Expr, multiplier: tuple[int, ...],
                    shift: tuple[int, ...], axis: int | None, out_zero_point: int, qmin: int,
                    qmax: int) -> Expr:
    """``clamp(rshift_round(v * M0, n) + zp, qmin, qmax)`` on an int64 expression ``v``."""
    rank = ctx.rank_of(v)
    m = _channel(ctx, multiplier, axis, rank, "int64")
    half = _half(shift)
    half_c = _channel(ctx, tuple(half.tolist()), axis, rank, "int64")
    n = _channel(ctx, shift, axis, rank, "int64")
    y = ctx.emit(R.right_shift(R.add(R.multiply(v, m), half_c), n))
    y = ctx.emit(R.add(y, ctx.scalar(out_zero_point, "int64")))
    y = ctx.emit(R.maximum(y, ctx.scalar(qmin, "int64")))
    return ctx.emit(R.minimum(y, ctx.scalar(qmax, "int64")))


def _shifted(ctx: LowerContext, x: Expr, zp: int, dtype: str) -> Expr:
    x = ctx.cast(x, dtype)
    return x if zp == 0 else ctx.emit(R.subtract(x, ctx.scalar(zp, dtype)))


@register_lowering("observer")
def _observer(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    return x


@register_lowering("quantize")
def _quantize(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    a = node.attrs
    rank = ctx.rank_of(x)
    x = ctx.cast(x, "float32")
    s = _channel(ctx, a["scale"], a["axis"], rank, "float32")
    z = _channel(ctx, a["zero_point"], a["axis"], rank, "float32")
    q = ctx.emit(R.add(round_half_even(ctx, ctx.emit(R.divide(x, s))), z))
    q = ctx.emit(R.where(R.isnan(x), z, q))  # NaN -> the zero point (DESIGN.md §4), clamped
    q = ctx.emit(R.clip(q, float(a["qmin"]), float(a["qmax"])))  # +-inf -> qmax / qmin
    return R.astype(q, to_tvm_dtype(a["dtype"]))


@register_lowering("dequantize")
def _dequantize(ctx: LowerContext, node: Node, q: Expr) -> Expr:
    a = node.attrs
    rank = ctx.rank_of(q)
    s = _channel(ctx, a["scale"], a["axis"], rank, "float32")
    z = _channel(ctx, a["zero_point"], a["axis"], rank, "int64")
    v = ctx.emit(R.subtract(ctx.cast(q, "int64"), z))
    return R.multiply(R.astype(v, "float32"), s)


@register_lowering("requantize")
def _requantize(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    a = node.attrs
    v = _shifted(ctx, x, a["in_zero_point"], "int64")
    y = requantize_expr(ctx, v, a["multiplier"], a["shift"], a["axis"], a["out_zero_point"],
                        a["qmin"], a["qmax"])
    return R.astype(y, to_tvm_dtype(a["out_dtype"]))


def _bias(ctx: LowerContext, acc: Expr, b: Expr | None, channel_axis: int) -> Expr:
    if b is None:
        return acc
    rank = ctx.rank_of(acc)
    shape = [1] * rank
    shape[channel_axis % rank] = -1
    return ctx.emit(R.add(acc, R.reshape(ctx.cast(b, "int32"), shape)))


def _qconv(nd: int):
    """``qconv{nd}d``: the depthwise kernel (:mod:`.depthwise_int8`) on CPUs for a
    depthwise constant int8 weight, im2col + packed VNNI dense for a dense constant int8
    weight (:mod:`.conv_int8`), the direct int32 convolution otherwise (other grouped
    convolutions, run-time weights, out channels not a multiple of 16, symbolic shapes)."""
    def lower(ctx: LowerContext, node: Node, x: Expr, w: Expr, b: Expr | None = None) -> Expr:
        a = node.attrs
        if isinstance(w, tvm.ir.expr.Constant) and nd == 2 and ctx.is_cpu \
                and ctx.is_static_shape(x) \
                and depthwise_int8.applies(ctx.shape_of(x), w.value.numpy(), a["groups"],
                                           ctx.dtype_of(x)):
            out = depthwise_int8.depthwise_conv(
                ctx, x, w.value.numpy(), b, stride=a["stride"], padding=a["padding"],
                dilation=a["dilation"], x_zero_point=a["x_zero_point"])
            if out is not None:
                return out
        if isinstance(w, tvm.ir.expr.Constant) and not ctx.is_static(x) \
                and ctx.is_static_shape(x):  # symbolic dims: the direct convolution
            wn = w.value.numpy()
            if conv_int8.packable(ctx, ctx.dtype_of(x), wn, a["groups"]):
                return conv_int8.packed_conv(ctx, x, wn, b, stride=a["stride"],
                                             padding=a["padding"], dilation=a["dilation"],
                                             x_zero_point=a["x_zero_point"])
        return conv_int8.grouped_conv(ctx, x, w, b, stride=a["stride"], padding=a["padding"],
                                      dilation=a["dilation"], groups=a["groups"],
                                      x_zero_point=a["x_zero_point"], nd=nd)
    return int4_weights(lower)  # 4-bit weights: stored packed (lower_int4.py)


register_lowering("qconv1d")(_qconv(1))
register_lowering("qconv2d")(_qconv(2))


def _qconv_requantize(ctx: LowerContext, node: Node, rq: Node, x: Expr, w: Expr,
                      b: Expr | None = None) -> Expr | None:
    """``requantize(qconv(x, w, b))`` as one CPU kernel: the requantization is the
    epilogue (:class:`.conv_int8.Requant`) of the packed x86 dense or of the depthwise
    kernel (:mod:`.depthwise_int8`, any LLVM CPU), which write int8.

    The same integers as the two lowerings apart: the epilogue evaluates the ``requantize``
    formula on the same int32 sums. Declines (``None``) what those kernels do not take
    (see :func:`_qconv`), a run-time bias, a requantization along another axis than the
    channels, or another target.
    """
    a, r = node.attrs, rq.attrs
    if not isinstance(w, tvm.ir.expr.Constant) or ctx.is_static(x) \
            or not ctx.is_static_shape(x) \
            or (b is not None and not isinstance(b, tvm.ir.expr.Constant)):
        return None  # symbolic dims: the unfused lowerings (the direct convolution)
    wn = w.value.numpy()
    rank = wn.ndim
    if r["in_zero_point"] != 0 or (r["axis"] is not None and r["axis"] % rank != 1):
        return None
    requant = conv_int8.Requant.per_channel(
        wn.shape[0], r["multiplier"], r["shift"], r["out_zero_point"], r["qmin"], r["qmax"],
        to_tvm_dtype(r["out_dtype"]))
    if rank == 4 and ctx.is_cpu and \
            depthwise_int8.applies(ctx.shape_of(x), wn, a["groups"], ctx.dtype_of(x)):
        return depthwise_int8.depthwise_conv(
            ctx, x, wn, b, stride=a["stride"], padding=a["padding"], dilation=a["dilation"],
            x_zero_point=a["x_zero_point"], requant=requant)
    if not conv_int8.packable(ctx, ctx.dtype_of(x), wn, a["groups"]):
        return None
    return conv_int8.packed_conv(ctx, x, wn, b, stride=a["stride"], padding=a["padding"],
                                 dilation=a["dilation"], x_zero_point=a["x_zero_point"],
                                 requant=requant)


_qconv_requantize_any = int4_weights(_qconv_requantize)  # 4-bit weights: stored packed
register_fusion("qconv1d", "requantize")(_qconv_requantize_any)
register_fusion("qconv2d", "requantize")(_qconv_requantize_any)


def _packed_qlinear(ctx: LowerContext, node: Node, x: Expr, w: np.ndarray,
                    b: Expr | None) -> Expr:
    """``qlinear`` as a u8 x s8 -> s32 dense on a weight packed ``[N/16, K/4, 16, 4]``.

    This is the form whose reduction meta-schedule tensorizes with VNNI (``vpdpbusd``) on
    x86. With ``u = x + 128`` (int8 -> uint8; ``u = x`` for uint8 inputs) and
    ``off = x_zero_point + 128`` (``x_zero_point``):
    ``sum_k (x - zp) * w = sum_k u * w - off * sum_k w``, the last term a constant folded
    into the bias. Exact: ``|sum_k u * w| <= 255 * 128 * K`` fits int32.
    """
    from tvm import te

    shape = ctx.shape_of(x)
    n, k = w.shape
    m = int(np.prod(shape[:-1]))
    if ctx.dtype_of(x) == "uint8":
        u, off = x, node.attrs["x_zero_point"]
    else:
        u = ctx.emit(R.astype(R.add(ctx.cast(x, "int16"), ctx.scalar(128, "int16")), "uint8"))
        off = node.attrs["x_zero_point"] + 128
    u = ctx.emit(R.reshape(u, [m, k]))
    corr = -off * w.astype(np.int64).sum(axis=1)
    if conv_int8.x86_isa(ctx) == "vnni":  # the hand-scheduled vpdpbusd kernel (pads K to 4)
        bias = b.value.numpy() if isinstance(b, tvm.ir.expr.Constant) else None
        acc = conv_int8.vnni_matmul(ctx, u, w, corr if bias is None else corr + bias)
        if b is not None and bias is None:
            acc = _bias(ctx, acc, b, -1)
        return R.reshape(acc, [*shape[:-1], n])
    # K padded to 4 (zero columns of u and w), N to 16 (zero rows of w), sliced off after:
    # zero weights add exactly 0, and the packed form is what dp4a / vpdpbusd tensorize.
    kp, np_ = -(-k // 4) * 4, -(-n // 16) * 16
    # one row on cuda: dlight's GEMV rule fails on the packed weight, so two rows (the
    # zero second row sliced off) take its GEMM rule, on dp4a
    mp = 2 if m == 1 and _is_cuda(ctx) else m
    if kp != k or mp != m:
        u = ctx.emit(R.nn.pad(u, [0, mp - m, 0, kp - k]))
    w2 = np.zeros((np_, kp), np.int8)
    w2[:n, :k] = w
    packed = w2.reshape(np_ // 16, 16, kp // 4, 4).transpose(0, 2, 1, 3)
    wp = ctx.const(np.ascontiguousarray(packed), "int8")

    def dense(a: te.Tensor, bp: te.Tensor) -> te.Tensor:
        r = te.reduce_axis((0, kp), "k")
        return te.compute((mp, np_), lambda i, j: te.sum(
            a[i, r].astype("int32") * bp[j // 16, r // 4, j % 16, r % 4].astype("int32"),
            axis=r), name="qdense_vnni")

    acc = ctx.bb.emit_te(dense, u, wp, primfunc_name_hint="qdense_packed")
    if (mp, np_) != (m, n):
        acc = ctx.emit(R.strided_slice(acc, [0, 1], [0, 0], [m, n]))
    acc = ctx.emit(R.add(acc, ctx.const(corr.astype(np.int32), "int32")))
    acc = _bias(ctx, acc, b, -1)
    return R.reshape(acc, [*shape[:-1], n])


def _avx2_qlinear(ctx: LowerContext, node: Node, x: Expr, w: np.ndarray,
                  b: Expr | None) -> Expr:
    """``qlinear`` on x86 without VNNI: ``(x - zp)`` as int16 through the vpmaddwd dense."""
    shape = ctx.shape_of(x)
    m, k = int(np.prod(shape[:-1])), shape[-1]
    xs = ctx.emit(R.reshape(_shifted(ctx, x, node.attrs["x_zero_point"], "int16"), [m, k]))
    bias = b.value.numpy() if isinstance(b, tvm.ir.expr.Constant) else None
    acc = conv_int8.avx2_matmul(ctx, xs, w, bias)
    if b is not None and bias is None:
        acc = _bias(ctx, acc, b, -1)
    return R.reshape(acc, [*shape[:-1], w.shape[0]])


def _is_cuda(ctx: LowerContext) -> bool:
    return ctx.target is not None and ctx.target.kind.name == "cuda"


@register_lowering("qlinear")
@int4_weights  # 4-bit weights: stored packed (lower_int4.py)
def _qlinear(ctx: LowerContext, node: Node, x: Expr, w: Expr, b: Expr | None = None) -> Expr:
    if isinstance(w, tvm.ir.expr.Constant) and ctx.dtype_of(w) == "int8":
        wn = w.value.numpy()
        if ctx.is_static(x):  # folded at build time on a generic CPU: the portable form
            pass
        elif not ctx.is_static_shape(x):  # symbolic dims: the generic (exact) int32 matmul
            pass
        elif conv_int8.x86_isa(ctx) == "avx2":  # (pads N to 8 itself)
            return _avx2_qlinear(ctx, node, x, wn, b)
        elif ctx.dtype_of(x) in ("int8", "uint8") and (
                conv_int8.x86_isa(ctx) == "vnni" or _is_cuda(ctx)
                or (wn.shape[0] % 16 == 0 and wn.shape[1] % 4 == 0)):  # cuda: dp4a (pads)
            return _packed_qlinear(ctx, node, x, wn, b)
    xs = _shifted(ctx, x, node.attrs["x_zero_point"], "int32")
    wt = ctx.permute(ctx.cast(w, "int32"), [1, 0])
    acc = ctx.emit(R.matmul(xs, wt, out_dtype="int32"))
    return _bias(ctx, acc, b, -1)


@register_lowering("qmatmul")
def _qmatmul(ctx: LowerContext, node: Node, a: Expr, b: Expr) -> Expr:
    at = node.attrs
    return R.matmul(_shifted(ctx, a, at["a_zero_point"], "int32"),
                    _shifted(ctx, b, at["b_zero_point"], "int32"), out_dtype="int32")


@register_lowering("qadd")
def _qadd(ctx: LowerContext, node: Node, x: Expr, y: Expr) -> Expr:
    a = node.attrs
    xs, ys = ctx.channels_last(x), ctx.channels_last(y)
    if xs is not None and ys is not None:  # both NHWC results of kernels: add channels-last
        return ctx.emit(R.permute_dims(ctx.emit(_qadd(ctx, node, xs, ys)), [0, 3, 1, 2]))
    va = ctx.emit(R.multiply(_shifted(ctx, x, a["a_zero_point"], "int64"),
                             ctx.scalar(a["a_multiplier"], "int64")))
    vb = ctx.emit(R.multiply(_shifted(ctx, y, a["b_zero_point"], "int64"),
                             ctx.scalar(a["b_multiplier"], "int64")))
    v = ctx.emit(R.add(va, vb))
    out = requantize_expr(ctx, v, (1,), (a["shift"],), None, a["out_zero_point"], a["qmin"],
                          a["qmax"])
    return R.astype(out, to_tvm_dtype(a["out_dtype"]))


@register_lowering("qmul")
def _qmul(ctx: LowerContext, node: Node, x: Expr, y: Expr) -> Expr:
    a = node.attrs
    v = ctx.emit(R.multiply(_shifted(ctx, x, a["a_zero_point"], "int64"),
                            _shifted(ctx, y, a["b_zero_point"], "int64")))
    out = requantize_expr(ctx, v, (a["multiplier"],), (a["shift"],), None, a["out_zero_point"],
                          a["qmin"], a["qmax"])
    return R.astype(out, to_tvm_dtype(a["out_dtype"]))


@register_lowering("qcat")
def _qcat(ctx: LowerContext, node: Node, *xs: Expr) -> Expr:
    a = node.attrs
    parts = []
    for x, z, m, n in zip(xs, a["zero_points"], a["multipliers"], a["shifts"], strict=True):
        v = _shifted(ctx, x, z, "int64")
        parts.append(requantize_expr(ctx, v, (m,), (n,), None, a["out_zero_point"], a["qmin"],
                                     a["qmax"]))
    rank = ctx.rank_of(xs[0])
    y = ctx.emit(R.concat(parts, a["axis"] % rank))
    return R.astype(y, to_tvm_dtype(a["out_dtype"]))


@register_lowering("qavg_pool2d")
def _qavg_pool2d(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    a = node.attrs
    channels = ctx.static_dim(x, 1)
    kh, kw = a["kernel"]
    ones = ctx.const(np.ones((channels, 1, kh, kw)), "int32")
    xs = _shifted(ctx, x, a["in_zero_point"], "int32")
    s = ctx.emit(R.nn.conv2d(xs, ones, a["stride"], a["padding"], (1, 1), channels,
                             out_dtype="int32"))
    y = requantize_expr(ctx, ctx.cast(s, "int64"), (a["multiplier"],), (a["shift"],), None,
                        a["out_zero_point"], a["qmin"], a["qmax"])
    return R.astype(y, to_tvm_dtype(a["out_dtype"]))


def dynamic_matmul(ctx: LowerContext, x: Expr, w: Expr, w_scale: tuple[float, ...],
                   per_token: bool) -> Expr:
    """``x @ dequant(w)^T`` with ``x`` quantized at run time (torch's ``dynamic_matmul``)."""
    x = ctx.cast(x, "float32")
    rank = ctx.rank_of(x)
    ax = ctx.emit(R.abs(x))

    def amax_of(t: Expr) -> Expr:
        return R.max(t, [rank - 1], keepdims=True) if per_token else R.max(t)

    # NaN as in torch: a NaN in x makes the scale NaN (amax and clamp propagate it)
    amax = propagate_nan(ctx, ax, ctx.emit(amax_of(ax)), amax_of)
    s = ctx.emit(R.divide(clamp(ctx, amax, _DYN_EPS, None), ctx.scalar(127.0, "float32")))
    q = clamp(ctx, round_half_even(ctx, ctx.emit(R.divide(x, s))), -127.0, 127.0)
    # torch sums NaN q's in float64: every output of their row is NaN. The integer kernels
    # cannot hold NaN (casting it is undefined): zero it there and put the NaN back after.
    q_nan = ctx.emit(R.isnan(q))
    nan_row = ctx.emit(R.max(R.astype(q_nan, "int8"), [rank - 1], keepdims=True))
    q = ctx.emit(R.where(q_nan, ctx.scalar(0.0, "float32"), q))
    fast = ctx.is_static_shape(x) and not ctx.is_static(x)  # else the generic matmul
    if fast:
        shape = ctx.shape_of(x)
        m, k = int(np.prod(shape[:-1])), shape[-1]
    if fast and isinstance(w, tvm.ir.expr.Constant) and conv_int8.x86_isa(ctx) == "vnni" \
            and ctx.dtype_of(w) == "int8":  # (vnni_matmul pads N to 16 and K to 4)
        # u = q + 128 in [1, 255] as uint8 on the vpdpbusd kernel, minus 128 * colsum(w):
        # the same integer sums, exact in int32, hence the same numbers as the float64 sum
        wn = w.value.numpy()
        u = ctx.emit(R.astype(R.add(ctx.cast(q, "int16"), ctx.scalar(128, "int16")), "uint8"))
        corr = -128 * wn.astype(np.int64).sum(axis=1)
        acc_i = conv_int8.vnni_matmul(ctx, ctx.emit(R.reshape(u, [m, k])), wn, corr)
        acc = ctx.emit(R.reshape(ctx.cast(acc_i, "float64"), [*shape[:-1], wn.shape[0]]))
    elif fast and isinstance(w, tvm.ir.expr.Constant) and ctx.has("avx2"):
        # integer products summed in int32: the same numbers as the float64 sum (exact)
        qi = ctx.emit(R.reshape(ctx.cast(q, "int16"), [m, k]))
        acc_i = conv_int8.avx2_matmul(ctx, qi, w.value.numpy(), None)
        acc = ctx.emit(R.reshape(ctx.cast(acc_i, "float64"), [*shape[:-1], ctx.shape_of(w)[0]]))
    else:
        wt = ctx.permute(ctx.cast(w, "float64"), [1, 0])
        acc = ctx.emit(R.matmul(ctx.cast(q, "float64"), wt))
    acc = ctx.emit(R.where(R.greater(nan_row, ctx.scalar(0, "int8")),
                           ctx.scalar(float("nan"), "float64"), acc))
    ws = ctx.const(np.asarray(w_scale, dtype=np.float64), "float64")
    y = ctx.emit(R.multiply(R.multiply(acc, ctx.cast(s, "float64")), ws))
    return ctx.cast(y, "float32")


@register_lowering("dynamic_linear")
def _dynamic_linear(ctx: LowerContext, node: Node, x: Expr, w: Expr,
                    b: Expr | None = None) -> Expr:
    a = node.attrs
    y = dynamic_matmul(ctx, x, w, a["w_scale"], a["per_token"])
    if b is not None:
        y = ctx.emit(R.add(y, ctx.cast(b, "float32")))
    return clamp(ctx, y, a["act_min"], a["act_max"])


def _dynamic_rnn(kind: str):
    def lower(ctx: LowerContext, node: Node, x: Expr, h0: Expr, *rest: Expr) -> list[Expr]:
        c0, weights = (rest[0], rest[1:]) if kind == "lstm" else (None, rest)
        scales: dict[int, tuple[float, ...]] = {}
        pos = 0
        all_scales = node.attrs["w_scales"]
        for i, w in enumerate(weights):  # w_scales concatenates the row scales of 2-D weights
            shape = ctx.shape_of(w)
            if len(shape) == 2:
                scales[i] = tuple(all_scales[pos:pos + shape[0]])
                pos += shape[0]
        if pos != len(all_scales):
            raise LoweringError(f"w_scales has {len(all_scales)} entries, the weights have "
                                f"{pos} rows")

        def project(v: Expr, i: int) -> Expr:
            return dynamic_matmul(ctx, v, weights[i], scales[i], node.attrs["per_token"])

        return rnn(kind, ctx, node, ctx.cast(x, "float32"), h0, c0, tuple(weights), project)
    return lower


register_lowering("dynamic_lstm")(_dynamic_rnn("lstm"))
register_lowering("dynamic_gru")(_dynamic_rnn("gru"))
