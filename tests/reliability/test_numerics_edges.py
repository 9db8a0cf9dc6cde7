"""Numerical edge cases where the compiled (TVM) model must equal the torch backend.

- Reductions of length 1 (``linear`` with one input feature, a 1x1 convolution of one input
  channel, the 1x1 window of an int8 average pool): TVM's scheduler used to apply their
  epilogue twice (bias added twice, the int8 pool's zero point twice).
- Non-finite values (DESIGN.md §4): NaN and +-Inf behave as in PyTorch in every float op
  (``relu(NaN)`` is NaN, as are clamps, max-pools, ``maximum``/``minimum``, fused
  activations); ``quantize`` maps NaN to the zero point and saturates +-Inf in every backend.

Integer results are compared with equality; float results with NaN positions equal
(``equal_nan=True``) and, for ops that only select values (relu, clamp, max), exactly.
Each group of cases is one graph compiled once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import slimfx
from slimfx.ir import Graph, TensorType
from slimfx.passes.quant.fixed_point import quantize_multiplier

NAN, INF = float("nan"), float("inf")
# NaN, infinities, fp32 denormals, signed zeros, the largest and the smallest normal floats
SPECIAL = [NAN, INF, -INF, 1e-40, -1e-40, 0.0, -0.0, 1.0, -1.0, 0.3, -2.5, 7.0, 3e38, -3e38,
           1.2e-38, NAN]

_POOL = dict(dilation=[1, 1], ceil_mode=False)


def _special(*shape: int, seed: int = 0) -> torch.Tensor:
    """Random values in [-3, 3] with the SPECIAL values spread over the tensor."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(*shape, generator=g) * 6 - 3
    flat = t.view(-1)
    pos = torch.randperm(flat.numel(), generator=g)[:len(SPECIAL)]
    flat[pos] = torch.tensor(SPECIAL[:len(pos)])
    return t


def _r(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) * 4 - 2


def _q(*shape: int, lo: int = -128, hi: int = 127, dtype: torch.dtype = torch.int8,
       seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi + 1, shape, generator=g).to(dtype)


class _Builder:
    """One graph holding many independent cases: ``add(op, operands, attrs)``."""

    def __init__(self, name: str) -> None:
        self.graph = Graph(name)
        self.feeds: list[torch.Tensor] = []
        self.ids: list[str] = []
        self._outs: list[Any] = []

    def add(self, case_id: str, op: str, operands: list[tuple[str, torch.Tensor]],
            attrs: dict[str, Any] | None = None) -> None:
        vals = []
        for i, (kind, t) in enumerate(operands):
            if kind == "in":
                vals.append(self.graph.add_input(f"{case_id}_{i}", TensorType.of(t)))
                self.feeds.append(t)
            else:
                vals.append(self.graph.add_constant(t, f"{case_id}_c{i}"))
        node = self.graph.create(op, vals, attrs or {}, name=case_id)
        self.ids.append(case_id)
        self._outs.extend(node.outputs)

    def run(self, target: str | dict = "x86", *,
            schedule: bool = True) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """(case id, torch-backend result, compiled result) per case."""
        pytest.importorskip("tvm", reason="the TVM backend needs apache-tvm")
        self.graph.set_outputs(self._outs)
        self.graph.verify()
        ref = slimfx.to_torch(self.graph)(*self.feeds)
        out = slimfx.compile(self.graph, target, schedule=schedule)(*self.feeds)
        ref = ref if isinstance(ref, (tuple, list)) else [ref]
        out = out if isinstance(out, (tuple, list)) else [out]
        return [(i, r, torch.as_tensor(np.asarray(o)))
                for i, r, o in zip(self.ids, ref, out, strict=True)]


def I(t: torch.Tensor) -> tuple[str, torch.Tensor]:  # noqa: E743 - a graph input
    return ("in", t)


def C(t: torch.Tensor) -> tuple[str, torch.Tensor]:
    return ("const", t)


def _close(case: str, out: torch.Tensor, ref: torch.Tensor, *, exact: bool = False,
           tol: float = 1e-5) -> None:
    kw = dict(rtol=0.0, atol=0.0) if exact else dict(rtol=tol, atol=tol)
    torch.testing.assert_close(out, ref, equal_nan=True, check_dtype=True,
                               msg=lambda m: f"{case}: {m}", **kw)


# ------------------------------------------------------------------ reductions of length 1
_CONV1 = dict(stride=[1, 1], padding=[0, 0], dilation=[1, 1])


def _unit_reduction_cases() -> _Builder:
    b = _Builder("unit_reductions")
    for n in (1, 4, 10, 17, 63, 16):  # 16: the hand-scheduled AVX2 dense
        b.add(f"linear_1x{n}", "linear", [I(_r(3, 1, seed=n)), C(_r(n, 1, seed=100 + n)),
                                          C(_r(n, seed=200 + n))])
    b.add("linear_1x5_batched", "linear", [I(_r(2, 3, 1)), C(_r(5, 1, seed=1)), C(_r(5))])
    b.add("linear_1x6_relu", "linear", [I(_r(4, 1)), C(_r(6, 1, seed=2)), C(_r(6, seed=3))],
          dict(act_min=0.0))
    for c in (1, 5, 8):
        b.add(f"conv2d_1to{c}_1x1", "conv2d", [I(_r(2, 1, 3, 4, seed=c)),
                                                 C(_r(c, 1, 1, 1, seed=10 + c)),
                                                 C(_r(c, seed=20 + c))], _CONV1)
    b.add("conv2d_dw_1x1", "conv2d", [I(_r(2, 3, 4, 4)), C(_r(3, 1, 1, 1, seed=4)),
                                      C(_r(3, seed=5))], dict(_CONV1, groups=3))
    b.add("conv2d_1x1_stride2", "conv2d", [I(_r(2, 1, 5, 5)), C(_r(7, 1, 1, 1, seed=6)),
                                           C(_r(7, seed=7))],
          dict(stride=[2, 2], padding=[0, 0], dilation=[1, 1]))
    for c in (3, 8):
        b.add(f"conv1d_1to{c}", "conv1d", [I(_r(2, 1, 6, seed=c)), C(_r(c, 1, 1, seed=30 + c)),
                                           C(_r(c, seed=40 + c))],
              dict(stride=[1], padding=[0], dilation=[1]))
    b.add("mean_unit_axis", "mean", [I(_r(2, 1, 5))], dict(axes=[1], keepdim=True))
    b.add("adaptive_avg_pool_1x1", "adaptive_avg_pool2d", [I(_r(2, 4, 1, 1))],
          dict(output_size=[1, 1]))
    return b


@pytest.mark.tvm
def test_reductions_of_length_one_fp32() -> None:
    for case, ref, out in _unit_reduction_cases().run():
        _close(case, out, ref)


@pytest.mark.tvm
def test_reductions_of_length_one_fp16() -> None:
    b = _Builder("unit_reductions_f16")
    h = torch.float16
    for n in (4, 10):
        b.add(f"linear_1x{n}", "linear", [I(_r(3, 1, seed=n).to(h)),
                                          C(_r(n, 1, seed=100 + n).to(h)),
                                          C(_r(n, seed=200 + n).to(h))])
    b.add("conv2d_1to5_1x1", "conv2d", [I(_r(2, 1, 3, 3).to(h)), C(_r(5, 1, 1, 1).to(h)),
                                        C(_r(5, seed=9).to(h))], _CONV1)
    for case, ref, out in b.run():
        _close(case, out.float(), ref.float(), tol=2e-3)


def _req(zp: int, dtype: str) -> dict[str, Any]:
    lo, hi = (-128, 127) if dtype == "i8" else (0, 255)
    return dict(out_zero_point=zp, qmin=lo, qmax=hi, out_dtype=dtype)


@pytest.mark.tvm
def test_int8_reductions_of_length_one_and_avg_pool_windows() -> None:
    """qavg_pool2d over 1x1 (and other) windows at the extreme zero points, qlinear with one
    input feature, a 1x1 qconv of one channel: equal to the torch kernels."""
    b = _Builder("int8_unit")
    zps = [(-128, "i8"), (0, "i8"), (127, "i8"), (0, "u8"), (255, "u8")]
    windows = [([1, 1], [1, 1], [0, 0], 3), ([1, 1], [2, 2], [0, 0], 4),
               ([2, 2], [2, 2], [0, 0], 4), ([3, 3], [1, 1], [1, 1], 3)]
    for zp, dt in zps:
        lo, hi = (-128, 127) if dt == "i8" else (0, 255)
        tdt = torch.int8 if dt == "i8" else torch.uint8
        for kernel, stride, pad, size in windows:
            for ratio in (1.0, 0.37) if size == 3 else (1.0,):  # 0.37: in/out scales differ
                m0, n = quantize_multiplier(ratio / (kernel[0] * kernel[1]))
                x = _q(2, 16, size, size, lo=lo, hi=hi, dtype=tdt, seed=size + zp)
                b.add(f"qavg_{dt}_zp{zp}_k{kernel[0]}s{stride[0]}_m{ratio}", "qavg_pool2d",
                      [I(x)], dict(kernel=kernel, stride=stride, padding=pad, in_zero_point=zp,
                                   multiplier=m0, shift=n, **_req(zp, dt)))
    for n in (1, 5, 16):
        b.add(f"qlinear_1x{n}", "qlinear", [I(_q(3, 1, seed=n)), C(_q(n, 1, seed=50 + n)),
                                            C(_q(n, lo=-999, hi=999, dtype=torch.int32))],
              dict(x_zero_point=-128))
    b.add("qconv2d_1to5_1x1", "qconv2d", [I(_q(2, 1, 3, 3)), C(_q(5, 1, 1, 1, seed=3)),
                                          C(_q(5, lo=-999, hi=999, dtype=torch.int32))],
          dict(_CONV1, x_zero_point=-128))
    for case, ref, out in b.run():
        assert out.dtype == ref.dtype and torch.equal(out, ref), \
            f"{case}: max |diff| {(out.long() - ref.long()).abs().max()}"


class _PooledToOne(nn.Module):
    """Conv+ReLU down to a 1x1 feature map, AdaptiveAvgPool2d(1), flatten, linear (the
    shape of a ResNet head on small inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(16, 24, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv2(torch.relu(self.conv(x))))
        return self.fc(torch.flatten(self.pool(y), 1))


@pytest.mark.tvm
def test_int8_model_pooled_to_1x1_and_non_finite_inputs() -> None:
    """ptq-int8 model whose final 1x1 map is average pooled: compiled == torch backend for
    ordinary inputs and for inputs holding NaN, +-Inf and denormals."""
    pytest.importorskip("tvm", reason="the TVM backend needs apache-tvm")
    torch.manual_seed(0)
    model = _PooledToOne().eval()
    x = torch.randn(2, 3, 4, 4)
    g = slimfx.trace(model, (x,))
    q = slimfx.quantize(g, [torch.randn(2, 3, 4, 4) for _ in range(3)])
    pool = [n for n in q.nodes if n.op.name == "qavg_pool2d"]
    assert pool and tuple(pool[0].attrs["kernel"]) == (1, 1) and pool[0].attrs["in_zero_point"] == -128
    ref_mod = slimfx.to_torch(q)
    compiled = slimfx.compile(q, "x86")
    xs = x.clone()
    xs.view(-1)[:6] = torch.tensor([NAN, INF, -INF, 1e-40, -1e-40, NAN])
    for inp in (x, xs, torch.full((2, 3, 4, 4), NAN)):
        ref = ref_mod(inp)
        out = torch.as_tensor(np.asarray(compiled(inp)))
        assert torch.equal(out, ref), f"max |diff| {(out - ref).abs().max()}"


# ------------------------------------------------------------------ non-finite floats
def _float_cases(dtype: torch.dtype = torch.float32) -> _Builder:
    b = _Builder("non_finite")

    def s(*shape: int, seed: int = 0) -> torch.Tensor:
        return _special(*shape, seed=seed).to(dtype)

    x = s(2, 16)
    for name, op, attrs in [
        ("relu", "relu", {}), ("relu6", "relu6", {}),
        ("clamp", "clamp", dict(min=-0.5, max=0.5)), ("hardtanh", "clamp", dict(min=-1.0, max=1.0)),
        ("clamp_min", "clamp", dict(min=0.0)), ("clamp_max", "clamp", dict(max=0.1)),
        ("hardsigmoid", "hardsigmoid", {}), ("hardswish", "hardswish", {}),
        ("leaky_relu", "leaky_relu", dict(negative_slope=0.1)), ("elu", "elu", {}),
    ]:
        b.add(name, op, [I(x)], attrs)
    x4 = s(2, 3, 6, 6, seed=1)
    b.add("max_pool2d", "max_pool2d", [I(x4)], dict(kernel=[2, 2], stride=[2, 2],
                                                    padding=[0, 0], **_POOL))
    b.add("max_pool2d_pad", "max_pool2d", [I(x4)], dict(kernel=[3, 3], stride=[1, 1],
                                                        padding=[1, 1], **_POOL))
    b.add("max_pool1d", "max_pool1d", [I(s(2, 3, 11, seed=2))],
          dict(kernel=[3], stride=[2], padding=[1], dilation=[1], ceil_mode=False))
    b.add("adaptive_max_pool2d", "adaptive_max_pool2d", [I(x4)], dict(output_size=[3, 3]))
    b.add("adaptive_max_pool2d_odd", "adaptive_max_pool2d", [I(x4)], dict(output_size=[4, 4]))
    b.add("amax", "amax", [I(x4)], dict(axes=[2, 3]))
    b.add("amin", "amin", [I(x4)], dict(axes=[1], keepdim=True))
    b.add("maximum", "maximum", [I(x), I(s(2, 16, seed=3))])
    b.add("minimum", "minimum", [I(x), I(s(2, 16, seed=4))])
    b.add("maximum_bcast", "maximum", [I(x4), C(torch.zeros(1, 3, 1, 1, dtype=dtype))])
    y = s(2, 16, seed=6)
    b.add("ne", "ne", [I(x), I(y)])  # NaN != anything is true
    # torch's floor division is not floor(a / b): 1.0 // 0.1 == 9
    num = torch.tensor([1.0, -1.0, 7.0, 0.3, 5.0, -5.0, 0.0, 3.0, INF, NAN, 1e-40, 2.0], dtype=dtype)
    den = torch.tensor([0.1, 0.1, 0.7, 0.1, INF, INF, 3.0, 0.0, 2.0, 1.0, 3.0, -0.0], dtype=dtype)
    b.add("div_floor", "div", [I(num), I(den)], dict(rounding_mode="floor"))
    b.add("div_floor_random", "div", [I(_r(64, seed=7) * 10), I(_r(64, seed=8))],
          dict(rounding_mode="floor"))
    # fused activations: NaN produced by the convolution itself (a NaN tap, inf - inf)
    xc = s(2, 4, 5, 5, seed=5)
    for oc in (8, 5):  # 8: the AVX2 im2col + dense kernel, 5: the generic convolution
        b.add(f"conv2d_relu_{oc}", "conv2d", [I(xc), C(_r(oc, 4, 3, 3, seed=oc).to(dtype)),
                                              C(_r(oc, seed=oc).to(dtype))],
              dict(stride=[1, 1], padding=[1, 1], dilation=[1, 1], act_min=0.0))
        b.add(f"conv2d_relu6_{oc}", "conv2d", [I(xc), C(_r(oc, 4, 3, 3, seed=oc).to(dtype))],
              dict(stride=[1, 1], padding=[1, 1], dilation=[1, 1], act_min=0.0, act_max=6.0))
        b.add(f"linear_relu_{oc}", "linear", [I(x), C(_r(oc, 16, seed=oc).to(dtype)),
                                              C(_r(oc, seed=oc).to(dtype))], dict(act_min=0.0))
    return b


_EXACT = {"relu", "relu6", "clamp", "hardtanh", "clamp_min", "clamp_max", "max_pool2d",
          "max_pool2d_pad", "max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool2d_odd",
          "amax", "amin", "maximum", "minimum", "maximum_bcast", "ne", "div_floor",
          "div_floor_random"}


@pytest.mark.tvm
def test_non_finite_float_ops_fp32() -> None:
    results = _float_cases().run()
    for case, ref, out in results:
        _close(case, out, ref, exact=case in _EXACT, tol=1e-4)
    by_id = {c: r for c, r, _ in results}
    assert torch.isnan(by_id["relu"]).any() and torch.isnan(by_id["max_pool2d"]).any()
    assert torch.isnan(by_id["conv2d_relu_8"]).any() and torch.isnan(by_id["conv2d_relu_5"]).any()


@pytest.mark.tvm
def test_non_finite_float_ops_fp16() -> None:
    b = _Builder("non_finite_f16")
    h = torch.float16
    x = _special(2, 16).to(h)
    x.view(-1)[-2:] = torch.tensor([6e-8, -6e-8], dtype=h)  # fp16 denormals
    b.add("relu", "relu", [I(x)])
    b.add("clamp", "clamp", [I(x)], dict(min=-0.5, max=0.5))
    b.add("maximum", "maximum", [I(x), I(_special(2, 16, seed=3).to(h))])
    b.add("max_pool2d", "max_pool2d", [I(_special(1, 2, 4, 4, seed=1).to(h))],
          dict(kernel=[2, 2], stride=[2, 2], padding=[0, 0], **_POOL))
    b.add("linear_relu", "linear", [I(x), C(_r(5, 16).to(h)), C(_r(5).to(h))], dict(act_min=0.0))
    for case, ref, out in b.run():
        _close(case, out, ref, exact=case != "linear_relu", tol=1e-2)


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_torch_backend_gelu_of_infinities_is_nan_on_every_host(dtype: str) -> None:
    """torch's own exact gelu of +Inf is NaN or +Inf depending on the CPU (fp16 without
    AVX512-FP16 gives +Inf); the reference kernel fixes NaN for both infinities (DESIGN 4.1),
    and every finite value as torch computes it."""
    dt = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype]
    x = torch.tensor([INF, -INF, 0.5, -3.0, NAN, 60000.0], dtype=dt)
    g = Graph("gelu_inf")
    v = g.add_input("x", TensorType((6,), dtype))
    g.set_outputs([g.create("gelu", [v], {"approximate": "none"}).output])
    y = slimfx.to_torch(g)(x)
    assert torch.isnan(y[:2]).all() and torch.isnan(y[4])
    assert torch.equal(y[[2, 3, 5]], torch.nn.functional.gelu(x[[2, 3, 5]]))


# ------------------------------------------------------------------ quantize
def _quantize_graph() -> _Builder:
    b = _Builder("quantize_non_finite")
    x = torch.tensor([[NAN, INF, -INF, 1e-40, -1e-40, 0.0, 1e30, -1e30, 0.05, -0.05]])
    b.add("q_i8", "quantize", [I(x)], dict(scale=[0.1], zero_point=[-3]))
    b.add("q_i8_zp_min", "quantize", [I(x)], dict(scale=[0.1], zero_point=[-128]))
    b.add("q_u8", "quantize", [I(x)], dict(dtype="u8", scale=[0.02], zero_point=[128], qmin=0,
                                           qmax=255))
    xc = torch.tensor([[NAN, INF, -INF, 1.0], [NAN, -1e-40, INF, NAN]]).T.contiguous()
    b.add("q_per_channel", "quantize", [I(xc)], dict(scale=[0.1, 0.5], zero_point=[7, -9],
                                                     axis=1))
    return b


def _expected_quantize(case: str, x: torch.Tensor, q: torch.Tensor, attrs: dict) -> None:
    zp = torch.tensor(attrs["zero_point"]).reshape((1, -1) if attrs.get("axis") else ())
    qmin, qmax = attrs.get("qmin", -128), attrs.get("qmax", 127)
    zp = zp.expand_as(x)
    assert torch.equal(q[torch.isnan(x)].long(), zp[torch.isnan(x)].long()), case
    assert (q[x == INF].long() == qmax).all() and (q[x == -INF].long() == qmin).all(), case


def test_torch_backend_quantize_maps_nan_to_the_zero_point() -> None:
    b = _quantize_graph()
    b.graph.set_outputs(b._outs)
    outs = slimfx.to_torch(b.graph)(*b.feeds)
    for node, x, q in zip(b.graph.nodes, b.feeds, outs, strict=True):
        _expected_quantize(node.name, x, q, dict(node.attrs))


@pytest.mark.tvm
def test_quantize_non_finite_equal_on_every_backend() -> None:
    b = _quantize_graph()
    for (case, ref, out), x in zip(b.run(), b.feeds, strict=True):
        assert out.dtype == ref.dtype and torch.equal(out, ref), f"{case}: {out} vs {ref}"
        node = next(n for n in b.graph.nodes if n.name == case)
        _expected_quantize(case, x, out, dict(node.attrs))


@pytest.mark.tvm
def test_dynamic_linear_non_finite_inputs() -> None:
    """dynamic int8: a NaN input makes the run-time scale NaN, as in the torch kernels (the
    compiled integer kernels used to turn NaN into arbitrary finite numbers)."""
    b = _Builder("dynamic_non_finite")
    rows = [[0.5] * 16, [1.0, -2.0] * 8]
    for tag, bad in (("nan", NAN), ("inf", INF)):
        x = torch.tensor([[bad, 1.0, 2.0, -1.0] * 4, *rows])
        for n in (8, 5):  # 8: the AVX2 integer kernel, 5: the float64 matmul
            for per_token in (False, True):
                b.add(f"dyn_{tag}_{n}_{per_token}", "dynamic_linear",
                      [I(x), C(_q(n, 16, lo=-127, hi=127, seed=n)), C(_r(n))],
                      dict(w_scale=[0.01 * (i + 1) for i in range(n)], per_token=per_token))
    for case, ref, out in b.run():
        _close(case, out, ref)
        assert torch.isnan(ref[0]).all(), case
