"""Relax lowerings of the elementwise float ops: activations, unary math, binary, compare, cast.

Formulas follow the torch kernels (``slimfx/backends/torch/kernels.py``):

- ``hardswish(x) = x * clip(x + 3, 0, 6) / 6``, ``hardsigmoid(x) = clip(x / 6 + 1/2, 0, 1)``,
- ``mish(x) = x * tanh(softplus(x))``, ``elu(x) = x if x > 0 else alpha * (exp(x) - 1)``,
- ``softplus(x) = x if beta*x > threshold else log(1 + exp(beta*x)) / beta``,
- ``round`` rounds half to even (torch), not half away from zero (LLVM ``round``).
"""

from __future__ import annotations

from collections.abc import Callable

from tvm import relax
from tvm.relax import Expr

from slimfx.backends.tvm.lower import LowerContext, register_lowering, to_tvm_dtype
from slimfx.ir.core import Node

__all__ = ["clamp", "round_half_even"]

R = relax.op


def _out_dtype(node: Node, index: int = 0) -> str:
    return to_tvm_dtype(node.outputs[index].dtype)


def clamp(ctx: LowerContext, x: Expr, lo: float | None, hi: float | None) -> Expr:
    """``min(max(x, lo), hi)`` with ``None`` meaning unbounded (used by fused activations)."""
    dtype = ctx.dtype_of(x)
    if lo == 0.0 and hi is None:
        return ctx.emit(R.nn.relu(x))
    if lo is not None:
        x = ctx.emit(R.maximum(x, ctx.scalar(lo, dtype)))
    if hi is not None:
        x = ctx.emit(R.minimum(x, ctx.scalar(hi, dtype)))
    return x


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


def _softplus(ctx: LowerContext, x: Expr, beta: float, threshold: float) -> Expr:
    dt = ctx.dtype_of(x)
    bx = ctx.emit(R.multiply(x, ctx.scalar(beta, dt))) if beta != 1.0 else x
    soft = ctx.emit(R.log(R.add(ctx.scalar(1.0, dt), R.exp(bx))))
    if beta != 1.0:
        soft = ctx.emit(R.divide(soft, ctx.scalar(beta, dt)))
    return ctx.emit(R.where(R.greater(bx, ctx.scalar(threshold, dt)), x, soft))


_SIMPLE: dict[str, Callable[[Expr], Expr]] = {
    "relu": R.nn.relu, "silu": R.nn.silu, "sigmoid": R.sigmoid, "tanh": R.tanh, "exp": R.exp,
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


@register_lowering("mish")
def _mish(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    return R.multiply(x, R.tanh(_softplus(ctx, x, 1.0, 20.0)))


@register_lowering("reciprocal")
def _reciprocal(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    return R.divide(ctx.scalar(1.0, ctx.dtype_of(x)), x)


@register_lowering("round")
def _round(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    return round_half_even(ctx, x)


@register_lowering("gelu")
def _gelu(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    return R.nn.gelu_tanh(x) if node.attrs["approximate"] == "tanh" else R.nn.gelu(x)


@register_lowering("leaky_relu")
def _leaky_relu(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    return R.nn.leakyrelu(x, node.attrs["negative_slope"])


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
    return R.nn.softmax(x, node.attrs["axis"])


@register_lowering("log_softmax")
def _log_softmax(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    return R.nn.log_softmax(x, node.attrs["axis"])


@register_lowering("cast")
def _cast(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    return ctx.cast(x, node.attrs["dtype"])


@register_lowering("identity")
@register_lowering("dropout")
def _identity(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    return x


# ----------------------------------------------------------------------------- binary
_ARITH: dict[str, Callable[[Expr, Expr], Expr]] = {
    "add": R.add, "sub": R.subtract, "mul": R.multiply, "pow": R.power, "maximum": R.maximum,
    "minimum": R.minimum,
}
_COMPARE: dict[str, Callable[[Expr, Expr], Expr]] = {
    "eq": R.equal, "ne": R.not_equal, "lt": R.less, "le": R.less_equal, "gt": R.greater,
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


@register_lowering("div")
def _div(ctx: LowerContext, node: Node, a: Expr, b: Expr) -> Expr:
    dt = _out_dtype(node)
    a, b = ctx.cast(a, dt), ctx.cast(b, dt)
    mode = node.attrs["rounding_mode"]
    if mode == "floor":
        return R.floor_divide(a, b)
    q = ctx.emit(R.divide(a, b))
    if mode == "trunc" and dt.startswith(("float", "bfloat")):
        return R.trunc(q)
    return q


@register_lowering("where")
def _where(ctx: LowerContext, node: Node, cond: Expr, a: Expr, b: Expr) -> Expr:
    dt = _out_dtype(node)
    return R.where(ctx.cast(cond, "bool"), ctx.cast(a, dt), ctx.cast(b, dt))
