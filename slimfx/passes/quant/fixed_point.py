"""Fixed-point multipliers for requantization (DESIGN.md §4).

A positive real multiplier ``M`` becomes ``(M0, n)`` with ``M0`` an int32 in
``[2**30, 2**31)`` and ``M ~= M0 * 2**-n``: ``frac, e = frexp(M)`` (``M = frac *
2**e``, ``frac`` in ``[0.5, 1)``), ``M0 = round(frac * 2**31)``, ``n = 31 - e``. The
relative error of the multiplier is at most ``2**-31``. The shift is capped at 62
(``M0`` shrinks, keeping ``M0 * 2**-n`` as close to ``M`` as int64 allows) so that
``v * M0 + 2**(n-1)`` never overflows int64 for |v| < 2**31. Multipliers of
``2**31`` or more cannot be represented (``n`` would be negative) and raise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from slimfx.errors import QuantizationError

__all__ = ["quantize_multiplier", "quantize_multipliers_shared", "MAX_SHIFT"]

MAX_SHIFT = 62


def quantize_multiplier(m: float, *, what: str = "multiplier") -> tuple[int, int]:
    """``(M0, n)`` with ``M0 * 2**-n ~= m`` (see the module docstring).

    Raises:
        QuantizationError: ``m`` is not finite and positive, or too large.
    """
    if not (math.isfinite(m) and m > 0):
        raise QuantizationError(f"{what}: requantization multiplier {m!r} must be finite and "
                                "positive; check the scales of the layer")
    frac, e = math.frexp(m)
    m0 = round(frac * (1 << 31))
    if m0 == 1 << 31:
        m0 //= 2
        e += 1
    n = 31 - e
    if n < 0:
        raise QuantizationError(f"{what}: multiplier {m:g} >= 2**31 cannot be represented; the "
                                "output scale is far smaller than the input scales")
    if n > MAX_SHIFT:
        m0 = round(m * 2.0 ** MAX_SHIFT)
        n = MAX_SHIFT
    return m0, n


def quantize_multipliers_shared(ms: Sequence[float], *, what: str = "multiplier"
                                ) -> tuple[list[int], int]:
    """Several multipliers with one shared shift, fixed by the largest one.

    Used by ``qadd``: ``M_i0 = round(M_i * 2**n)`` where ``n`` is the shift of
    ``max(ms)``; the largest ``M_i0`` lies in ``[2**30, 2**31]``.
    """
    _, n = quantize_multiplier(max(ms), what=what)
    for m in ms:
        quantize_multiplier(m, what=what)  # checks each one is representable
    return [round(m * 2.0 ** n) for m in ms], n
