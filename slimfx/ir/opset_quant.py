"""Quantization ops: observers, quantize/dequantize and the exact integer program (DESIGN.md §4).

Every integer op below has a bit-exact definition; the torch backend
(``slimfx/backends/torch/kernels_quant.py``) and every TVM target must produce the
same integers. Notation used in the docstrings:

- ``rshift_round(v, n) = floor((v + 2**(n-1)) / 2**n)`` for ``n >= 1`` (and ``v``
  for ``n == 0``): an arithmetic right shift that rounds half up (towards +inf),
  computed in int64;
- ``clamp(v, lo, hi)``; all products and sums of the integer path are int64;
- a real multiplier ``M`` is stored as ``(M0, n)`` with ``M ~= M0 * 2**-n``,
  ``M0`` an int32 in ``[2**30, 2**31)`` (see ``slimfx.passes.quant.fixed_point``).

Accumulators (``qconv*``, ``qlinear``, ``qmatmul``) are int32 results; any
int8 x int8 product sum that fits in int32 is exact (|term| <= 255*128, so up
to 65,000 terms per output).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from slimfx.ir.ops import AttrDef as A
from slimfx.ir.ops import OpDef, Trait, register_op
from slimfx.ir.opset import _conv, _linear, _matmul, _pool
from slimfx.ir.shapes import broadcast
from slimfx.ir.types import TensorType

__all__ = ["QPARAM_ATTRS", "REQUANT_ATTRS"]

T = Trait
Types = Sequence[TensorType]
Attrs = Mapping[str, Any]

# Quantization parameters spelled as attributes (the op semantics must not depend on
# Value.qparams, which is informative; passes keep both in sync).
QPARAM_ATTRS = (A("dtype", "dtype", "i8"), A("scale", "floats"), A("zero_point", "ints"),
                A("axis", "int", None), A("qmin", "int", -128), A("qmax", "int", 127))
# A requantization to an output (zero point, clamp range, dtype).
REQUANT_ATTRS = (A("out_zero_point", "int", 0), A("qmin", "int", -128), A("qmax", "int", 127),
                 A("out_dtype", "dtype", "i8"))


def _op(name: str, operands: Sequence[str], attrs: Sequence[A], traits: Sequence[Trait],
        infer: Any, doc: str, num_results: int = 1) -> OpDef:
    return register_op(OpDef(name, tuple(operands), tuple(attrs), frozenset(traits), infer,
                             num_results, doc), override=True)


def _with_dtype(attr: str, fixed: str | None = None):
    def infer(ts: Types, a: Attrs) -> list[TensorType]:
        return [ts[0].with_dtype(fixed or a[attr])]
    return infer


def _acc(base: Any):
    def infer(ts: Types, a: Attrs) -> list[TensorType]:
        return [base(ts, a)[0].with_dtype("i32")]
    return infer


# ------------------------------------------------------------------ observers / QDQ
_op("observer", ["x"], (
    A("kind", "str", "minmax"),          # minmax | moving_average | histogram
    A("method", "str", "minmax"),        # histogram range choice: percentile | entropy | mse
    A("axis", "int", None),              # per-channel axis, None = per tensor
    A("dtype", "dtype", "i8"), A("qmin", "int", -128), A("qmax", "int", 127),
    A("symmetric", "bool", False),
    A("averaging_constant", "float", 0.01), A("percentile", "float", 99.99),
    A("bins", "int", 2048),
    A("min_val", "floats", None), A("max_val", "floats", None),
), [T.QUANT], lambda ts, a: [ts[0]],
    doc="identity in float; records statistics of x during calibration. min_val/max_val hold "
        "the chosen range after calibration (one entry per channel when axis is set)")

_op("quantize", ["x"], QPARAM_ATTRS, [T.QUANT, T.PURE], _with_dtype("dtype"),
    doc="q = clamp(round_half_even(float32(x) / scale) + zero_point, qmin, qmax), computed in "
        "float32, scale/zero_point broadcast along axis when per-channel")
_op("dequantize", ["q"], QPARAM_ATTRS, [T.QUANT, T.PURE], _with_dtype("", "f32"),
    doc="x = float32(q - zero_point) * float32(scale)")



def _fake_quantize(ts: Types, a: Attrs) -> list[TensorType]:
    x, s, z = ts
    lo, hi = _DTYPE_RANGE.get(a["dtype"], (None, None))
    if lo is None or not lo <= a["qmin"] < a["qmax"] <= hi:
        raise ValueError(f"fake_quantize: range [{a['qmin']}, {a['qmax']}] does not fit dtype "
                         f"{a['dtype']} (i8: [-128, 127], u8: [0, 255])")
    channels = 1 if a["axis"] is None else x.shape[a["axis"]]
    for what, t in (("scale", s), ("zero_point", z)):
        if t.numel != channels or t.rank > 1:
            raise ValueError(f"fake_quantize: {what} is {t}, expected {channels} value(s)"
                             + ("" if a["axis"] is None else f" along axis {a['axis']}"))
    if not s.is_float:
        raise ValueError(f"fake_quantize: scale must be floating point, got {s}")
    return [x.with_dtype("f32")]


_DTYPE_RANGE = {"i8": (-128, 127), "u8": (0, 255)}
_op("fake_quantize", ["x", "scale", "zero_point"], (
    A("dtype", "dtype", "i8"), A("qmin", "int", -128), A("qmax", "int", 127),
    A("axis", "int", None), A("learn_scale", "bool", False),
    A("learn_zero_point", "bool", False)),
    [T.QUANT], _fake_quantize,
    doc="dequantize(quantize(x)) in one op, for quantization-aware training: "
        "q = clamp(round_half_even(float32(x) / s) + z, qmin, qmax) (NaN -> z), "
        "y = float32(q - z) * s with s = float32(scale), z = clamp(round_half_even(zero_point), "
        "qmin, qmax) broadcast along axis (None: per tensor); scale/zero_point are operands "
        "(learnable when learn_scale/learn_zero_point). Gradients (torch backend): "
        "straight-through for x, LSQ for learnable scale and zero point. Not pure: constant "
        "folding must not fold a weight's fake quantization. slimfx.convert replaces it by "
        "quantize/dequantize")

def _fold_bn(ts: Types, a: Attrs) -> list[TensorType]:
    w, b, *stats = ts
    cout = w.shape[0] if w.rank else 0
    for name, t in zip(("bias", "mean", "var", "gamma", "beta"), (b, *stats), strict=True):
        if t.shape != (cout,) or not t.is_float:
            raise ValueError(f"fold_bn: {name} is {t}, expected {cout} floating-point values "
                             "(one per output channel = weight axis 0)")
    if not w.is_float or w.rank < 2:
        raise ValueError(f"fold_bn: weight is {w}, expected a floating-point [out, in, ...]")
    return [w, TensorType((cout,), w.dtype)]


# Conv + batch norm for quantization-aware training with batch statistics
# (slimfx/passes/quant/qat_bn.py has the formulas; slimfx.convert folds both away).
_op("fold_bn", ["weight", "bias", "mean", "var", "gamma", "beta"], (A("eps", "float", 1e-5),),
    [T.QUANT], _fold_bn, num_results=2,
    doc="(W', b') of fold-bn: s = gamma / sqrt(var + eps) (float64), W' = W * s along axis 0, "
        "b' = (bias - mean) * s + beta; QAT only (the statistics are trained state, so it is "
        "not pure: constant folding must not bake them in before slimfx.convert)")


def _conv2d_bn(ts: Types, a: Attrs) -> list[TensorType]:
    if len(ts) != 8:
        raise ValueError(f"conv2d_bn: expected 8 operands, got {len(ts)}")
    y = _conv(2)(ts, a)[0]
    for name, t in zip(("bias", "conv_bias", "mean", "var", "gamma", "beta"), ts[2:],
                       strict=True):
        if t.shape != (y.shape[1],):
            raise ValueError(f"conv2d_bn: {name} is {t}, expected {y.shape[1]} values")
    return [y]


_op("conv2d_bn", ["x", "weight", "bias", "conv_bias", "mean", "var", "gamma", "beta"],
    (A("stride", "ints"), A("padding", "ints"), A("dilation", "ints"), A("groups", "int", 1),
     A("act_min", "float", None), A("act_max", "float", None), A("eps", "float", 1e-5),
     A("momentum", "float", 0.1)),
    [T.QUANT], _conv2d_bn,
    doc="QAT conv + batch norm. Inference (and eval / frozen statistics in the torch backend): "
        "clamp(conv2d(x, weight, bias), act_min, act_max), weight and bias being the folded "
        "fold_bn results (weight fake-quantized). Training: c = conv2d(x, weight), "
        "y = batch_norm_train(c / s + conv_bias) with s = gamma / sqrt(var + eps), i.e. "
        "c * sigma / sigma_batch + beta - gamma * (mean_batch - conv_bias) / sigma_batch, "
        "running mean/var updated with momentum; then the clamp")

_op("requantize", ["x"], (A("in_zero_point", "int", 0), A("multiplier", "ints"),
                          A("shift", "ints"), A("axis", "int", None)) + REQUANT_ATTRS,
    [T.QUANT, T.PURE], _with_dtype("out_dtype"),
    doc="y = clamp(rshift_round((int64(x) - in_zero_point) * M0[c], n[c]) + out_zero_point, "
        "qmin, qmax); M0/n per channel c along axis (one entry when axis is None)")

# ------------------------------------------------------------------ accumulating ops
_CONV = (A("stride", "ints"), A("padding", "ints"), A("dilation", "ints"), A("groups", "int", 1),
         A("x_zero_point", "int", 0))
_op("qconv1d", ["x", "weight", "bias?"], _CONV, [T.QUANT, T.PURE], _acc(_conv(1)),
    doc="acc[n,o,l] = bias[o] + sum_{c,k} (x[n,c,l*s+k*d-p] - x_zero_point) * w[o,c,k], int8 "
        "x and w (w zero point 0), int32 bias, padding contributes 0; int32 result")
_op("qconv2d", ["x", "weight", "bias?"], _CONV, [T.QUANT, T.PURE], _acc(_conv(2)),
    doc="acc = bias + sum over the window of (x - x_zero_point) * w (zero padding after the "
        "zero-point shift), int8 x, int8 symmetric w, int32 bias; int32 result")
_op("qlinear", ["x", "weight", "bias?"], (A("x_zero_point", "int", 0),), [T.QUANT, T.PURE],
    _acc(_linear),
    doc="acc[..., o] = bias[o] + sum_k (x[..., k] - x_zero_point) * w[o, k]; int32 result")
_op("qmatmul", ["a", "b"], (A("a_zero_point", "int", 0), A("b_zero_point", "int", 0)),
    [T.QUANT, T.PURE], _acc(_matmul),
    doc="acc = matmul(a - a_zero_point, b - b_zero_point) over int8 operands; int32 result")

# ------------------------------------------------------------------ int8 -> int8 ops


def _binary(ts: Types, a: Attrs) -> list[TensorType]:
    return [TensorType(broadcast(ts[0].shape, ts[1].shape), a["out_dtype"])]


_op("qadd", ["a", "b"], (A("a_zero_point", "int"), A("b_zero_point", "int"),
                         A("a_multiplier", "int"), A("b_multiplier", "int"),
                         A("shift", "int")) + REQUANT_ATTRS,
    [T.QUANT, T.PURE], _binary,
    doc="y = clamp(rshift_round((a - a_zp) * Ma + (b - b_zp) * Mb, shift) + out_zero_point, "
        "qmin, qmax) with Ma = round(s_a/s_out * 2**shift), Mb likewise (one shared shift)")
_op("qmul", ["a", "b"], (A("a_zero_point", "int"), A("b_zero_point", "int"),
                         A("multiplier", "int"), A("shift", "int")) + REQUANT_ATTRS,
    [T.QUANT, T.PURE], _binary,
    doc="y = clamp(rshift_round((a - a_zp) * (b - b_zp) * M0, n) + out_zero_point, qmin, qmax) "
        "with M = s_a*s_b/s_out")


def _qcat(ts: Types, a: Attrs) -> list[TensorType]:
    from slimfx.ir.opset import _cat
    return [_cat(ts, a)[0].with_dtype(a["out_dtype"])]


_op("qcat", ["xs*"], (A("axis", "int"), A("zero_points", "ints"), A("multipliers", "ints"),
                      A("shifts", "ints")) + REQUANT_ATTRS,
    [T.QUANT, T.PURE], _qcat,
    doc="cat of requantize(x_i) with (zero_points[i], multipliers[i], shifts[i]) to the output "
        "scale, M_i = s_i/s_out")


def _qavg(ts: Types, a: Attrs) -> list[TensorType]:
    return [_pool(2)(ts, {**a, "ceil_mode": False})[0].with_dtype(a["out_dtype"])]


_op("qavg_pool2d", ["x"], (A("kernel", "ints"), A("stride", "ints"), A("padding", "ints"),
                           A("in_zero_point", "int"), A("multiplier", "int"),
                           A("shift", "int")) + REQUANT_ATTRS,
    [T.QUANT, T.PURE], _qavg,
    doc="S = sum over each kh x kw window of (x - in_zero_point) (padding adds 0); "
        "y = clamp(rshift_round(S * M0, n) + out_zero_point, qmin, qmax), "
        "M = s_in / (s_out * kh * kw): the division by the window size is folded into M. "
        "adaptive_avg_pool2d with divisible sizes lowers to this op too")

# ------------------------------------------------------------------ dynamic int8
_op("dynamic_linear", ["x", "weight", "bias?"], (
    A("w_scale", "floats"), A("per_token", "bool", False),
    A("act_min", "float", None), A("act_max", "float", None)),
    [T.QUANT, T.PURE], lambda ts, a: [_linear(ts, a)[0].with_dtype("f32")],
    doc="s_x = max|x| / 127 per tensor (per row of the last axis when per_token; eps-guarded), "
        "q = clamp(round_half_even(x / s_x), -127, 127); acc = q @ weight.T (int8 per-output-"
        "channel symmetric weight, exact integer sum); y = acc * s_x * w_scale[o] + bias")

_RNN = (A("hidden_size", "int"), A("num_layers", "int", 1), A("bidirectional", "bool", False),
        A("batch_first", "bool", False), A("has_biases", "bool", True),
        A("w_scales", "floats"), A("per_token", "bool", False))


def _rnn_infer(kind: str):
    from slimfx.ir.opset import _rnn
    base = _rnn(kind)

    def infer(ts: Types, a: Attrs) -> list[TensorType]:
        return base(ts, {k: a[k] for k in a})
    return infer


_op("dynamic_lstm", ["x", "h0", "c0", "weights*"], _RNN, [T.QUANT, T.PURE],
    _rnn_infer("lstm"), num_results=3,
    doc="lstm whose weight matrices (torch's flat order, int8 per-row symmetric; w_scales "
        "concatenates their row scales in the same order) multiply dynamic_linear-style")
_op("dynamic_gru", ["x", "h0", "weights*"], _RNN, [T.QUANT, T.PURE], _rnn_infer("gru"),
    num_results=2, doc="gru with dynamic int8 weight products, like dynamic_lstm")
