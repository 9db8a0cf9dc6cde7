"""Observers: statistics gathered during calibration, and the range -> QParams rule.

During :func:`slimfx.calibrate` every ``observer`` node of the graph runs as one
of the stateful modules below inside the torch backend's module; afterwards the
chosen range is written back into the node's ``min_val``/``max_val`` attributes.

Range -> quantization parameters (``qparams_from_range``), for an integer range
``[qmin, qmax]``:

- the range is widened to contain 0 (``lo = min(lo, 0)``, ``hi = max(hi, 0)``) so
  that 0 (padding, ReLU) is exactly representable;
- affine: ``scale = (hi - lo) / (qmax - qmin)``, ``zp = clamp(qmin - round(lo /
  scale), qmin, qmax)``;
- symmetric: ``scale = max(-lo, hi) / ((qmax - qmin) / 2)``, ``zp = (qmin + qmax + 1)
  // 2`` (0 for int8 ``[-128, 127]`` and ``[-127, 127]``);
- a scale below ``EPS = 2**-23`` (float32 machine epsilon; e.g. a constant-zero
  tensor) becomes ``EPS``: scales are never zero or NaN. :func:`slimfx.calibrate`
  warns about every activation observer whose range is a single value (all zeros, or
  a constant), naming it and the scale used;
- NaN or inf reaching an observer raises :class:`~slimfx.errors.CalibrationError`
  naming it, so no range (and no scale) is ever computed from non-finite values.

Histogram range choices (per tensor): ``percentile`` keeps the
``[100-p, p]`` percentiles; ``mse`` picks, among the 64 x 64 ranges ``[t1 * lo, t2 * hi]``
(``t1, t2`` in (0, 1]), the one minimising the expected quantization error (clipping
plus ``scale**2 / 12`` rounding noise per in-range element); ``entropy`` is the
TensorRT KL-divergence threshold search on the histogram of ``|x|``, the
threshold then clipping both sides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from slimfx.errors import CalibrationError
from slimfx.ir.types import QParams

__all__ = ["EPS", "qparams_from_range", "make_observer", "MinMaxObserver",
           "MovingAverageObserver", "HistogramObserver", "ObserverModule"]

EPS = 2.0 ** -23


def qparams_from_range(lo: Sequence[float], hi: Sequence[float], *, dtype: str = "i8",
                       qmin: int = -128, qmax: int = 127, symmetric: bool = False,
                       axis: int | None = None) -> QParams:
    """Quantization parameters covering ``[lo, hi]`` (per channel when ``axis`` is set)."""
    scales, zps = [], []
    for a, b in zip(lo, hi, strict=True):
        a, b = min(float(a), 0.0), max(float(b), 0.0)
        if symmetric:
            scale = max(-a, b) / ((qmax - qmin) / 2)
            zp = (qmin + qmax + 1) // 2
        else:
            scale = (b - a) / (qmax - qmin)
            zp = 0
        scale = max(scale, EPS)
        if not symmetric:
            zp = min(max(qmin - round(a / scale), qmin), qmax)
        scales.append(scale)
        zps.append(zp)
    return QParams(dtype, tuple(scales), tuple(zps), axis, qmin, qmax)


class ObserverModule(nn.Module):
    """Base: identity forward that records statistics; ``range()`` gives (lo, hi) lists."""

    def __init__(self, name: str, axis: int | None) -> None:
        super().__init__()
        self.node_name = name
        self.axis = axis
        self.batches = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            xd = x.detach().to(torch.float32)
            if not torch.isfinite(xd).all():
                bad = "NaN" if torch.isnan(xd).any() else "inf"
                raise CalibrationError(
                    f"observer %{self.node_name} saw {bad} values in calibration batch "
                    f"{self.batches}; check the data and the layers before this node")
            self.observe(xd)
            self.batches += 1
        return x

    def _minmax(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.axis is None:
            return x.amin().reshape(1), x.amax().reshape(1)
        flat = x.movedim(self.axis, 0).reshape(x.shape[self.axis], -1)
        return flat.amin(1), flat.amax(1)

    def observe(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def range(self) -> tuple[list[float], list[float]]:
        raise NotImplementedError

    def _require_data(self) -> None:
        if self.batches == 0:
            raise CalibrationError(f"observer %{self.node_name} saw no data; calibrate with at "
                                   "least one batch that reaches it")


class MinMaxObserver(ObserverModule):
    """Running minimum and maximum (per tensor or per channel)."""

    def __init__(self, name: str, axis: int | None = None) -> None:
        super().__init__(name, axis)
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None

    def observe(self, x: torch.Tensor) -> None:
        lo, hi = self._minmax(x)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def range(self) -> tuple[list[float], list[float]]:
        self._require_data()
        assert self.lo is not None and self.hi is not None
        return self.lo.tolist(), self.hi.tolist()


class MovingAverageObserver(MinMaxObserver):
    """``r <- r + c * (batch_r - r)`` for min and max; the first batch sets ``r``."""

    def __init__(self, name: str, axis: int | None = None, averaging_constant: float = 0.01):
        super().__init__(name, axis)
        self.c = averaging_constant

    def observe(self, x: torch.Tensor) -> None:
        lo, hi = self._minmax(x)
        if self.lo is None or self.hi is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo = self.lo + self.c * (lo - self.lo)
            self.hi = self.hi + self.c * (hi - self.hi)


class HistogramObserver(ObserverModule):
    """A histogram over ``[-R, R]`` that doubles ``R`` (merging bin pairs exactly) as needed."""

    def __init__(self, name: str, *, bins: int = 2048, method: str = "percentile",
                 percentile: float = 99.99, qmin: int = -128, qmax: int = 127) -> None:
        super().__init__(name, None)
        self.bins, self.method, self.percentile = bins, method, percentile
        self.levels = qmax - qmin + 1
        self.hist = torch.zeros(bins, dtype=torch.float64)
        self.radius = 0.0
        self.lo, self.hi = math.inf, -math.inf

    def observe(self, x: torch.Tensor) -> None:
        lo, hi = float(x.min()), float(x.max())
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        need = max(abs(lo), abs(hi))
        if self.radius == 0.0:
            self.radius = 2.0 ** math.ceil(math.log2(need)) if need > 0 else EPS
        while need > self.radius:
            quarter = self.bins // 4
            merged = self.hist.reshape(-1, 2).sum(1)
            self.hist = torch.zeros_like(self.hist)
            self.hist[quarter:quarter + self.bins // 2] = merged
            self.radius *= 2.0
        self.hist += torch.histc(x.to(torch.float64), self.bins, -self.radius, self.radius)

    def _edges(self) -> torch.Tensor:
        return torch.linspace(-self.radius, self.radius, self.bins + 1, dtype=torch.float64)

    def range(self) -> tuple[list[float], list[float]]:
        self._require_data()
        if self.hi <= self.lo or self.hist.sum() == 0:
            return [self.lo], [self.hi]
        if self.method == "percentile":
            lo, hi = self._percentile()
        elif self.method == "mse":
            lo, hi = self._mse()
        elif self.method == "entropy":
            lo, hi = self._entropy()
        else:
            raise CalibrationError(f"observer %{self.node_name}: unknown method {self.method!r}")
        return [max(lo, self.lo)], [min(hi, self.hi)]

    def _percentile(self) -> tuple[float, float]:
        cdf = torch.cumsum(self.hist, 0) / self.hist.sum()
        edges = self._edges()
        p = self.percentile / 100.0
        lo_bin = int(torch.searchsorted(cdf, torch.tensor(1.0 - p, dtype=torch.float64)))
        hi_bin = int(torch.searchsorted(cdf, torch.tensor(p, dtype=torch.float64)))
        return float(edges[lo_bin]), float(edges[min(hi_bin + 1, self.bins)])

    def _mse(self) -> tuple[float, float]:
        edges = self._edges()
        centers = ((edges[:-1] + edges[1:]) / 2)[None, :]
        nz = self.hist > 0
        centers, hist = centers[:, nz], self.hist[nz][None, :]
        ts = torch.linspace(1.0 / 64, 1.0, 64, dtype=torch.float64)
        los = ts * min(self.lo, 0.0)
        his = ts * max(self.hi, 0.0)
        lo = los.repeat_interleave(len(ts))[:, None]  # every (lo, hi) pair
        hi = his.repeat(len(ts))[:, None]
        scale = ((hi - lo) / (self.levels - 1)).clamp(min=EPS)
        clipped = torch.minimum(torch.maximum(centers, lo), hi)
        inside = (centers == clipped).to(torch.float64)
        err = (((centers - clipped) ** 2 + inside * scale ** 2 / 12) * hist).sum(1)
        best = int(torch.argmin(err))
        return float(lo[best, 0]), float(hi[best, 0])

    def _entropy(self) -> tuple[float, float]:
        half = self.bins // 2
        pos = self.hist[half:].clone()
        pos += torch.flip(self.hist[:half], [0])
        width = self.radius / half
        target = self.levels // 2
        best_kl, best_i = math.inf, half
        nonzero = int(torch.nonzero(pos).max()) + 1
        start = min(target, nonzero)
        for i in range(start, nonzero + 1, max(1, (nonzero - start) // 128)):
            ref = pos[:i].clone()
            ref[i - 1] += pos[i:].sum()
            levels = min(target, i)
            chunk = torch.arange(i) * levels // i  # bin -> quantization level
            sums = torch.zeros(levels, dtype=pos.dtype).index_add_(0, chunk, pos[:i])
            used = torch.zeros(levels, dtype=pos.dtype).index_add_(0, chunk,
                                                                   (pos[:i] > 0).to(pos.dtype))
            q = torch.where(pos[:i] > 0, sums[chunk] / used[chunk].clamp(min=1.0),
                            torch.zeros_like(ref))
            pn, qn = ref / ref.sum(), q / max(float(q.sum()), 1e-30)
            mask = pn > 0
            qn = torch.where(mask & (qn == 0), torch.full_like(qn, 1e-12), qn)
            kl = float((pn[mask] * torch.log(pn[mask] / qn[mask])).sum())
            if kl < best_kl:
                best_kl, best_i = kl, i
        threshold = best_i * width
        return -threshold, threshold


def make_observer(name: str, attrs: dict) -> ObserverModule:
    """The stateful module of an ``observer`` node (by its ``kind`` attribute)."""
    kind = attrs["kind"]
    if kind == "minmax":
        return MinMaxObserver(name, attrs["axis"])
    if kind == "moving_average":
        return MovingAverageObserver(name, attrs["axis"], attrs["averaging_constant"])
    if kind == "histogram":
        return HistogramObserver(name, bins=attrs["bins"], method=attrs["method"],
                                 percentile=attrs["percentile"], qmin=attrs["qmin"],
                                 qmax=attrs["qmax"])
    raise CalibrationError(f"observer %{name}: unknown kind {kind!r}; use minmax, "
                           "moving_average or histogram")
