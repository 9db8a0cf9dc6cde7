"""The integer program is exact: kernels equal pure-Python integer references bit for bit."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import slimfx
from slimfx.backends.torch import KERNELS
from slimfx.errors import QuantizationError
from slimfx.ir import Graph, TensorType, parse
from slimfx.passes.quant.fixed_point import quantize_multiplier, quantize_multipliers_shared


def rshift_round(v: int, n: int) -> int:
    """Reference: round-half-up right shift with Python's unbounded ints."""
    return v if n == 0 else (v + (1 << (n - 1))) >> n


def requant_ref(v: int, m0: int, n: int, zp: int, lo: int, hi: int) -> int:
    return min(max(rshift_round(v * m0, n) + zp, lo), hi)


def test_requantize_rounds_half_up_and_saturates():
    # M = 0.5 exactly: M0 = 2**30, n = 31. x * 0.5 for odd x is a tie.
    x = torch.tensor([-5, -3, -1, 1, 3, 5, 1000, -1000], dtype=torch.int32)
    y = KERNELS["requantize"](x, in_zero_point=0, multiplier=(2**30,), shift=(31,), axis=None,
                              out_zero_point=0, qmin=-128, qmax=127, out_dtype="i8")
    # -2.5 -> -2, -1.5 -> -1, -0.5 -> 0, 0.5 -> 1, 1.5 -> 2, 2.5 -> 3; 500 / -500 saturate
    assert y.tolist() == [-2, -1, 0, 1, 2, 3, 127, -128]
    assert y.dtype == torch.int8


def test_requantize_per_channel_and_zero_points():
    x = torch.tensor([[10, 10], [7, 7]], dtype=torch.int32)  # channels on axis 0
    y = KERNELS["requantize"](x, in_zero_point=3, multiplier=(2**30, 3 * 2**29), shift=(30, 31),
                              axis=0, out_zero_point=-5, qmin=-128, qmax=127, out_dtype="i8")
    # channel 0: M = 1 -> (10-3) - 5 = 2; channel 1: M = 0.75 -> 4 * 0.75 = 3 -> 3 - 5 = -2
    assert y.tolist() == [[2, 2], [-2, -2]]


@given(st.floats(min_value=1e-9, max_value=1e4, allow_nan=False))
def test_quantize_multiplier_is_accurate(m: float):
    m0, n = quantize_multiplier(m)
    assert 0 < m0 < 2**31 and 0 <= n <= 62
    assert abs(m0 * 2.0**-n - m) <= m * 2.0**-30 + 2.0**-62


def test_quantize_multiplier_rejects_bad_values():
    for bad in (0.0, -1.0, math.inf, math.nan, 2.0**32):
        with pytest.raises(QuantizationError):
            quantize_multiplier(bad)
    ms, n = quantize_multipliers_shared([0.25, 1.5])
    assert ms[1] / ms[0] == pytest.approx(6.0) and ms[1] < 2**31 and n == 30


def _conv_ref(x, w, b, zp, stride, pad):
    n_, c_, h, wd = x.shape
    o_, _, kh, kw = w.shape
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = [[[[0] * ow for _ in range(oh)] for _ in range(o_)] for _ in range(n_)]
    xs, ws = x.tolist(), w.tolist()
    for n in range(n_):
        for o in range(o_):
            for i in range(oh):
                for j in range(ow):
                    acc = int(b[o])
                    for c in range(c_):
                        for di in range(kh):
                            for dj in range(kw):
                                yy, xx = i * stride + di - pad, j * stride + dj - pad
                                if 0 <= yy < h and 0 <= xx < wd:
                                    acc += (xs[n][c][yy][xx] - zp) * ws[o][c][di][dj]
                    out[n][o][i][j] = acc
    return out


@pytest.mark.parametrize("stride,pad", [(1, 1), (2, 0)])
def test_qconv2d_equals_integer_reference(stride, pad):
    g = torch.Generator().manual_seed(stride)
    x = torch.randint(-128, 128, (2, 3, 5, 5), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (4, 3, 3, 3), generator=g, dtype=torch.int8)
    b = torch.randint(-(2**20), 2**20, (4,), generator=g, dtype=torch.int32)
    acc = KERNELS["qconv2d"](x, w, b, stride=(stride, stride), padding=(pad, pad),
                             dilation=(1, 1), groups=1, x_zero_point=-7)
    assert acc.dtype == torch.int32
    assert acc.tolist() == _conv_ref(x, w, b, -7, stride, pad)


def test_extreme_accumulators_are_exact():
    # all operands at their extremes: the float64 path must still be exact
    x = torch.full((1, 64, 3, 3), -128, dtype=torch.int8)
    w = torch.full((2, 64, 3, 3), -127, dtype=torch.int8)
    acc = KERNELS["qconv2d"](x, w, None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                             groups=1, x_zero_point=127)
    assert (acc == 64 * 9 * (-255) * (-127)).all()


def test_qlinear_qmatmul_equal_reference():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-128, 128, (3, 6), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (4, 6), generator=g, dtype=torch.int8)
    acc = KERNELS["qlinear"](x, w, None, x_zero_point=5)
    ref = [[sum((x[i, k].item() - 5) * w[o, k].item() for k in range(6)) for o in range(4)]
           for i in range(3)]
    assert acc.tolist() == ref
    b = torch.randint(-128, 128, (6, 2), generator=g, dtype=torch.int8)
    acc = KERNELS["qmatmul"](x, b, a_zero_point=1, b_zero_point=-2)
    ref = [[sum((x[i, k].item() - 1) * (b[k, j].item() + 2) for k in range(6)) for j in range(2)]
           for i in range(3)]
    assert acc.tolist() == ref


def test_qadd_qmul_qcat_qavgpool_equal_reference():
    g = torch.Generator().manual_seed(4)
    a = torch.randint(-128, 128, (2, 3, 4, 4), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (2, 3, 4, 4), generator=g, dtype=torch.int8)
    kw = dict(out_zero_point=3, qmin=-128, qmax=127, out_dtype="i8")
    y = KERNELS["qadd"](a, b, a_zero_point=-1, b_zero_point=2, a_multiplier=1 << 30,
                        b_multiplier=3 << 28, shift=31, **kw)
    ref = [requant_ref((int(p) + 1) * (1 << 30) + (int(q) - 2) * (3 << 28), 1, 31, 3, -128, 127)
           for p, q in zip(a.flatten(), b.flatten(), strict=True)]
    assert y.flatten().tolist() == ref
    y = KERNELS["qmul"](a, b, a_zero_point=-1, b_zero_point=2, multiplier=1 << 30, shift=37, **kw)
    ref = [requant_ref((int(p) + 1) * (int(q) - 2), 1 << 30, 37, 3, -128, 127)
           for p, q in zip(a.flatten(), b.flatten(), strict=True)]
    assert y.flatten().tolist() == ref
    y = KERNELS["qcat"](a, b, axis=1, zero_points=(-1, 2), multipliers=(1 << 30, 3 << 28),
                        shifts=(30, 31), **kw)
    assert y[:, :3].flatten().tolist() == [requant_ref(int(p) + 1, 1 << 30, 30, 3, -128, 127)
                                           for p in a.flatten()]
    assert y[:, 3:].flatten().tolist() == [requant_ref(int(q) - 2, 3 << 28, 31, 3, -128, 127)
                                           for q in b.flatten()]
    y = KERNELS["qavg_pool2d"](a, kernel=(2, 2), stride=(2, 2), padding=(0, 0), in_zero_point=-1,
                               multiplier=1 << 30, shift=32, **kw)  # M = 1/4
    for n, c, i, j in [(0, 0, 0, 0), (1, 2, 1, 1), (0, 1, 1, 0)]:
        s = sum(int(a[n, c, 2 * i + di, 2 * j + dj]) + 1 for di in (0, 1) for dj in (0, 1))
        assert int(y[n, c, i, j]) == requant_ref(s, 1 << 30, 32, 3, -128, 127)


def test_quantize_dequantize_kernels():
    x = torch.tensor([-1.0, -0.25, 0.0, 0.25, 0.75, 100.0])
    q = KERNELS["quantize"](x, dtype="i8", scale=(0.5,), zero_point=(1,), axis=None, qmin=-128,
                            qmax=127)
    # x / 0.5 = -2, -0.5, 0, 0.5, 1.5, 200 -> round half even -2, -0, 0, 0, 2, 200
    assert q.tolist() == [-1, 1, 1, 1, 3, 127]
    d = KERNELS["dequantize"](q, dtype="i8", scale=(0.5,), zero_point=(1,), axis=None,
                              qmin=-128, qmax=127)
    assert d.tolist() == [-1.0, 0.0, 0.0, 0.0, 1.0, 63.0]


def test_int8_graph_text_round_trip():
    g = Graph()
    x = g.add_input("x", TensorType((1, 4), "i8"))
    w = g.add_constant(torch.tensor([[1, -2, 3, -4]], dtype=torch.int8), "w")
    acc = g.add("qlinear", [x, w], dict(x_zero_point=-3), name="acc")
    y = g.add("requantize", [acc], dict(multiplier=[1 << 30], shift=[31], out_zero_point=2))
    g.set_outputs([y])
    text = str(g)
    assert str(parse(text)) == text
    out = slimfx.to_torch(parse(text))(torch.tensor([[1, 2, 3, 4]], dtype=torch.int8))
    # acc = 4*1 + 5*-2 + 6*3 + 7*-4 = -16 -> -8 + 2
    assert out.tolist() == [[-6]]
