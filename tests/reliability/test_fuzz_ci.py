"""The differential fuzzer's fixed-seed set, run by ``make test`` (``make fuzz``: the campaign).

- every op with a TVM lowering has a strategy (or is excluded with a reason);
- the comparison rules themselves (ulp distance, NaN positions, bounds);
- x86: one batch of finite-input cases drawn with a fixed seed (two of every op), torch
  backend vs the x86 build, case by case (the findings of earlier campaigns are fixed and
  kept as minimal cases in ``test_fuzz_regressions.py``);
- x86, non-finite inputs (NaN/Inf/denormals/extremes): a separate batch, 0 mismatches;
- ARM under qemu: a batch of integer-op cases, bit-exact (skips without ``make arm-env``);
- CUDA: a batch compiled for sm_80 and its CUDA source compiled to a cubin (slow);
- graph level: a few random models through the float pipeline and compile (int8: slow).
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.reliability.fuzz_cases import FuzzCase, Operand, Outcome, Tol, compare, ulp_distance
from tests.reliability.fuzz_ops import (
    EXCLUDED,
    FINITE,
    INTEGER_OPS,
    STRATEGIES,
    FuzzConfig,
    coverage,
    draw_cases,
)

CI_SEED = 20261201
X86_CASES = draw_cases(2, CI_SEED, cfg=FINITE, per_op=True)  # two cases of every op
NONFINITE_CASES = draw_cases(24, CI_SEED + 1, cfg=FuzzConfig(fp16=False), prefix="nf")


# --------------------------------------------------------------------- no TVM needed
def test_every_lowered_op_has_a_strategy() -> None:
    missing, unknown = coverage()
    assert not missing, (f"ops with a TVM lowering but no fuzz strategy: {missing}; add one "
                         "to tests/reliability/fuzz_ops.py STRATEGIES or list it in EXCLUDED "
                         "with a reason")
    assert not unknown, f"fuzz strategies for ops that are not registered: {unknown}"
    assert all(reason for reason in EXCLUDED.values())
    assert not set(EXCLUDED) & set(STRATEGIES)


def test_draw_is_deterministic() -> None:
    a = [c.describe() for c in draw_cases(20, 7)]
    assert a == [c.describe() for c in draw_cases(20, 7)]


def test_ulp_distance() -> None:
    one = torch.tensor([1.0])
    nxt = torch.nextafter(one, torch.tensor([2.0]))
    assert ulp_distance(one, nxt).item() == 1
    assert ulp_distance(torch.tensor([0.0]), torch.tensor([-0.0])).item() == 0
    big = torch.tensor([torch.finfo(torch.float32).max])
    assert ulp_distance(big, torch.tensor([math.inf])).item() == 1
    assert ulp_distance(torch.tensor([-1e-45]), torch.tensor([1e-45])).item() == 2


def _case(tol: Tol) -> FuzzCase:
    return FuzzCase("neg", [Operand("in", (3,))], {}, tol)


def test_compare_rules() -> None:
    ref = [torch.tensor([1.0, math.nan, math.inf])]
    assert compare(_case(Tol()), ref, [ref[0].clone()]).status == "passed"
    lost = compare(_case(Tol()), ref, [torch.tensor([1.0, 0.0, math.inf])])
    assert lost.status == "mismatch" and lost.nan_lost and "NaN positions" in lost.detail
    off = torch.tensor([float(torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))),
                        math.nan, math.inf])
    assert compare(_case(Tol()), ref, [off]).status == "mismatch"
    assert compare(_case(Tol("ulp", 1)), ref, [off]).status == "passed"
    assert compare(_case(Tol("ulp", 4)), ref, [torch.tensor([1.0, math.nan, 1.0])]
                   ).status == "mismatch"  # inf vs a finite number is never close
    ints = [torch.tensor([1, 2], dtype=torch.int8)]
    assert compare(_case(Tol()), ints, [torch.tensor([1, 3], dtype=torch.int8)]
                   ).status == "mismatch"
    assert compare(_case(Tol()), ints, [torch.tensor([1, 2], dtype=torch.int32)]
                   ).status == "mismatch"  # the dtype is part of the result
    red = _case(Tol("reduce", 0, reduction=10))
    mag = [torch.tensor([100.0, 0.0, 0.0])]
    near = torch.tensor([1.0 + 2e-5, math.nan, math.inf])  # 2e-5 < 2 * 10 * eps * 100
    assert compare(red, ref, [near], mag).status == "passed"
    assert compare(red, ref, [torch.tensor([1.001, math.nan, math.inf])], mag
                   ).status == "mismatch"


def test_known_defect_classifier() -> None:
    from tests.reliability.fuzz_run import known_defect

    relu = FuzzCase("relu", [Operand("in", (2,), special="nonfinite", p_special=0.5)])
    assert known_defect(Outcome(relu, "mismatch", "NaN positions differ", nan_lost=True)) == 3
    conv = FuzzCase("conv2d", [Operand("in", (1, 1, 2, 2)), Operand("const", (1, 1, 1, 1)),
                               Operand("const", (1,))], {}, Tol("reduce", reduction=2))
    assert known_defect(Outcome(conv, "mismatch", "result 0: 4/4 elements differ")) == 1
    assert known_defect(Outcome(conv, "passed")) is None


# --------------------------------------------------------------------- TVM
tvm_mark = pytest.mark.tvm


@pytest.fixture(scope="module")
def x86_outcomes() -> dict[str, Outcome]:
    pytest.importorskip("tvm", reason="the TVM backend needs apache-tvm")
    from tests.reliability.fuzz_run import run_cases

    report = run_cases(X86_CASES + NONFINITE_CASES, "x86", batch_size=200)
    return {o.case.id: o for _, o in report.outcomes}


@tvm_mark
@pytest.mark.parametrize("case", X86_CASES, ids=lambda c: c.id)
def test_x86_seed_case(x86_outcomes: dict[str, Outcome], case: FuzzCase) -> None:
    o = x86_outcomes[case.id]
    assert o.status != "mismatch", f"{case.describe()} :: {o.detail}"


@tvm_mark
def test_x86_seed_batch_is_not_degenerate(x86_outcomes: dict[str, Outcome]) -> None:
    finite = [x86_outcomes[c.id] for c in X86_CASES]
    assert sum(o.status == "passed" for o in finite) >= 0.8 * len(finite)
    assert {c.op for c in X86_CASES} == set(STRATEGIES)


@tvm_mark
def test_x86_nonfinite_inputs(x86_outcomes: dict[str, Outcome]) -> None:
    bad = [f"{c.describe()} :: {x86_outcomes[c.id].detail}" for c in NONFINITE_CASES
           if x86_outcomes[c.id].status == "mismatch"]
    assert not bad, "\n".join(bad)


@tvm_mark
@pytest.mark.arm
def test_arm_integer_ops_bit_exact() -> None:
    pytest.importorskip("tvm")
    from slimfx.backends.tvm import arm_env
    from tests.reliability.fuzz_run import run_cases

    if arm_env.find_env() is None:
        pytest.skip(f"aarch64 qemu environment not set up ({arm_env.missing_reason()}); "
                    "run `make arm-env`")
    cases = draw_cases(24, CI_SEED + 2, list(INTEGER_OPS), FINITE)
    report = run_cases(cases, "arm", batch_size=100)
    bad = [f"{o.case.describe()} :: {o.detail}" for _, o in report.outcomes
           if o.status == "mismatch"]
    assert not bad, "\n".join(bad)
    assert sum(o.status == "passed" for _, o in report.outcomes) >= 20


@tvm_mark
@pytest.mark.slow
def test_cuda_compiles() -> None:
    pytest.importorskip("tvm")
    from tests.reliability.fuzz_run import run_cases

    cases = draw_cases(12, CI_SEED + 3, ["qconv2d", "qlinear", "requantize", "conv2d",
                                         "linear", "softmax", "add", "quantize"], FINITE)
    report = run_cases(cases, "cuda", batch_size=100)
    bad = [f"{o.case.describe()} :: {o.detail}" for _, o in report.outcomes
           if o.status != "passed"]
    assert not bad, "\n".join(bad)


@tvm_mark
def test_random_graphs_float_pipeline() -> None:
    pytest.importorskip("tvm")
    from tests.reliability.fuzz_graphs import GraphReport, draw_specs, run_bundle

    report = run_bundle(draw_specs(4, CI_SEED), ("float",), GraphReport())
    assert report.mismatches == 0, "\n".join(report.details)
    assert report.counts["float"]["passed"] == 4, report.table()


@tvm_mark
@pytest.mark.slow
def test_random_graphs_int8_pipeline() -> None:
    """Slow: small int8 models currently take minutes to build (see the fuzz report)."""
    pytest.importorskip("tvm")
    from tests.reliability.fuzz_graphs import GraphReport, draw_specs, run_bundle

    report = run_bundle(draw_specs(2, CI_SEED + 4), ("ptq-int8", "dynamic-int8"), GraphReport())
    assert report.mismatches == 0, "\n".join(report.details)
