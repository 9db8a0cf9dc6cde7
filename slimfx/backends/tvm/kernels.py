"""Hand-scheduled kernels: how they are marked, and which ones a built module holds.

A lowering that writes its own scheduled PrimFunc (the x86 int8 dense and im2col kernels,
the depthwise kernels, the fp32 dense) marks it with :func:`hand_kernel`:

- ``tirx.is_scheduled``: tuning (:mod:`.tuning`) and the default CPU schedule
  (:mod:`.cpu_schedule`) leave its schedule alone;
- ``op_pattern`` 8 (opaque): FuseOps fuses nothing into it, so it reaches the build as is;
- :data:`KERNEL_ATTR` (``slimfx.kernel``): the stable name of its microkernel path, e.g.
  ``qconv_vnni_dense`` (a convolution's GEMM on ``vpdpbusd``), ``qdense_avx2`` (a linear
  on ``vpmaddwd``), ``qconv_depthwise_nhwc``. The names are listed in :data:`KERNEL_PATHS`.

:func:`kernels_of` reads the marks back from an ``IRModule`` (:func:`kernel_calls` counts
the calls of each path); ``slimfx.compile`` records
them for :meth:`slimfx.backends.tvm.compiled.Compiled.kernels`, so a test can check which
path every convolution took without timing anything. A kernel left to TVM's generic
schedules (portable lowerings, ``R.nn.conv2d``) has no mark.
"""

from __future__ import annotations

import tvm
from tvm import tirx

__all__ = ["KERNEL_ATTR", "KERNEL_PATHS", "hand_kernel", "kernels_of", "kernel_calls"]

KERNEL_ATTR = "slimfx.kernel"

# Every kernel path name, with what it is (kept in one place so that names stay stable).
KERNEL_PATHS: dict[str, str] = {
    "qconv_vnni_dense": "int8 convolution GEMM, u8 x s8 on AVX-512 VNNI vpdpbusd",
    "qconv_avx2_dense": "int8 convolution GEMM, int16 on AVX2 vpmaddwd",
    "qdense_vnni": "int8 linear / dynamic-int8 matmul, u8 x s8 on AVX-512 VNNI vpdpbusd",
    "qdense_avx2": "int8 linear / dynamic-int8 matmul, int16 on AVX2 vpmaddwd",
    "qconv_im2col_nhwc": "channels-last im2col copy feeding the int8 convolution GEMMs",
    "qconv_depthwise_nchw": "depthwise int8 convolution, NCHW, vector of output columns",
    "qconv_depthwise_nhwc": "depthwise int8 convolution, channels-last, vector of channels",
    "qconv_depthwise_plain": "depthwise int8 convolution, plain loops (degenerate extents)",
    "dense_f32_fma": "fp32 convolution GEMM / linear, AVX2 FMA register tiles",
    "im2col_f32": "fp32 im2col copy feeding dense_f32_fma",
}


def hand_kernel(func: tirx.PrimFunc, kernel: str) -> tirx.PrimFunc:
    """``func`` marked as a hand-scheduled kernel of path ``kernel`` (module docstring).

    Raises:
        ValueError: ``kernel`` is not one of :data:`KERNEL_PATHS` (add it there).
    """
    if kernel not in KERNEL_PATHS:
        raise ValueError(f"unknown kernel path {kernel!r}; known: {sorted(KERNEL_PATHS)} "
                         "(add a new one to KERNEL_PATHS)")
    return (func.with_attr("tirx.is_scheduled", True).with_attr("op_pattern", 8)
            .with_attr(KERNEL_ATTR, kernel))


def kernels_of(mod: tvm.IRModule) -> list[tuple[str, str]]:
    """``(function name, kernel path)`` of every hand kernel in ``mod``, sorted by name."""
    found = []
    for gv, func in mod.functions.items():
        if isinstance(func, tirx.PrimFunc) and func.attrs is not None \
                and KERNEL_ATTR in func.attrs:
            found.append((gv.name_hint, str(func.attrs[KERNEL_ATTR])))
    return sorted(found)


def kernel_calls(mod: tvm.IRModule) -> dict[str, int]:
    """Kernel path -> number of ``call_tir`` sites calling a kernel of that path in the
    Relax functions of ``mod`` (a kernel shared by equal layers counts once per call)."""
    path = {name: kernel for name, kernel in kernels_of(mod)}
    counts: dict[str, int] = {}
    call_tir = tvm.ir.Op.get("relax.call_tir")

    def visit(e: object) -> None:
        if isinstance(e, tvm.relax.Call) and e.op == call_tir \
                and isinstance(e.args[0], tvm.ir.GlobalVar):
            kernel = path.get(e.args[0].name_hint)
            if kernel is not None:
                counts[kernel] = counts.get(kernel, 0) + 1

    for func in mod.functions.values():
        if isinstance(func, tvm.relax.Function):
            tvm.relax.analysis.post_order_visit(func, visit)
    return dict(sorted(counts.items()))
