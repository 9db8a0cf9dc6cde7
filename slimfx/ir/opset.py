"""Built-in float ops: operands, attributes, traits and type inference.

Semantics follow the PyTorch function of the same name unless the doc says
otherwise. Layout is PyTorch's (NCHW, linear weight ``[out, in]``). Leading
(batch, sequence) dims may be symbolic (``slimfx.ir.symbolic``); channel and
spatial dims of conv/pool windows must be static, which inference checks by
raising a ShapeError naming the op and dim. ``act_min``/``act_max`` on conv/linear are a fused clamp of the output
(ReLU is ``act_min=0``); ``None`` means unbounded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from slimfx.ir.ops import AttrDef as A
from slimfx.ir.ops import OpDef, Trait, register_op
from slimfx.ir.shapes import broadcast, conv_out, norm_axis, pool_out, promote, static_dims
from slimfx.ir.symbolic import ShapeError, ceildiv, format_dim
from slimfx.ir.types import TensorType

__all__: list[str] = []  # importing this module registers the built-in ops

T = Trait
Types = Sequence[TensorType]
Attrs = Mapping[str, Any]

_ACT = (A("act_min", "float", None), A("act_max", "float", None))


def _op(name: str, operands: Sequence[str], attrs: Sequence[A] = (), traits: Sequence[Trait] = (),
        infer: Any = None, num_results: int = 1, doc: str = "") -> OpDef:
    return register_op(OpDef(name, tuple(operands), tuple(attrs), frozenset(traits), infer,
                             num_results, doc), override=True)


def _same(ts: Types, a: Attrs) -> list[TensorType]:
    return [ts[0]]


def _elementwise(ts: Types, a: Attrs) -> list[TensorType]:
    return [TensorType(broadcast(*(t.shape for t in ts)), promote(*ts))]


def _compare(ts: Types, a: Attrs) -> list[TensorType]:
    return [TensorType(broadcast(*(t.shape for t in ts)), "bool")]


def _where(ts: Types, a: Attrs) -> list[TensorType]:
    return [TensorType(broadcast(*(t.shape for t in ts)), promote(ts[1], ts[2]))]


# ------------------------------------------------------------------- conv / linear
def _conv(nd: int):
    def infer(ts: Types, a: Attrs) -> list[TensorType]:
        x, w = ts[0], ts[1]
        if not x.is_static:
            static_dims(x, range(1, x.rank), "channel/spatial")
        spatial = tuple(
            conv_out(x.shape[2 + i], w.shape[2 + i], a["stride"][i], a["padding"][i],
                     a["padding"][i], a["dilation"][i])
            for i in range(nd))
        return [TensorType((x.shape[0], w.shape[0], *spatial), x.dtype)]
    return infer


def _conv_transpose(ts: Types, a: Attrs) -> list[TensorType]:
    x, w = ts[0], ts[1]
    if not x.is_static:
        static_dims(x, range(1, x.rank), "channel/spatial")
    sp = tuple(
        (x.shape[2 + i] - 1) * a["stride"][i] - 2 * a["padding"][i]
        + a["dilation"][i] * (w.shape[2 + i] - 1) + a["output_padding"][i] + 1
        for i in range(2))
    return [TensorType((x.shape[0], w.shape[1] * a["groups"], *sp), x.dtype)]


_CONV_ATTRS = (A("stride", "ints"), A("padding", "ints"), A("dilation", "ints"), A("groups", "int", 1))
_WEIGHTED = (T.PURE, T.WEIGHTED, T.CHANNEL_AXIS, T.QUANTIZABLE, T.FUSABLE_ACTIVATION)

_op("conv1d", ["x", "weight", "bias?"], _CONV_ATTRS + _ACT, _WEIGHTED, _conv(1),
    doc="1-D convolution, NCL; padding is symmetric per side")
_op("conv2d", ["x", "weight", "bias?"], _CONV_ATTRS + _ACT, _WEIGHTED, _conv(2),
    doc="2-D convolution, NCHW; padding is symmetric per side")
_op("conv_transpose2d", ["x", "weight", "bias?"],
    (A("stride", "ints"), A("padding", "ints"), A("output_padding", "ints"), A("dilation", "ints"),
     A("groups", "int", 1)) + _ACT, _WEIGHTED, _conv_transpose,
    doc="2-D transposed convolution, weight [in, out/groups, kh, kw]")


def _linear(ts: Types, a: Attrs) -> list[TensorType]:
    return [TensorType((*ts[0].shape[:-1], ts[1].shape[0]), ts[0].dtype)]


_op("linear", ["x", "weight", "bias?"], _ACT, _WEIGHTED, _linear, doc="x @ weight.T + bias")


def _matmul(ts: Types, a: Attrs) -> list[TensorType]:
    x, y = ts[0].shape, ts[1].shape
    if len(x) == 1 and len(y) == 1:
        return [TensorType((), ts[0].dtype)]
    xs = (1, *x) if len(x) == 1 else x
    ys = (*y, 1) if len(y) == 1 else y
    batch = broadcast(xs[:-2], ys[:-2])
    out = (*batch, xs[-2], ys[-1])
    if len(x) == 1:
        out = (*batch, ys[-1])
    elif len(y) == 1:
        out = (*batch, xs[-2])
    return [TensorType(out, promote(ts[0], ts[1]))]


_op("matmul", ["a", "b"], (), [T.PURE, T.QUANTIZABLE], _matmul, doc="torch.matmul")

# ------------------------------------------------------------------- normalization
_NORM = [T.PURE, T.NORMALIZATION]
_op("batch_norm", ["x", "mean", "var", "weight?", "bias?"], (A("eps", "float", 1e-5),),
    _NORM + [T.CHANNEL_AXIS], _same, doc="inference batch norm over axis 1")
_op("layer_norm", ["x", "weight?", "bias?"], (A("normalized_shape", "ints"), A("eps", "float", 1e-5)),
    _NORM, _same)
_op("group_norm", ["x", "weight?", "bias?"], (A("num_groups", "int"), A("eps", "float", 1e-5)),
    _NORM, _same)
_op("instance_norm", ["x", "weight?", "bias?"], (A("eps", "float", 1e-5),), _NORM, _same,
    doc="F.instance_norm with the input's own statistics (use_input_stats=True): each "
        "(sample, channel) of x[N, C, ...] normalized over the dims after 1 (biased "
        "variance), then weight[C] * . + bias[C] (affine); running statistics "
        "(track_running_stats in eval) are batch_norm")
_op("rms_norm", ["x", "weight?"], (A("normalized_shape", "ints"), A("eps", "float", None)),
    _NORM, _same)

# ------------------------------------------------------------------- unary
_UNARY = [T.PURE, T.ELEMENTWISE, T.UNARY_ACTIVATION]
for _name in ("relu", "relu6", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "mish",
              "exp", "log", "sqrt", "rsqrt", "neg", "abs", "erf", "sin", "cos", "reciprocal",
              "floor", "ceil", "round", "sign"):
    _op(_name, ["x"], (), _UNARY, _same)
_op("logical_not", ["x"], (), [T.PURE, T.ELEMENTWISE], lambda ts, a: [ts[0].with_dtype("bool")])
_op("gelu", ["x"], (A("approximate", "str", "none"),), _UNARY, _same)
_op("leaky_relu", ["x"], (A("negative_slope", "float", 0.01),), _UNARY, _same)
_op("elu", ["x"], (A("alpha", "float", 1.0),), _UNARY, _same)
_op("softplus", ["x"], (A("beta", "float", 1.0), A("threshold", "float", 20.0)), _UNARY, _same)
_op("clamp", ["x"], (A("min", "float", None), A("max", "float", None)), _UNARY, _same,
    doc="clamp(x, min, max); covers hardtanh")
_op("softmax", ["x"], (A("axis", "int"),), [T.PURE], _same)
_op("log_softmax", ["x"], (A("axis", "int"),), [T.PURE], _same)
_op("cast", ["x"], (A("dtype", "dtype"),), [T.PURE, T.ELEMENTWISE],
    lambda ts, a: [ts[0].with_dtype(a["dtype"])])
_op("identity", ["x"], (), [T.PURE, T.IDENTITY], _same, doc="returns x")
_op("dropout", ["x"], (A("p", "float", 0.5),), [T.PURE, T.IDENTITY], _same,
    doc="identity at inference")

# ------------------------------------------------------------------- binary
_BIN = [T.PURE, T.ELEMENTWISE]
for _name in ("add", "sub", "mul", "pow", "maximum", "minimum"):
    _op(_name, ["a", "b"], (), _BIN + ([T.QUANTIZABLE] if _name in ("add", "mul") else []),
        _elementwise)
_op("div", ["a", "b"], (A("rounding_mode", "str", None),), _BIN,
    lambda ts, a: [TensorType(broadcast(ts[0].shape, ts[1].shape),
                              promote(*ts) if a["rounding_mode"] or not all(
                                  not t.is_float for t in ts) else "f32")])
for _name in ("eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or"):
    _op(_name, ["a", "b"], (), _BIN, _compare)
_op("where", ["cond", "a", "b"], (), _BIN, _where)

# ------------------------------------------------------------------- pooling


def _pool(nd: int):
    def infer(ts: Types, a: Attrs) -> list[TensorType]:
        x = ts[0]
        if not x.is_static:
            static_dims(x, range(x.rank - nd, x.rank), "spatial")
        dil = a.get("dilation") or (1,) * nd
        sp = tuple(pool_out(x.shape[-nd + i], a["kernel"][i], a["stride"][i], a["padding"][i],
                            dil[i], a["ceil_mode"]) for i in range(nd))
        return [TensorType((*x.shape[:-nd], *sp), x.dtype)]
    return infer


def _adaptive(nd: int):
    def infer(ts: Types, a: Attrs) -> list[TensorType]:
        x = ts[0]
        return [TensorType((*x.shape[:-nd], *a["output_size"]), x.dtype)]
    return infer


for _nd in (1, 2):
    _op(f"max_pool{_nd}d", ["x"], (A("kernel", "ints"), A("stride", "ints"), A("padding", "ints"),
                                    A("dilation", "ints"), A("ceil_mode", "bool", False)),
        [T.PURE, T.QUANTIZABLE], _pool(_nd))
    _op(f"avg_pool{_nd}d", ["x"], (A("kernel", "ints"), A("stride", "ints"), A("padding", "ints"),
                                    A("ceil_mode", "bool", False),
                                    A("count_include_pad", "bool", True),
                                    A("divisor_override", "int", None)),
        [T.PURE, T.QUANTIZABLE], _pool(_nd))
    _op(f"adaptive_avg_pool{_nd}d", ["x"], (A("output_size", "ints"),),
        [T.PURE, T.QUANTIZABLE], _adaptive(_nd))
    _op(f"adaptive_max_pool{_nd}d", ["x"], (A("output_size", "ints"),), [T.PURE], _adaptive(_nd))

# ------------------------------------------------------------------- shape ops
_SHAPE = [T.PURE, T.SHAPE_ONLY]


def _reshape(ts: Types, a: Attrs) -> list[TensorType]:
    if not (ts[0].is_static and all(type(d) is int for d in a["shape"])):
        return [_reshape_symbolic(ts[0], a["shape"])]
    shape = list(a["shape"])
    if -1 in shape:
        known = 1
        for d in shape:
            known *= d if d != -1 else 1
        shape[shape.index(-1)] = ts[0].numel // max(known, 1)
    if TensorType(tuple(shape)).numel != ts[0].numel:
        raise ValueError(f"cannot reshape {ts[0]} to {tuple(a['shape'])}")
    return [ts[0].with_shape(tuple(shape))]


def _reshape_symbolic(x: TensorType, target: tuple) -> TensorType:
    """reshape with symbols: ``-1`` is numel / (product of the others), exact by sympy."""
    import sympy

    shape = list(target)
    total = sympy.sympify(x.numel)
    shown = "[" + ",".join(format_dim(d) for d in target) + "]"
    if shape.count(-1) > 1:
        raise ShapeError(f"reshape: target {shown} has more than one -1")
    if -1 in shape:
        known = sympy.Mul(*[d for d in shape if not (type(d) is int and d == -1)])
        if known == 0:
            raise ShapeError(f"reshape: cannot infer -1 of {shown} for {x}: other dims are 0")
        rest = sympy.cancel(total / known)
        if rest.is_integer is not True:
            raise ShapeError(f"reshape: cannot prove that {x} ({format_dim(x.numel)} elements) "
                             f"divides into {shown}: -1 would be {rest}")
        shape[shape.index(-1)] = rest
    out = x.with_shape(tuple(shape))
    if sympy.expand(sympy.sympify(out.numel) - total) != 0:
        raise ShapeError(f"reshape: cannot reshape {x} to {shown}: {format_dim(x.numel)} "
                         f"elements vs {format_dim(out.numel)}")
    return out


def _permute(ts: Types, a: Attrs) -> list[TensorType]:
    return [ts[0].with_shape(tuple(ts[0].shape[d] for d in a["dims"]))]


def _expand(ts: Types, a: Attrs) -> list[TensorType]:
    shape = list(a["shape"])
    src = (1,) * (len(shape) - ts[0].rank) + ts[0].shape
    return [ts[0].with_shape(tuple(s if d == -1 else d for d, s in zip(shape, src, strict=True)))]


def _cat(ts: Types, a: Attrs) -> list[TensorType]:
    ax = norm_axis(a["axis"], ts[0].rank)
    shape = list(ts[0].shape)
    shape[ax] = sum(t.shape[ax] for t in ts)
    return [TensorType(tuple(shape), promote(*ts))]


def _split(ts: Types, a: Attrs) -> list[TensorType]:
    ax = norm_axis(a["axis"], ts[0].rank)
    out = []
    for s in a["sizes"]:
        shape = list(ts[0].shape)
        shape[ax] = s
        out.append(ts[0].with_shape(tuple(shape)))
    return out


def _slice(ts: Types, a: Attrs) -> list[TensorType]:
    ax = norm_axis(a["axis"], ts[0].rank)
    shape = list(ts[0].shape)
    size = shape[ax]
    start, end, step = a["start"], a["end"], a["step"]
    if type(size) is not int or type(start) is not int or type(end) is not int:
        # Symbolic: no min/max, so the bounds are taken as 0 <= start <= end <= size
        # (the frontend checks the result against torch's, which proved it over the
        # symbols' ranges): ceil((end - start) / step); an end >= 2**62 is the size.
        if type(end) is int and end >= _TO_END:
            end = size
        negative = [f"{k}={format_dim(v)}" for k, v in (("start", start), ("end", end))
                    if type(v) is int and v < 0]
        if negative or step < 1:
            raise ShapeError(f"slice: axis {ax} of {ts[0]} is symbolic ({format_dim(size)}); "
                             f"bounds must be >= 0 and step >= 1 there, got "
                             f"start={format_dim(start)}, end={format_dim(end)}, step={step}")
        shape[ax] = ceildiv(end - start, step)
        return [ts[0].with_shape(tuple(shape))]
    shape[ax] = len(range(*slice(a["start"], a["end"], a["step"]).indices(shape[ax])))
    return [ts[0].with_shape(tuple(shape))]


_TO_END = (1 << 62)  # an end at or beyond this means "to the end" (torch uses 2**63 - 1)


def _select(ts: Types, a: Attrs) -> list[TensorType]:
    ax = norm_axis(a["axis"], ts[0].rank)
    return [ts[0].with_shape(ts[0].shape[:ax] + ts[0].shape[ax + 1:])]


_op("reshape", ["x"], (A("shape", "dims"),), _SHAPE, _reshape,
    doc="covers view, flatten, squeeze, unsqueeze")
_op("permute", ["x"], (A("dims", "ints"),), _SHAPE, _permute, doc="covers transpose")
_op("expand", ["x"], (A("shape", "dims"),), _SHAPE, _expand)
_op("cat", ["xs*"], (A("axis", "int"),), _SHAPE + [T.QUANTIZABLE], _cat)
_op("split", ["x"], (A("axis", "int"), A("sizes", "ints")), _SHAPE, _split, num_results=-1,
    doc="one result per size; covers chunk and unbind-free splits")
_op("slice", ["x"], (A("axis", "int"), A("start", "dim"), A("end", "dim"), A("step", "int", 1)),
    _SHAPE, _slice, doc="python slicing on one axis (end is clipped)")
_op("select", ["x"], (A("axis", "int"), A("index", "int")), _SHAPE, _select,
    doc="x.select(axis, index): drops the axis")


def _reduce(ts: Types, a: Attrs) -> list[TensorType]:
    x = ts[0]
    axes = {norm_axis(d, x.rank) for d in a["axes"]} if a["axes"] else set(range(x.rank))
    shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape)) if a["keepdim"] else \
        tuple(d for i, d in enumerate(x.shape) if i not in axes)
    return [x.with_shape(shape)]


for _name in ("mean", "sum", "amax", "amin"):
    _op(_name, ["x"], (A("axes", "ints"), A("keepdim", "bool", False)), [T.PURE], _reduce,
        doc="reduction over axes (empty: all axes)")

# ------------------------------------------------------------------- others
_op("embedding", ["indices", "weight"], (), [T.PURE, T.WEIGHTED],
    lambda ts, a: [TensorType((*ts[0].shape, ts[1].shape[1]), ts[1].dtype)],
    doc="weight[indices]")


def _pad(ts: Types, a: Attrs) -> list[TensorType]:
    p = a["pads"]
    shape = list(ts[0].shape)
    for i in range(len(p) // 2):
        shape[-1 - i] += p[2 * i] + p[2 * i + 1]
    return [ts[0].with_shape(tuple(shape))]


_op("pad", ["x"], (A("pads", "ints"), A("mode", "str", "constant"), A("value", "float", 0.0)),
    [T.PURE], _pad, doc="F.pad: pads in torch order (last axis first)")
_op("interpolate", ["x"], (A("size", "ints"), A("mode", "str", "nearest"),
                           A("align_corners", "bool", None)), [T.PURE],
    lambda ts, a: [ts[0].with_shape((*ts[0].shape[:2], *a["size"]))])


def _sdpa(ts: Types, a: Attrs) -> list[TensorType]:
    q, v = ts[0], ts[2]
    return [q.with_shape((*q.shape[:-1], v.shape[-1]))]


_op("sdpa", ["q", "k", "v", "mask?"], (A("is_causal", "bool", False), A("scale", "float", None),
                                       A("enable_gqa", "bool", False)),
    [T.PURE], _sdpa, doc="scaled_dot_product_attention (no dropout)")


def _rnn(kind: str):
    def infer(ts: Types, a: Attrs) -> list[TensorType]:
        x = ts[0]
        dirs = 2 if a["bidirectional"] else 1
        h = a["hidden_size"]
        if a["batch_first"]:
            out = (x.shape[0], x.shape[1], dirs * h)
        else:
            out = (x.shape[0], x.shape[1], dirs * h)
        state = ts[1]
        res = [x.with_shape(out), state]
        if kind == "lstm":
            res.append(ts[2])
        return res
    return infer


_RNN_ATTRS = (A("hidden_size", "int"), A("num_layers", "int", 1), A("bidirectional", "bool", False),
              A("batch_first", "bool", False), A("has_biases", "bool", True))
_op("lstm", ["x", "h0", "c0", "weights*"], _RNN_ATTRS, [T.PURE], _rnn("lstm"), num_results=3,
    doc="results: output, h_n, c_n; weights in torch's flat order")
_op("gru", ["x", "h0", "weights*"], _RNN_ATTRS, [T.PURE], _rnn("gru"), num_results=2,
    doc="results: output, h_n; weights in torch's flat order")

_op("opaque", ["xs*"], (A("target", "str"), A("spec", "str")), [T.OPAQUE], None, num_results=-1,
    doc="a torch callable kept as is; spec is JSON of its arguments with inputs as {'$in': i}")
