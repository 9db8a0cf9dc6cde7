"""The case model of the differential fuzzer: operands, tolerances, comparison.

A :class:`FuzzCase` is one op applied to operands described by :class:`Operand` recipes
(shape, dtype, value distribution, special values, seed); :func:`materialize` turns the
recipes into tensors. Cases are drawn by the hypothesis strategies of
:mod:`tests.reliability.fuzz_ops` and run by :mod:`tests.reliability.fuzz_run`.

Comparison (:func:`compare`), per op family (the bound is stated on the case as a
:class:`Tol`):

- ``exact``: integer, boolean and data-movement results, and float ops whose result is
  one correctly rounded operation (``neg``, ``max``, ``floor``, ``dequantize``, ...):
  equal bit for bit (NaN positions equal, NaN payloads ignored).
- ``ulp``: elementwise float functions: ``ulp_distance(got, ref) <= ulps`` (distance in
  representable floats, so ``inf`` vs the largest finite float is 1), or
  ``|got - ref| <= floor * eps`` for results near zero (functions whose result is O(1)).
- ``reduce``: sums of ``K`` products (conv, linear, matmul, sum, mean, avg pool):
  ``|got - ref| <= 2 * K * eps * M + ulps * ulp(ref)`` where ``M`` is the same op on the
  absolute values of its float operands (the classic forward error bound of a K-term
  dot product, ``gamma_K * sum |terms|``, doubled for the reference's own rounding).
- ``tensor``: ops with internal normalisation (norms, softmax, sdpa, RNNs, bicubic):
  ``|got - ref| <= rel * max(1, max |ref|)``.

In every family NaN positions must be equal and an infinite reference must be matched
exactly (except by the 1-ulp neighbour under ``ulp``). ``eps`` is the machine epsilon of
the result dtype (fp16: 2**-10).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from slimfx.ir.types import DTYPES

__all__ = [
    "Operand",
    "Tol",
    "FuzzCase",
    "Outcome",
    "SPECIALS",
    "materialize",
    "compare",
    "ulp_distance",
    "EXACT",
]

# Special float values mixed into inputs (fraction ``Operand.p_special``).
SPECIALS: dict[str, tuple[float, ...]] = {
    "nonfinite": (math.nan, math.inf, -math.inf),
    "denormal": (1e-40, -1e-40, 1.4e-45, -1.4e-45, 0.0, -0.0, 1.1754944e-38),
    "extreme": (3.0e38, -3.0e38, 1e30, -1e30, 1e-30, -1e-30),
}
SPECIALS["mixed"] = SPECIALS["nonfinite"] + SPECIALS["denormal"] + SPECIALS["extreme"]


@dataclass(frozen=True)
class Operand:
    """How to make one operand tensor.

    Attributes:
        kind: ``"in"`` (a graph input) or ``"const"`` (a graph constant).
        shape: its shape.
        dtype: IR dtype (``f32``, ``i8``, ...).
        fill: ``uniform`` (floats in [lo, hi]), ``int`` (integers in [lo, hi]),
            ``bool``, ``ties`` (``(k + 0.5) * hi`` for integers k in [-lo, lo]: exact
            rounding ties of a quantize with scale ``hi``), ``positive`` (floats in
            [lo, hi], lo > 0), ``var`` (a positive variance).
        lo: lower bound (see ``fill``).
        hi: upper bound.
        special: a key of :data:`SPECIALS`, or ``None``.
        p_special: fraction of elements replaced by special values.
        seed: the seed of this operand's values.
    """

    kind: str
    shape: tuple[int, ...]
    dtype: str = "f32"
    fill: str = "uniform"
    lo: float = -2.0
    hi: float = 2.0
    special: str | None = None
    p_special: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class Tol:
    """A comparison bound; see the module docstring for the families."""

    family: str = "exact"  # exact | ulp | reduce | tensor
    ulps: int = 0
    floor: float = 0.0  # ulp family: absolute floor, in units of eps
    reduction: int = 1  # reduce family: K, the number of summed terms per output
    rel: float = 0.0  # tensor family

    def describe(self) -> str:
        if self.family == "exact":
            return "bit-exact"
        if self.family == "ulp":
            return f"<= {self.ulps} ulp (or <= {self.floor:g} eps absolute)"
        if self.family == "reduce":
            return f"<= 2*K*eps*M + {self.ulps} ulp with K={self.reduction}"
        return f"<= {self.rel:g} * max(1, max|ref|)"


EXACT = Tol()


@dataclass
class FuzzCase:
    """``op(*operands, **attrs)``, its comparison bound and descriptive tags."""

    op: str
    operands: list[Operand]
    attrs: dict[str, Any] = field(default_factory=dict)
    tol: Tol = EXACT
    tags: frozenset[str] = frozenset()
    id: str = ""

    @property
    def nonfinite(self) -> bool:
        """Whether some operand holds NaN/Inf values."""
        return any(o.special in ("nonfinite", "mixed") and o.p_special > 0
                   for o in self.operands)

    def describe(self) -> str:
        """One line that reproduces the case: op, attributes, operand recipes."""
        ops = ", ".join(
            f"{o.kind}:{o.dtype}{list(o.shape)} {o.fill}[{o.lo:g},{o.hi:g}]"
            + (f" +{o.special}@{o.p_special:g}" if o.special and o.p_special else "")
            + f" seed={o.seed}" for o in self.operands)
        return f"{self.op}({ops}) {self.attrs}"


@dataclass
class Outcome:
    """The result of one case on one target."""

    case: FuzzCase
    status: str  # passed | mismatch | rejected | crashed | skipped
    detail: str = ""
    nan_lost: bool = False  # a NaN of the reference came back as a number

    @property
    def ok(self) -> bool:
        return self.status != "mismatch"


def materialize(op: Operand) -> torch.Tensor:
    """The tensor an :class:`Operand` describes (deterministic in its seed)."""
    rng = np.random.default_rng(op.seed)
    shape = op.shape
    if op.fill == "bool":
        arr: np.ndarray = rng.random(shape) < 0.5
        return torch.from_numpy(np.ascontiguousarray(arr))
    torch_dtype = DTYPES[op.dtype]
    if op.fill == "int":
        arr = rng.integers(int(op.lo), int(op.hi), size=shape, endpoint=True, dtype=np.int64)
        return torch.from_numpy(arr).to(torch_dtype)
    if op.fill == "ties":
        k = rng.integers(-int(op.lo), int(op.lo), size=shape, endpoint=True).astype(np.float64)
        arr = ((k + 0.5) * op.hi).astype(np.float32)
    else:
        arr = rng.uniform(op.lo, op.hi, size=shape).astype(np.float32)
        if op.fill == "var":
            arr = np.abs(arr) + np.float32(1e-3)
    if op.special and op.p_special > 0 and arr.size:
        values = np.asarray(SPECIALS[op.special], dtype=np.float32)
        mask = rng.random(shape) < op.p_special
        arr = np.where(mask, values[rng.integers(0, len(values), size=shape)], arr)
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    return t.to(torch_dtype)


# ----------------------------------------------------------------------- comparison
def _eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Number of representable floats between ``a`` and ``b`` (same float dtype), int64."""
    if a.dtype in (torch.float16, torch.bfloat16):  # sign | exponent | mantissa in 16 bits
        ia, ib = a.view(torch.int16).to(torch.int64), b.view(torch.int16).to(torch.int64)
        sign = 0x7FFF
    else:
        ia = a.to(torch.float32).view(torch.int32).to(torch.int64)
        ib = b.to(torch.float32).view(torch.int32).to(torch.int64)
        sign = 0x7FFFFFFF
    oa = torch.where(ia < 0, -(ia & sign), ia)
    ob = torch.where(ib < 0, -(ib & sign), ib)
    return (oa - ob).abs()


def _ulp(x: torch.Tensor) -> torch.Tensor:
    """The spacing of floats at ``|x|`` (float64)."""
    ax = x.abs()
    nxt = torch.nextafter(ax, torch.full_like(ax, math.inf))
    return (nxt.double() - ax.double()).abs()


def _first_bad(mask: torch.Tensor, ref: torch.Tensor, got: torch.Tensor) -> str:
    idx = tuple(int(i) for i in torch.nonzero(mask)[0].tolist()) if mask.dim() else ()
    return (f"{int(mask.sum())}/{mask.numel()} elements differ; first at {list(idx)}: "
            f"expected {ref[idx].item()!r}, got {got[idx].item()!r}")


def compare(case: FuzzCase, ref: Sequence[torch.Tensor], got: Sequence[Any],
            magnitude: Sequence[torch.Tensor | None] | None = None) -> Outcome:
    """Compares the target's results with the torch reference under ``case.tol``.

    Args:
        case: the case (its ``tol`` is the bound).
        ref: the torch backend's results.
        got: the target's results (torch tensors or numpy arrays).
        magnitude: per result, the op on the absolute values of its float operands
            (``reduce`` family), else ``None``.
    """
    if len(ref) != len(got):
        return Outcome(case, "mismatch", f"{len(got)} results, expected {len(ref)}")
    for j, (r, g) in enumerate(zip(ref, got, strict=True)):
        g = torch.as_tensor(np.asarray(g)) if not isinstance(g, torch.Tensor) else g
        r = r.detach()
        if tuple(g.shape) != tuple(r.shape) or g.dtype != r.dtype:
            return Outcome(case, "mismatch", f"result {j}: {g.dtype}{list(g.shape)}, "
                           f"expected {r.dtype}{list(r.shape)}")
        if not r.is_floating_point():
            bad = g != r
            if bad.any():
                return Outcome(case, "mismatch", f"result {j}: " + _first_bad(bad, r, g))
            continue
        mag = None if magnitude is None else magnitude[j]
        msg, nan_lost = _compare_float(case.tol, r, g, mag)
        if msg:
            return Outcome(case, "mismatch", f"result {j}: {msg}", nan_lost)
    return Outcome(case, "passed")


def _compare_float(tol: Tol, r: torch.Tensor, g: torch.Tensor,
                   mag: torch.Tensor | None) -> tuple[str, bool]:
    rn, gn = torch.isnan(r), torch.isnan(g)
    if not torch.equal(rn, gn):
        lost = bool((rn & ~gn).any())
        return "NaN positions differ: " + _first_bad(rn != gn, r, g), lost
    finite = ~rn
    if tol.family == "exact":
        bad = finite & (r != g)
        # -0.0 == 0.0 numerically; the sign of zero is not compared
        return (_first_bad(bad, r, g), False) if bad.any() else ("", False)
    dist = ulp_distance(r, g)
    rinf = torch.isinf(r) | torch.isinf(g)
    if tol.family == "ulp":
        eps = _eps(r.dtype)
        diff = (r.double() - g.double()).abs()
        ok = (dist <= tol.ulps) | (diff <= tol.floor * eps) | rn
        ok &= ~rinf | (dist <= max(tol.ulps, 1)) | rn
    else:
        eps = _eps(r.dtype)
        diff = (r.double() - g.double()).abs()
        if tol.family == "reduce":
            m = mag.double() if mag is not None else r.double().abs()
            bound = 2.0 * tol.reduction * eps * m + max(tol.ulps, 1) * _ulp(r)
            unbounded = ~torch.isfinite(m)
        else:
            finite_r = r.double()[torch.isfinite(r)]
            scale = max(1.0, finite_r.abs().max().item() if finite_r.numel() else 1.0)
            bound = torch.full_like(diff, tol.rel * scale)
            unbounded = torch.zeros_like(rn)
        ok = rn | (diff <= bound) | (dist == 0)
        # where the magnitude itself overflowed only exact agreement is checked
        ok |= unbounded & ~rinf & torch.isfinite(g)
        ok &= ~rinf | (r == g) | rn
    bad = ~ok
    if bad.any():
        return _first_bad(bad, r, g) + f" (bound {tol.describe()})", False
    return "", False
