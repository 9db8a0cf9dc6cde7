"""Float islands: every float op of an int8 program listed with its reason, neighbours, cost."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimfx
from slimfx.passes.quant import Budget, QConfig, mixed_precision
from slimfx.passes.quant.report_islands import float_islands, format_islands


class Mixed(nn.Module):
    """int8 fc1 -> float LayerNorm -> int8 fc2 -> float sigmoid, reshapes, fc3 (excluded)
    -> int8 add."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.ln = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 16)
        self.fc3 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(torch.relu(self.fc1(x)))
        h = self.fc2(h).sigmoid().reshape(8, 4, 4).reshape(8, 16)
        return self.fc3(h) + 1.0


@pytest.fixture(scope="module")
def mixed() -> tuple[slimfx.Graph, list[torch.Tensor], QConfig]:
    torch.manual_seed(0)
    data = [torch.randn(8, 8) for _ in range(2)]
    return (slimfx.trace(Mixed().eval(), (data[0],)), data,
            QConfig.preset("x86", exclude=["fc3"]))


def _by_name(islands):
    return {op.name: (op.kind, op.reason, k) for k, isl in enumerate(islands) for op in isl.ops}


def test_every_float_op_is_listed_with_reason_neighbours_and_cost(mixed) -> None:
    g, data, qc = mixed
    q = slimfx.quantize(g, data, qconfig=qc)
    islands = float_islands(q, qc)
    ops = _by_name(islands)
    # exactly the float ops of the program, nothing else
    floats = {n.name for n in q.nodes if n.op.name in ("layer_norm", "sigmoid", "reshape",
                                                        "linear")}
    assert set(ops) == floats and len(floats) == 5
    assert ops["ln"][0] == "no-int8-form" and "no integer form of layer_norm" in ops["ln"][1]
    assert ops["sigmoid"][0] == "no-int8-form"
    assert ops["fc3"][0] == "excluded" and "exclude pattern 'fc3'" in ops["fc3"][1]
    assert {ops[n][0] for n in floats if q.node(n).op.name == "reshape"} == {"float-input"}
    assert len(islands) == 2
    first, second = sorted(islands, key=lambda i: len(i.ops))
    assert [o.name for o in first.ops] == ["ln"]
    assert first.after == ("fc1",) and first.before == ("fc2.acc",)
    assert (first.dequantize, first.quantize) == (1, 1)
    assert second.ops[0].name == "sigmoid" and second.ops[-1].name == "fc3"
    assert second.after == ("fc2",) and second.before == ("add",)
    assert (second.dequantize, second.quantize) == (1, 1)
    text = format_islands(islands)
    assert "float islands: 2 (5 ops stay float)" in text
    assert "%fc3 (linear) [excluded]: user choice" in text


def test_report_lists_islands_and_budget_reasons(mixed) -> None:
    g, data, qc = mixed
    text = slimfx.report(g, data, qc)
    assert "float islands: 2" in text and "[no-int8-form]" in text and "[excluded]" in text
    with_budget = slimfx.report(g, data, budget=Budget(max_drop=1.0))
    assert "[excluded]" not in with_budget  # lax budget: fc3 quantized too
    assert "float islands: 2 (2 ops stay float)" in with_budget  # reshapes run on int8


def test_budget_float_layers_say_budget() -> None:
    from tests.passes.quant.test_budget import Net

    torch.manual_seed(0)
    m = Net().eval()
    with torch.no_grad():  # fc1 is ruined by int8 (see test_budget.Net)
        m.fc1.weight[:, 0] = 1000.0
        m.fc1.weight[:, 1] = -1000.0
    data = [torch.randn(32, 8) for _ in range(2)]
    r = mixed_precision(slimfx.trace(m, (data[0],)), data, Budget(max_drop=1e-3))
    ops = _by_name(r.islands())
    assert ops["fc1"][0] == "budget" and "mixed-precision search" in ops["fc1"][1]
    assert [n for n, (kind, _, _) in ops.items() if kind == "budget"] == ["fc1"]
    assert "%fc1 (linear) [budget]" in str(r)
