"""The default CPU schedule (parallel + vectorized loops) changes speed, never results."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

tvm = pytest.importorskip("tvm", reason="the TVM backend needs apache-tvm")

import slimfx  # noqa: E402
from slimfx.backends.tvm import tuning  # noqa: E402
from slimfx.backends.tvm.cpu_schedule import CpuDefault, default_cpu_schedule  # noqa: E402
from slimfx.backends.tvm.lower import lower_graph  # noqa: E402
from slimfx.backends.tvm.targets import resolve_target, use_cpu_threads  # noqa: E402

pytestmark = pytest.mark.tvm


class _Net(nn.Module):
    """Conv (reduction), elementwise chains, pooling, a softmax and a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        y = nn.functional.max_pool2d(y, 2) * torch.sigmoid(y.mean(1, keepdim=True)[..., ::2, ::2])
        return torch.softmax(self.fc(y.flatten(1)), -1)


def _graph_and_input() -> tuple[slimfx.ir.Graph, torch.Tensor]:
    torch.manual_seed(0)
    model = _Net().eval()
    x = torch.randn(2, 3, 16, 16)
    return slimfx.trace(model, (x,)), x


def test_scheduled_float_model_gives_identical_numbers() -> None:
    g, x = _graph_and_input()
    plain = slimfx.compile(g, "x86", schedule=False, tuning_db="/nonexistent-slimfx-db")(x)
    fast = slimfx.compile(g, "x86", tuning_db="/nonexistent-slimfx-db")(x)
    # only spatial loops are distributed: every reduction keeps its order, bit for bit
    np.testing.assert_array_equal(np.asarray(fast), np.asarray(plain))
    np.testing.assert_allclose(np.asarray(fast), slimfx.to_torch(g)(x).detach().numpy(),
                               rtol=1e-5, atol=1e-6)


def test_scheduled_int8_model_is_bit_exact() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Conv2d(16, 8, 1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    x = torch.randn(2, 3, 16, 16)
    g = slimfx.Pipeline("fold-bn,fuse-activation,cleanup")(slimfx.trace(model, (x,)))
    g8 = slimfx.quantize(g, [(torch.randn_like(x),) for _ in range(2)], "ptq-int8")
    got = slimfx.compile(g8, "x86", tuning_db="/nonexistent-slimfx-db")(x)
    assert torch.equal(torch.as_tensor(got), slimfx.to_torch(g8)(x))


def test_every_kernel_gets_a_parallel_schedule() -> None:
    g, _ = _graph_and_input()
    target = tvm.target.Target(resolve_target("x86"))
    mod = lower_graph(g, target=target)
    with tvm.transform.PassContext(opt_level=3):
        mod = tuning.prepare(mod, target)
        with target:
            scheduled = default_cpu_schedule()(mod)
    prims = [(gv.name_hint, scheduled[gv]) for gv in scheduled.functions
             if isinstance(scheduled[gv], tvm.tirx.PrimFunc)]
    assert prims
    for name, func in prims:
        assert func.attrs["tirx.is_scheduled"], name
    text = "\n".join(f.script() for _, f in prims)
    assert "T.parallel" in text and "T.vectorized" in text


def test_rule_leaves_other_targets_alone() -> None:
    g, _ = _graph_and_input()
    mod = lower_graph(g)
    with tvm.transform.PassContext(opt_level=3):
        mod = tuning.prepare(mod, tvm.target.Target(resolve_target("x86")))
    func = next(mod[gv] for gv in mod.functions if isinstance(mod[gv], tvm.tirx.PrimFunc))
    cuda = tvm.target.Target({"kind": "cuda", "arch": "sm_80"})
    assert CpuDefault().apply(func, cuda, False) is None


def test_thread_pool_follows_the_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    use_cpu_threads({"kind": "llvm", "num-cores": 1})
    assert os.environ["TVM_NUM_THREADS"] == "1"
    monkeypatch.setenv("TVM_NUM_THREADS", "3")  # the user's setting wins
    use_cpu_threads({"kind": "llvm", "num-cores": 1})
    assert os.environ["TVM_NUM_THREADS"] == "3"
    monkeypatch.delenv("TVM_NUM_THREADS")
    use_cpu_threads({"kind": "cuda", "arch": "sm_80"})
    assert "TVM_NUM_THREADS" not in os.environ
