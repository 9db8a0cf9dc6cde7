"""CUDA code generation, checked without a GPU: emitted CUDA -> cubin -> SASS.

int8 GEMM/conv kernels must use dp4a (``IDP.4A``), fp16 GEMM kernels tensor
cores (``HMMA``), for sm_80 and sm_90. The numeric test runs only on a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from device_models import Case, fp16_matmul, int8_conv_requant, int8_matmul  # noqa: E402

from slimfx.backends.tvm import cuda_check  # noqa: E402
from slimfx.errors import DeviceError  # noqa: E402

pytestmark = pytest.mark.tvm

HAVE_COMPILER = cuda_check.find_nvcc() is not None or cuda_check._has_nvrtc()
HAVE_DISASM = cuda_check.find_cuobjdump() is not None and cuda_check._find_cuda_tool("nvdisasm")
needs_tools = pytest.mark.skipif(
    not (HAVE_COMPILER and HAVE_DISASM),
    reason="needs nvcc or NVRTC, and cuobjdump + nvdisasm "
    "(`pip install nvidia-cuda-nvrtc cuda-bindings nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm`)")

CASES = {
    "int8_matmul": lambda: int8_matmul(m=128, k=256, n=128),
    "int8_conv_requant": int8_conv_requant,
    "fp16_matmul": fp16_matmul,
}


def _gemm_counts(report: dict[str, dict[str, int]], kernel_prefix: str) -> dict[str, int]:
    names = [k for k in report if k.startswith(kernel_prefix)]
    assert names, f"no {kernel_prefix}* kernel in {sorted(report)}"
    return report[names[0]]


@needs_tools
@pytest.mark.slow
@pytest.mark.parametrize("arch", cuda_check.CUDA_ARCHS)
def test_int8_uses_dp4a(arch: str) -> None:
    for name, kernel in (("int8_matmul", "matmul"), ("int8_conv_requant", "fused_conv2d")):
        report = cuda_check.cuda_sass_report(cuda_check.build_cuda(CASES[name]().mod, arch), arch)
        counts = _gemm_counts(report, kernel)
        assert counts.get("IDP.4A.S8.S8", 0) > 0, (name, counts)
        assert counts.get("IMMA", 0) == 0, (name, counts)
        # the requantize kernel is elementwise: no dot products there
        assert all(c.get("IDP", 0) == 0 for k, c in report.items() if not k.startswith(kernel))


@needs_tools
@pytest.mark.slow
@pytest.mark.parametrize("arch", cuda_check.CUDA_ARCHS)
def test_fp16_matmul_uses_tensor_cores(arch: str) -> None:
    ex = cuda_check.build_cuda(fp16_matmul().mod, arch)
    counts = _gemm_counts(cuda_check.cuda_sass_report(ex, arch), "matmul")
    assert counts.get("HMMA", 0) > 0, counts
    assert any(op.startswith("HMMA.16816") for op in counts), counts


@needs_tools
@pytest.mark.slow
@pytest.mark.skipif(not cuda_check._has_nvrtc(),
                    reason="NVRTC not installed (`pip install nvidia-cuda-nvrtc cuda-bindings`)")
def test_nvrtc_gives_the_same_kernels_as_nvcc() -> None:
    ex = cuda_check.build_cuda(CASES["int8_matmul"]().mod, "sm_80")
    nvrtc = cuda_check.cuda_sass_report(ex, "sm_80", compiler="nvrtc")
    assert _gemm_counts(nvrtc, "matmul").get("IDP.4A.S8.S8", 0) > 0
    if cuda_check.find_nvcc():
        assert sorted(nvrtc) == sorted(cuda_check.cuda_sass_report(ex, "sm_80", compiler="nvcc"))


@needs_tools
@pytest.mark.slow
@pytest.mark.parametrize("arch", cuda_check.CUDA_ARCHS)
def test_slimfx_compile_cuda_kernels(arch: str) -> None:
    """slimfx.compile(graph, "cuda:sm_XX"): int8 linear -> dp4a, fp16 linear -> HMMA."""
    import torch
    from _cases import C, I, OpCase, _q, build_graph

    import slimfx

    g, _ = build_graph([
        OpCase("qlinear", "qlinear", [I(_q(128, 256)), C(_q(128, 256, seed=4))],
               dict(x_zero_point=-128)),
        OpCase("linear_f16", "linear", [I(torch.randn(128, 256).half()),
                                        C(torch.randn(128, 256).half())]),
    ])
    report = cuda_check.cuda_sass_report(slimfx.compile(g, f"cuda:{arch}"))
    dp4a = [k for k, c in report.items() if any(op.startswith("IDP.4A") for op in c)]
    hmma = [k for k, c in report.items() if c.get("HMMA", 0) > 0]
    assert dp4a and hmma, report
    assert not set(dp4a) & set(hmma)


def test_parse_sass_counts_per_kernel() -> None:
    sass = """
        code for sm_80
                Function : matmul_kernel
        .headerflags    @"EF_CUDA_SM80 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM80)"
        /*0000*/                   MOV R1, c[0x0][0x28] ;               /* 0x00000a0000017a02 */
        /*0010*/              @!P0 IDP.4A.S8.S8 R4, R4, R5, R6 ;        /* 0x0000000504047226 */
        /*0020*/                   IDP.4A.S8.S8 R7, R8, R9, R7 ;        /* 0x0000000908077226 */
        /*0030*/                   EXIT ;                               /* 0x000000000000794d */
                Function : add_kernel
        /*0000*/                   HMMA.16816.F32 R0, R4, R8, R0 ;      /* 0x000000080400723c */
    """
    report = cuda_check.parse_sass(sass)
    assert report["matmul_kernel"]["IDP.4A.S8.S8"] == 2
    assert report["matmul_kernel"]["IDP"] == 2 and report["matmul_kernel"]["EXIT"] == 1
    assert report["add_kernel"] == {"HMMA": 1, "HMMA.16816.F32": 1}


def test_cuda_source_rejects_cpu_module() -> None:
    ex = tvm.compile(int8_matmul(m=2, k=4, n=2).mod, target="llvm")
    with pytest.raises(DeviceError, match="no CUDA code"):
        cuda_check.cuda_source(ex)


def _gpu() -> bool:
    try:
        return bool(tvm.cuda(0).exist)
    except Exception:  # no CUDA runtime library at all
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu(), reason="no CUDA GPU on this machine")
@pytest.mark.parametrize("name", sorted(CASES))
def test_runs_on_gpu(name: str) -> None:
    case: Case = CASES[name]()
    dev = tvm.cuda(0)
    arch = "sm_" + dev.compute_version.replace(".", "")
    vm = tvm.relax.VirtualMachine(cuda_check.build_cuda(case.mod, arch), dev)
    out = vm["main"](*[tvm.runtime.tensor(a, dev) for a in case.inputs])
    outs = [out.numpy()] if hasattr(out, "numpy") else [o.numpy() for o in out]
    for got, ref in zip(outs, case.expected, strict=True):
        if ref.dtype == np.float16:
            np.testing.assert_allclose(got.astype(np.float32), ref.astype(np.float32),
                                       rtol=2e-2, atol=2e-2)
        else:
            np.testing.assert_array_equal(got, ref)
