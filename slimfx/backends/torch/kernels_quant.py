"""Exact torch kernels of the quantization ops (see ``slimfx/ir/opset_quant.py``).

The integer path uses int64 tensors only, except for the accumulating ops
(``qconv*``, ``qlinear``, ``qmatmul``), which run the float64 convolution or
matmul of integer-valued tensors. That is exact: every operand is an integer of
magnitude <= 255 (zero-point shifted int8) or an int32 bias, every product is an
integer below 2**16 and every partial sum of fewer than 2**36 such products is
an integer below 2**53, so each float64 addition is exact whatever order the
BLAS/oneDNN kernel sums in; converting the result to int64 loses nothing. The
int32 result is then range checked (an int32 overflow would be a model with
more than ~65,000 terms per output: refused rather than wrapped).

Observers are the identity here; calibration (``slimfx.calibrate``) swaps them
for stateful modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from slimfx.backends.torch.kernels import register_kernel
from slimfx.errors import LoweringError
from slimfx.ir.types import DTYPES

__all__ = ["rshift_round", "requantize_int"]

_I32 = (-(2**31), 2**31 - 1)


def rshift_round(v: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
    """``floor((v + 2**(n-1)) / 2**n)`` on int64 (round half up); ``v`` when ``n == 0``."""
    n_t = torch.as_tensor(n, dtype=torch.int64)
    half = torch.where(n_t > 0, torch.ones_like(n_t) << (n_t - 1).clamp(min=0),
                       torch.zeros_like(n_t))
    return (v + half) >> n_t


def requantize_int(v: torch.Tensor, multiplier: torch.Tensor | int, shift: torch.Tensor | int,
                   out_zero_point: int, qmin: int, qmax: int) -> torch.Tensor:
    """``clamp(rshift_round(v * M0, n) + zp, qmin, qmax)`` on int64 ``v``."""
    m = torch.as_tensor(multiplier, dtype=torch.int64)
    return torch.clamp(rshift_round(v * m, shift) + out_zero_point, qmin, qmax)


def _channel_view(values: tuple, axis: int | None, rank: int, dtype: torch.dtype) -> torch.Tensor:
    t = torch.tensor(values, dtype=dtype)
    if axis is None:
        return t.reshape(())
    shape = [1] * rank
    shape[axis] = -1
    return t.reshape(shape)


@register_kernel("observer")
def _observer(x, **attrs):
    return x


@register_kernel("quantize")
def _quantize(x, *, dtype, scale, zero_point, axis, qmin, qmax):
    s = _channel_view(scale, axis, x.dim(), torch.float32)
    z = _channel_view(zero_point, axis, x.dim(), torch.float32)
    x = x.to(torch.float32)
    # NaN -> the zero point in every backend (DESIGN.md §4), clamped like any value (a zero
    # point outside [qmin, qmax] gave out-of-range codes); a NaN cast to an integer type is
    # undefined in C (torch gives 0 on x86, not the zero point)
    q = torch.where(torch.isnan(x), z, torch.round(x / s) + z)
    q = torch.clamp(q, qmin, qmax)  # +-inf -> qmax / qmin
    return q.to(DTYPES[dtype])


@register_kernel("dequantize")
def _dequantize(q, *, dtype, scale, zero_point, axis, qmin, qmax):
    s = _channel_view(scale, axis, q.dim(), torch.float32)
    z = _channel_view(zero_point, axis, q.dim(), torch.int64)
    return (q.to(torch.int64) - z).to(torch.float32) * s


@register_kernel("requantize")
def _requantize(x, *, in_zero_point, multiplier, shift, axis, out_zero_point, qmin, qmax,
                out_dtype):
    m = _channel_view(multiplier, axis, x.dim(), torch.int64)
    n = _channel_view(shift, axis, x.dim(), torch.int64)
    v = x.to(torch.int64) - in_zero_point
    return requantize_int(v, m, n, out_zero_point, qmin, qmax).to(DTYPES[out_dtype])


def _to_i32(acc: torch.Tensor, op: str) -> torch.Tensor:
    out = acc.to(torch.int64)
    if out.numel() and (out.min() < _I32[0] or out.max() > _I32[1]):
        raise LoweringError(f"{op}: int32 accumulator overflow; the layer has too many terms "
                            "per output for int8 quantization - exclude it in the QConfig")
    return out.to(torch.int32)


def _shifted(x: torch.Tensor, zp: int) -> torch.Tensor:
    return x.to(torch.float64) - float(zp)


def _bias64(b: torch.Tensor | None) -> torch.Tensor | None:
    return None if b is None else b.to(torch.float64)


@register_kernel("qconv1d")
def _qconv1d(x, w, b=None, *, stride, padding, dilation, groups, x_zero_point):
    acc = F.conv1d(_shifted(x, x_zero_point), w.to(torch.float64), _bias64(b), stride, padding,
                   dilation, groups)
    return _to_i32(acc, "qconv1d")


@register_kernel("qconv2d")
def _qconv2d(x, w, b=None, *, stride, padding, dilation, groups, x_zero_point):
    acc = F.conv2d(_shifted(x, x_zero_point), w.to(torch.float64), _bias64(b), stride, padding,
                   dilation, groups)
    return _to_i32(acc, "qconv2d")


@register_kernel("qlinear")
def _qlinear(x, w, b=None, *, x_zero_point):
    acc = F.linear(_shifted(x, x_zero_point), w.to(torch.float64), _bias64(b))
    return _to_i32(acc, "qlinear")


@register_kernel("qmatmul")
def _qmatmul(a, b, *, a_zero_point, b_zero_point):
    acc = torch.matmul(_shifted(a, a_zero_point), _shifted(b, b_zero_point))
    return _to_i32(acc, "qmatmul")


@register_kernel("qadd")
def _qadd(a, b, *, a_zero_point, b_zero_point, a_multiplier, b_multiplier, shift,
          out_zero_point, qmin, qmax, out_dtype):
    v = (a.to(torch.int64) - a_zero_point) * a_multiplier + \
        (b.to(torch.int64) - b_zero_point) * b_multiplier
    return requantize_int(v, 1, shift, out_zero_point, qmin, qmax).to(DTYPES[out_dtype])


@register_kernel("qmul")
def _qmul(a, b, *, a_zero_point, b_zero_point, multiplier, shift, out_zero_point, qmin, qmax,
          out_dtype):
    v = (a.to(torch.int64) - a_zero_point) * (b.to(torch.int64) - b_zero_point)
    return requantize_int(v, multiplier, shift, out_zero_point, qmin, qmax).to(DTYPES[out_dtype])


@register_kernel("qcat")
def _qcat(*xs, axis, zero_points, multipliers, shifts, out_zero_point, qmin, qmax, out_dtype):
    parts = [requantize_int(x.to(torch.int64) - z, m, n, out_zero_point, qmin, qmax)
             for x, z, m, n in zip(xs, zero_points, multipliers, shifts, strict=True)]
    return torch.cat(parts, axis).to(DTYPES[out_dtype])


@register_kernel("qavg_pool2d")
def _qavg_pool2d(x, *, kernel, stride, padding, in_zero_point, multiplier, shift,
                 out_zero_point, qmin, qmax, out_dtype):
    # Window sums of integers below 2**8 * kh * kw: exact in float64 (see module docstring).
    s = F.avg_pool2d(_shifted(x, in_zero_point), kernel, stride, padding, False, True, 1)
    return requantize_int(s.to(torch.int64), multiplier, shift, out_zero_point, qmin,
                          qmax).to(DTYPES[out_dtype])


# ------------------------------------------------------------------ dynamic int8
_DYN_EPS = 1e-8


def dynamic_quantize(x: torch.Tensor, per_token: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantization of ``x`` with a run-time scale; returns (q as float, scale)."""
    x = x.to(torch.float32)
    amax = x.abs().amax(dim=-1, keepdim=True) if per_token else x.abs().amax()
    scale = torch.clamp(amax, min=_DYN_EPS) / 127.0
    q = torch.clamp(torch.round(x / scale), -127, 127)
    return q, scale


def dynamic_matmul(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor,
                   per_token: bool) -> torch.Tensor:
    """``x @ dequant(w_q).T`` with ``x`` quantized at run time; integer sum exact in float64."""
    q, s = dynamic_quantize(x, per_token)
    acc = F.linear(q.to(torch.float64), w_q.to(torch.float64))
    return (acc * s.to(torch.float64) * w_scale.to(torch.float64)).to(torch.float32)


@register_kernel("dynamic_linear")
def _dynamic_linear(x, w, b=None, *, w_scale, per_token, act_min, act_max):
    y = dynamic_matmul(x, w, torch.tensor(w_scale), per_token)
    if b is not None:
        y = y + b
    if act_min is not None or act_max is not None:
        y = torch.clamp(y, act_min, act_max)
    return y


def _split_scales(weights: tuple, scales: tuple) -> list[torch.Tensor | None]:
    out: list[torch.Tensor | None] = []
    pos = 0
    for w in weights:
        if w.dim() == 2:
            out.append(torch.tensor(scales[pos:pos + w.shape[0]]))
            pos += w.shape[0]
        else:
            out.append(None)
    return out


def _rnn(kind: str, x, hs, weights, scales, *, num_layers, bidirectional, batch_first,
         has_biases, per_token):
    per = 4 if has_biases else 2
    dirs = 2 if bidirectional else 1
    if batch_first:
        x = x.transpose(0, 1)
    h_out, c_out = [], []
    layer_in = x
    for layer in range(num_layers):
        outs = []
        for d in range(dirs):
            idx = (layer * dirs + d) * per
            w_ih, w_hh = weights[idx], weights[idx + 1]
            s_ih, s_hh = scales[idx], scales[idx + 1]
            b_ih = weights[idx + 2] if has_biases else None
            b_hh = weights[idx + 3] if has_biases else None
            h = hs[0][layer * dirs + d]
            c = hs[1][layer * dirs + d] if kind == "lstm" else None
            steps = range(layer_in.shape[0])
            seq = []
            xi_all = dynamic_matmul(layer_in, w_ih, s_ih, per_token)
            if b_ih is not None:
                xi_all = xi_all + b_ih
            for t in (reversed(steps) if d == 1 else steps):
                gh = dynamic_matmul(h, w_hh, s_hh, per_token)
                if b_hh is not None:
                    gh = gh + b_hh
                gi = xi_all[t]
                if c is not None:
                    i, f, g, o = (gi + gh).chunk(4, -1)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h = torch.sigmoid(o) * torch.tanh(c)
                else:
                    ir, iz, in_ = gi.chunk(3, -1)
                    hr, hz, hn = gh.chunk(3, -1)
                    r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
                    n = torch.tanh(in_ + r * hn)
                    h = (1 - z) * n + z * h
                seq.append(h)
            if d == 1:
                seq.reverse()
            outs.append(torch.stack(seq))
            h_out.append(h)
            if c is not None:
                c_out.append(c)
        layer_in = torch.cat(outs, -1) if dirs == 2 else outs[0]
    out = layer_in.transpose(0, 1) if batch_first else layer_in
    if kind == "lstm":
        return out, torch.stack(h_out), torch.stack(c_out)
    return out, torch.stack(h_out)


@register_kernel("dynamic_lstm")
def _dynamic_lstm(x, h0, c0, *weights, hidden_size, num_layers, bidirectional, batch_first,
                  has_biases, w_scales, per_token):
    return _rnn("lstm", x, (h0, c0), weights, _split_scales(weights, w_scales),
                num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
                has_biases=has_biases, per_token=per_token)


@register_kernel("dynamic_gru")
def _dynamic_gru(x, h0, *weights, hidden_size, num_layers, bidirectional, batch_first,
                 has_biases, w_scales, per_token):
    return _rnn("gru", x, (h0, None), weights, _split_scales(weights, w_scales),
                num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
                has_biases=has_biases, per_token=per_token)
