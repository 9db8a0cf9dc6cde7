"""The QAT int8 program of a CNN with a residual and a depthwise block, trained on sklearn's
digits, compiled for x86 and for aarch64 (run under qemu): bit for bit its torch reference.

The model (``ResDwCNN``): conv-BN-ReLU stem, an inverted-residual style block (depthwise
3x3 - BN - ReLU, pointwise 1x1 - BN, added to its input, ReLU), a max pool, a conv-BN-ReLU,
global average pooling and a linear head. ``prepare_qat`` -> 40 Adam steps -> ``convert``
gives the integer program; ``slimfx.to_torch`` of it is the reference.

The digits split here keeps 1,000 test images (the 797 others train it); x86 and aarch64
both run all 1,000 (aarch64: ten batches of 100 in ONE qemu process, ~20 s). Needs the environment of ``make arm-env`` for the aarch64 test (skipped, with the reason,
when it is not there).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

tvm = pytest.importorskip("tvm")

import slimfx  # noqa: E402
from slimfx.backends.tvm import arm_env  # noqa: E402
from slimfx.models.digits import load_digits_split  # noqa: E402

pytestmark = [pytest.mark.tvm, pytest.mark.slow]  # the fixture trains (~15 s)

BATCH = 100
TEST_IMAGES = 1000
ENV = arm_env.find_env()


class ResDwCNN(nn.Module):
    """Stem, one depthwise residual block, a conv, global pooling, linear head (8x8 input)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False),
                                nn.BatchNorm2d(width), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width))
        self.conv = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(2 * width), nn.ReLU())
        self.head = nn.Linear(2 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.pw(self.dw(x)))
        x = self.conv(F.max_pool2d(x, 2))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _fit(m: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> None:
    opt = torch.optim.Adam(m.parameters(), lr)
    gen = torch.Generator().manual_seed(0)
    m.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (BATCH,), generator=gen)
        loss = F.cross_entropy(m(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()


@pytest.fixture(scope="module")
def qat_program():
    """(integer graph, its torch reference outputs per test batch, test batches, labels)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = load_digits_split(test_size=TEST_IMAGES)
        torch.manual_seed(0)
        model = ResDwCNN()
        _fit(model, data.x_train, data.y_train, steps=200, lr=1e-2)
        g = slimfx.trace(model, (data.x_test[:BATCH],), dynamic_shapes={})
        calib = list(data.x_train[:4 * BATCH].split(BATCH))
        m = slimfx.to_torch(slimfx.prepare_qat(g, calib))
        _fit(m, data.x_train, data.y_train, steps=40, lr=1e-4)
        g8 = slimfx.convert(m)
        test = list(data.x_test.split(BATCH))
        ref = slimfx.to_torch(g8)
        with torch.no_grad():
            want = [ref(b).numpy() for b in test]
    finally:
        torch.set_num_threads(threads)
    return g8, want, test, data.y_test


def test_program_is_integer_with_depthwise_and_residual(qat_program):
    g8, want, _, labels = qat_program
    convs = g8.find("qconv2d")
    assert any(n.attrs.get("groups", 1) > 1 for n in convs)  # the depthwise conv stayed integer
    assert g8.find("qadd") and g8.find("qlinear") and not g8.find("conv2d")
    assert not g8.find("fake_quantize")
    acc = float((torch.from_numpy(np.concatenate(want)).argmax(1) == labels).float().mean())
    assert acc > 0.85  # a trained model, so the logits are not degenerate


def test_qat_program_bit_exact_on_x86(qat_program):
    g8, want, test, _ = qat_program
    c = slimfx.compile(g8, "x86")
    n = 0
    for b, w in zip(test, want, strict=True):
        got = c(b.numpy())
        assert got.dtype == w.dtype
        np.testing.assert_array_equal(got, w)
        n += len(b)
    assert n == TEST_IMAGES


@pytest.mark.arm
@pytest.mark.skipif(ENV is None, reason="aarch64 qemu environment not set up "
                    f"({arm_env.missing_reason()}); run `make arm-env`")
def test_qat_program_bit_exact_on_arm(qat_program, tmp_path):
    from slimfx.backends.tvm.arm import ArmJob, export_arm_library, run_arm_batch

    g8, want, test, _ = qat_program
    c = slimfx.compile(g8, "arm")
    lib = export_arm_library(c._executable, tmp_path / "qat.so")
    outs = run_arm_batch([ArmJob(lib, (b.numpy(),)) for b in test], env=ENV)
    assert len(outs) * BATCH == TEST_IMAGES
    for (got,), w in zip(outs, want, strict=True):
        assert got.dtype == w.dtype
        np.testing.assert_array_equal(got, w)
