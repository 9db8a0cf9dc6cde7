"""The depthwise int8 kernel (``slimfx/backends/tvm/depthwise_int8.py``) is bit-exact.

Two levels: the kernel alone (int32 sums and int8 requantized output, against numpy /
torch integer arithmetic) on edge shapes, and whole quantized models whose depthwise
convolutions take it, against the torch reference (``slimfx.to_torch``), on the host's
target and on an AVX2-only one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

tvm = pytest.importorskip("tvm", reason="the TVM backend needs apache-tvm")

import slimfx  # noqa: E402
from slimfx.backends.torch.kernels_quant import requantize_int  # noqa: E402
from slimfx.backends.tvm import conv_int8, depthwise_int8  # noqa: E402
from slimfx.backends.tvm.lower import lower_graph  # noqa: E402
from slimfx.backends.tvm.targets import resolve_target  # noqa: E402

pytestmark = pytest.mark.tvm

_AVX2 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell", "num-cores": 2}

# (x shape, kernel, stride, padding, dilation, x dtype, x zero point)
_CASES = {
    "3x3_s1_p1": ((1, 16, 14, 14), (3, 3), (1, 1), (1, 1), (1, 1), "int8", -128),
    "3x3_s2_odd": ((2, 5, 9, 7), (3, 3), (2, 2), (1, 1), (1, 1), "int8", 3),
    "1x1_spatial": ((1, 3, 1, 1), (3, 3), (1, 1), (1, 1), (1, 1), "int8", 0),
    "5x5_no_pad": ((1, 8, 9, 9), (5, 5), (1, 1), (0, 0), (1, 1), "uint8", 17),
    "dilated_wide": ((1, 4, 6, 37), (3, 3), (1, 2), (2, 2), (2, 2), "int8", -5),
}


def _reference(x: np.ndarray, w: np.ndarray, bias: np.ndarray, case: tuple) -> np.ndarray:
    _, kernel, stride, padding, dilation, _, zp = case
    xs = torch.from_numpy(x.astype(np.int64) - zp).double()
    acc = torch.nn.functional.conv2d(xs, torch.from_numpy(w.astype(np.float64)),
                                     torch.from_numpy(bias.astype(np.float64)), stride,
                                     padding, dilation, groups=x.shape[1])
    return acc.numpy().astype(np.int64)  # |acc| < 2**53: exact in float64


def _run(func: Any, args: list[np.ndarray], out_shape: tuple, out_dtype: str) -> np.ndarray:
    lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(
        resolve_target("x86")))
    tensors = [tvm.runtime.tensor(a) for a in args]
    out = tvm.runtime.tensor(np.zeros(out_shape, out_dtype))
    lib["main"](*tensors, out)
    return out.numpy()


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("requantized", [False, True], ids=["int32", "int8"])
@pytest.mark.parametrize("name", list(_CASES))
def test_kernel_is_exact(name: str, requantized: bool, layout: str) -> None:
    case = _CASES[name]
    shape, kernel, stride, padding, dilation, dtype, zp = case
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max + 1, size=shape).astype(dtype)  # full range
    c = shape[1]
    w = rng.integers(-128, 128, size=(c, 1, *kernel)).astype(np.int8)
    bias = rng.integers(-5000, 5000, size=c).astype(np.int32)
    acc = _reference(x, w, bias, case)
    rq = conv_int8.Requant.per_channel(c, rng.integers(2**30, 2**31 - 1, size=c).tolist(),
                                       rng.integers(38, 42, size=c).tolist(), -7, -128, 127,
                                       "int8") if requantized else None
    build = depthwise_int8.depthwise_func if layout == "nchw" else \
        depthwise_int8.depthwise_nhwc_func
    func = build(shape, dtype, kernel, stride, padding, dilation, zp, rq)
    if layout == "nchw":
        args = [x, np.ascontiguousarray(w[:, 0]), bias]
    else:
        args = [np.ascontiguousarray(x.transpose(0, 2, 3, 1)),
                np.ascontiguousarray(w[:, 0].transpose(1, 2, 0)), bias]
    if rq is None:
        want = acc
    else:
        args += [rq.mul, rq.half, rq.shift]
        view = (1, c, 1, 1)
        want = requantize_int(torch.from_numpy(acc), torch.from_numpy(rq.mul.reshape(view)),
                              torch.from_numpy(rq.shift.reshape(view)), -7, -128, 127).numpy()
        assert len(np.unique(want)) >= min(20, want.size)  # a real spread of int8 values
    out_shape = want.shape if layout == "nchw" else want.transpose(0, 2, 3, 1).shape
    got = _run(func, args, out_shape, "int32" if rq is None else "int8").astype(np.int64)
    if layout == "nhwc":
        got = got.transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(got, want)


class _Mobile(nn.Module):
    """A stem and an inverted residual block, MobileNetV2's shapes (expand, depthwise,
    project, add), then a strided depthwise convolution: every depthwise input is the
    channels-last result of a kernel (a conv, or the add of two)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 1)
        self.expand = nn.Sequential(nn.Conv2d(16, 48, 1), nn.BatchNorm2d(48), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(48, 48, 3, padding=1, groups=48), nn.BatchNorm2d(48),
                                nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(48, 16, 1), nn.BatchNorm2d(16))
        self.down = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return self.down(h + self.project(self.dw(self.expand(h))))


_TARGETS: dict[str, Any] = {"host": "x86", "avx2": _AVX2}


@pytest.fixture(scope="module")
def mobile() -> tuple[slimfx.ir.Graph, torch.Tensor]:
    torch.manual_seed(0)
    model = _Mobile().eval()
    x = torch.randn(1, 3, 10, 10)
    g = slimfx.Pipeline("fold-bn,fuse-activation,cleanup")(slimfx.trace(model, (x,)))
    return slimfx.quantize(g, [(torch.randn_like(x),) for _ in range(3)], "ptq-int8"), x


@pytest.mark.parametrize("target", list(_TARGETS))
def test_depthwise_model_is_bit_exact(mobile: tuple, target: str) -> None:
    g, x = mobile
    mod = lower_graph(g, target=_TARGETS[target])
    names = [gv.name_hint for gv in mod.functions]
    assert sum(n.startswith("qconv_depthwise_nhwc_") and "_rq_int8_" in n for n in names) == 2
    # channels-last from the stem to the last kernel: one permute, of the output, is left
    # once the permutes nobody reads are dropped (as compile does)
    live = tvm.relax.transform.DeadCodeElimination()(mod)["main"].script()
    assert live.count("R.permute_dims") == 1
    compiled = slimfx.compile(g, _TARGETS[target], tuning_db="/nonexistent-slimfx-db",
                              progress=False)
    for inp in (x, torch.randn_like(x) * 3):
        assert torch.equal(torch.as_tensor(compiled(inp)), slimfx.to_torch(g)(inp))


def test_applies_only_to_depthwise_int8() -> None:
    w = np.zeros((8, 1, 3, 3), np.int8)
    assert depthwise_int8.applies((1, 8, 5, 5), w, 8, "int8")
    assert not depthwise_int8.applies((1, 8, 5, 5), w, 1, "int8")  # not grouped
    assert not depthwise_int8.applies((1, 16, 5, 5), np.zeros((16, 2, 3, 3), np.int8), 8,
                                      "int8")  # 2 channels per group
    assert not depthwise_int8.applies((1, 8, 5, 5), w.astype(np.int32), 8, "int8")
    assert not depthwise_int8.applies((1, 8, 5, 5), w, 8, "float32")
