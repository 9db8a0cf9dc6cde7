"""slimfx.Budget / mixed_precision: the sensitive layer stays float, lax budgets quantize all,
user metrics, the step table, and the errors of issue 12 (no data, a metric that raises, a
budget that cannot be met)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import slimfx
from slimfx.errors import QuantizationError
from slimfx.passes.quant import Budget, MixedPrecisionResult, mixed_precision


class Net(nn.Module):
    """fc1 reads input 0 twice, with weights +1000 and -1000 that cancel in float: int8
    rounds its other weights (~0.3, below half a step of 1000 / 127) to zero, so quantizing
    fc1 alone destroys the output while fc2, fc3 and the cat quantize well."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(9, 16)
        self.fc2 = nn.Linear(16, 16)
        self.fc3 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, :1], x], dim=1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


@pytest.fixture(scope="module")
def net() -> tuple[Net, list[torch.Tensor], slimfx.Graph]:
    torch.manual_seed(0)
    m = Net().eval()
    with torch.no_grad():
        m.fc1.weight[:, 0] = 1000.0
        m.fc1.weight[:, 1] = -1000.0
    data = [torch.randn(32, 8) for _ in range(2)]
    return m, data, slimfx.trace(m, (data[0],))


def _cosine(m: nn.Module, q: slimfx.Graph, data: list[torch.Tensor]) -> float:
    module = slimfx.to_torch(q, trainable=False)
    with torch.no_grad():
        ref = torch.cat([m(x) for x in data]).double().flatten()
        out = torch.cat([module(x) for x in data]).double().flatten()
    return float(ref @ out / (ref.norm() * out.norm()))


def _float_linears(q: slimfx.Graph) -> set[str]:
    return {n.name for n in q.find("linear")}


def test_sensitive_layer_stays_float_and_budget_holds(net, tmp_path) -> None:
    m, data, g = net
    everything = slimfx.quantize(g, data)
    assert 1 - _cosine(m, everything, data) > 0.01  # plain int8 misses the budget
    r = mixed_precision(g, data, slimfx.Budget(max_drop=1e-3))
    assert isinstance(r, MixedPrecisionResult)
    assert _float_linears(r.graph) == {"fc1"}
    assert len(r.graph.find("qlinear")) == 2  # fc2, fc3 stay int8
    assert set(r.float_layers) == {"fc1"} and "budget" in r.float_layers["fc1"]
    assert r.quantized_layers == ("cat", "fc2", "fc3")
    assert 1 - _cosine(m, r.graph, data) <= 1e-3  # measured independently
    assert [len(s.float_layers) for s in r.steps] == [0, 1]
    assert not r.steps[0].meets and r.steps[1].meets
    assert r.steps[1].constant_bytes > r.steps[0].constant_bytes  # fc1 float is bigger
    assert "fc1" in r.qconfig.exclude[-1]
    # the chosen QConfig reproduces the program through plain slimfx.quantize
    again = slimfx.quantize(g, data, qconfig=r.qconfig)
    assert _float_linears(again) == {"fc1"}
    text = str(r)
    assert "kept float" in text and "%fc1 (linear) [budget]: budget" in text
    r.plot(tmp_path / "steps.png")
    assert (tmp_path / "steps.png").stat().st_size > 0


def test_lax_budget_quantizes_everything(net) -> None:
    m, data, g = net
    r = mixed_precision(g, data, Budget(max_drop=0.5))
    assert not r.float_layers and len(r.steps) == 1 and r.steps[0].meets
    assert _float_linears(r.graph) == set()
    assert len(r.graph.find("qlinear")) == 3


def test_quantize_takes_a_budget_and_slimfx_exports_it(net) -> None:
    m, data, g = net
    assert slimfx.Budget is Budget and "Budget" in slimfx.__all__
    q = slimfx.quantize(g, data, budget=slimfx.Budget(max_drop=1e-3))
    assert _float_linears(q) == {"fc1"}


def test_user_metric_lower_is_better(net) -> None:
    m, data, g = net
    x = torch.randn(32, 8)
    with torch.no_grad():
        ref = m(x)
    calls = []

    def mse(module: nn.Module) -> float:
        calls.append(1)
        with torch.no_grad():
            return float(((module(x) - ref) ** 2).mean())

    r = mixed_precision(g, data, Budget(max_drop=1e-3, metric=mse, higher_is_better=False))
    assert _float_linears(r.graph) == {"fc1"}
    assert r.chosen.value == pytest.approx(mse(slimfx.to_torch(r.graph, trainable=False)))
    assert r.chosen.value <= r.float_value + 1e-3
    assert len(calls) > 4


def test_budget_that_cannot_be_met_reports_best_point(net) -> None:
    m, data, g = net
    x = torch.randn(32, 8)

    def exact(module: nn.Module) -> float:  # 1 only for the float graph
        with torch.no_grad():
            return float(torch.equal(module(x), m(x)))

    with pytest.raises(QuantizationError, match=r"best reachable: drop 1 with \d of 4 layers"):
        mixed_precision(g, data, Budget(max_drop=0.0, metric=exact))


def test_bad_budgets_and_metrics(net) -> None:
    m, data, g = net
    for bad in (-0.1, math.nan, "0.1"):
        with pytest.raises(QuantizationError, match="max_drop must be a finite number"):
            Budget(max_drop=bad)  # type: ignore[arg-type]
    with pytest.raises(QuantizationError, match="metric must be a callable"):
        Budget(max_drop=0.1, metric=3)  # type: ignore[arg-type]
    with pytest.raises(QuantizationError, match="needs data for the default metric"):
        slimfx.quantize(g, None, budget=Budget(max_drop=0.1))
    with pytest.raises(QuantizationError, match="must be a slimfx.Budget"):
        mixed_precision(g, data, 0.1)  # type: ignore[arg-type]

    def broken(module: nn.Module) -> float:
        raise RuntimeError("labels missing")

    with pytest.raises(QuantizationError, match="'broken' raised RuntimeError: labels missing"):
        mixed_precision(g, data, Budget(max_drop=0.1, metric=broken))
    with pytest.raises(QuantizationError, match="returned str, not a number"):
        mixed_precision(g, data, Budget(max_drop=0.1, metric=lambda module: "high"))
    with pytest.raises(QuantizationError, match="budget= works with pipeline 'ptq-int8'"):
        slimfx.quantize(g, data, "dynamic-int8", budget=Budget(max_drop=0.1))


def test_w4a8_ladder_raises_layers_to_int8_until_the_budget_holds() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                      nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    data = [torch.randn(32, 16) for _ in range(2)]
    g = slimfx.trace(m, (data[0],))
    lax = mixed_precision(g, data, Budget(max_drop=0.5, precisions=("int8", "w4a8")))
    assert lax.budget.precisions == ("w4a8", "int8")  # lowest first
    assert set(lax.precisions.values()) == {"w4a8"} and len(lax.steps) == 1
    w4_drop = lax.steps[0].drop
    int8_drop = 1 - _cosine(m, slimfx.quantize(g, data), data)
    assert w4_drop > 4 * int8_drop > 0  # 4-bit weights cost more than int8 ones
    r = mixed_precision(g, data, Budget(max_drop=w4_drop / 4, precisions=("w4a8", "int8")))
    assert 1 - _cosine(m, r.graph, data) <= w4_drop / 4
    assert not r.float_layers
    assert {"w4a8", "int8"} == set(r.precisions.values())
    assert all("w4a8 -> int8" in s.change for s in r.steps[1:])
    for layer, precision in r.precisions.items():  # the weights really are 4 or 8 bits
        w = r.graph.constants[f"{layer}.weight.q"].const
        bound = 7 if precision == "w4a8" else 127
        assert int(w.abs().max()) == bound, (layer, precision)
    assert "layers w4a8" in str(r)


def test_sensitivity_measures_w4a8() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    data = [torch.randn(32, 16)]
    rep = slimfx.sensitivity(slimfx.trace(m, (data[0],)), data, precisions=("int8", "w4a8"))
    only = {(s.layer, s.precision): s.only for s in rep.layers}
    assert {p for _, p in only} == {"int8", "w4a8"}
    for layer in ("0", "2"):  # SQNR in dB: 4-bit weights lose more than 8-bit ones
        assert only[layer, "w4a8"] < only[layer, "int8"] - 6
    values = dict(rep.quantized_values)
    assert values["w4a8"] < values["int8"] == rep.quantized_value


@pytest.mark.tvm
@pytest.mark.slow
def test_target_measures_compiled_latency_of_every_step(net) -> None:
    pytest.importorskip("tvm")
    m, data, g = net
    r = mixed_precision(g, data, Budget(max_drop=1e-3), target="x86")
    assert len(r.steps) == 2
    assert all(s.latency_ms is not None and s.latency_ms > 0 for s in r.steps)
    assert r.float_latency_ms is not None and r.float_latency_ms > 0
    text = str(r)
    assert "latency ms" in text and "fp32" in text


def _weight_fake_quant(prepared: slimfx.Graph) -> dict[str, int]:
    """linear -> qmax of the fake_quantize on its weight (layers without one are float)."""
    out = {}
    for n in prepared.find("linear"):
        fq = n.inputs[1].producer
        if fq is not None and fq.op.name == "fake_quantize":
            out[n.name] = fq.attrs["qmax"]
    return out


def test_qat_budget_prepares_the_chosen_configuration(net) -> None:
    m, data, g = net
    budget = slimfx.Budget(max_drop=1e-3)
    prepared = slimfx.prepare_qat(g, iter(data), budget=budget)  # one-shot data is enough
    assert _weight_fake_quant(prepared) == {"fc2": 127, "fc3": 127}  # fc1 trains in float
    # training starts from exactly the program the post-training search chose
    chosen = mixed_precision(g, data, budget).graph
    untrained = slimfx.convert(slimfx.to_torch(prepared))
    assert _float_linears(untrained) == {"fc1"}
    x = torch.randn(32, 8)
    with torch.no_grad():
        assert torch.equal(slimfx.to_torch(untrained)(x), slimfx.to_torch(chosen)(x))
    assert 1 - _cosine(m, untrained, data) <= 1e-3
    # it trains and converts like any QAT module
    module = slimfx.to_torch(prepared)
    opt = torch.optim.Adam(module.parameters(), 1e-3)
    module.train()
    for x in data:
        opt.zero_grad()
        ((module(x) - m(x).detach()) ** 2).mean().backward()
        opt.step()
    module.eval()
    trained = slimfx.convert(module)
    assert _float_linears(trained) == {"fc1"} and len(trained.find("qlinear")) == 2


def test_w4a8_and_qat_budgets_through_the_public_calls() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                      nn.Linear(32, 8)).eval()
    data = [torch.randn(32, 16) for _ in range(2)]
    g = slimfx.trace(m, (data[0],))
    lax = slimfx.Budget(max_drop=0.5, precisions=("w4a8", "int8"))
    q = slimfx.quantize(g, data, budget=lax)
    assert {int(w.const.abs().max()) for name, w in q.constants.items()
            if name.endswith(".weight.q")} == {7}  # every layer at 4-bit weights
    prepared = slimfx.prepare_qat(g, data, budget=lax)
    assert set(_weight_fake_quant(prepared).values()) == {7}
    with pytest.raises(QuantizationError, match=r"slimfx.prepare_qat\(graph, data, budget="):
        slimfx.quantize(g, data, "qat-int8", budget=lax)
    with pytest.raises(QuantizationError, match="fold_bn='batch-stats', budget="):
        slimfx.quantize(g, data, "qat-int8-bn", budget=lax)
