"""The channels-last im2col (``slimfx/backends/tvm/im2col_nhwc.py``) is bit-exact with torch.

Every case is one ``qconv2d``/``qconv1d`` node of a single graph (one compile per ISA), run
by TVM and by the torch kernels (``slimfx.to_torch``); the int32 accumulators must be EQUAL.
Both x86 kernels are checked: the host's own target (VNNI where the CPU has it) and an AVX2
target (``haswell``: vpmaddwd, no VNNI) that runs on any AVX2 host, Intel or AMD (``znver3``
needs AMD's sse4a). A second test checks that ResNet-18's convolutions really take the hand-scheduled kernels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm", reason="the TVM backend needs apache-tvm")

import slimfx  # noqa: E402
from slimfx.backends.tvm import im2col_nhwc  # noqa: E402
from slimfx.backends.tvm.lower import lower_graph  # noqa: E402
from slimfx.ir import Graph, TensorType  # noqa: E402

pytestmark = pytest.mark.tvm

_DB = "/nonexistent-slimfx-db"


def _q(*shape: int, seed: int, lo: int = -128, hi: int = 127,
       dtype: torch.dtype = torch.int8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi + 1, shape, generator=g).to(dtype)


# id: (x shape, weight shape, stride, padding, dilation, x_zero_point, x dtype)
CASES: dict[str, tuple[Any, ...]] = {
    "1x1_s1_zp-128": ((1, 16, 5, 7), (32, 16, 1, 1), (1, 1), (0, 0), (1, 1), -128, "i8"),
    "1x1_s2_oddC_zp127": ((2, 7, 9, 8), (16, 7, 1, 1), (2, 2), (0, 0), (1, 1), 127, "i8"),
    "1x1_pad1_C1": ((1, 1, 4, 5), (16, 1, 1, 1), (1, 1), (1, 1), (1, 1), 5, "i8"),
    "7x7_s2_p3_C3": ((1, 3, 23, 20), (16, 3, 7, 7), (2, 2), (3, 3), (1, 1), -9, "i8"),
    "3x3_C1_zp0": ((1, 1, 8, 9), (16, 1, 3, 3), (1, 1), (1, 1), (1, 1), 0, "i8"),
    "3x3_oddC5_batch2": ((2, 5, 7, 6), (48, 5, 3, 3), (1, 1), (1, 1), (1, 1), -128, "i8"),
    "3x3_s2_C64": ((1, 64, 9, 9), (32, 64, 3, 3), (2, 2), (1, 1), (1, 1), 127, "i8"),
    "3x3_dilh2": ((1, 6, 9, 9), (16, 6, 3, 3), (1, 1), (2, 1), (2, 1), 3, "i8"),
    "3x3_dilw2_oddC": ((1, 3, 8, 10), (16, 3, 3, 3), (1, 1), (1, 2), (1, 2), -4, "i8"),
    "5x3_asym_s2x1": ((2, 4, 11, 9), (16, 4, 5, 3), (2, 1), (2, 0), (1, 1), 1, "i8"),
    "3x3_u8_zp0": ((1, 8, 6, 6), (16, 8, 3, 3), (1, 1), (1, 1), (1, 1), 0, "u8"),
    "3x3_u8_zp255": ((1, 5, 6, 7), (16, 5, 3, 3), (1, 1), (1, 1), (1, 1), 255, "u8"),
    "1x1_u8_zp128": ((1, 12, 4, 4), (16, 12, 1, 1), (1, 1), (0, 0), (1, 1), 128, "u8"),
    "oc24_direct": ((1, 4, 6, 6), (24, 4, 3, 3), (1, 1), (1, 1), (1, 1), -2, "i8"),
    "conv1d_k5_s2": ((2, 3, 17), (16, 3, 5), (2,), (2,), (1,), 7, "i8"),
}


def _graph() -> tuple[Graph, list[torch.Tensor], list[str]]:
    g = Graph("qconvs_nhwc")
    feeds, outs = [], []
    for i, (cid, (xs, ws, s, p, d, zp, dt)) in enumerate(CASES.items()):
        if dt == "u8":
            x = _q(*xs, seed=100 + i, lo=0, hi=255, dtype=torch.uint8)
        else:
            x = _q(*xs, seed=100 + i)
        vals = [g.add_input(f"x{i}", TensorType.of(x)), g.add_constant(_q(*ws, seed=200 + i),
                                                                      f"w{i}")]
        if i % 2 == 0:
            vals.append(g.add_constant(_q(ws[0], seed=300 + i, lo=-40000, hi=40000,
                                          dtype=torch.int32), f"b{i}"))
        op = "qconv1d" if len(xs) == 3 else "qconv2d"
        outs.append(g.add(op, vals, dict(stride=list(s), padding=list(p), dilation=list(d),
                                         groups=1, x_zero_point=zp), name=cid))
        feeds.append(x)
    g.set_outputs(outs)
    g.verify()
    return g, feeds, list(CASES)


def _host_has(feature: str) -> bool:
    from slimfx.backends.tvm.targets import resolve_target, target_has_feature

    return target_has_feature(tvm.target.Target(resolve_target("x86")), feature)


_AVX2 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell", "num-cores": 2}
TARGETS: dict[str, Any] = {"host": "x86"}
if _host_has("avx512vnni"):
    TARGETS["avx2"] = _AVX2


@pytest.fixture(scope="module", params=list(TARGETS))
def results(request) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if not _host_has("avx2"):
        pytest.skip("this CPU has no AVX2")
    g, feeds, ids = _graph()
    ref = slimfx.to_torch(g)(*feeds)
    got = slimfx.compile(g, TARGETS[request.param], tuning_db=_DB, progress=False)(*feeds)
    return {cid: (np.asarray(r), np.asarray(o)) for cid, r, o in zip(ids, ref, got, strict=True)}


@pytest.mark.parametrize("case", list(CASES))
def test_nhwc_im2col_conv_bit_exact(results, case: str) -> None:
    ref, got = results[case]
    assert got.dtype == ref.dtype == np.int32 and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)
    assert np.abs(ref).max() > 100  # a real accumulation, not zeros


@pytest.mark.parametrize(("xs", "ws", "s", "p", "d", "q", "mode", "kp"), [
    ((1, 64, 56, 56), (64, 64, 3, 3), (1, 1), (1, 1), (1, 1), 4, "rows", 576),
    ((1, 3, 224, 224), (64, 3, 7, 7), (2, 2), (3, 3), (1, 1), 4, "rows", 168),
    ((1, 3, 224, 224), (64, 3, 7, 7), (2, 2), (3, 3), (1, 1), 2, "rows", 154),
    ((1, 64, 56, 56), (128, 64, 1, 1), (2, 2), (0, 0), (1, 1), 4, "1x1", 64),
    ((1, 5, 8, 8), (16, 5, 1, 1), (1, 1), (0, 0), (1, 1), 4, "1x1", 8),
    ((1, 3, 8, 8), (16, 3, 3, 3), (1, 1), (2, 2), (2, 2), 4, "taps", 36),
])
def test_plan_layouts(xs, ws, s, p, d, q, mode, kp) -> None:
    """The reduction is ordered (kh, kw, c) with K padded to the kernel's step ``q``; the
    reordered weight is the torch weight with zero columns only where ``col`` pads."""
    pl = im2col_nhwc.plan(xs, ws, s, p, d, q)
    assert (pl.mode, pl.kp) == (mode, kp) and pl.kp % q == 0
    w = np.arange(np.prod(ws), dtype=np.int64).reshape(ws) % 251 - 125
    w2 = im2col_nhwc.reorder_weight(w, pl)
    assert w2.shape == (ws[0], kp)
    np.testing.assert_array_equal(np.sort(w2[w2 != 0]), np.sort(w[w != 0]))
    if mode == "rows":  # the last element a row reads stays inside the widened xp
        assert (pl.ow - 1) * pl.sw * pl.c + pl.lp <= pl.wp * pl.c


@pytest.fixture(scope="module")
def resnet18_int8() -> Graph:
    from slimfx.models import get_model

    model, (x,) = get_model("resnet18", input_size=32, num_classes=10, width=16)
    return slimfx.quantize(slimfx.trace(model, (x,)), [(torch.randn_like(x),)], "ptq-int8")


@pytest.mark.parametrize("target", list(TARGETS))
def test_resnet18_convs_take_the_hand_kernels(resnet18_int8: Graph, target: str) -> None:
    """Every dense conv of an int8 ResNet-18 lowers to the channels-last pack (fused with the
    producer's requantize), the hand-scheduled im2col (3x3/7x7 only) and the hand-scheduled
    dense; no generic im2col is left."""
    if not _host_has("avx2"):
        pytest.skip("this CPU has no AVX2")
    from slimfx.backends.tvm import tuning
    from slimfx.backends.tvm.targets import resolve_target
    g = resnet18_int8
    tgt = tvm.target.Target(resolve_target(TARGETS[target]))
    mod = tuning.prepare(lower_graph(g, target=tgt), tgt)
    names = [gv.name_hint for gv in mod.functions if isinstance(mod[gv], tvm.tirx.PrimFunc)]
    kind = "vnni" if target == "host" and _host_has("avx512vnni") else "avx2"
    convs = [n for n in g.nodes if n.op.name == "qconv2d"]
    assert len(convs) == 20
    dense = [n for n in names if n.startswith(f"qconv_{kind}_dense")]
    im2col = [n for n in names if "im2col" in n]
    assert len(dense) >= 5
    main = mod["main"].script()
    assert main.count(f"R.call_tir(qconv_{kind}_dense") == len(convs)  # one dense per conv
    assert im2col and all(n.startswith("qconv_im2col_nhwc_rows") for n in im2col)
    assert any("qconv_nhwc_pack" in n for n in names)
    for n in im2col + dense:
        func = mod[mod.get_global_var(n)]
        assert func.attrs["tirx.is_scheduled"] and int(func.attrs["op_pattern"]) == 8
    assert "im2col_u8" not in mod.script()  # the generic im2col's block


def test_linears_use_the_vnni_kernel_on_vnni_targets() -> None:
    """Dynamic int8 and static int8 linears take the hand-scheduled vpdpbusd kernel (not the
    AVX2 vpmaddwd one) on a VNNI target, K not a multiple of 4 included; results exact."""
    if not _host_has("avx512vnni"):
        pytest.skip("this CPU has no AVX-512 VNNI")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(30, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 16)).eval()
    x = torch.randn(5, 30)
    g = slimfx.trace(model, (x,), dynamic_shapes={})
    for q in (slimfx.quantize(g, pipeline="dynamic-int8"),
              slimfx.quantize(g, [(torch.randn(5, 30),) for _ in range(2)], "ptq-int8")):
        names = [gv.name_hint for gv in lower_graph(q, target="x86").functions]
        assert sum(n.startswith("qdense_vnni_") for n in names) == 2, names
        assert not any(n.startswith("qdense_avx2") for n in names)
        got = slimfx.compile(q, "x86", tuning_db=_DB, progress=False)(x)
        assert torch.equal(torch.as_tensor(np.asarray(got)), slimfx.to_torch(q)(x).detach())
