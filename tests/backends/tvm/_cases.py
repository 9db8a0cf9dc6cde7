"""One test case per float op: operand tensors, attributes, and a builder for a combined graph.

All cases go into ONE graph with one set of inputs per case, so the whole op table is
compiled by TVM once (each compile costs seconds); tests then compare case by case.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from slimfx.ir import Graph, TensorType


@dataclass
class OpCase:
    """``op(*operands, **attrs)``; operands are ``("in", tensor)`` or ``("const", tensor)``."""

    id: str
    op: str
    operands: list[tuple[str, torch.Tensor]]
    attrs: dict[str, Any] = field(default_factory=dict)


def _r(*shape: int, lo: float = -2.0, hi: float = 2.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(hash(shape) % 1000 + seed)
    return torch.rand(*shape, generator=g) * (hi - lo) + lo


def I(t: torch.Tensor) -> tuple[str, torch.Tensor]:  # noqa: E743 - a graph input
    return ("in", t)


def C(t: torch.Tensor) -> tuple[str, torch.Tensor]:
    return ("const", t)


_CONV = dict(stride=[1, 1], padding=[1, 1], dilation=[1, 1])


def float_cases() -> list[OpCase]:
    x4 = _r(2, 4, 6, 6)
    cases = [
        OpCase("conv1d", "conv1d", [I(_r(2, 3, 10)), C(_r(5, 3, 3)), C(_r(5))],
               dict(stride=[2], padding=[1], dilation=[1])),
        OpCase("conv2d", "conv2d", [I(x4), C(_r(6, 4, 3, 3)), C(_r(6))], _CONV),
        OpCase("conv2d_relu", "conv2d", [I(x4), C(_r(6, 4, 3, 3))], dict(_CONV, act_min=0.0)),
        OpCase("conv2d_relu6_dw", "conv2d", [I(x4), C(_r(4, 1, 3, 3)), C(_r(4))],
               dict(stride=[2, 2], padding=[1, 1], dilation=[1, 1], groups=4, act_min=0.0,
                    act_max=6.0)),
        OpCase("conv2d_dilated", "conv2d", [I(x4), C(_r(2, 2, 3, 3))],
               dict(stride=[1, 1], padding=[2, 2], dilation=[2, 2], groups=2)),
        OpCase("conv_transpose2d", "conv_transpose2d", [I(x4), C(_r(4, 3, 3, 3)), C(_r(3))],
               dict(stride=[2, 2], padding=[1, 1], output_padding=[1, 1], dilation=[1, 1])),
        OpCase("linear", "linear", [I(_r(2, 3, 8)), C(_r(5, 8)), C(_r(5))]),
        OpCase("linear_clamp", "linear", [I(_r(4, 8)), C(_r(5, 8))],
               dict(act_min=-0.5, act_max=0.5)),
        OpCase("matmul", "matmul", [I(_r(2, 3, 4, 5)), I(_r(2, 3, 5, 6))]),
        OpCase("matmul_bcast", "matmul", [I(_r(3, 4, 5)), I(_r(5, 2))]),
        OpCase("batch_norm", "batch_norm",
               [I(x4), C(_r(4)), C(_r(4, lo=0.5, hi=2.0)), C(_r(4)), C(_r(4))], dict(eps=1e-5)),
        OpCase("layer_norm", "layer_norm", [I(_r(2, 5, 8)), C(_r(8)), C(_r(8))],
               dict(normalized_shape=[8])),
        OpCase("layer_norm_noaffine", "layer_norm", [I(_r(2, 5, 8))],
               dict(normalized_shape=[5, 8])),
        OpCase("group_norm", "group_norm", [I(x4), C(_r(4)), C(_r(4))], dict(num_groups=2)),
        OpCase("instance_norm", "instance_norm", [I(x4), C(_r(4)), C(_r(4))], dict(eps=1e-5)),
        OpCase("instance_norm_1d_noaffine", "instance_norm", [I(_r(2, 5, 8))], dict(eps=1e-3)),
        OpCase("rms_norm", "rms_norm", [I(_r(2, 5, 8)), C(_r(8))],
               dict(normalized_shape=[8], eps=1e-6)),
        OpCase("rms_norm_default_eps", "rms_norm", [I(_r(2, 5, 8))], dict(normalized_shape=[8])),
    ]
    x = _r(3, 17, lo=-4.0, hi=4.0)
    for op in ("relu", "relu6", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "mish",
               "exp", "neg", "abs", "erf", "sin", "cos", "floor", "ceil", "sign"):
        cases.append(OpCase(op, op, [I(x)]))
    pos = _r(3, 17, lo=0.1, hi=4.0)
    for op in ("log", "sqrt", "rsqrt", "reciprocal"):
        cases.append(OpCase(op, op, [I(pos)]))
    halves = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49, -0.51, 3.7, -3.2])
    cases += [
        OpCase("round", "round", [I(halves)]),
        OpCase("logical_not", "logical_not", [I(x > 0)]),
        OpCase("gelu", "gelu", [I(x)]),
        OpCase("gelu_tanh", "gelu", [I(x)], dict(approximate="tanh")),
        OpCase("leaky_relu", "leaky_relu", [I(x)], dict(negative_slope=0.2)),
        OpCase("elu", "elu", [I(x)], dict(alpha=0.7)),
        OpCase("softplus", "softplus", [I(x * 6)], dict(beta=2.0, threshold=5.0)),
        OpCase("clamp", "clamp", [I(x)], dict(min=-1.0, max=0.5)),
        OpCase("clamp_min", "clamp", [I(x)], dict(min=0.25)),
        OpCase("softmax", "softmax", [I(x)], dict(axis=-1)),
        OpCase("log_softmax", "log_softmax", [I(x)], dict(axis=0)),
        OpCase("cast_i32", "cast", [I(x)], dict(dtype="i32")),
        OpCase("cast_f16", "cast", [I(x)], dict(dtype="f16")),
        OpCase("identity", "identity", [I(x)]),
        OpCase("dropout", "dropout", [I(x)], dict(p=0.3)),
    ]
    a, b = _r(2, 3, 4), _r(3, 1, seed=1)
    for op in ("add", "sub", "mul", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge"):
        cases.append(OpCase(op, op, [I(a), I(b)]))
    cases += [
        OpCase("add_const", "add", [I(a), C(torch.tensor(0.5))]),
        OpCase("pow", "pow", [I(_r(2, 3, lo=0.1, hi=3.0)), C(torch.tensor(2.5))]),
        OpCase("div", "div", [I(a), I(_r(3, 4, lo=0.5, hi=2.0))]),
        OpCase("div_floor", "div", [I(a * 3), C(torch.tensor(0.7))], dict(rounding_mode="floor")),
        OpCase("div_trunc", "div", [I(a * 3), C(torch.tensor(0.7))], dict(rounding_mode="trunc")),
        OpCase("logical_and", "logical_and", [I(a > 0), I(b > 0)]),
        OpCase("logical_or", "logical_or", [I(a > 0), I(b > 0)]),
        OpCase("where", "where", [I(a > 0), I(a), C(torch.tensor(-1.0))]),
        OpCase("max_pool1d", "max_pool1d", [I(_r(2, 3, 11))],
               dict(kernel=[3], stride=[2], padding=[1], dilation=[1])),
        OpCase("max_pool2d", "max_pool2d", [I(x4)],
               dict(kernel=[3, 3], stride=[2, 2], padding=[1, 1], dilation=[1, 1])),
        OpCase("max_pool2d_ceil", "max_pool2d", [I(_r(1, 2, 7, 7))],
               dict(kernel=[2, 2], stride=[2, 2], padding=[0, 0], dilation=[1, 1],
                    ceil_mode=True)),
        OpCase("avg_pool1d", "avg_pool1d", [I(_r(2, 3, 11))],
               dict(kernel=[3], stride=[2], padding=[1])),
        OpCase("avg_pool2d", "avg_pool2d", [I(x4)],
               dict(kernel=[3, 3], stride=[2, 2], padding=[1, 1])),
        OpCase("avg_pool2d_nopad", "avg_pool2d", [I(x4)],
               dict(kernel=[3, 3], stride=[2, 2], padding=[1, 1], count_include_pad=False)),
        OpCase("avg_pool2d_divisor", "avg_pool2d", [I(x4)],
               dict(kernel=[2, 2], stride=[2, 2], padding=[0, 0], divisor_override=3)),
        OpCase("adaptive_avg_pool1d", "adaptive_avg_pool1d", [I(_r(2, 3, 10))],
               dict(output_size=[4])),
        OpCase("adaptive_avg_pool2d", "adaptive_avg_pool2d", [I(x4)], dict(output_size=[1, 1])),
        OpCase("adaptive_avg_pool2d_odd", "adaptive_avg_pool2d", [I(x4)],
               dict(output_size=[4, 3])),
        OpCase("adaptive_max_pool1d", "adaptive_max_pool1d", [I(_r(2, 3, 10))],
               dict(output_size=[4])),
        OpCase("adaptive_max_pool2d", "adaptive_max_pool2d", [I(x4)], dict(output_size=[3, 3])),
        OpCase("adaptive_max_pool2d_odd", "adaptive_max_pool2d", [I(x4)],
               dict(output_size=[4, 5])),
        OpCase("reshape", "reshape", [I(x4)], dict(shape=[2, -1])),
        OpCase("permute", "permute", [I(x4)], dict(dims=[0, 2, 3, 1])),
        OpCase("expand", "expand", [I(_r(3, 1))], dict(shape=[2, 3, 4])),
        OpCase("cat", "cat", [I(a), I(_r(2, 1, 4)), C(_r(2, 2, 4))], dict(axis=1)),
        OpCase("split", "split", [I(x4)], dict(axis=1, sizes=[1, 3])),
        OpCase("slice", "slice", [I(x4)], dict(axis=2, start=1, end=100, step=2)),
        OpCase("slice_neg", "slice", [I(x4)], dict(axis=-1, start=-4, end=-1)),
        OpCase("select", "select", [I(x4)], dict(axis=1, index=-1)),
    ]
    for op in ("mean", "sum", "amax", "amin"):
        cases.append(OpCase(op, op, [I(x4)], dict(axes=[2, 3], keepdim=True)))
    cases += [
        OpCase("sum_all", "sum", [I(x4)], dict(axes=[])),
        OpCase("mean_neg", "mean", [I(x4)], dict(axes=[-1])),
        OpCase("embedding", "embedding", [I(torch.tensor([[0, 3, 2], [1, 1, 4]])),
                                          C(_r(5, 6))]),
        OpCase("pad_const", "pad", [I(x4)], dict(pads=[1, 2, 0, 1], value=0.5)),
        OpCase("pad_reflect", "pad", [I(x4)], dict(pads=[2, 1, 1, 2], mode="reflect")),
        OpCase("pad_replicate", "pad", [I(x4)], dict(pads=[2, 1, 1, 2], mode="replicate")),
        OpCase("pad_circular", "pad", [I(x4)], dict(pads=[2, 1, 1, 2], mode="circular")),
        OpCase("interp_nearest", "interpolate", [I(x4)], dict(size=[9, 12])),
        OpCase("interp_nearest_down", "interpolate", [I(x4)], dict(size=[4, 3])),
        OpCase("interp_bilinear", "interpolate", [I(x4)],
               dict(size=[9, 12], mode="bilinear", align_corners=False)),
        OpCase("interp_bilinear_ac", "interpolate", [I(x4)],
               dict(size=[9, 12], mode="bilinear", align_corners=True)),
        OpCase("interp_bicubic", "interpolate", [I(x4)],
               dict(size=[9, 12], mode="bicubic", align_corners=False)),
        OpCase("interp_nearest_exact", "interpolate", [I(x4)],
               dict(size=[9, 4], mode="nearest-exact")),
    ]
    q, k, v = _r(2, 4, 5, 8), _r(2, 4, 7, 8, seed=1), _r(2, 4, 7, 6, seed=2)
    cases += [
        OpCase("sdpa", "sdpa", [I(q), I(k), I(v)]),
        OpCase("sdpa_causal", "sdpa", [I(q), I(_r(2, 4, 5, 8)), I(_r(2, 4, 5, 6))],
               dict(is_causal=True)),
        OpCase("sdpa_bool_mask", "sdpa", [I(q), I(k), I(v), I(_r(5, 7) > -1.0)],
               dict(scale=0.3)),
        OpCase("sdpa_float_mask", "sdpa", [I(q), I(k), I(v), C(_r(1, 4, 5, 7))]),
        OpCase("sdpa_gqa", "sdpa", [I(q), I(_r(2, 2, 7, 8)), I(_r(2, 2, 7, 6))],
               dict(enable_gqa=True)),
    ]
    cases += rnn_cases()
    return cases


def _rnn_weights(kind: str, inp: int, hidden: int, layers: int, dirs: int,
                 bias: bool) -> list[torch.Tensor]:
    gates = 4 if kind == "lstm" else 3
    ws = []
    for layer in range(layers):
        for _ in range(dirs):
            size_in = inp if layer == 0 else hidden * dirs
            ws += [_r(gates * hidden, size_in, lo=-0.5, hi=0.5, seed=len(ws)),
                   _r(gates * hidden, hidden, lo=-0.5, hi=0.5, seed=len(ws) + 1)]
            if bias:
                ws += [_r(gates * hidden, lo=-0.5, hi=0.5, seed=len(ws) + 2),
                       _r(gates * hidden, lo=-0.5, hi=0.5, seed=len(ws) + 3)]
    return ws


def rnn_cases() -> list[OpCase]:
    out = []
    for kind in ("lstm", "gru"):
        for layers, bidir, batch_first, bias in ((1, False, False, True), (2, True, True, True),
                                                 (1, False, True, False)):
            dirs = 2 if bidir else 1
            x = _r(2, 4, 3) if batch_first else _r(4, 2, 3)
            states = [I(_r(layers * dirs, 2, 5))]
            if kind == "lstm":
                states.append(I(_r(layers * dirs, 2, 5, seed=3)))
            ws = [C(w) for w in _rnn_weights(kind, 3, 5, layers, dirs, bias)]
            out.append(OpCase(f"{kind}_{layers}l_{'bi' if bidir else 'uni'}"
                              f"{'_bf' if batch_first else ''}{'' if bias else '_nobias'}",
                              kind, [I(x), *states, *ws],
                              dict(hidden_size=5, num_layers=layers, bidirectional=bidir,
                                   batch_first=batch_first, has_biases=bias)))
    return out


def build_graph(cases: list[OpCase], *, half: bool = False) -> tuple[Graph, dict[str, Any]]:
    """One graph holding every case; returns it and, per case id, (input tensors, output slice).

    With ``half``, float inputs and constants are cast to fp16 first.
    """
    g = Graph("ops")
    feeds: list[torch.Tensor] = []
    index: dict[str, Any] = {}
    outputs = []
    for case in cases:
        vals = []
        case_inputs = []
        for i, (kind, t) in enumerate(case.operands):
            if half and t.is_floating_point():
                t = t.half()
            if kind == "in":
                vals.append(g.add_input(f"{case.id}_{i}", TensorType.of(t)))
                feeds.append(t)
                case_inputs.append(t)
            else:
                vals.append(g.add_constant(t, f"{case.id}_c{i}"))
        node = g.create(case.op, vals, case.attrs, name=case.id)
        index[case.id] = (len(outputs), len(node.outputs))
        outputs.extend(node.outputs)
    g.set_outputs(outputs)
    g.verify()
    return g, {"feeds": feeds, "index": index}


def _q(*shape: int, lo: int = -128, hi: int = 127, seed: int = 0,
       dtype: torch.dtype = torch.int8) -> torch.Tensor:
    g = torch.Generator().manual_seed(sum(shape) * 7 + seed)
    return torch.randint(lo, hi + 1, shape, generator=g).to(dtype)


def int8_cases() -> list[OpCase]:
    """Cases of the integer ops: the TVM results must EQUAL the torch kernels'."""
    x = _r(2, 4, 6, 6, lo=-3.0, hi=3.0)
    req = dict(out_zero_point=-5, qmin=-128, qmax=127, out_dtype="i8")
    acc = _q(2, 4, 5, dtype=torch.int32, lo=-(2**20), hi=2**20)
    return [
        OpCase("quantize", "quantize", [I(x)], dict(scale=[0.03], zero_point=[3])),
        OpCase("quantize_ties", "quantize",
               [I(torch.tensor([-0.25, -0.15, -0.05, 0.05, 0.15, 0.25, 12.0, -13.0]))],
               dict(scale=[0.1], zero_point=[0])),
        OpCase("quantize_pc_u8", "quantize", [I(x)],
               dict(dtype="u8", scale=[0.02, 0.03, 0.05, 0.01], zero_point=[128, 120, 100, 0],
                    axis=1, qmin=0, qmax=255)),
        OpCase("dequantize", "dequantize", [I(_q(2, 4, 6))], dict(scale=[0.03], zero_point=[-3])),
        OpCase("dequantize_pc", "dequantize", [I(_q(2, 4, 6))],
               dict(scale=[0.1, 0.2, 0.3, 0.4], zero_point=[0, 0, 0, 0], axis=1)),
        OpCase("requantize", "requantize", [I(acc)],
               dict(multiplier=[1518500250], shift=[40], in_zero_point=3, **req)),
        OpCase("requantize_pc", "requantize", [I(acc)],
               dict(multiplier=[1073741824, 2147483000, 1500000000, 1234567890],
                    shift=[38, 39, 41, 31], axis=1, **req)),
        OpCase("qconv2d", "qconv2d", [I(_q(2, 4, 6, 6)), C(_q(6, 4, 3, 3, seed=1)),
                                      C(_q(6, dtype=torch.int32, lo=-5000, hi=5000))],
               dict(stride=[1, 1], padding=[1, 1], dilation=[1, 1], x_zero_point=-7)),
        OpCase("qconv2d_dw", "qconv2d", [I(_q(1, 4, 7, 7)), C(_q(4, 1, 3, 3, seed=2))],
               dict(stride=[2, 2], padding=[1, 1], dilation=[1, 1], groups=4, x_zero_point=5)),
        OpCase("qconv1d", "qconv1d", [I(_q(2, 3, 9)), C(_q(5, 3, 3, seed=3))],
               dict(stride=[1], padding=[1], dilation=[1], x_zero_point=11)),
        OpCase("qlinear", "qlinear", [I(_q(3, 16)), C(_q(8, 16, seed=4)),
                                      C(_q(8, dtype=torch.int32, lo=-999, hi=999))],
               dict(x_zero_point=-128)),
        OpCase("qlinear_packed", "qlinear", [I(_q(2, 3, 16)), C(_q(32, 16, seed=9)),
                                             C(_q(32, dtype=torch.int32, lo=-999, hi=999))],
               dict(x_zero_point=5)),
        OpCase("qlinear_packed_u8", "qlinear", [I(_q(4, 8, lo=0, hi=255, dtype=torch.uint8)),
                                                C(_q(16, 8, seed=10))],
               dict(x_zero_point=128)),
        OpCase("qmatmul", "qmatmul", [I(_q(2, 3, 8)), I(_q(2, 8, 5, seed=5))],
               dict(a_zero_point=4, b_zero_point=-2)),
        OpCase("qadd", "qadd", [I(_q(2, 3, 4)), I(_q(2, 3, 4, seed=6))],
               dict(a_zero_point=3, b_zero_point=-4, a_multiplier=1 << 19,
                    b_multiplier=3 << 18, shift=20, **req)),
        OpCase("qmul", "qmul", [I(_q(2, 3, 4)), I(_q(3, 4, seed=7))],
               dict(a_zero_point=3, b_zero_point=-4, multiplier=1518500250, shift=38, **req)),
        OpCase("qcat", "qcat", [I(_q(2, 3, 4)), I(_q(2, 2, 4, seed=8))],
               dict(axis=1, zero_points=[1, -2], multipliers=[1 << 30, 1518500250],
                    shifts=[30, 31], **req)),
        OpCase("qavg_pool2d", "qavg_pool2d", [I(_q(2, 3, 6, 6))],
               dict(kernel=[3, 3], stride=[2, 2], padding=[1, 1], in_zero_point=-9,
                    multiplier=1908874354, shift=34, **req)),
        OpCase("observer", "observer", [I(x)]),
    ]


def dynamic_cases() -> list[OpCase]:
    """Dynamic int8 ops: float results, compared with a tight tolerance."""
    return [
        OpCase("dynamic_linear", "dynamic_linear",
               [I(_r(3, 16)), C(_q(8, 16, lo=-127, hi=127)), C(_r(8))],
               dict(w_scale=[0.01 * (i + 1) for i in range(8)])),
        OpCase("dynamic_linear_tok", "dynamic_linear",
               [I(_r(2, 3, 16)), C(_q(8, 16, lo=-127, hi=127))],
               dict(w_scale=[0.02] * 8, per_token=True, act_min=0.0)),
    ] + dynamic_rnn_cases()


def dynamic_rnn_cases() -> list[OpCase]:
    out = []
    for kind in ("lstm", "gru"):
        for layers, bidir, per_token in ((1, False, False), (2, True, True)):
            dirs = 2 if bidir else 1
            ws = _rnn_weights(kind, 3, 5, layers, dirs, True)
            qws, scales = [], []
            for w in ws:
                if w.dim() == 2:  # symmetric int8 per output row
                    s = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
                    qws.append(torch.clamp(torch.round(w / s[:, None]), -127, 127).to(torch.int8))
                    scales += s.tolist()
                else:
                    qws.append(w)
            states = [I(_r(layers * dirs, 2, 5))]
            if kind == "lstm":
                states.append(I(_r(layers * dirs, 2, 5, seed=3)))
            out.append(OpCase(f"dynamic_{kind}_{layers}l{'_bi' if bidir else ''}",
                              f"dynamic_{kind}", [I(_r(4, 2, 3)), *states,
                                                  *[C(w) for w in qws]],
                              dict(hidden_size=5, num_layers=layers, bidirectional=bidir,
                                   w_scales=scales, per_token=per_token)))
    return out
