"""Lowering rules: one ATen call -> normalised slimfx IR ops.

Both frontends end here. ``torch.export`` produces ATen calls directly; the fx
frontend turns each fx node into ATen calls with ``make_fx(pre_dispatch=True)``,
the same level ``torch.export`` works at, so both produce the same IR.

A rule gets the call's arguments bound by the op schema (``a["stride"]``) with
tensors replaced by IR Values, and returns the result structure with Values. A
rule raises :class:`~slimfx.frontends.builder.Unmapped` when one call has a form
it does not normalise (e.g. a training-mode batch norm); the call then becomes an
``opaque`` node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from slimfx.errors import TraceError
from slimfx.frontends.builder import GraphBuilder, Unmapped
from slimfx.ir.core import Value
from slimfx.ir.symbolic import ShapeError, provably_equal
from slimfx.ir.types import TensorType, dtype_from_torch

__all__ = ["Call", "RULES", "bind", "packet_name"]

Rule = Callable[[GraphBuilder, dict[str, Any], "Call"], Any]
RULES: dict[str, Rule] = {}


@dataclass(frozen=True)
class Call:
    """What a rule may know about the call besides its arguments."""

    op: torch._ops.OpOverload
    meta: Any  # example result (fake or real tensors), None if unknown
    used: frozenset[int] | None  # result indices used downstream (tuple results), None: unknown

    @property
    def name(self) -> str:
        return packet_name(self.op)

    @property
    def type(self) -> TensorType:
        if not isinstance(self.meta, torch.Tensor):
            raise Unmapped(f"{self.op} has no example result")
        return TensorType.of(self.meta)

    def only_first_used(self) -> bool:
        return self.used is not None and self.used <= {0}


def packet_name(op: torch._ops.OpOverload) -> str:
    return op._schema.name.split("::")[-1]


def bind(op: torch._ops.OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Arguments by schema name, defaults filled in."""
    out: dict[str, Any] = {}
    params = op._schema.arguments
    for i, p in enumerate(params):
        if i < len(args) and not p.kwarg_only:
            out[p.name] = args[i]
        elif p.name in kwargs:
            out[p.name] = kwargs[p.name]
        elif p.has_default_value():
            out[p.name] = p.default_value
        else:
            out[p.name] = None
    return out


def rule(*names: str) -> Callable[[Rule], Rule]:
    def deco(fn: Rule) -> Rule:
        for n in names:
            RULES[n] = fn
        return fn
    return deco


def _ints(v: Any, n: int) -> list[int]:
    if isinstance(v, int):
        return [v] * n
    v = [int(x) for x in v]
    return v * n if len(v) == 1 else v


def _val(x: Any) -> Value:
    if not isinstance(x, Value):
        raise Unmapped(f"expected a tensor operand, got {x!r}")
    return x


def _float_operands(b: GraphBuilder, op: str, x: Any, w: Any) -> None:
    """Refuses, as torch eager does, a layer whose input is not floating point.

    Raises:
        TraceError: naming the op, its source line and both dtypes (an ``i64`` input to
            ``nn.Linear`` would trace, then fail when the graph runs).
    """
    if not isinstance(x, Value) or not isinstance(w, Value) or x.type.is_float:
        return  # (float dtype mixes come from autocast regions: the rules check the result)
    raise TraceError(
        f"{op} at {b.source} gets an input of dtype {x.dtype} (weight {w.dtype}): {op} needs "
        "floating-point operands of one dtype (torch eager raises here too, e.g. 'mat1 and "
        "mat2 must have the same dtype'); cast the input first, e.g. x.float()")


def _optional(b: GraphBuilder, x: Value, ops: list[Any], fills: list[float], size: int) -> list[Any]:
    """Trailing optional operands: drops trailing Nones, fills inner Nones with constants."""
    while ops and ops[-1] is None:
        ops.pop()
    out = []
    for o, f in zip(ops, fills, strict=False):
        out.append(b.constant(torch.full((size,), f, dtype=x.type.torch_dtype), "fill")
                   if o is None else o)
    return out


# ------------------------------------------------------------------ conv / linear
@rule("conv1d", "conv2d")
def _conv(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    nd = 1 if c.name == "conv1d" else 2
    x, w = _val(a["input"]), _val(a["weight"])
    stride, dil = _ints(a["stride"], nd), _ints(a["dilation"], nd)
    pad = a["padding"]
    if isinstance(pad, str):
        if pad == "valid":
            pad = [0] * nd
        else:  # "same": total padding d*(k-1), the extra one on the right (as torch does)
            total = [dil[i] * (w.shape[2 + i] - 1) for i in range(nd)]
            lo = [t // 2 for t in total]
            hi = [t - t // 2 for t in total]
            if lo != hi:
                pads: list[int] = []
                for i in reversed(range(nd)):
                    pads += [lo[i], hi[i]]
                x = b.add("pad", [x], {"pads": pads})
                pad = [0] * nd
            else:
                pad = lo
    _float_operands(b, c.name, x, w)
    ops = [x, w] + ([a["bias"]] if a["bias"] is not None else [])
    return b.add(c.name, ops, {"stride": stride, "padding": _ints(pad, nd), "dilation": dil,
                               "groups": a["groups"]})


@rule("conv_transpose2d")
def _conv_t(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    _float_operands(b, c.name, a["input"], a["weight"])
    ops = [a["input"], a["weight"]] + ([a["bias"]] if a["bias"] is not None else [])
    return b.add("conv_transpose2d", ops, {
        "stride": _ints(a["stride"], 2), "padding": _ints(a["padding"], 2),
        "output_padding": _ints(a["output_padding"], 2), "dilation": _ints(a["dilation"], 2),
        "groups": a["groups"]})


@rule("linear")
def _linear(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    _float_operands(b, "linear", a["input"], a["weight"])
    ops = [a["input"], a["weight"]] + ([a["bias"]] if a["bias"] is not None else [])
    return b.add("linear", ops)


@rule("matmul", "mm", "bmm")
def _matmul(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    other = a.get("other", a.get("mat2"))
    return b.add("matmul", [a["self"], other])


@rule("addmm")
def _addmm(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    if a["beta"] != 1 or a["alpha"] != 1:
        raise Unmapped("addmm with beta/alpha")
    return b.add("add", [b.add("matmul", [a["mat1"], a["mat2"]]), a["self"]])


# ------------------------------------------------------------------ normalization
def _bn(b: GraphBuilder, a: dict[str, Any], eps: float) -> Value:
    x = _val(a["input"])
    if a["running_mean"] is None or a["running_var"] is None:
        raise Unmapped("batch norm without running statistics")
    c = x.shape[1]
    opt = _optional(b, x, [a["weight"], a["bias"]], [1.0, 0.0], c)
    return b.add("batch_norm", [x, a["running_mean"], a["running_var"], *opt], {"eps": eps})


@rule("batch_norm")
def _batch_norm(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    if a["training"]:
        raise Unmapped("batch norm in training mode")
    return _bn(b, a, a["eps"])


@rule("_native_batch_norm_legit_no_training")
def _bn_legit(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    if not c.only_first_used():
        raise Unmapped("batch norm statistics are used")
    return (_bn(b, a, a["eps"]), None, None)


@rule("layer_norm")
def _layer_norm(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    x = _val(a["input"])
    shape = list(a["normalized_shape"])
    if a["weight"] is None and a["bias"] is not None:
        raise Unmapped("layer norm with a bias but no weight")
    ops = [o for o in (a["weight"], a["bias"]) if o is not None]
    return b.add("layer_norm", [x, *ops], {"normalized_shape": shape, "eps": a["eps"]})


@rule("instance_norm")
def _instance_norm(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    """``nn.InstanceNorm{1,2,3}d``: input statistics -> ``instance_norm``.

    With ``track_running_stats=True`` in eval, torch uses the running statistics
    (``use_input_stats=False``): that is inference batch norm.
    """
    x = _val(a["input"])
    if not a["use_input_stats"]:
        return _bn(b, a, a["eps"])
    if x.type.rank < 3:
        raise Unmapped(f"instance norm of a rank-{x.type.rank} input (needs N, C, ...)")
    opt = _optional(b, x, [a["weight"], a["bias"]], [1.0, 0.0], x.shape[1])
    return b.add("instance_norm", [x, *opt], {"eps": a["eps"]})


@rule("group_norm")
def _group_norm(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    x = _val(a["input"])
    opt = _optional(b, x, [a["weight"], a["bias"]], [1.0, 0.0], x.shape[1])
    return b.add("group_norm", [x, *opt], {"num_groups": a["num_groups"], "eps": a["eps"]})


@rule("rms_norm")
def _rms_norm(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    ops = [a["weight"]] if a["weight"] is not None else []
    return b.add("rms_norm", [a["input"], *ops],
                 {"normalized_shape": list(a["normalized_shape"]), "eps": a["eps"]})


# ------------------------------------------------------------------ activations
_UNARY = ("relu", "relu6", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "mish", "exp",
          "log", "sqrt", "rsqrt", "neg", "abs", "erf", "sin", "cos", "reciprocal", "floor", "ceil",
          "sign", "logical_not")


@rule(*_UNARY)
def _unary(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    return b.add(c.name, [a["self"]])


@rule("round")
def _round(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    if c.op._overloadname != "default":
        raise Unmapped("round with decimals")
    return b.add("round", [a["self"]])


@rule("bitwise_not")
def _bitwise_not(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    if _val(a["self"]).dtype != "bool":
        raise Unmapped("bitwise_not on integers")
    return b.add("logical_not", [a["self"]])


@rule("gelu")
def _gelu(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    return b.add("gelu", [a["self"]], {"approximate": a["approximate"]})


@rule("leaky_relu")
def _leaky(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    return b.add("leaky_relu", [a["self"]], {"negative_slope": float(a["negative_slope"])})


@rule("elu")
def _elu(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    if a["scale"] != 1 or a["input_scale"] != 1:
        raise Unmapped("elu with scale")
    return b.add("elu", [a["self"]], {"alpha": float(a["alpha"])})


@rule("softplus")
def _softplus(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    return b.add("softplus", [a["self"]], {"beta": float(a["beta"]),
                                            "threshold": float(a["threshold"])})


def _clamp_attrs(x: Value, lo: Any, hi: Any) -> dict[str, Any]:
    if not x.type.is_float:
        raise Unmapped("clamp of an integer tensor")
    return {"min": None if lo is None else float(lo), "max": None if hi is None else float(hi)}


@rule("hardtanh")
def _hardtanh(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    return b.add("clamp", [a["self"]], _clamp_attrs(_val(a["self"]), a["min_val"], a["max_val"]))


@rule("clamp", "clip")
def _clamp(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    x = _val(a["self"])
    lo, hi = a["min"], a["max"]
    if isinstance(lo, Value) or isinstance(hi, Value):
        y = x if lo is None else b.add("maximum", [x, lo])
        return y if hi is None else b.add("minimum", [y, hi])
    return b.add("clamp", [x], _clamp_attrs(x, lo, hi))


@rule("clamp_min")
def _clamp_min(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    x = _val(a["self"])
    if isinstance(a["min"], Value):
        return b.add("maximum", [x, a["min"]])
    return b.add("clamp", [x], _clamp_attrs(x, a["min"], None))


@rule("clamp_max")
def _clamp_max(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    x = _val(a["self"])
    if isinstance(a["max"], Value):
        return b.add("minimum", [x, a["max"]])
    return b.add("clamp", [x], _clamp_attrs(x, None, a["max"]))


def _with_dtype(b: GraphBuilder, x: Value, dtype: torch.dtype | None) -> Value:
    if dtype is None or dtype_from_torch(dtype) == x.dtype:
        return x
    return b.add("cast", [x], {"dtype": dtype_from_torch(dtype)})


@rule("softmax", "log_softmax", "_softmax", "_log_softmax")
def _softmax(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    x = _val(a["self"])
    if c.name.startswith("_"):
        if a["half_to_float"]:
            raise Unmapped("half_to_float")
    else:
        x = _with_dtype(b, x, a["dtype"])
    return b.add(c.name.lstrip("_"), [x], {"axis": a["dim"]})


# ------------------------------------------------------------------ binary
def _scaled(b: GraphBuilder, y: Any, alpha: Any) -> Any:
    return y if alpha == 1 else b.add("mul", [y, alpha])


@rule("add", "sub")
def _add_sub(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    return b.add(c.name, [a["self"], _scaled(b, a["other"], a["alpha"])])


@rule("rsub")
def _rsub(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    return b.add("sub", [a["other"], _scaled(b, a["self"], a["alpha"])])


@rule("mul", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge", "logical_and",
      "logical_or")
def _binary(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    return b.add(c.name, [a["self"], a["other"]])


@rule("bitwise_and", "bitwise_or", "__and__", "__or__")
def _bitwise(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    if _val(a["self"]).dtype != "bool" or b.value(a["other"]).dtype != "bool":
        raise Unmapped("bitwise op on integers")
    return b.add("logical_and" if "and" in c.name else "logical_or", [a["self"], a["other"]])


@rule("div")
def _div(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    return b.add("div", [a["self"], a["other"]], {"rounding_mode": a.get("rounding_mode")})


@rule("floor_divide")
def _floor_divide(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    return b.add("div", [a["self"], a["other"]], {"rounding_mode": "floor"})


@rule("pow")
def _pow(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    return b.add("pow", [a["self"], a["exponent"]])


@rule("where")
def _where(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    if a["self"] is None:
        raise Unmapped("where(cond) is data dependent")
    return b.add("where", [a["condition"], a["self"], a["other"]])


@rule("masked_fill")
def _masked_fill(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    x = _val(a["self"])
    value = a["value"]
    if not isinstance(value, Value):
        value = b.scalar(value, x.dtype)
    return b.add("where", [a["mask"], value, x])


# ------------------------------------------------------------------ pooling
@rule("max_pool1d", "max_pool2d", "max_pool2d_with_indices")
def _max_pool(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    nd = 1 if c.name == "max_pool1d" else 2
    k = _ints(a["kernel_size"], nd)
    stride = _ints(a["stride"], nd) if a["stride"] else k
    y = b.add(f"max_pool{nd}d", [a["self"]], {
        "kernel": k, "stride": stride, "padding": _ints(a["padding"], nd),
        "dilation": _ints(a["dilation"], nd), "ceil_mode": a["ceil_mode"]})
    if c.name.endswith("with_indices"):
        if not c.only_first_used():
            raise Unmapped("pooling indices are used")
        return (y, None)
    return y


@rule("avg_pool1d", "avg_pool2d")
def _avg_pool(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    nd = 1 if c.name == "avg_pool1d" else 2
    k = _ints(a["kernel_size"], nd)
    stride = _ints(a["stride"], nd) if a["stride"] else k
    return b.add(c.name, [a["self"]], {
        "kernel": k, "stride": stride, "padding": _ints(a["padding"], nd),
        "ceil_mode": a["ceil_mode"], "count_include_pad": a["count_include_pad"],
        "divisor_override": a.get("divisor_override")})


@rule("adaptive_avg_pool1d", "adaptive_avg_pool2d", "_adaptive_avg_pool2d")
def _adaptive_avg(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    nd = 1 if c.name.endswith("1d") else 2
    return b.add(f"adaptive_avg_pool{nd}d", [a["self"]],
                 {"output_size": _ints(a["output_size"], nd)})


@rule("adaptive_max_pool1d", "adaptive_max_pool2d")
def _adaptive_max(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    if not c.only_first_used():
        raise Unmapped("pooling indices are used")
    nd = 1 if c.name.endswith("1d") else 2
    return (b.add(c.name, [a["self"]], {"output_size": _ints(a["output_size"], nd)}), None)


# ------------------------------------------------------------------ shape ops
@rule("view", "_unsafe_view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze",
      "view_as", "reshape_as", "squeeze_copy", "unsqueeze_copy", "view_copy")
def _reshape(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    x = _val(a["self"])
    shape = c.type.shape
    if shape == x.shape:
        return x
    return b.add("reshape", [x], {"shape": list(shape)})


def _permute_dims(b: GraphBuilder, x: Value, dims: list[int]) -> Value:
    dims = [d % max(x.type.rank, 1) for d in dims]
    if dims == list(range(x.type.rank)):
        return x
    return b.add("permute", [x], {"dims": dims})


@rule("permute")
def _permute(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    return _permute_dims(b, _val(a["self"]), list(a["dims"]))


@rule("transpose", "swapaxes")
def _transpose(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    x = _val(a["self"])
    d0: int = a["dim0"] if "dim0" in a else a["axis0"]
    d1: int = a["dim1"] if "dim1" in a else a["axis1"]
    dims = list(range(x.type.rank))
    d0, d1 = d0 % x.type.rank, d1 % x.type.rank
    dims[d0], dims[d1] = dims[d1], dims[d0]
    return _permute_dims(b, x, dims)


@rule("t", "numpy_T")
def _t(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    x = _val(a["self"])
    return _permute_dims(b, x, list(reversed(range(x.type.rank))))


@rule("expand", "expand_as")
def _expand(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    x = _val(a["self"])
    shape = c.type.shape
    if shape == x.shape:
        return x
    return b.add("expand", [x], {"shape": list(shape)})


@rule("cat", "concat", "concatenate")
def _cat(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    xs = [x for x in a["tensors"] if not (isinstance(x, Value) and x.shape == (0,))]
    if len(xs) == 1:
        raise Unmapped("cat of one tensor")
    return b.add("cat", xs, {"axis": a["dim"]})


@rule("stack")
def _stack(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    axis = a["dim"] % c.type.rank
    xs = []
    for x in a["tensors"]:
        x = _val(x)
        shape = list(x.shape)
        shape.insert(axis, 1)
        xs.append(b.add("reshape", [x], {"shape": shape}))
    return b.add("cat", xs, {"axis": axis}) if len(xs) > 1 else xs[0]


@rule("split", "split_with_sizes", "chunk", "tensor_split", "unsafe_split")
def _split(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    x = _val(a["self"])
    if not isinstance(c.meta, (list, tuple)):
        raise Unmapped("split without example results")
    axis = a["dim"] % x.type.rank
    sizes = [int(t.shape[axis]) for t in c.meta]
    if len(sizes) == 1:
        return [x]
    return list(b.create("split", [x], {"axis": axis, "sizes": sizes}).outputs)


@rule("unbind")
def _unbind(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    x = _val(a["self"])
    axis = a["dim"] % x.type.rank
    n = x.shape[axis]
    parts = [x] if n == 1 else list(b.create("split", [x], {"axis": axis,
                                                            "sizes": [1] * n}).outputs)
    shape = list(x.shape[:axis] + x.shape[axis + 1:])
    return [b.add("reshape", [p], {"shape": shape}) for p in parts]


def _slice_to(b: GraphBuilder, x: Value, axis: int, start: Any, end: Any, step: int) -> Value:
    size = x.shape[axis]
    if not all(type(v) is int or v is None for v in (size, start, end)):
        return _slice_symbolic(b, x, axis, start, end, step)
    lo, hi, st = slice(start, end, step).indices(size)
    if (lo, hi, st) == (0, size, 1):
        return x
    hi = max(hi, lo)
    return b.add("slice", [x], {"axis": axis, "start": lo, "end": hi, "step": st})


def _slice_symbolic(b: GraphBuilder, x: Value, axis: int, start: Any, end: Any,
                    step: int) -> Value:
    """A slice with a symbolic size or bound: negative int bounds count from the size."""
    size = x.shape[axis]
    start = 0 if start is None else start
    end = size if end is None or (type(end) is int and end >= 1 << 62) else end
    start = size + start if type(start) is int and start < 0 else start
    end = size + end if type(end) is int and end < 0 else end
    if start == 0 and step == 1 and provably_equal(end, size):
        return x
    try:
        return b.add("slice", [x], {"axis": axis, "start": start, "end": end, "step": step})
    except ShapeError as e:
        raise Unmapped(str(e)) from e


@rule("slice")
def _slice(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    x = _val(a["self"])
    return _slice_to(b, x, a["dim"] % x.type.rank, a["start"], a["end"], a["step"])


@rule("narrow")
def _narrow(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    x = _val(a["self"])
    axis = a["dim"] % x.type.rank
    start = a["start"] % x.shape[axis] if a["start"] < 0 else a["start"]
    return _slice_to(b, x, axis, start, start + a["length"], 1)


@rule("select")
def _select(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    x = _val(a["self"])
    axis = a["dim"] % x.type.rank
    size, index = x.shape[axis], a["index"]
    if type(size) is int or (type(index) is int and index >= 0):
        return b.add("select", [x], {"axis": axis, "index": index % size if type(size) is int
                                     else index})
    # x[:, -1] on a symbolic axis: a one-wide slice at size + index, then drop the axis
    start = size + index
    part = b.add("slice", [x], {"axis": axis, "start": start, "end": start + 1, "step": 1})
    return b.add("reshape", [part], {"shape": list(c.type.shape)})


@rule("contiguous", "clone", "alias", "detach", "lift_fresh_copy", "lift_fresh",
      "_assert_tensor_metadata")
def _drop(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    if c.name == "_assert_tensor_metadata":
        return None
    return _val(a["self"])


@rule("to", "_to_copy", "type_as")
def _to(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    x = _val(a["self"])
    return _with_dtype(b, x, c.type.torch_dtype)


@rule("dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout")
def _dropout(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    return b.add("dropout", [a["input"]], {"p": float(a["p"])})


# ------------------------------------------------------------------ reductions
@rule("mean", "sum", "amax", "amin", "max", "min")
def _reduce(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    if c.name in ("max", "min") and c.op._overloadname == "other":
        return b.add("maximum" if c.name == "max" else "minimum", [a["self"], a["other"]])
    if c.name in ("max", "min") and c.op._overloadname != "default":
        raise Unmapped(f"{c.name}.{c.op._overloadname}")
    op = {"max": "amax", "min": "amin"}.get(c.name, c.name)
    x = _with_dtype(b, _val(a["self"]), c.type.torch_dtype)
    dims = a.get("dim")
    axes = [] if dims is None else _ints(dims, 1)
    return b.add(op, [x], {"axes": axes, "keepdim": bool(a.get("keepdim") or False)})


# ------------------------------------------------------------------ others
@rule("embedding")
def _embedding(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    return b.add("embedding", [a["indices"], a["weight"]])


@rule("scaled_dot_product_attention")
def _sdpa(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    ops = [a["query"], a["key"], a["value"]] + ([a["attn_mask"]] if a["attn_mask"] is not None
                                                else [])
    return b.add("sdpa", ops, {"is_causal": a["is_causal"], "scale": a["scale"],
                               "enable_gqa": a["enable_gqa"]})


def _rnn_attrs(a: dict[str, Any], hidden: int) -> dict[str, Any]:
    return {"hidden_size": hidden, "num_layers": a["num_layers"],
            "bidirectional": a["bidirectional"], "batch_first": a["batch_first"],
            "has_biases": a["has_biases"]}


@rule("lstm")
def _lstm(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    if c.op._overloadname != "input":
        raise Unmapped("packed-sequence lstm")
    h0, c0 = (_val(h) for h in a["hx"])
    node = b.create("lstm", [a["input"], h0, c0, *a["params"]], _rnn_attrs(a, c0.shape[-1]))
    return tuple(node.outputs)


@rule("gru")
def _gru(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    if c.op._overloadname != "input":
        raise Unmapped("packed-sequence gru")
    h0 = _val(a["hx"])
    node = b.create("gru", [a["input"], h0, *a["params"]], _rnn_attrs(a, h0.shape[-1]))
    return tuple(node.outputs)


@rule("pad", "constant_pad_nd")
def _pad(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    mode = a.get("mode") or "constant"
    value = a.get("value")
    return b.add("pad", [a["self"]], {"pads": list(a["pad"]), "mode": mode,
                                      "value": float(value or 0.0)})


_PAD_MODES = {"reflection": "reflect", "replication": "replicate", "_pad_circular": "circular"}


@rule("reflection_pad1d", "reflection_pad2d", "replication_pad1d", "replication_pad2d",
      "_pad_circular")
def _pad_mode(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    mode = _PAD_MODES[c.name.split("_pad")[0] if not c.name.startswith("_") else c.name]
    pads = a["padding"] if "padding" in a else a["pad"]
    return b.add("pad", [a["self"]], {"pads": list(pads), "mode": mode})


_UPSAMPLE = {"upsample_nearest1d": ("nearest", 1), "upsample_nearest2d": ("nearest", 2),
             "_upsample_nearest_exact1d": ("nearest-exact", 1),
             "_upsample_nearest_exact2d": ("nearest-exact", 2),
             "upsample_linear1d": ("linear", 1), "upsample_bilinear2d": ("bilinear", 2),
             "upsample_bicubic2d": ("bicubic", 2)}


@rule(*_UPSAMPLE)
def _upsample(b: GraphBuilder, a: dict[str, Any], c: Call) -> Any:
    x = _val(a["input"] if "input" in a else a["self"])
    mode, nd = _UPSAMPLE[c.name]
    size = list(c.type.shape[2:])
    scales = a.get("scale_factors")
    if scales is None:
        scales = [a.get(k) for k in ("scales", "scales_h", "scales_w") if a.get(k) is not None]
    if scales:
        # torch uses the given scale, not in/out, to map pixels; equal only when exact.
        for s, i, o in zip(_floats(scales, nd), x.shape[2:], size, strict=True):
            if float(o) / float(i) != s:
                raise Unmapped("non-integral scale factor")
    align = a.get("align_corners") if mode in ("linear", "bilinear", "bicubic") else None
    return b.add("interpolate", [x], {"size": size, "mode": mode, "align_corners": align})


def _floats(v: Any, n: int) -> list[float]:
    v = [float(x) for x in v]
    return v * n if len(v) == 1 else v
