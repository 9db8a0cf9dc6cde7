"""Minimal graphs of mismatches found by the int8 model suite (``test_int8_model_suite.py``).

Each case is the smallest graph that showed (or pinned down) a difference between the
TVM x86 build and the torch reference on a whole model; all cases are outputs of one graph,
compiled once per x86 code path (AVX-512 VNNI on the host, AVX2 with ``mcpu=haswell``, which Intel and AMD hosts run; ``znver3`` needs AMD's sse4a).

- ``avg_pool_1x1_zp_min``: MobileNetV2's pooler, ``adaptive_avg_pool2d`` of a 1x1 map right
  after a ReLU6 (input zero point -128), i.e. ``qavg_pool2d`` with a 1x1 window: TVM's
  output was off by 128 (the window sum of a reduction of length 1 got its zero-point
  shift twice, like the fp32 conv/linear of one input channel that added its bias twice;
  fixed in the CPU schedule, which no longer inlines into reductions).
- ``dynamic_linear``: Wav2Vec2 with dynamic int8 differed by 2e-5 of the output scale. The
  cause is upstream: the float LayerNorm before ``q_proj`` differs between torch and TVM
  by float rounding (3e-7), and the run-time quantization of ``dynamic_linear`` turns that
  into one quantization step where a value sits at a rounding boundary. On identical inputs
  ``dynamic_linear`` itself is exact: this case checks it (per token and per tensor).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm", reason="the TVM backend needs apache-tvm")

import slimfx  # noqa: E402
from slimfx.ir import Graph, TensorType  # noqa: E402

pytestmark = pytest.mark.tvm

TARGETS: dict[str, Any] = {
    "vnni": "x86",
    "avx2": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell", "num-cores": 2},
}
_FEATURE = {"vnni": "avx512_vnni", "avx2": "avx2"}
CASES = ("avg_pool_1x1_zp_min", "dynamic_linear_per_token", "dynamic_linear_per_tensor")


def _host_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _graph() -> tuple[Graph, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    g = Graph("model_regressions")
    # MobileNetV2's pooler: int8 after ReLU6 (zero point -128, values >= -128), 1x1 map
    x = g.add_input("x", TensorType((2, 64, 1, 1), "i8"))
    pool = g.add("qavg_pool2d", [x], dict(kernel=[1, 1], stride=[1, 1], padding=[0, 0],
                                          in_zero_point=-128, multiplier=1073741824, shift=30,
                                          out_zero_point=-128, qmin=-128, qmax=127,
                                          out_dtype="i8"), name="avg_pool_1x1_zp_min")
    pooled = g.add("reshape", [pool], dict(shape=[2, 64]), name="pooled")
    # Wav2Vec2's q_proj: dynamic int8 linear of a float activation
    h = g.add_input("h", TensorType((2, 39, 32), "f32"))
    w = g.add_constant(torch.randint(-127, 128, (32, 32), generator=gen, dtype=torch.int8), "w")
    b = g.add_constant(torch.randn(32, generator=gen), "b")
    scales = [float(s) for s in torch.rand(32, generator=gen) * 0.01 + 0.001]
    outs = [pooled]
    for per_token in (True, False):
        name = f"dynamic_linear_per_{'token' if per_token else 'tensor'}"
        outs.append(g.add("dynamic_linear", [h, w, b], dict(w_scale=scales, per_token=per_token),
                          name=name))
    g.set_outputs(outs)
    g.verify()
    feeds = [torch.randint(-128, 128, (2, 64, 1, 1), generator=gen, dtype=torch.int8),
             torch.randn(2, 39, 32, generator=gen) * 3]
    return g, feeds


@pytest.fixture(scope="module", params=list(TARGETS))
def results(request) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if _FEATURE[request.param] not in _host_flags():
        pytest.skip(f"this CPU has no {_FEATURE[request.param]}")
    g, feeds = _graph()
    with torch.no_grad():
        ref = slimfx.to_torch(g, trainable=False)(*feeds)
    got = slimfx.compile(g, TARGETS[request.param], tuning_db="/nonexistent-slimfx-db",
                         progress=False)(*feeds)
    return {c: (r.numpy(), np.asarray(o)) for c, r, o in zip(CASES, ref, got, strict=True)}


@pytest.mark.parametrize("case", CASES)
def test_model_regression_is_exact(results, case: str) -> None:
    ref, got = results[case]
    assert got.dtype == ref.dtype and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)
    if case.startswith("avg_pool"):  # a real pool of varied values, not all at the minimum
        assert (ref > -100).any() and (ref == -128).sum() < ref.size // 2
