"""The im2col + packed-VNNI lowering of ``qconv1d``/``qconv2d`` is bit-exact with torch.

Every case is one node of a single graph (one compile), run by TVM and by the torch kernels
(``slimfx.to_torch``); the int32 accumulators (and the int8 results of the requantized
cases) must be EQUAL.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm", reason="the TVM backend needs apache-tvm")

import slimfx  # noqa: E402
from slimfx.backends.tvm import conv_int8  # noqa: E402
from slimfx.backends.tvm.lower import LowerContext, lower_graph  # noqa: E402
from slimfx.ir import Graph, TensorType  # noqa: E402

pytestmark = pytest.mark.tvm


def _q(*shape: int, seed: int, lo: int = -128, hi: int = 127,
       dtype: torch.dtype = torch.int8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi + 1, shape, generator=g).to(dtype)


# id: (x shape, weight shape, stride, padding, dilation, groups, x_zero_point, bias, x dtype)
CASES: dict[str, tuple[Any, ...]] = {
    "3x3_s1_p1_k45": ((2, 5, 9, 9), (16, 5, 3, 3), 1, 1, 1, 1, -7, True, "i8"),
    "3x3_s2_p1": ((1, 8, 10, 11), (32, 8, 3, 3), 2, 1, 1, 1, 127, True, "i8"),
    "1x1_s1": ((2, 8, 6, 5), (16, 8, 1, 1), 1, 0, 1, 1, -128, False, "i8"),
    "1x1_s2": ((1, 12, 9, 9), (16, 12, 1, 1), 2, 0, 1, 1, 3, True, "i8"),
    "7x7_s2_p3": ((1, 3, 20, 18), (16, 3, 7, 7), 2, 3, 1, 1, 8, True, "i8"),
    "3x3_dil2_p2": ((1, 4, 9, 9), (16, 4, 3, 3), 1, 2, 2, 1, -3, True, "i8"),
    "3x3_u8_zp128": ((1, 6, 7, 7), (16, 6, 3, 3), 1, 1, 1, 1, 128, True, "u8"),
    "depthwise_s1": ((1, 16, 8, 8), (16, 1, 3, 3), 1, 1, 1, 16, -5, True, "i8"),
    "depthwise_s2": ((2, 32, 9, 9), (32, 1, 3, 3), 2, 1, 1, 32, 9, False, "i8"),
    "grouped": ((1, 8, 6, 6), (16, 4, 3, 3), 1, 1, 1, 2, 1, True, "i8"),
    "oc_not_16": ((1, 4, 6, 6), (12, 4, 3, 3), 1, 1, 1, 1, -2, True, "i8"),
    "conv1d_s2_p2": ((2, 6, 13), (16, 6, 3), 2, 2, 1, 1, 4, True, "i8"),
    "conv1d_k1": ((1, 8, 7), (32, 8, 1), 1, 0, 1, 1, -1, False, "i8"),
}
# requantize with a relu clamp (qmin = out_zero_point) after these cases
RELU = {"3x3_s1_p1_k45": -20, "3x3_s2_p1": 0}


def _graph() -> tuple[Graph, list[torch.Tensor], list[str]]:
    g = Graph("qconvs")
    feeds, outs, ids = [], [], []
    for i, (cid, (xs, ws, s, p, d, groups, zp, bias, dt)) in enumerate(CASES.items()):
        nd = len(xs) - 2
        if dt == "u8":
            x = _q(*xs, seed=100 + i, lo=0, hi=255, dtype=torch.uint8)
        else:
            x = _q(*xs, seed=100 + i)
        w = _q(*ws, seed=200 + i)
        vals = [g.add_input(f"x{i}", TensorType.of(x)), g.add_constant(w, f"w{i}")]
        if bias:
            vals.append(g.add_constant(_q(ws[0], seed=300 + i, lo=-40000, hi=40000,
                                          dtype=torch.int32), f"b{i}"))
        op = "qconv1d" if nd == 1 else "qconv2d"
        y = g.add(op, vals, dict(stride=[s] * nd, padding=[p] * nd, dilation=[d] * nd,
                                 groups=groups, x_zero_point=zp), name=cid)
        feeds.append(x)
        outs.append(y)
        ids.append(cid)
        if cid in RELU:
            oz = RELU[cid]
            r = g.add("requantize", [y], dict(multiplier=[1518500250] * ws[0],
                                             shift=[42] * ws[0], axis=1, out_zero_point=oz,
                                             qmin=oz, qmax=127, out_dtype="i8"),
                      name=f"{cid}_rq")
            outs.append(r)
            ids.append(f"{cid}+relu")
    g.set_outputs(outs)
    g.verify()
    return g, feeds, ids


def _host_has(feature: str) -> bool:
    from slimfx.backends.tvm.targets import resolve_target, target_has_feature

    return target_has_feature(tvm.target.Target(resolve_target("x86")), feature)


# The x86 kernels: the host's own target (VNNI where the CPU has it), and an AVX2 target
# (the vpmaddwd kernel) that runs on any AVX2 host, so both paths are checked on VNNI hosts.
KERNELS = {"host": "x86"}
if _host_has("avx512vnni"):
    KERNELS["avx2"] = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell",
                       "num-cores": 2}


@pytest.fixture(scope="module", params=list(KERNELS))
def results(request) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    g, feeds, ids = _graph()
    ref = slimfx.to_torch(g)(*feeds)
    got = slimfx.compile(g, KERNELS[request.param], tuning_db="/nonexistent-slimfx-db",
                         progress=False)(*feeds)
    return {cid: (np.asarray(r), np.asarray(o)) for cid, r, o in zip(ids, ref, got, strict=True)}


@pytest.mark.parametrize("case", [*CASES, *(f"{c}+relu" for c in RELU)])
def test_qconv_bit_exact(results, case: str) -> None:
    ref, got = results[case]
    assert got.dtype == ref.dtype and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)
    if case.endswith("+relu"):  # the clamp really acts: some outputs sit at the zero point
        assert (ref == RELU[case.removesuffix("+relu")]).any() and (ref > -20).any()
    else:
        assert np.abs(ref).max() > 1000  # a real accumulation, not zeros


def test_dense_convs_use_the_packed_vnni_form() -> None:
    """Groups-1 convs with OC % 16 == 0 lower to im2col + packed dense, others do not."""
    g, _, _ = _graph()
    text = lower_graph(g).script()
    packed = sum(1 for c in CASES.values() if c[5] == 1 and c[1][0] % 16 == 0)
    assert text.count("qconv_dense_packed") >= packed
    assert text.count("R.nn.conv2d(") == 4  # depthwise x2, grouped, oc_not_16
    portable = LowerContext(tvm.relax.BlockBuilder())  # no target
    assert conv_int8.packable(portable, "int8", np.zeros((32, 3, 3, 3), np.int8), 1)
    assert not conv_int8.packable(portable, "int8", np.zeros((32, 1, 3, 3), np.int8), 32)
    assert not conv_int8.packable(portable, "int8", np.zeros((24, 3, 3, 3), np.int8), 1)


def _x86_vnni():
    from slimfx.backends.tvm.targets import resolve_target

    target = tvm.target.Target(resolve_target("x86"))
    if conv_int8.x86_isa(LowerContext(tvm.relax.BlockBuilder(), target)) != "vnni":
        pytest.skip("this CPU has no AVX-512 VNNI")
    return target


def test_x86_vnni_lowering_is_hand_scheduled_and_not_tuned() -> None:
    """Under an x86 VNNI target the dense (and the im2col) are scheduled, opaque PrimFuncs,
    the dense calling vpdpbusd, and tuning leaves them alone."""
    from slimfx.backends.tvm import tuning

    target = _x86_vnni()
    g = Graph("one")
    x = g.add_input("x", TensorType((1, 8, 6, 6), "i8"))
    w = g.add_constant(_q(32, 8, 3, 3, seed=1), "w")
    g.set_outputs([g.add("qconv2d", [x, w], dict(stride=[1, 1], padding=[1, 1],
                                                  dilation=[1, 1], x_zero_point=3))])
    mod = lower_graph(g, target=target)
    dense = [gv for gv in mod.functions if gv.name_hint.startswith("qconv_vnni_dense")]
    assert len(dense) == 1
    func = mod[dense[0]]
    assert func.attrs["tirx.is_scheduled"] and int(func.attrs["op_pattern"]) == 8
    assert "vpdpbusd" in func.script()
    with tvm.transform.PassContext(opt_level=3):
        prepared = tuning.prepare(mod, target)
    from tvm.s_tir.meta_schedule.relax_integration import extract_tasks

    tasks = extract_tasks(prepared, target)
    assert any(t.task_name.startswith("qconv_vnni_dense") for t in tasks)
    # the channels-last im2col is hand-scheduled too (im2col_nhwc)
    im2col = [t for t in tasks if "im2col" in t.task_name]
    assert im2col and all(tuning._is_scheduled(t) for t in im2col)


def test_x86_avx2_lowering_is_hand_scheduled_im2col_and_pmaddwd() -> None:
    """Under an AVX2 target without VNNI: a hand-scheduled int16 im2col (6-D, no padding
    rows) and a hand-scheduled dense calling vpmaddwd; neither is fused nor tuned."""
    if not _host_has("avx2"):
        pytest.skip("this CPU has no AVX2")
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                                "mcpu": "haswell"})
    g = Graph("one")
    x = g.add_input("x", TensorType((1, 3, 7, 7), "i8"))
    w = g.add_constant(_q(16, 3, 3, 3, seed=1), "w")
    g.set_outputs([g.add("qconv2d", [x, w], dict(stride=[1, 1], padding=[1, 1],
                                                  dilation=[1, 1], x_zero_point=3))])
    mod = lower_graph(g, target=target)
    funcs = {gv.name_hint: mod[gv] for gv in mod.functions
             if isinstance(mod[gv], tvm.tirx.PrimFunc)}
    (dense,) = [f for n, f in funcs.items() if n.startswith("qconv_avx2_dense_49x30x16")]
    (im2col,) = [f for n, f in funcs.items() if n.startswith("qconv_im2col_nhwc_rows")]
    for f in (dense, im2col):
        assert f.attrs["tirx.is_scheduled"] and int(f.attrs["op_pattern"]) == 8
    assert "llvm.x86.avx2.pmadd.wd" in dense.script()
    # C = 3 with a 3x3 kernel: each (pixel, kh) row is KW*C = 9 int16 taps, padded to 10 so
    # that K = 3 * 10 = 30 is even (the padding columns meet zero weights)
    assert "(1, 7, 7, 3, 10)" in im2col.script()


@pytest.mark.parametrize(("m", "blocks", "tile"), [
    (3136, 8, (2, 4)),  # ResNet layer1: 8 accumulators, 2 rows x 32 channels
    (49, 64, (7, 1)),   # a 7x7 map: 7 rows
    (13, 2, (1, 2)),    # a prime row count
    (12, 8, (3, 4)),    # 12 accumulators where the shapes allow
])
def test_dense_tiles_fit_the_registers(m: int, blocks: int, tile: tuple[int, int]) -> None:
    mi, nb = conv_int8.dense_tiles(m, blocks)
    assert (mi, nb) == tile
    assert m % mi == 0 and blocks % nb == 0 and mi * nb <= 12


def test_constant_operands_use_the_portable_form() -> None:
    """A dynamic int8 LSTM starts from a constant zero state: its first projections are
    folded at build time on a generic CPU, where the AVX2/VNNI kernels cannot compile (LLVM
    aborted the whole process). They must take the portable form; results stay exact."""
    from slimfx.models import get_model

    model, (x,) = get_model("lstm", input_size=5, num_features=8, hidden_size=16,
                            num_layers=2, num_classes=3)
    g = slimfx.quantize(slimfx.trace(model, (x,)), pipeline="dynamic-int8")
    out = slimfx.compile(g, "x86", tuning_db="/nonexistent-slimfx-db", progress=False)(x)
    np.testing.assert_allclose(np.asarray(out), slimfx.to_torch(g)(x).detach().numpy(),
                               rtol=1e-5, atol=1e-6)


def test_vnni_kernel_builds_on_any_host() -> None:
    """The VNNI dense cannot run without AVX-512 VNNI, but its schedule and code generation
    are checked everywhere: built for a cascadelake target, its assembly calls vpdpbusd."""
    func = conv_int8.vnni_dense_func(8, 64, 32).with_attr("global_symbol", "vnni_dense")
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                                "mcpu": "cascadelake"})
    lib = tvm.compile(tvm.IRModule({"vnni_dense": func}), target=target)
    assert "vpdpbusd" in lib.mod.inspect_source("asm")


def test_linear_layers_with_odd_inputs_are_exact() -> None:
    """qlinear and dynamic int8 linear with an odd number of inputs (the AVX2 kernel pads K
    with a zero column): the same integers / floats as the torch reference."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(7, 16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 8)).eval()
    x = torch.randn(3, 7)
    g = slimfx.trace(model, (x,))
    g8 = slimfx.quantize(g, [(torch.randn(3, 7),) for _ in range(3)], "ptq-int8")
    assert [n.op.name for n in g8.nodes].count("qlinear") == 2
    c8 = slimfx.compile(g8, "x86", tuning_db="/nonexistent-slimfx-db", progress=False)
    assert torch.equal(torch.as_tensor(c8(x)), slimfx.to_torch(g8)(x))
    gd = slimfx.quantize(g, pipeline="dynamic-int8")
    cd = slimfx.compile(gd, "x86", tuning_db="/nonexistent-slimfx-db", progress=False)
    assert torch.equal(torch.as_tensor(cd(x)), slimfx.to_torch(gd)(x).detach())
