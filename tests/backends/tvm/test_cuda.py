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


def _se_model(n_out: int, batch: int):
    """An int8 CNN with a squeeze-excite 1x1 conv on a 1x1 map and a Linear(16, n_out)
    head: at batch 1 both are one-row int8 GEMMs."""
    import torch

    import slimfx

    class SE(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.se = torch.nn.Conv2d(16, 16, 1)
            self.fc = torch.nn.Linear(16, n_out)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.c1(x))
            x = x * torch.sigmoid(self.se(torch.nn.functional.adaptive_avg_pool2d(x, 1)))
            return self.fc(torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))

    gen = torch.Generator().manual_seed(n_out * 10 + batch)
    torch.manual_seed(n_out)
    x = torch.randn(batch, 3, 8, 8, generator=gen)
    data = [(torch.randn(batch, 3, 8, 8, generator=gen),) for _ in range(4)]
    return slimfx.quantize(slimfx.trace(SE().eval(), (x,)), data), x


@pytest.mark.parametrize(("n_out", "batch"), [(10, 1), (16, 1), (33, 3)])
def test_cuda_int8_lowering_is_exact(n_out: int, batch: int) -> None:
    """The int8 program lowered for CUDA (one-row GEMMs padded to two rows, N padded to
    16, K to 4, all sliced off again) computes the torch reference's numbers exactly: the
    same Relax module, built for the CPU here since no GPU is needed to check its values."""
    import slimfx
    from slimfx.backends.tvm.lower import lower_graph

    q, x = _se_model(n_out, batch)
    mod = lower_graph(q, target={"kind": "cuda", "arch": "sm_80"})
    vm = tvm.relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x.numpy())).numpy()
    np.testing.assert_array_equal(got, slimfx.to_torch(q)(x).detach().numpy())


@needs_tools
@pytest.mark.slow
@pytest.mark.parametrize("arch", cuda_check.CUDA_ARCHS)
def test_batch1_int8_linear_and_se_conv_compile_to_dp4a(arch: str) -> None:
    """Batch 1 with a Linear(16, 10) and a 1x1 conv on a 1x1 map: once a build failure
    (dlight's GEMV rule on the packed weight), and odd N fell to a matmul without dp4a."""
    import slimfx

    q, _ = _se_model(10, 1)
    report = cuda_check.cuda_sass_report(slimfx.compile(q, f"cuda:{arch}"))
    gemms = {k: c for k, c in report.items() if "dense_packed" in k}
    assert any("qdense" in k for k in gemms) and any("qconv" in k for k in gemms), report
    assert all(c.get("IDP", 0) > 0 for c in gemms.values()), gemms


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
