"""Which kernels a build chose: the hand kernels, not TVM's generic schedules (issue 9).

For int8 ResNet-18, MobileNetV2 and BERT (tiny configs, building only: nothing runs, so
any x86 host checks both ISA families) on an AVX2 target (``mcpu=haswell``: ``vpmaddwd``)
and an AVX-512 VNNI target (``mcpu=znver4``: ``vpdpbusd``):

- every int8 convolution calls a hand kernel (the im2col GEMM of the target's ISA, or the
  depthwise kernel) and every int8 linear / dynamic-int8 linear calls the ISA's hand dense
  (:func:`slimfx.backends.tvm.kernels.kernel_calls` on the lowered module, one call per
  node), and no generic int32 ``conv2d``/``matmul`` is left but those of the ops that have
  no hand kernel yet (``qavg_pool2d``, the ``qmatmul`` attention products);
- the built model lists those kernel paths (:meth:`Compiled.kernels`), and an AVX2 build
  holds no VNNI kernel, a VNNI build no AVX2 kernel.

The kernels' numbers are checked elsewhere (the bit-exact suites, the differential fuzzer);
one AVX2 linear with out features not a multiple of 8 (padded) is run here, bit-exact.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm", reason="the TVM backend needs apache-tvm")

import slimfx  # noqa: E402
from slimfx.backends.tvm.kernels import KERNEL_PATHS, kernel_calls  # noqa: E402
from slimfx.backends.tvm.lower import lower_graph  # noqa: E402
from slimfx.backends.tvm.targets import resolve_target, target_has_feature  # noqa: E402
from slimfx.errors import DeviceError  # noqa: E402
from slimfx.ir.core import Graph  # noqa: E402

pytestmark = pytest.mark.tvm

NO_DB = "/nonexistent-slimfx-db"
_X86 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "num-cores": 2}
TARGETS: dict[str, dict[str, Any]] = {"avx2": {**_X86, "mcpu": "haswell"},
                                      "vnni": {**_X86, "mcpu": "znver4"}}
_OTHER = {"avx2": "vnni", "vnni": "avx2"}
_CONV_OPS = ("qconv1d", "qconv2d")
_LINEAR_OPS = ("qlinear", "dynamic_linear")


@functools.cache
def _model(name: str) -> Graph:
    """The int8 graph of ``name`` (traced and quantized once per session)."""
    if name in ("resnet18", "mobilenet_v2"):
        from slimfx.models import get_model

        kw = dict(width=8) if name == "resnet18" else dict(width_mult=0.25)
        model, (x,) = get_model(name, input_size=32, num_classes=10, **kw)
        gen = torch.Generator().manual_seed(0)
        calib = [(torch.randn(x.shape, generator=gen),) for _ in range(2)]
        return slimfx.quantize(slimfx.trace(model, (x,), dynamic_shapes={}), calib, "ptq-int8")
    pytest.importorskip("transformers")
    from tests.models.zoo_hf_int8 import int8_model, random_batch

    if name == "bert-dynamic":
        model, inputs = int8_model("bert")
        return slimfx.quantize(slimfx.trace(model, inputs, dynamic_shapes={}), pipeline="dynamic-int8")
    model, inputs = int8_model("bert-eager")  # static int8: qlinear + qmatmul attention
    calib = [tuple(random_batch(inputs, seed=i).values()) for i in range(2)]
    return slimfx.quantize(slimfx.trace(model, inputs, dynamic_shapes={}), calib, "ptq-int8")


def _count(g: Graph, ops: tuple[str, ...]) -> int:
    return sum(n.op.name in ops and n.inputs[1].const is not None for n in g.nodes)


def _expected(name: str, isa: str) -> tuple[set[str], set[str]]:
    """(paths that must be called, paths that conv / linear nodes may use)."""
    conv = {f"qconv_{isa}_dense", "qconv_im2col_nhwc", "qconv_depthwise_nhwc",
            "qconv_depthwise_nchw"}
    must = {"resnet18": {f"qconv_{isa}_dense", "qconv_im2col_nhwc", f"qdense_{isa}"},
            "mobilenet_v2": {f"qconv_{isa}_dense", "qconv_depthwise_nhwc", f"qdense_{isa}"},
            "bert": {f"qdense_{isa}"}, "bert-dynamic": {f"qdense_{isa}"}}[name]
    return must, conv | {f"qdense_{isa}"}


_MODELS = ("resnet18", "mobilenet_v2", "bert", "bert-dynamic")


@pytest.mark.parametrize("isa", list(TARGETS))
@pytest.mark.parametrize("name", _MODELS)
def test_int8_convs_and_linears_call_the_hand_kernels(name: str, isa: str) -> None:
    g = _model(name)
    mod = lower_graph(g, target=TARGETS[isa])
    calls = kernel_calls(mod)
    must, allowed = _expected(name, isa)
    assert must <= set(calls), calls
    assert set(calls) <= allowed, calls  # no other ISA's kernel, no fp32 kernel
    convs, linears = _count(g, _CONV_OPS), _count(g, _LINEAR_OPS)
    assert convs + linears > 0
    gemm_or_dw = sum(n for k, n in calls.items() if k != "qconv_im2col_nhwc")
    assert gemm_or_dw == convs + linears, (calls, convs, linears)  # one kernel per node
    assert calls.get(f"qdense_{isa}", 0) == linears
    # no generic int32 convolution or matmul left but those of the ops without hand
    # kernels: qavg_pool2d (a depthwise sum by ones) and qmatmul (attention products)
    lines = mod["main"].script().splitlines()
    for relax_op, ops in (("R.nn.conv2d(", ("qavg_pool2d",)), ("R.matmul(", ("qmatmul",))):
        generic = sum(relax_op in ln and 'out_dtype="int32"' in ln for ln in lines)
        assert generic == sum(n.op.name in ops for n in g.nodes), relax_op


@pytest.mark.slow
@pytest.mark.parametrize("isa", list(TARGETS))
def test_built_model_lists_its_kernels(isa: str, tmp_path) -> None:
    """``Compiled.kernels()`` of a real build (MobileNetV2: dense, depthwise and linear
    kernels) names the ISA's paths and none of the other ISA; a saved model keeps it."""
    compiled = slimfx.compile(_model("mobilenet_v2"), TARGETS[isa], tuning_db=NO_DB,
                              progress=False)
    kernels = compiled.kernels()
    paths = {k for _, k in kernels}
    assert {f"qconv_{isa}_dense", "qconv_depthwise_nhwc", f"qdense_{isa}"} <= paths, kernels
    assert paths <= set(KERNEL_PATHS)
    assert not any(_OTHER[isa] in k for k in paths), kernels  # the negative check
    path = compiled.save(tmp_path / "m.slim")
    try:
        loaded = slimfx.load(path)
    except DeviceError as e:  # e.g. znver4 code (sse4a) on an Intel VNNI host
        assert "lacks" in str(e) and TARGETS[isa]["mcpu"] in str(e)
    else:
        assert loaded.kernels() == kernels


def _host_has(feature: str) -> bool:
    return target_has_feature(tvm.target.Target(resolve_target("x86")), feature)


@pytest.mark.parametrize("isa", list(TARGETS))
def test_linear_pads_its_out_features_bit_exact(isa: str) -> None:
    """10-way int8 and dynamic-int8 linears take the ISA's hand dense (out features padded
    to 8 / 16 with zero weights, sliced off after the kernel): the same numbers as torch."""
    feature = {"avx2": "avx2", "vnni": "avx512vnni"}[isa]
    if not _host_has(feature):
        pytest.skip(f"this CPU has no {feature}: the {isa} kernel cannot run here")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(30, 10), torch.nn.ReLU(),
                                torch.nn.Linear(10, 10)).eval()
    x = torch.randn(3, 30)
    g = slimfx.trace(model, (x,))
    for q in (slimfx.quantize(g, [(torch.randn(3, 30),) for _ in range(2)], "ptq-int8"),
              slimfx.quantize(g, pipeline="dynamic-int8")):
        # runs here: the host's own target for VNNI (znver4 code may use features it lacks)
        target = "x86" if isa == "vnni" else TARGETS[isa]
        compiled = slimfx.compile(q, target, tuning_db=NO_DB, progress=False)
        assert [k for _, k in compiled.kernels()] == [f"qdense_{isa}"] * 2
        ref = slimfx.to_torch(q)
        for inp in (x, torch.randn(3, 30) * 4):
            got = torch.as_tensor(np.asarray(compiled(inp)))
            assert torch.equal(got, ref(inp).detach())
