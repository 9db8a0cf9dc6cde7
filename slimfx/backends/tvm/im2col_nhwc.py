"""Channels-last im2col for the x86 int8 convolutions (VNNI and AVX2 dense kernels), exact.

The generic im2col of :func:`slimfx.backends.tvm.conv_int8.packed_conv` orders the reduction
``k = (c, kh, kw)`` on the NCHW input, so every element costs index divisions and a bounds
test. Here the reduction is ordered ``k = (kh, kw, c)`` and the input is first written
channels-last, shifted and padded:

1. ``prep``: ``xp[n, a, b, c] = f(x[n, c, a*s - p, b*s - p])`` inside the image and
   ``fill`` outside it (and for padding channels). ``f(v) = v + 128`` as uint8 with
   ``fill = x_zero_point + 128`` for the VNNI kernel (``f(v) = v``, ``fill = x_zero_point``
   for a uint8 input), ``f(v) = v - x_zero_point`` as int16 with ``fill = 0`` for the AVX2
   kernel: in both cases a tap outside the image contributes exactly 0 after the zero-point
   correction, as in the torch kernel's zero padding of ``x - x_zero_point``. ``prep`` reads
   each input element at most once, so it is left injective: FuseOps fuses the producer's
   requantize chain (and the NHWC -> NCHW transpose of the previous convolution) into it,
   and the previous layer's NCHW tensor is never re-read per tap.
2. For a 1x1 convolution ``prep`` samples the strided grid directly and *is* the GEMM's
   ``A = [N*OH*OW, Cq]`` (a free reshape): no im2col at all.
3. Otherwise ``im2col`` (hand-scheduled, opaque): with a unit width dilation each
   ``(output pixel, kh)`` row is ONE contiguous run of ``KW*C`` elements of ``xp`` viewed as
   ``[N, Hp, Wp*C]``: ``col[n, y, x, kh, j] = xp3[n, y*sh + kh*dh, x*sw*C + j]``, a plain
   copy (parallel over ``(n, y)``, vectorized over ``j``). ``j`` runs to ``Lp >= KW*C`` so
   that ``K = KH*Lp`` is a multiple of the kernel's reduction step; the extra elements read
   real (finite) neighbours of ``xp`` (``xp`` is widened so they stay in bounds) and meet
   zero weight columns, so they add exactly 0. With a width dilation the copy is 6-D
   ``[N, OH, OW, KH, KW, Cq]`` (contiguous runs of ``Cq`` channels).

The weight is reordered to the same ``k`` at compile time (zero columns where ``col`` has
padding), so ``sum_k col * w`` is the same integer sum in another order: exact in int32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import te, tirx

from slimfx.backends.tvm.kernels import hand_kernel

__all__ = ["NhwcPlan", "plan", "prep_te", "im2col_func", "reorder_weight"]


def _ceil_to(v: int, q: int) -> int:
    return -(-v // q) * q


@dataclass(frozen=True)
class NhwcPlan:
    """The shapes of one channels-last int8 convolution (see the module docstring).

    ``mode``: ``"1x1"`` (``prep`` is the GEMM input), ``"rows"`` (unit width dilation: one
    contiguous run per ``(pixel, kh)``) or ``"taps"`` (one run of ``cq`` channels per tap).
    """

    n: int
    c: int
    h: int
    w: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    oh: int
    ow: int
    mode: str
    cq: int          # channels of ``xp`` (C, or C padded so that K is a multiple of q)
    lp: int          # "rows": elements per (pixel, kh) row, >= KW*C
    hp: int          # rows of ``xp`` ("1x1": OH)
    wp: int          # columns of ``xp`` ("1x1": OW)
    kp: int          # the GEMM's reduction length

    @property
    def m(self) -> int:
        return self.n * self.oh * self.ow


def plan(x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: tuple[int, int],
         padding: tuple[int, int], dilation: tuple[int, int], q: int) -> NhwcPlan:
    """The layout of a 2-D conv of ``x_shape`` (NCHW) by ``w_shape`` (OIHW); ``K % q == 0``."""
    n, c, h, w = x_shape
    _, _, kh, kw = w_shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if kh == kw == 1:
        cq = _ceil_to(c, q)
        return NhwcPlan(n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, "1x1", cq, cq,
                        oh, ow, cq)
    hp = h + 2 * ph
    if dw == 1:
        lp = kw * c
        while (kh * lp) % q:
            lp += 1
        wp = max(w + 2 * pw, (ow - 1) * sw + -(-lp // c))
        return NhwcPlan(n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, "rows", c, lp,
                        hp, wp, kh * lp)
    cq = c
    while (kh * kw * cq) % q:
        cq += 1
    return NhwcPlan(n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, "taps", cq, cq,
                    hp, w + 2 * pw, kh * kw * cq)


def prep_te(xt: te.Tensor, p: NhwcPlan, out_dtype: str, shift: int, fill: int,
            channels_last: bool = False) -> te.Tensor:
    """``xp[n, a, b, c] = cast(x[n, c, hi, wi] + shift)`` inside the image, ``fill`` outside
    (``hi = a*sh - ph``, ``wi = b*sw - pw`` for "1x1"; ``a - ph``, ``b - pw`` otherwise).

    ``shift`` is added in int16 (``+128`` maps int8 onto uint8, ``-x_zero_point`` centres the
    int16 operand of the AVX2 kernel); the value always fits ``out_dtype``. With
    ``channels_last`` the input is the same tensor in NHWC (``x[n, hi, wi, c]``).
    """
    s1, s2 = (p.sh, p.sw) if p.mode == "1x1" else (1, 1)

    def body(b_, a, bb, ci):
        hi = a * s1 - p.ph
        wi = bb * s2 - p.pw
        v = xt[b_, hi, wi, ci] if channels_last else xt[b_, ci, hi, wi]
        if shift:
            v = v.astype("int16") + tirx.const(shift, "int16")
        v = v.astype(out_dtype)
        conds = [hi >= 0, hi < p.h, wi >= 0, wi < p.w]
        if p.cq != p.c:
            conds.append(ci < p.c)
        return tirx.if_then_else(tirx.all(*conds), v, tirx.const(fill, out_dtype))

    return te.compute((p.n, p.hp, p.wp, p.cq), body, name="qconv_nhwc")


def _vector_split(extent: int, elem_bytes: int) -> int:
    """The widest vector (<= 64 bytes) whose lane count divides ``extent`` (1 if none)."""
    for lanes in (64 // elem_bytes, 32 // elem_bytes, 16 // elem_bytes, 8 // elem_bytes, 4):
        if lanes >= 2 and extent % lanes == 0:
            return lanes
    return 1


def im2col_func(p: NhwcPlan, dtype: str) -> tirx.PrimFunc:
    """The hand-scheduled copy from ``xp`` to ``col`` ("rows" or "taps" plans).

    "rows": input ``xp3 [N, Hp, Wp*C]``, output ``[N, OH, OW, KH, Lp]``; "taps": input
    ``xp [N, Hp, Wp, Cq]``, output ``[N, OH, OW, KH, KW, Cq]``. Both are viewed as the
    ``[N*OH*OW, Kp]`` GEMM input by a free reshape. Parallel over ``(n, oh)``, vectorized
    over the contiguous run; marked ``tirx.is_scheduled`` and opaque (``op_pattern`` 8) so
    that FuseOps does not fuse a producer into it (which would recompute it once per tap).
    """
    if p.mode == "rows":
        xt = te.placeholder((p.n, p.hp, p.wp * p.c), dtype, name="XP")
        col = te.compute((p.n, p.oh, p.ow, p.kh, p.lp), lambda b_, y, xx, r, j: xt[
            b_, y * p.sh + r * p.dh, xx * (p.sw * p.c) + j], name="qconv_im2col_rows")
    elif p.mode == "taps":
        xt = te.placeholder((p.n, p.hp, p.wp, p.cq), dtype, name="XP")
        col = te.compute((p.n, p.oh, p.ow, p.kh, p.kw, p.cq), lambda b_, y, xx, r, s_, ci: xt[
            b_, y * p.sh + r * p.dh, xx * p.sw + s_ * p.dw, ci], name="qconv_im2col_taps")
    else:
        raise ValueError(f"a {p.mode} plan has no im2col")
    sch = tvm.s_tir.Schedule(te.create_prim_func([xt, col]))
    blk = sch.get_sblock(col.op.name)
    loops = sch.get_loops(blk)
    sch.parallel(sch.fuse(loops[0], loops[1]))
    lanes = _vector_split(int(col.shape[-1]), np.dtype(dtype).itemsize)
    if lanes > 1:
        _, inner = sch.split(loops[-1], [None, lanes])
        sch.vectorize(inner)
    return hand_kernel(sch.mod["main"], "qconv_im2col_nhwc")


def reorder_weight(w: np.ndarray, p: NhwcPlan) -> np.ndarray:
    """``w [OC, C, KH, KW]`` as ``[OC, Kp]`` in the plan's ``k`` order, zeros where the
    GEMM input holds padding (extra channels, the tail of a row)."""
    oc = w.shape[0]
    wt = np.ascontiguousarray(w.transpose(0, 2, 3, 1))  # [OC, KH, KW, C]
    if p.mode == "rows":
        out = np.zeros((oc, p.kh, p.lp), dtype=w.dtype)
        out[:, :, :p.kw * p.c] = wt.reshape(oc, p.kh, p.kw * p.c)
    else:
        out = np.zeros((oc, p.kh, p.kw, p.cq), dtype=w.dtype)
        out[..., :p.c] = wt
    return out.reshape(oc, p.kp)
