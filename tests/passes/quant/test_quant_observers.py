"""Observers on known distributions, and the range -> QParams rule."""

from __future__ import annotations

import math

import pytest
import torch

from slimfx.errors import CalibrationError
from slimfx.passes.quant.observers import (
    EPS,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageObserver,
    qparams_from_range,
)


def test_minmax_per_tensor_and_per_channel():
    o = MinMaxObserver("t")
    o(torch.tensor([[-1.0, 2.0], [0.5, 3.0]]))
    o(torch.tensor([[-4.0, 0.0]]))
    assert o.range() == ([-4.0], [3.0])
    pc = MinMaxObserver("w", axis=0)
    pc(torch.tensor([[-1.0, 2.0], [0.5, 3.0]]))
    assert pc.range() == ([-1.0, 0.5], [2.0, 3.0])


def test_moving_average_follows_formula():
    o = MovingAverageObserver("t", averaging_constant=0.5)
    o(torch.tensor([0.0, 4.0]))
    o(torch.tensor([-2.0, 8.0]))
    assert o.range() == ([-1.0], [6.0])  # 0 + .5 * (-2 - 0), 4 + .5 * (8 - 4)


@pytest.fixture(scope="module")
def gaussian_batches():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(20000, generator=g) for _ in range(5)] + [torch.tensor([40.0])]


def _run(obs, batches):
    for b in batches:
        obs(b)
    return obs.range()


def test_histogram_percentile_clips_outliers(gaussian_batches):
    lo, hi = _run(HistogramObserver("h", method="percentile", percentile=99.9), gaussian_batches)
    # two-sided 99.9% quantiles of N(0, 1) are -/+3.09; the single 40.0 outlier is dropped
    assert lo[0] == pytest.approx(-3.09, abs=0.15) and hi[0] == pytest.approx(3.09, abs=0.15)


def test_histogram_entropy_clips_the_outlier(gaussian_batches):
    lo, hi = _run(HistogramObserver("h", method="entropy"), gaussian_batches)
    assert 2.5 < hi[0] < 10.0  # far below the 40.0 outlier, above most of the mass
    assert -5.0 < lo[0] < -2.5


def test_histogram_mse_balances_clipping_and_rounding(gaussian_batches):
    lo, hi = _run(HistogramObserver("h", method="mse"), gaussian_batches)
    # 100,000 N(0,1) samples plus one 40.0: rounding noise ~ N * ((hi - lo) / 255)**2 / 12
    # against the clipping error (40 - hi)**2 of the outlier; the minimum is near hi = 35.
    # (percentile and entropy drop the outlier, MSE keeps most of it: it is the L2 optimum)
    assert 32.0 < hi[0] < 38.0
    assert -4.5 < lo[0] < -3.0
    n = 100_000
    cost = [n * ((h + 3.6) / 255) ** 2 / 12 + (40 - h) ** 2 for h in (4.0, 20.0, hi[0], 40.0)]
    assert cost[2] == min(cost)


def test_histogram_grows_range_by_exact_merging():
    o = HistogramObserver("h", bins=16)
    o(torch.tensor([0.1, 0.2, -0.3]))
    before = o.hist.sum().item()
    o(torch.tensor([3.5]))
    assert o.radius == 4.0 and o.hist.sum().item() == before + 1


def test_qparams_affine_symmetric_and_zero_range():
    qp = qparams_from_range([-1.0], [3.0])
    assert qp.scale[0] == pytest.approx(4.0 / 255) and qp.zero_point == (-128 + 64,)
    qp = qparams_from_range([0.5], [3.0])  # widened to contain 0
    assert qp.zero_point == (-128,)
    sym = qparams_from_range([-2.0, -0.1], [1.0, 0.1], qmin=-127, qmax=127, symmetric=True,
                             axis=0)
    assert sym.zero_point == (0, 0) and sym.scale == pytest.approx((2.0 / 127, 0.1 / 127))
    zero = qparams_from_range([0.0], [0.0])
    assert zero.scale == (EPS,) and not math.isnan(zero.scale[0])


def test_observer_errors_name_the_observer():
    o = MinMaxObserver("conv1.obs")
    with pytest.raises(CalibrationError, match="conv1.obs.*no data"):
        o.range()
    with pytest.raises(CalibrationError, match="conv1.obs saw NaN"):
        o(torch.tensor([1.0, math.nan]))
    with pytest.raises(CalibrationError, match="inf"):
        o(torch.tensor([math.inf]))
