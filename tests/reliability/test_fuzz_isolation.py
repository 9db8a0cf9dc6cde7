"""Crash isolation of the fuzzer (``fuzz_worker``): a segfault or abort in the torch
reference or in TVM is one ``crashed`` outcome, pinned to its case; the campaign goes on.

The crashes are injected through the test-only hook of :func:`fuzz_worker.phase`: the
worker process kills itself (``os.abort()`` or SIGSEGV) when the named phase starts for
work that includes the named case, as a crashing oneDNN or TVM kernel would.
"""

from __future__ import annotations

import os

import pytest

from tests.reliability.fuzz_ops import FINITE, draw_cases
from tests.reliability.fuzz_worker import Crash, Worker


def _abort() -> None:
    os.abort()


def _fail() -> None:
    raise ValueError("a bug in the fuzzer itself")


def _add(a: int, b: int) -> int:
    return a + b


@pytest.mark.slow  # three worker processes, each importing torch (~5-10 s on 2 shared cores)
def test_worker_survives_its_child() -> None:
    with Worker(timeout_s=120) as w:
        assert w.call(_add, 2, 3) == 5
        crash = w.call(_abort)
        assert isinstance(crash, Crash) and crash.how == "SIGABRT", crash
        assert w.call(_add, 4, 5) == 9  # a fresh child serves the next call
        err = w.call(_fail)
        assert isinstance(err, Crash) and "ValueError: a bug in the fuzzer itself" in err.how
        assert w.call(_add, 1, 1) == 2


@pytest.mark.tvm
@pytest.mark.slow
def test_campaign_pins_crashes_and_goes_on() -> None:
    """Two batches of 3 cases: in the first, one case segfaults in the torch reference and
    one aborts in the TVM compile; the second batch (after the crashes) runs normally."""
    pytest.importorskip("tvm", reason="the TVM backend needs apache-tvm")
    from tests.reliability.fuzz import _problems
    from tests.reliability.fuzz_run import run_cases

    cases = draw_cases(6, 11, ["neg", "abs"], FINITE, prefix="iso")
    segv, abort = cases[0].id, cases[2].id
    seen: list[int] = []
    report = run_cases(cases, "x86", batch_size=3, isolate=True, timeout_s=600,
                       inject={segv: ("torch reference", "segv"),
                               abort: ("TVM compile", "abort")},
                       on_batch=lambda r: seen.append(len(r.outcomes)))
    got = {o.case.id: o for _, o in report.outcomes}
    assert seen == [3, 6]  # both batches reported
    assert got[segv].status == "crashed"
    assert got[segv].detail == "crashed: SIGSEGV in the reference (torch)"
    assert got[abort].status == "crashed"
    assert got[abort].detail == "crashed: SIGABRT in the compiled (TVM compile)"
    others = [o for i, o in got.items() if i not in (segv, abort)]
    assert [o.status for o in others] == ["passed"] * 4, [o.detail for o in others]
    assert not report.unpinned
    counts = report.counts()
    assert sum(c["crashed"] for c in counts.values()) == 2
    assert sum(sum(c.values()) for c in counts.values()) == 6
    crashed_col = report.table().splitlines()[0].split().index("crashed")
    assert report.table().splitlines()[-1].split()[crashed_col - 1] == "2"  # "all" row
    lines = _problems(report)
    assert sum(line.startswith("CRASH x86: ") for line in lines) == 2
    assert any(cases[0].describe() in line and "SIGSEGV" in line for line in lines)


@pytest.mark.tvm
def test_in_process_run_is_unchanged() -> None:
    """Without ``isolate`` the phases are no-ops (the hook only acts inside a worker)."""
    pytest.importorskip("tvm", reason="the TVM backend needs apache-tvm")
    from tests.reliability.fuzz_run import run_cases

    cases = draw_cases(2, 12, ["neg"], FINITE, prefix="inproc")
    report = run_cases(cases, "x86", batch_size=2,
                       inject={cases[0].id: ("torch reference", "segv")})
    assert [o.status for _, o in report.outcomes] == ["passed", "passed"]


@pytest.mark.tvm
@pytest.mark.slow
def test_graph_campaign_pins_a_crashing_model() -> None:
    """A bundle of two random models whose second one segfaults in the TVM run: the first
    still passes, the second counts as crashed for the pipeline, named."""
    pytest.importorskip("tvm", reason="the TVM backend needs apache-tvm")
    from tests.reliability.fuzz_graphs import GraphReport, draw_specs, run_bundle_isolated

    specs = draw_specs(2, 5)
    report = GraphReport()
    with Worker({str(specs[1].seed): ("TVM run", "segv")}, timeout_s=600) as w:
        run_bundle_isolated(specs, ("float",), report, w)
    assert report.counts["float"]["passed"] == 1, report.details
    assert report.counts["float"]["crashed"] == 1 and report.crashes == 1
    assert report.mismatches == 0
    assert f"float: model {specs[1].describe()}: crashed: SIGSEGV in the compiled (TVM run)" \
        in report.details
    assert "crashed" in report.table().splitlines()[0]
