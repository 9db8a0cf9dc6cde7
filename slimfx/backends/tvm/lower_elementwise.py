"""Relax lowerings of the elementwise float ops: activations, unary math, binary, compare, cast.

Formulas follow the torch kernels (``slimfx/backends/torch/kernels.py``):

- ``hardswish(x) = x * clip(x + 3, 0, 6) / 6``, ``hardsigmoid(x) = clip(x / 6 + 1/2, 0, 1)``,
- ``mish(x) = x * tanh(softplus(x))``, ``elu(x) = x if x > 0 else alpha * (exp(x) - 1)``,
- ``softplus(x) = x if beta*x > threshold else log(1 + exp(beta*x)) / beta``,
- ``round`` rounds half to even (torch), not half away from zero (LLVM ``round``).

Accuracy where TVM's own lowering loses it (each found by the differential fuzzer):

- ``tanh``: TVM computes ``(1 - e^-2y) / (1 + e^-2y)``, which cancels near 0 (0 for
  ``|y| < 3e-8``, a relative error of ~``eps / 2|y|`` below ~1e-2). For ``|y| < 0.4`` the
  odd Taylor series through ``y^15`` is used instead (truncation < 3e-10 relative).
- ``softplus`` and ``mish`` use ``log1p(e^x)`` as torch does (:func:`log1p`), where
  ``log(1 + u)`` is 0 for ``u < 6e-8`` and has a relative error of ~``eps / u`` above:
  ``mish(x < -16)`` was -0.0 or twice ``x * e^x``.
- fp16/bf16 ``tanh``, ``softplus``, ``mish``, ``leaky_relu``, ``softmax`` and
  ``log_softmax`` compute in fp32 and round once, as torch's kernels for the reduced float
  types do (TVM has no bf16 ``isnan``/``isinf``/``isfinite``: :func:`isnan` & co. widen
  bf16 to fp32 first) (``leaky_relu`` in fp16 used to
  multiply by the slope rounded to fp16: 0.2 -> 0.19995, 1 ulp off torch).
- ``gelu`` (exact form) of +-Inf is NaN: torch's fp32/fp16 kernel gives NaN there (its
  fp64 kernel gives +-Inf and 0), TVM's formula gave +Inf for +Inf.

NaN and infinities behave as in PyTorch (DESIGN.md §4): ``relu``, ``clamp`` (and what is
built on it: ``relu6``, ``hardtanh``, ``hardsigmoid``, fused activations), ``maximum`` and
``minimum`` propagate NaN. TVM's ``max``/``min`` are ``select(a > b, a, b)``, which returns
the second operand when the first is NaN (``relu(NaN)`` was 0), so the clamps here are
written as comparisons that leave NaN in place (``where(x < lo, lo, x)``) and the float
``maximum``/``minimum`` return NaN when either operand is NaN (:func:`nan_max`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tvm import relax
from tvm.relax import Expr

from slimfx.backends.tvm.lower import LowerContext, register_lowering, to_tvm_dtype
from slimfx.ir.core import Node

__all__ = ["clamp", "round_half_even", "is_float", "nan_max", "propagate_nan", "tanh",
           "log1p", "isnan", "isinf", "isfinite", "in_fp32"]

R = relax.op


def _out_dtype(node: Node, index: int = 0) -> str:
    return to_tvm_dtype(node.outputs[index].dtype)


def is_float(dtype: str) -> bool:
    """Whether a TVM dtype string is a floating-point type (the ones that hold NaN)."""
    return dtype.startswith(("float", "bfloat"))


def _f32_view(ctx: LowerContext, x: Expr) -> Expr:
    # TVM's isnan/isinf/isfinite reject bfloat16 ("not supported for isnan op"): test its
    # exact fp32 widening instead
    return ctx.cast(x, "float32") if ctx.dtype_of(x) == "bfloat16" else x


def isnan(ctx: LowerContext, x: Expr) -> Expr:
    """``R.isnan(x)`` for every float dtype (bf16 included)."""
    return R.isnan(_f32_view(ctx, x))


def isinf(ctx: LowerContext, x: Expr) -> Expr:
    """``R.isinf(x)`` for every float dtype (bf16 included)."""
    return R.isinf(_f32_view(ctx, x))


def isfinite(ctx: LowerContext, x: Expr) -> Expr:
    """``R.isfinite(x)`` for every float dtype (bf16 included)."""
    return R.isfinite(_f32_view(ctx, x))


def clamp(ctx: LowerContext, x: Expr, lo: float | None, hi: float | None) -> Expr:
    """``min(max(x, lo), hi)`` with ``None`` meaning unbounded (used by fused activations).

    Written ``where(x < lo, lo, x)`` then ``where(x > hi, hi, x)``: NaN stays NaN, as in
    ``torch.clamp`` (TVM's ``maximum``/``minimum`` would replace it by a bound).
    """
    dtype = ctx.dtype_of(x)
    if not is_float(dtype):
        # integers have no NaN; max/min read x once, so chains of fused integer ops do
        # not grow their inlined expressions exponentially (``where`` reads x twice)
        if lo is not None:
            x = ctx.emit(R.maximum(x, ctx.scalar(lo, dtype)))
        if hi is not None:
            x = ctx.emit(R.minimum(x, ctx.scalar(hi, dtype)))
        return x
    if lo is not None:
        b = ctx.scalar(lo, dtype)
        x = ctx.emit(R.where(R.less(x, b), b, x))
    if hi is not None:
        b = ctx.scalar(hi, dtype)
        x = ctx.emit(R.where(R.greater(x, b), b, x))
    return x


def nan_max(ctx: LowerContext, a: Expr, b: Expr, *, minimum: bool = False) -> Expr:
    """``torch.maximum(a, b)`` (``torch.minimum`` with ``minimum``): NaN if either is NaN."""
    pick = ctx.emit(R.where(R.less(a, b) if minimum else R.greater(a, b), a, b))  # b if b NaN
    if not is_float(ctx.dtype_of(a)):
        return pick
    return ctx.emit(R.where(isnan(ctx, a), a, pick))


def propagate_nan(ctx: LowerContext, x: Expr, y: Expr, reduce: Callable[[Expr], Expr], *,
                  minimum: bool = False) -> Expr:
    """``y``, a max (``minimum``: min) of windows or axes of ``x``, with torch's non-finite rules.

    A window holding a NaN gives NaN (TVM's ``max`` reducer drops it); a window of only
    ``-inf`` (``minimum``: ``+inf``) gives that infinity (TVM's reducers start from the
    lowest finite value, so such a window gave ``-FLT_MAX``). ``reduce`` applies the same
    windows/axes, as a MAX, to an ``int8`` code of ``x``: 2 for NaN, 0 for the infinity the
    reduction starts from, 1 otherwise (TVM pads with -128, so a window of padding only
    gives the infinity too, as torch's -inf padding does).
    """
    dtype = ctx.dtype_of(x)
    if not is_float(dtype):
        return y
    i8 = "int8"
    start = ctx.scalar(float("inf") if minimum else float("-inf"), dtype)
    code = R.where(isnan(ctx, x), ctx.scalar(2, i8),
                   R.where(R.equal(x, start), ctx.scalar(0, i8), ctx.scalar(1, i8)))
    flag = ctx.emit(reduce(ctx.emit(code)))
    nan = ctx.scalar(float("nan"), dtype)
    # flag 0: only the infinity; below 0: only padding (a max pool window that lies in the
    # padding entirely, which torch allows with dilation), -inf in torch as well
    y = ctx.emit(R.where(R.less(flag, ctx.scalar(1, i8)), start, y))
    return ctx.emit(R.where(R.greater(flag, ctx.scalar(1, i8)), nan, y))


def round_half_even(ctx: LowerContext, x: Expr) -> Expr:
    """Rounds to the nearest integer, ties to even (``torch.round``), exactly."""
    dt = ctx.dtype_of(x)
    f = ctx.emit(R.floor(x))
    d = ctx.emit(R.subtract(x, f))
    half = ctx.scalar(0.5, dt)
    one = ctx.scalar(1.0, dt)
    odd = ctx.emit(R.floor_mod(f, ctx.scalar(2.0, dt)))  # 1 when f is odd
    tie = ctx.emit(R.add(f, odd))
    up = ctx.emit(R.add(f, one))
    r = ctx.emit(R.where(R.less(d, half), f, up))
    return ctx.emit(R.where(R.equal(d, half), tie, r))


def in_fp32(ctx: LowerContext, x: Expr, fn: Callable[[Expr], Expr]) -> Expr:
    """``fn(x)``, computed in fp32 and rounded once when ``x`` is fp16/bf16 (as torch does)."""
    dt = ctx.dtype_of(x)
    if dt not in ("float16", "bfloat16"):
        return fn(x)
    return ctx.cast(ctx.emit(fn(ctx.cast(x, "float32"))), dt)


# tanh's odd Taylor series, tanh(y) = y * sum_k c_k y^(2k), through y^15
_TANH_SERIES = (1.0, -1 / 3, 2 / 15, -17 / 315, 62 / 2835, -1382 / 155925, 21844 / 6081075,
                -929569 / 638512875)
_TANH_SERIES_BELOW = 0.4


def _tanh_f(ctx: LowerContext, y: Expr) -> Expr:
    dt = ctx.dtype_of(y)
    s = ctx.emit(R.multiply(y, y))
    p: Expr = ctx.scalar(_TANH_SERIES[-1], dt)
    for c in reversed(_TANH_SERIES[:-1]):
        p = ctx.emit(R.add(R.multiply(p, s), ctx.scalar(c, dt)))
    small = ctx.emit(R.multiply(y, p))
    near_zero = R.less(R.abs(y), ctx.scalar(_TANH_SERIES_BELOW, dt))
    return ctx.emit(R.where(near_zero, small, R.tanh(y)))


def tanh(ctx: LowerContext, y: Expr) -> Expr:
    """``torch.tanh`` to a few ulp, also near 0 (see the module docstring)."""
    return in_fp32(ctx, y, lambda t: _tanh_f(ctx, t))


def log1p(ctx: LowerContext, u: Expr) -> Expr:
    """``log(1 + u)`` for ``u >= 0`` (or +Inf, NaN), accurate when ``u`` is tiny.

    For ``u < 1``: ``2 atanh(z)`` with ``z = u / (2 + u) <= 1/3``, its odd series through
    ``z^15`` (truncation < 2e-9 relative); else ``log(1 + u)``. (The shorter
    ``log(w) * u / (w - 1)``, ``w = 1 + u``, does not survive TVM's simplifier, which
    rewrites ``(1 + u) - 1`` to ``u``.)
    """
    dt = ctx.dtype_of(u)
    z = ctx.emit(R.divide(u, R.add(ctx.scalar(2.0, dt), u)))
    z2 = ctx.emit(R.multiply(z, z))
    p: Expr = ctx.scalar(1.0 / 15, dt)
    for k in range(13, 0, -2):
        p = ctx.emit(R.add(R.multiply(p, z2), ctx.scalar(1.0 / k, dt)))
    series = ctx.emit(R.multiply(R.multiply(z, p), ctx.scalar(2.0, dt)))
    big = ctx.emit(R.log(R.add(ctx.scalar(1.0, dt), u)))
    return ctx.emit(R.where(R.less(u, ctx.scalar(1.0, dt)), series, big))


def _softplus_f(ctx: LowerContext, x: Expr, beta: float, threshold: float) -> Expr:
    dt = ctx.dtype_of(x)
    bx = ctx.emit(R.multiply(x, ctx.scalar(beta, dt))) if beta != 1.0 else x
    soft = log1p(ctx, ctx.emit(R.exp(bx)))
    if beta != 1.0:
        soft = ctx.emit(R.divide(soft, ctx.scalar(beta, dt)))
    return ctx.emit(R.where(R.greater(bx, ctx.scalar(threshold, dt)), x, soft))


def _softplus(ctx: LowerContext, x: Expr, beta: float, threshold: float) -> Expr:
    return in_fp32(ctx, x, lambda t: _softplus_f(ctx, t, beta, threshold))


_SIMPLE: dict[str, Callable[[Expr], Expr]] = {
    "silu": R.nn.silu, "sigmoid": R.sigmoid, "exp": R.exp,
    "log": R.log, "sqrt": R.sqrt, "rsqrt": R.rsqrt, "neg": R.negative, "abs": R.abs, "erf": R.erf,
    "sin": R.sin, "cos": R.cos, "floor": R.floor, "ceil": R.ceil, "sign": R.sign,
    "logical_not": R.logical_not,
}


def _simple(fn: Callable[[Expr], Expr]) -> Callable[..., Expr]:
    def lower(ctx: LowerContext, node: Node, x: Expr) -> Expr:
        return fn(x)
    return lower


for _name, _fn in _SIMPLE.items():
    register_lowering(_name)(_simple(_fn))


@register_lowering("relu")
def _relu(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    return clamp(ctx, x, 0.0, None)  # NaN-preserving (R.nn.relu is max(x, 0): relu(NaN) = 0)


@register_lowering("relu6")
def _relu6(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    return clamp(ctx, x, 0.0, 6.0)


@register_lowering("hardswish")
def _hardswish(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    dt = ctx.dtype_of(x)
    gate = clamp(ctx, ctx.emit(R.add(x, ctx.scalar(3.0, dt))), 0.0, 6.0)
    return R.divide(R.multiply(x, gate), ctx.scalar(6.0, dt))


@register_lowering("hardsigmoid")
def _hardsigmoid(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    dt = ctx.dtype_of(x)
    y = ctx.emit(R.add(R.divide(x, ctx.scalar(6.0, dt)), ctx.scalar(0.5, dt)))
    return clamp(ctx, y, 0.0, 1.0)


@register_lowering("tanh")
def _tanh(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    return tanh(ctx, x)


@register_lowering("mish")
def _mish(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    def mish(t: Expr) -> Expr:
        return R.multiply(t, _tanh_f(ctx, _softplus_f(ctx, t, 1.0, 20.0)))
    return in_fp32(ctx, x, mish)


@register_lowering("reciprocal")
def _reciprocal(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    return R.divide(ctx.scalar(1.0, ctx.dtype_of(x)), x)


@register_lowering("round")
def _round(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    return round_half_even(ctx, x)


@register_lowering("gelu")
def _gelu(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    if node.attrs["approximate"] == "tanh":
        return R.nn.gelu_tanh(x)
    dt = ctx.dtype_of(x)
    # torch forms x * (1 + erf(x / sqrt 2)) before halving it, so in fp32 (where bf16 is
    # computed too) every x >= 2**127 overflows to +inf; TVM's formula gave x
    y = ctx.emit(R.nn.gelu(x))
    if dt in ("float32", "bfloat16"):  # fp16 holds no such x
        y = ctx.emit(R.where(R.greater_equal(x, ctx.scalar(2.0**127, dt)),
                             ctx.scalar(float("inf"), dt), y))
    return R.where(isinf(ctx, x), ctx.scalar(float("nan"), dt), y)  # as torch


@register_lowering("leaky_relu")
def _leaky_relu(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    slope = node.attrs["negative_slope"]

    def leaky(t: Expr) -> Expr:
        if slope != 0.0:
            return R.nn.leakyrelu(t, slope)
        # slope 0: TVM folds t * 0.0 (an immediate) to 0, but torch's NaN * 0 and -inf * 0
        # are NaN; a one-element constant TENSOR is not folded
        dt = ctx.dtype_of(t)
        zero = ctx.const(np.zeros([1] * len(ctx.shape_of(t))), dt)
        return R.where(R.greater(t, ctx.scalar(0.0, dt)), t, ctx.emit(R.multiply(t, zero)))
    return in_fp32(ctx, x, leaky)


@register_lowering("elu")
def _elu(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    dt = ctx.dtype_of(x)
    neg = R.multiply(ctx.scalar(node.attrs["alpha"], dt), R.subtract(R.exp(x), ctx.scalar(1.0, dt)))
    return R.where(R.greater(x, ctx.scalar(0.0, dt)), x, ctx.emit(neg))


@register_lowering("softplus")
def _softplus_op(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    return _softplus(ctx, x, node.attrs["beta"], node.attrs["threshold"])


@register_lowering("clamp")
def _clamp(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    return clamp(ctx, x, node.attrs["min"], node.attrs["max"])


@register_lowering("softmax")
def _softmax(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    return in_fp32(ctx, x, lambda t: R.nn.softmax(t, node.attrs["axis"]))


@register_lowering("log_softmax")
def _log_softmax(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    return in_fp32(ctx, x, lambda t: R.nn.log_softmax(t, node.attrs["axis"]))


@register_lowering("cast")
def _cast(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    return ctx.cast(x, node.attrs["dtype"])


@register_lowering("identity")
@register_lowering("dropout")
def _identity(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    return x


# ----------------------------------------------------------------------------- binary
_ARITH: dict[str, Callable[[Expr, Expr], Expr]] = {
    "add": R.add, "sub": R.subtract, "mul": R.multiply, "pow": R.power,
}
_COMPARE: dict[str, Callable[[Expr, Expr], Expr]] = {
    "eq": R.equal, "lt": R.less, "le": R.less_equal, "gt": R.greater,
    "ge": R.greater_equal, "logical_and": R.logical_and, "logical_or": R.logical_or,
}


def _promoted(node: Node) -> str:
    from slimfx.ir.shapes import promote

    return to_tvm_dtype(promote(*(v.type for v in node.inputs)))


def _arith(fn: Callable[[Expr, Expr], Expr]) -> Callable[..., Expr]:
    def lower(ctx: LowerContext, node: Node, a: Expr, b: Expr) -> Expr:
        dt = _out_dtype(node)
        return fn(ctx.cast(a, dt), ctx.cast(b, dt))
    return lower


def _compare(fn: Callable[[Expr, Expr], Expr]) -> Callable[..., Expr]:
    def lower(ctx: LowerContext, node: Node, a: Expr, b: Expr) -> Expr:
        dt = _promoted(node)
        return fn(ctx.cast(a, dt), ctx.cast(b, dt))
    return lower


for _name, _fn2 in _ARITH.items():
    register_lowering(_name)(_arith(_fn2))
for _name, _fn2 in _COMPARE.items():
    register_lowering(_name)(_compare(_fn2))


@register_lowering("maximum")
@register_lowering("minimum")
def _maximum(ctx: LowerContext, node: Node, a: Expr, b: Expr) -> Expr:
    dt = _out_dtype(node)
    return nan_max(ctx, ctx.cast(a, dt), ctx.cast(b, dt), minimum=node.op.name == "minimum")


@register_lowering("ne")
def _ne(ctx: LowerContext, node: Node, a: Expr, b: Expr) -> Expr:
    dt = _promoted(node)
    a, b = ctx.cast(a, dt), ctx.cast(b, dt)
    if is_float(dt):  # TVM's float != is ordered (NaN != x is false); torch's is true
        # (not R.logical_not(R.equal(a, b)): TVM's simplifier turns it back into an ordered !=)
        return R.logical_or(R.logical_or(isnan(ctx, a), isnan(ctx, b)), R.not_equal(a, b))
    return R.not_equal(a, b)


def _floor_divide_float(ctx: LowerContext, a: Expr, b: Expr) -> Expr:
    """torch's float floor division (``c10::div_floor_floating``), not ``floor(a / b)``.

    ``floor(1.0 / 0.1)`` is 10 (the quotient rounds up to 10.0) where torch gives 9:
    ``mod = fmod(a, b)``, ``div = (a - mod) / b``, minus 1 when ``mod`` and ``b`` differ
    in sign, then ``floor`` rounded to the nearest integer; ``a / b`` when ``b == 0``.
    """
    dt = ctx.dtype_of(a)
    zero, one, half = (ctx.scalar(v, dt) for v in (0.0, 1.0, 0.5))
    mod = ctx.emit(R.mod(a, b))  # fmod for floats
    div = ctx.emit(R.divide(R.subtract(a, mod), b))
    fix = R.logical_and(R.logical_not(R.equal(mod, zero)),
                        R.logical_xor(R.less(b, zero), R.less(mod, zero)))
    div = ctx.emit(R.where(fix, R.subtract(div, one), div))
    fl = ctx.emit(R.floor(div))
    fl = ctx.emit(R.where(R.greater(R.subtract(div, fl), half), R.add(fl, one), fl))
    q = ctx.emit(R.divide(a, b))
    fl = ctx.emit(R.where(R.equal(div, zero), R.multiply(zero, q), fl))  # 0 with q's sign
    return R.where(R.equal(b, zero), q, fl)


@register_lowering("div")
def _div(ctx: LowerContext, node: Node, a: Expr, b: Expr) -> Expr:
    dt = _out_dtype(node)
    a, b = ctx.cast(a, dt), ctx.cast(b, dt)
    mode = node.attrs["rounding_mode"]
    if mode is not None and dt in ("float16", "bfloat16"):
        # in fp32, the integer result rounded to 16 bits (the torch backend's definition;
        # torch's own kernels round a / b to 16 bits first on some paths only). LLVM has
        # no bf16 fmod: computed in bf16 the build failed or crashed
        wide = ctx.cast(a, "float32"), ctx.cast(b, "float32")
        q = _floor_divide_float(ctx, *wide) if mode == "floor" else \
            R.trunc(ctx.emit(R.divide(*wide)))
        return ctx.cast(ctx.emit(q), dt)
    if mode == "floor":
        return _floor_divide_float(ctx, a, b) if is_float(dt) else R.floor_divide(a, b)
    q = ctx.emit(R.divide(a, b))
    if mode == "trunc" and is_float(dt):
        return R.trunc(q)
    return q


@register_lowering("where")
def _where(ctx: LowerContext, node: Node, cond: Expr, a: Expr, b: Expr) -> Expr:
    dt = _out_dtype(node)
    return R.where(ctx.cast(cond, "bool"), ctx.cast(a, dt), ctx.cast(b, dt))
