"""meta-schedule tuning: in-process builder/runner, database on disk reused by later compiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm", reason="the TVM backend needs apache-tvm")

import slimfx  # noqa: E402
from slimfx.backends.tvm import tuning  # noqa: E402
from slimfx.ir import Graph, TensorType  # noqa: E402

pytestmark = pytest.mark.tvm


def _matmul_graph() -> Graph:
    g = Graph("mm")
    a = g.add_input("a", TensorType((32, 64)))
    w = g.add_constant(torch.randn(64, 48, generator=torch.Generator().manual_seed(0)), "w")
    g.set_outputs([g.add("matmul", [a, w])])
    return g


@pytest.mark.slow
def test_tuning_database_is_reused(tmp_path, monkeypatch) -> None:
    calls = []
    real_tune = tuning.tune

    def spy(*args, **kwargs):
        report = real_tune(*args, **kwargs)
        calls.append(report)
        return report

    monkeypatch.setattr(tuning, "tune", spy)
    g = _matmul_graph()
    db = tmp_path / "db"
    first = slimfx.compile(g, "x86", tune=8, tuning_db=db, progress=False)
    assert calls[-1].tuned == 1 and calls[-1].trials == 8
    assert tuning.has_db(db)
    second = slimfx.compile(g, "x86", tune=8, tuning_db=db, progress=False)
    assert calls[-1].tuned == 0 and calls[-1].trials == 0, "the second compile tuned again"
    x = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)
    ref = x @ g.constants["w"].const.numpy()
    np.testing.assert_allclose(first(x), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(second(x), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_time_budget_stops_tuning_and_a_second_compile_tunes_nothing(tmp_path) -> None:
    """``tune_seconds`` ends a search whose trial budget would last far longer; the records
    it found are used, and a second compile with the same database spends 0 s and 0 trials
    tuning (measured by the report, not assumed)."""
    g = _matmul_graph()
    db = tmp_path / "db"
    budget = 2.0
    first = slimfx.compile(g, "x86", tune=100_000, tune_seconds=budget, tuning_db=db,
                           progress=False)
    r = first.tuning
    assert r is not None and r.tuned == 1 and r.out_of_time
    assert 1 <= r.measured < 100_000
    # checked after each batch (<= 16 candidates, ~0.1-1 s each here): one batch of overrun
    assert budget <= r.seconds < budget + 60, r
    assert tuning.has_db(db)
    second = slimfx.compile(g, "x86", tune=100_000, tune_seconds=budget, tuning_db=db,
                            progress=False)
    r2 = second.tuning
    assert r2 is not None and (r2.tasks, r2.tuned, r2.measured) == (1, 0, 0), r2
    assert r2.seconds == 0.0 and not r2.out_of_time
    x = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)
    ref = x @ g.constants["w"].const.numpy()
    for compiled in (first, second):
        np.testing.assert_allclose(compiled(x), ref, rtol=1e-4, atol=1e-4)


def test_time_budget_needs_a_trial_budget() -> None:
    with pytest.raises(slimfx.SlimfxError, match="tune=N"):
        slimfx.compile(_matmul_graph(), "x86", tune_seconds=10)
    for bad in (0, -1.5, "10", True):
        with pytest.raises(slimfx.SlimfxError, match="tune_seconds must be a positive"):
            slimfx.compile(_matmul_graph(), "x86", tune=8, tune_seconds=bad)


def test_no_database_no_tuning(tmp_path) -> None:
    assert not tuning.has_db(tmp_path / "empty")
    with pytest.raises(slimfx.SlimfxError, match="non-negative"):
        slimfx.compile(_matmul_graph(), "x86", tune=-1, tuning_db=tmp_path)


def test_vnni_intrinsic_reregistered() -> None:
    from tvm.s_tir import TensorIntrin

    tuning.register_vnni_fix()
    impl = TensorIntrin.get("dot_16x4_vnni").impl
    text = impl.script()
    assert "uint8x64" in text and "int8x64" in text and "vpdpbusd" in text


@pytest.mark.slow
def test_int8_qlinear_tuned_with_vnni_is_bit_exact(tmp_path) -> None:
    from slimfx.backends.tvm.lower import lower_graph
    from slimfx.backends.tvm.targets import resolve_target

    spec = resolve_target("x86")
    if spec["mcpu"] not in ("znver4", "znver5", "cascadelake", "cooperlake", "icelake-server",
                            "sapphirerapids", "tigerlake", "alderlake"):
        pytest.skip(f"host CPU {spec['mcpu']} has no AVX-512 VNNI")
    gen = torch.Generator().manual_seed(3)
    g = Graph("ql")
    x = g.add_input("x", TensorType((16, 64), "i8"))
    w = g.add_constant(torch.randint(-128, 128, (32, 64), generator=gen).to(torch.int8), "w")
    b = g.add_constant(torch.randint(-999, 999, (32,), generator=gen).to(torch.int32), "b")
    g.set_outputs([g.add("qlinear", [x, w, b], {"x_zero_point": -3})])
    db = tmp_path / "db"
    compiled = slimfx.compile(g, "x86", tune=16, tuning_db=db, progress=False)
    xi = torch.randint(-128, 128, (16, 64), generator=gen).to(torch.int8)
    assert torch.equal(compiled(xi), slimfx.to_torch(g)(xi))
    target = tvm.target.Target(spec)
    # lowered under the target as slimfx.compile does: qlinear takes the hand-scheduled VNNI
    # dense (which tuning leaves alone); the module must use vpdpbusd either way
    with tvm.transform.PassContext(opt_level=3):
        mod = tuning.apply_db(tuning.prepare(lower_graph(g, target=target), target), target, db)
    assert "llvm.x86.avx512.vpdpbusd.512" in mod.script(), "the tuned dense does not use VNNI"
