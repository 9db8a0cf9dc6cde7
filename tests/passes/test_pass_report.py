"""PassReport: per pass, the graph's bytes, its output error against the input graph on data
(SQNR, max abs error) and, with a target, the compiled latency (issue 12, item 5)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import slimfx
from slimfx.errors import PassError
from slimfx.ir import Graph
from slimfx.passes import PassContext, PassResult, Pipeline, register_pass
from slimfx.passes.base import Pass
from slimfx.passes.instruments import PassReport
from tests.passes.pass_helpers import ir_from_sequential


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)).eval()
    bn = m[1]
    bn.running_mean.normal_(0, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    return m


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Sequential, Graph, list[torch.Tensor]]:
    m = _model()
    gen = torch.Generator().manual_seed(1)
    data = [torch.randn(4, 3, 8, 8, generator=gen) for _ in range(3)]
    return m, ir_from_sequential(m, (4, 3, 8, 8)), data


def _sqnr_by_hand(m: nn.Module, g: Graph, data: list[torch.Tensor]) -> tuple[float, float]:
    mod = slimfx.to_torch(g, trainable=False)
    with torch.no_grad():
        ref = torch.cat([m(x) for x in data]).double()
        out = torch.cat([mod(x) for x in data]).double()
    noise = float(((ref - out) ** 2).sum())
    return 10 * math.log10(float((ref ** 2).sum()) / noise), float((ref - out).abs().max())


def test_quantize_reports_every_pass(setup) -> None:  # noqa: ANN001
    m, g, data = setup
    rep = PassReport(data)
    ctx = PassContext([rep])
    g8 = slimfx.quantize(g, data, "ptq-int8", ctx=ctx)
    rows = {r.pass_name: r for r in rep.rows}
    assert [r.pass_name for r in rep.rows] == ["input"] + ctx.history
    assert [r.index for r in rep.rows] == list(range(len(rep.rows)))
    first, last = rep.rows[0], rep.rows[-1]
    assert first.sqnr == math.inf and first.max_abs_error == 0
    # fold-bn is exact up to float rounding: finite and high
    assert math.isfinite(rows["fold-bn"].sqnr) and rows["fold-bn"].sqnr > 100
    assert rows["fold-bn"].max_abs_error < 1e-5
    # int8: far lower, but still a working model
    assert 20 < last.sqnr < rows["fold-bn"].sqnr - 40
    assert rows["calibrate"].sqnr == rows["fold-bn"].sqnr  # observers are pass-through
    # sizes: the int8 weights are a quarter of the float ones (plus int32 biases, scales)
    assert last.constant_bytes < 0.3 * first.constant_bytes
    assert rows["quantize-dequantize"].constant_bytes < rows["calibrate"].constant_bytes
    assert last.nodes == len(g8)
    # the last row is the returned program, measured independently against torch eager
    db, worst = _sqnr_by_hand(m, g8, data)
    assert last.sqnr == pytest.approx(db, abs=0.05)
    assert last.max_abs_error == pytest.approx(worst, rel=1e-3)
    # no target: no latency
    assert all(r.latency_ms is None for r in rep.rows)
    table = rep.table()
    assert "latency" not in table and "SQNR dB" in table and "qdq-to-int8" in table
    assert f"{last.constant_bytes:,}" in table


def test_any_pipeline_and_context_data(setup) -> None:  # noqa: ANN001
    _, g, data = setup
    rep = PassReport(data, num_batches=1)
    Pipeline("remove-identity,fold-bn,fuse-activation,dce")(g, PassContext([rep]))
    assert [r.pass_name for r in rep.rows] == ["input", "remove-identity", "fold-bn",
                                               "fuse-activation", "dce"]
    assert not rep.rows[1].changed and rep.rows[1].sqnr == math.inf  # unchanged: same figures
    assert rep.rows[-1].constant_bytes < rep.rows[2].constant_bytes  # dce drops BN constants
    # a second run starts a new table; without data, the run's ctx.data (as quantize sets)
    rep2 = PassReport()
    slimfx.quantize(g, data, ctx=PassContext([rep2]))
    assert rep2.rows[-1].pass_name == "dce" and rep2.rows[-1].sqnr < 60


def test_a_graph_that_cannot_be_compared_is_noted(setup) -> None:  # noqa: ANN001
    @register_pass
    @dataclass(frozen=True)
    class TwoOutputs(Pass):
        name = "test-two-outputs"

        def run(self, graph: Graph, ctx: PassContext) -> PassResult:
            graph.set_outputs([graph.outputs[0], graph.outputs[0]])
            return PassResult(graph, True)

    _, g, data = setup
    rep = PassReport(data)
    Pipeline("test-two-outputs")(g, PassContext([rep]))
    assert math.isnan(rep.rows[1].sqnr)
    assert "2 outputs" in rep.rows[1].note and "#1: not run" in rep.table()


def test_bad_input(setup) -> None:  # noqa: ANN001
    _, g, _ = setup
    with pytest.raises(PassError, match="PassReport needs data"):
        Pipeline("dce")(g, PassContext([PassReport()]))
    with pytest.raises(PassError, match="repeat"):
        PassReport([], repeat=0)
    with pytest.raises(PassError, match="target must be"):
        PassReport([], target=3)  # type: ignore[arg-type]
    with pytest.raises(PassError, match="no batch"):
        Pipeline("dce")(g, PassContext([PassReport([])]))


@pytest.mark.slow
@pytest.mark.tvm
def test_target_adds_compiled_latency(setup) -> None:  # noqa: ANN001
    pytest.importorskip("tvm")
    _, g, data = setup
    rep = PassReport(data, target="x86", repeat=3, number=3)
    slimfx.quantize(g, data, ctx=PassContext([rep]))
    assert all(r.latency_ms is not None and r.latency_ms > 0 for r in rep.rows), rep.table()
    assert "latency ms" in rep.table()
