"""Relax lowerings of the layers: convolution, linear, matmul, normalization, pooling, attention.

- A fused activation (``act_min``/``act_max``) becomes a clamp after the bias (NaN stays
  NaN, as in torch).
- fp16/bf16 convolutions, ``linear`` and ``matmul`` accumulate in fp32 (bias included) and
  round once, as torch's CPU kernels do (TVM's default accumulates in the input dtype: a
  K-term fp16 dot product drifted by up to ~K/2 fp16 ulps).
- ``conv_transpose2d`` with dilation > 1 is a stride-1 convolution, dilated by the
  transposed convolution's dilation, of the input with zeros inserted between its
  elements (``stride - 1`` per gap) and padded by ``dilation * (kernel - 1) - padding``
  (plus ``output_padding`` at the end; negative amounts crop), with the weight transposed
  to ``[out, in / groups, kh, kw]`` and flipped spatially. TVM's own
  ``conv2d_transpose`` dilates the KERNEL with zeros, and ``0 * NaN`` then spread a NaN or
  Inf input to outputs it does not reach in torch.
- fp16/bf16 normalizations compute in fp32 and round once (torch's CPU kernels accumulate
  in fp32; TVM's ``layer_norm`` refuses bf16).
- ``layer_norm`` (and ``group_norm``) over one element is ``(x - x) * rsqrt(eps) * weight + bias`` with
  ``x - x`` written ``where(isfinite(x), 0, NaN)``: TVM simplifies ``x - mean(x)`` to 0
  there, which turned NaN/Inf inputs into ``bias`` (torch: NaN); TVM's ``group_norm`` of
  one element gave NaN for finite inputs.
- Float max-pools (plain and adaptive) give NaN for a window holding a NaN, as torch does.
- ``batch_norm(x) = (x - mean) * rsqrt(var + eps) * weight + bias`` on axis 1, written with
  elementwise ops so that constant folding turns it into one scale and shift.
- ``sdpa(q, k, v) = softmax(q @ k^T * scale + mask) @ v`` with ``scale = 1/sqrt(E)`` by
  default; a boolean mask (or ``is_causal``) keeps the entries where it is true (others get
  ``-inf``); a float mask is added. With ``enable_gqa``, k/v heads repeat to q's head count.
- Adaptive pools use TVM's op when it exists (average) or, for max, a pool when the input size
  divides the output size and per-cell slices otherwise (torch's windows:
  ``[floor(i*L/O), ceil((i+1)*L/O))``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import tvm
from tvm import relax
from tvm.relax import Expr

from slimfx.backends.tvm import dense_fp32
from slimfx.backends.tvm.lower import LowerContext, register_lowering, to_tvm_dtype
from slimfx.backends.tvm.lower_elementwise import clamp, isfinite, propagate_nan
from slimfx.errors import LoweringError
from slimfx.ir.core import Node

__all__: list[str] = []  # registers lowerings on import; nothing to call directly

R = relax.op


def _channel_bias(ctx: LowerContext, y: Expr, b: Expr | None, rank: int) -> Expr:
    if b is None:
        return y
    b = ctx.cast(b, ctx.dtype_of(y))
    shape = [1] * rank
    shape[1] = -1
    return ctx.emit(R.add(y, R.reshape(b, shape)))


def _act(ctx: LowerContext, node: Node, y: Expr) -> Expr:
    return clamp(ctx, y, node.attrs["act_min"], node.attrs["act_max"])


def _acc(dtype: str) -> str:
    """The accumulation dtype of a float dot product: fp32 for the 16-bit floats."""
    return "float32" if dtype in ("float16", "bfloat16") else dtype


@register_lowering("conv1d")
def _conv1d(ctx: LowerContext, node: Node, x: Expr, w: Expr, b: Expr | None = None) -> Expr:
    a = node.attrs
    dt = ctx.dtype_of(x)
    y = ctx.emit(R.nn.conv1d(x, ctx.cast(w, dt), a["stride"], a["padding"], a["dilation"],
                             a["groups"], out_dtype=_acc(dt)))
    return _act(ctx, node, ctx.cast(_channel_bias(ctx, y, b, 3), dt))


@register_lowering("conv2d")
def _conv2d(ctx: LowerContext, node: Node, x: Expr, w: Expr, b: Expr | None = None) -> Expr:
    a = node.attrs
    if dense_fp32.applies(ctx, x, w, b, a["groups"]):  # x86: im2col + register-tiled dense
        y = dense_fp32.conv2d_fp32(ctx, x, w, b, stride=a["stride"], padding=a["padding"],
                                   dilation=a["dilation"])
        return _act(ctx, node, y)
    dt = ctx.dtype_of(x)
    y = ctx.emit(R.nn.conv2d(x, ctx.cast(w, dt), a["stride"], a["padding"], a["dilation"],
                             a["groups"], out_dtype=_acc(dt)))
    return _act(ctx, node, ctx.cast(_channel_bias(ctx, y, b, 4), dt))


def _insert_zeros(ctx: LowerContext, x: Expr, stride: Sequence[int]) -> Expr:
    """``x`` (NCHW) with ``stride - 1`` zeros between consecutive elements of H and W: a
    depthwise ``conv2d_transpose`` by a 1x1 kernel of ones (no kernel dilation, so nothing
    multiplies a NaN but the one tap that copies it)."""
    if all(st == 1 for st in stride):
        return x
    c = ctx.shape_of(x)[1]
    ones = ctx.const(np.ones((c, 1, 1, 1)), ctx.dtype_of(x))
    return ctx.emit(R.nn.conv2d_transpose(x, ones, tuple(stride), (0, 0), (0, 0), (1, 1), c))


def _pad_or_crop(ctx: LowerContext, x: Expr, axis: int, lo: int, hi: int) -> Expr:
    """``x`` padded with ``lo``/``hi`` zeros before/after along ``axis`` (negative: cropped)."""
    rank = len(ctx.shape_of(x))
    if lo > 0 or hi > 0:
        widths = [0] * (2 * rank)
        widths[2 * axis], widths[2 * axis + 1] = max(lo, 0), max(hi, 0)
        x = ctx.emit(R.nn.pad(x, widths))
    if lo < 0 or hi < 0:
        n = ctx.shape_of(x)[axis]
        x = ctx.emit(R.strided_slice(x, [axis], [max(-lo, 0)], [n - max(-hi, 0)]))
    return x


def _transposed_weight(ctx: LowerContext, w: Expr, groups: int, dtype: str) -> Expr:
    """A ``conv_transpose2d`` weight ``[in, out/g, kh, kw]`` as the ``conv2d`` weight
    ``[out, in/g, kh, kw]`` (per group: in and out swapped), flipped in kh and kw."""
    cin, cout_g, kh, kw = ctx.shape_of(w)
    if isinstance(w, tvm.ir.expr.Constant) and "bfloat" not in ctx.dtype_of(w):
        wn = w.value.numpy().reshape(groups, cin // groups, cout_g, kh, kw)
        wn = wn.transpose(0, 2, 1, 3, 4).reshape(groups * cout_g, cin // groups, kh, kw)
        return ctx.const(np.ascontiguousarray(wn[:, :, ::-1, ::-1]), dtype)
    w = ctx.cast(w, dtype)
    w = ctx.emit(R.reshape(w, [groups, cin // groups, cout_g, kh, kw]))
    w = ctx.emit(R.reshape(R.permute_dims(w, [0, 2, 1, 3, 4]),
                           [groups * cout_g, cin // groups, kh, kw]))
    return ctx.emit(R.flip(R.flip(w, 2), 3))


def _conv_t2d_dilated(ctx: LowerContext, node: Node, x: Expr, w: Expr) -> Expr:
    """``conv_transpose2d`` as a direct convolution (module docstring); no bias."""
    a = node.attrs
    dt = ctx.dtype_of(x)
    k = ctx.shape_of(w)[2:]
    x = _insert_zeros(ctx, x, a["stride"])
    for i in range(2):
        edge = a["dilation"][i] * (k[i] - 1) - a["padding"][i]
        x = _pad_or_crop(ctx, x, 2 + i, edge, edge + a["output_padding"][i])
    wt = _transposed_weight(ctx, w, a["groups"], dt)
    return ctx.emit(R.nn.conv2d(x, wt, (1, 1), (0, 0), a["dilation"], a["groups"],
                                out_dtype=_acc(dt)))


@register_lowering("conv_transpose2d")
def _conv_t2d(ctx: LowerContext, node: Node, x: Expr, w: Expr, b: Expr | None = None) -> Expr:
    a = node.attrs
    dt = ctx.dtype_of(x)
    if any(d != 1 for d in a["dilation"]):
        y = _conv_t2d_dilated(ctx, node, x, w)
    else:
        y = ctx.emit(R.nn.conv2d_transpose(x, ctx.cast(w, dt), a["stride"], a["padding"],
                                           a["output_padding"], a["dilation"], a["groups"],
                                           out_dtype=_acc(dt)))
    return _act(ctx, node, ctx.cast(_channel_bias(ctx, y, b, 4), dt))


@register_lowering("linear")
def _linear(ctx: LowerContext, node: Node, x: Expr, w: Expr, b: Expr | None = None) -> Expr:
    if dense_fp32.applies(ctx, x, w, b):  # x86: register-tiled dense on a packed weight
        return _act(ctx, node, dense_fp32.linear_fp32(ctx, x, w, b))
    dt = ctx.dtype_of(x)
    y = ctx.emit(R.matmul(x, ctx.permute(ctx.cast(w, dt), [1, 0]), out_dtype=_acc(dt)))
    if b is not None:
        y = ctx.emit(R.add(y, ctx.cast(b, _acc(dt))))
    return _act(ctx, node, ctx.cast(y, dt))


@register_lowering("matmul")
def _matmul(ctx: LowerContext, node: Node, a: Expr, b: Expr) -> Expr:
    dt = to_tvm_dtype(node.outputs[0].dtype)
    y = ctx.emit(R.matmul(ctx.cast(a, dt), ctx.cast(b, dt), out_dtype=_acc(dt)))
    return ctx.cast(y, dt)


# ----------------------------------------------------------------------------- normalization
def _ones(ctx: LowerContext, shape: tuple[int, ...], dtype: str, value: float = 1.0) -> Expr:
    return ctx.const(np.full(shape, value), dtype)


@register_lowering("batch_norm")
def _batch_norm(ctx: LowerContext, node: Node, x: Expr, mean: Expr, var: Expr,
                weight: Expr | None = None, bias: Expr | None = None) -> Expr:
    dt = ctx.dtype_of(x)
    rank = ctx.rank_of(x)
    shape = [1] * rank
    shape[1] = -1

    def chan(e: Expr) -> Expr:
        return R.reshape(ctx.cast(e, dt), shape)

    inv = R.rsqrt(R.add(chan(var), ctx.scalar(node.attrs["eps"], dt)))
    scale = ctx.emit(inv if weight is None else R.multiply(inv, chan(weight)))
    y = ctx.emit(R.multiply(R.subtract(x, chan(mean)), scale))
    return y if bias is None else R.add(y, chan(bias))


def _affine(ctx: LowerContext, shape: tuple[int, ...], dt: str, weight: Expr | None,
            bias: Expr | None) -> tuple[Expr, Expr]:
    g = _ones(ctx, shape, dt) if weight is None else ctx.cast(weight, dt)
    b = _ones(ctx, shape, dt, 0.0) if bias is None else ctx.cast(bias, dt)
    return g, b


def _norm_in_fp32(ctx: LowerContext, x: Expr, weight: Expr | None, bias: Expr | None,
                  fn) -> Expr:
    """``fn(x, weight, bias)`` in fp32 for 16-bit float ``x``, rounded once."""
    dt = ctx.dtype_of(x)
    if dt not in ("float16", "bfloat16"):
        return fn(x, weight, bias)
    wide = [None if e is None else ctx.cast(e, "float32") for e in (weight, bias)]
    return ctx.cast(ctx.emit(fn(ctx.cast(x, "float32"), *wide)), dt)


def _norm_of_one(ctx: LowerContext, x: Expr, g: Expr, b: Expr, eps: float) -> Expr:
    """A normalization over groups of ONE element: ``(x - x) * rsqrt(eps) * g + b`` with
    ``x - x`` written ``where(isfinite(x), 0, NaN)`` (module docstring); ``g``/``b`` must
    broadcast against ``x``."""
    dt = ctx.dtype_of(x)
    centered = R.where(isfinite(ctx, x), ctx.scalar(0.0, dt), ctx.scalar(float("nan"), dt))
    inv = ctx.scalar(1.0 / math.sqrt(eps) if eps > 0 else math.inf, dt)
    return R.add(R.multiply(ctx.emit(R.multiply(centered, inv)), g), b)


@register_lowering("layer_norm")
def _layer_norm(ctx: LowerContext, node: Node, x: Expr, weight: Expr | None = None,
                bias: Expr | None = None) -> Expr:
    ns = tuple(node.attrs["normalized_shape"])

    def norm(x: Expr, weight: Expr | None, bias: Expr | None) -> Expr:
        dt = ctx.dtype_of(x)
        g, b = _affine(ctx, ns, dt, weight, bias)
        if math.prod(ns) == 1:
            return _norm_of_one(ctx, x, g, b, node.attrs["eps"])
        return R.nn.layer_norm(x, g, b, list(range(-len(ns), 0)), node.attrs["eps"])
    return _norm_in_fp32(ctx, x, weight, bias, norm)


def _centered_norm(ctx: LowerContext, x: Expr, groups: int, eps: float, g: Expr,
                   b: Expr) -> Expr:
    """``(x - mean) * rsqrt(var + eps) * g + b`` over ``groups`` groups of channels of
    ``x`` [N, C, *S] (``g``/``b`` per channel), the variance from the centred values.

    TVM's group_norm/instance_norm take ``E[x^2] - E[x]^2``, which cancels when the mean is
    large against the spread (a group of two values 99.1 and 99.3: off by 3e-5 where torch
    is off by 1e-7); two passes keep the error at a few ulp.
    """
    shape = ctx.shape_of(x)
    n, c = int(shape[0]), int(shape[1])
    grouped = ctx.emit(R.reshape(x, [n, groups, -1]))
    mean = ctx.emit(R.mean(grouped, [2], keepdims=True))
    centered = ctx.emit(R.subtract(grouped, mean))
    var = ctx.emit(R.mean(R.multiply(centered, centered), [2], keepdims=True))
    inv = ctx.emit(R.rsqrt(R.add(var, ctx.scalar(eps, ctx.dtype_of(x)))))
    y = ctx.emit(R.reshape(R.multiply(centered, inv), [int(d) for d in shape]))
    per_channel = [c] + [1] * (len(shape) - 2)
    return R.add(R.multiply(y, R.reshape(g, per_channel)), R.reshape(b, per_channel))


@register_lowering("group_norm")
def _group_norm(ctx: LowerContext, node: Node, x: Expr, weight: Expr | None = None,
                bias: Expr | None = None) -> Expr:
    shape = ctx.shape_of(x)

    def norm(x: Expr, weight: Expr | None, bias: Expr | None) -> Expr:
        g, b = _affine(ctx, (shape[1],), ctx.dtype_of(x), weight, bias)
        if shape[1] // node.attrs["num_groups"] * math.prod(shape[2:]) == 1:
            per_channel = [shape[1]] + [1] * (len(shape) - 2)
            return _norm_of_one(ctx, x, ctx.emit(R.reshape(g, per_channel)),
                                ctx.emit(R.reshape(b, per_channel)), node.attrs["eps"])
        return _centered_norm(ctx, x, node.attrs["num_groups"], node.attrs["eps"], g, b)
    return _norm_in_fp32(ctx, x, weight, bias, norm)


@register_lowering("instance_norm")
def _instance_norm(ctx: LowerContext, node: Node, x: Expr, weight: Expr | None = None,
                   bias: Expr | None = None) -> Expr:
    shape = ctx.shape_of(x)

    def norm(x: Expr, weight: Expr | None, bias: Expr | None) -> Expr:
        g, b = _affine(ctx, (shape[1],), ctx.dtype_of(x), weight, bias)
        if math.prod(shape[2:]) == 1:
            per_channel = [shape[1]] + [1] * (len(shape) - 2)
            return _norm_of_one(ctx, x, ctx.emit(R.reshape(g, per_channel)),
                                ctx.emit(R.reshape(b, per_channel)), node.attrs["eps"])
        return _centered_norm(ctx, x, shape[1], node.attrs["eps"], g, b)
    return _norm_in_fp32(ctx, x, weight, bias, norm)


@register_lowering("rms_norm")
def _rms_norm(ctx: LowerContext, node: Node, x: Expr, weight: Expr | None = None) -> Expr:
    ns = tuple(node.attrs["normalized_shape"])
    dt = ctx.dtype_of(x)
    eps = node.attrs["eps"]
    if eps is None:  # torch: the machine epsilon of the dtype it computes in (fp32 for
        # fp16/bf16 inputs: torch 2.13's CPU kernel, checked by the fuzzer)
        eps = float(np.finfo(np.dtype(_acc(dt))).eps)
    axes = list(range(-len(ns), 0))

    def norm(x: Expr, weight: Expr | None, _bias: Expr | None) -> Expr:
        fdt = ctx.dtype_of(x)
        ms = ctx.emit(R.mean(R.multiply(x, x), axes, keepdims=True))
        y = ctx.emit(R.multiply(x, R.rsqrt(R.add(ms, ctx.scalar(eps, fdt)))))
        return y if weight is None else R.multiply(y, ctx.cast(weight, fdt))
    return _norm_in_fp32(ctx, x, weight, None, norm)


# ----------------------------------------------------------------------------- pooling
def _pool_args(node: Node, nd: int) -> dict:
    a = node.attrs
    return dict(pool_size=tuple(a["kernel"]), strides=tuple(a["stride"]),
                padding=tuple(a["padding"]), ceil_mode=a["ceil_mode"])


def _max_pool(nd: int):
    def lower(ctx: LowerContext, node: Node, x: Expr) -> Expr:
        pool = R.nn.max_pool1d if nd == 1 else R.nn.max_pool2d

        def fn(t: Expr) -> Expr:
            return pool(t, dilation=tuple(node.attrs["dilation"]), **_pool_args(node, nd))

        return propagate_nan(ctx, x, ctx.emit(fn(x)), fn)  # a window with NaN gives NaN
    return lower


register_lowering("max_pool1d")(_max_pool(1))
register_lowering("max_pool2d")(_max_pool(2))


def _avg_pool(nd: int):
    def lower(ctx: LowerContext, node: Node, x: Expr) -> Expr:
        a = node.attrs
        pool = R.nn.avg_pool1d if nd == 1 else R.nn.avg_pool2d
        div = a.get("divisor_override")
        if div is None:
            return pool(x, count_include_pad=a["count_include_pad"], **_pool_args(node, nd))
        if a["ceil_mode"]:
            raise LoweringError("avg_pool with divisor_override and ceil_mode is not supported")
        k = math.prod(a["kernel"])
        y = ctx.emit(pool(x, count_include_pad=True, **_pool_args(node, nd)))
        return R.multiply(y, ctx.scalar(k / div, ctx.dtype_of(x)))
    return lower


register_lowering("avg_pool1d")(_avg_pool(1))
register_lowering("avg_pool2d")(_avg_pool(2))


@register_lowering("adaptive_avg_pool1d")
def _aap1d(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    return R.nn.adaptive_avg_pool1d(x, tuple(node.attrs["output_size"]))


@register_lowering("adaptive_avg_pool2d")
def _aap2d(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    return R.nn.adaptive_avg_pool2d(x, tuple(node.attrs["output_size"]))


def _adaptive_max(nd: int):
    def lower(ctx: LowerContext, node: Node, x: Expr) -> Expr:
        shape = ctx.shape_of(x)
        sizes = tuple(node.attrs["output_size"])
        ins = shape[-nd:]

        def fn(t: Expr) -> Expr:
            if all(i % o == 0 for i, o in zip(ins, sizes, strict=True)):
                k = tuple(i // o for i, o in zip(ins, sizes, strict=True))
                pool = R.nn.max_pool1d if nd == 1 else R.nn.max_pool2d
                return ctx.emit(pool(t, pool_size=k, strides=k, padding=(0,) * nd,
                                     dilation=(1,) * nd))
            y = t
            for d in range(nd):  # max over each axis in turn: windows are separable
                axis = len(shape) - nd + d
                cells = []
                for i in range(sizes[d]):
                    lo = (i * ins[d]) // sizes[d]
                    hi = -((-(i + 1) * ins[d]) // sizes[d])
                    part = R.strided_slice(y, [axis], [lo], [hi])
                    cells.append(ctx.emit(R.max(part, [axis], keepdims=True)))
                y = ctx.emit(R.concat(cells, axis))
            return y

        return propagate_nan(ctx, x, fn(x), fn)  # a window with NaN gives NaN (torch)
    return lower


register_lowering("adaptive_max_pool1d")(_adaptive_max(1))
register_lowering("adaptive_max_pool2d")(_adaptive_max(2))


# ----------------------------------------------------------------------------- attention
def _repeat_heads(ctx: LowerContext, t: Expr, heads: int) -> Expr:
    have = ctx.static_dim(t, -3)
    if have == heads:
        return t
    return ctx.emit(R.repeat(t, heads // have, axis=ctx.rank_of(t) - 3))


@register_lowering("sdpa")
def _sdpa(ctx: LowerContext, node: Node, q: Expr, k: Expr, v: Expr,
          mask: Expr | None = None) -> Expr:
    a = node.attrs
    dt = ctx.dtype_of(q)
    if a["enable_gqa"]:
        heads = ctx.static_dim(q, -3)
        k, v = _repeat_heads(ctx, k, heads), _repeat_heads(ctx, v, heads)
    rank = ctx.rank_of(k)
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    scale = a["scale"] if a["scale"] is not None else 1.0 / math.sqrt(ctx.static_dim(q, -1))
    s = ctx.emit(R.multiply(R.matmul(q, ctx.permute(k, perm)), ctx.scalar(scale, dt)))
    neg_inf = ctx.scalar(-np.inf, dt)
    if a["is_causal"]:
        lq, lk = q.ty.shape[-2], k.ty.shape[-2]
        if ctx.is_static_shape(q) and ctx.is_static_shape(k):
            causal = ctx.const(np.tril(np.ones((int(lq), int(lk)), dtype=bool)), "bool")
        else:  # a symbolic length: the same lower triangle, built at run time
            causal = ctx.emit(R.greater(R.tril(R.ones(R.shape([lq, lk]), "int8")),
                                        ctx.scalar(0, "int8")))
        s = ctx.emit(R.where(causal, s, neg_inf))
    if mask is not None:
        if ctx.dtype_of(mask) == "bool":
            s = ctx.emit(R.where(mask, s, neg_inf))
        else:
            s = ctx.emit(R.add(s, ctx.cast(mask, dt)))
    p = ctx.emit(R.nn.softmax(s, -1))
    if mask is not None or a["is_causal"]:
        # torch's _safe_softmax: a row whose scores are all -inf (fully masked) gives 0, not
        # the NaN of softmax(-inf, ..., -inf)
        masked = ctx.emit(R.astype(R.equal(s, neg_inf), "int8"))
        dead = ctx.emit(R.equal(R.min(masked, [-1], keepdims=True), ctx.scalar(1, "int8")))
        p = ctx.emit(R.where(dead, ctx.scalar(0.0, dt), p))
    return R.matmul(p, ctx.cast(v, dt))
