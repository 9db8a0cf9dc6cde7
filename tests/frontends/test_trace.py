"""slimfx.trace: names, sources, constants, both methods agreeing, opaque ops and errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimfx
from slimfx.errors import TraceError
from slimfx.models.zoo import get_model
from tests.frontends.frontend_helpers import assert_close_to_eager, check, ops


class ConvBnRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 4 * 4, 5))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn(self.conv(image)))
        y = nn.functional.max_pool2d(y, 2)
        return self.head(y)


def test_both_methods_give_the_same_ir() -> None:
    model, x = ConvBnRelu(), torch.randn(2, 3, 8, 8)
    g_export = check(model, x, "export")
    g_fx = check(model, x, "fx")
    assert ops(g_export) == ops(g_fx) == ["conv2d", "batch_norm", "relu", "max_pool2d",
                                          "reshape", "linear"]
    assert [n.name for n in g_export.nodes] == [n.name for n in g_fx.nodes]
    assert sorted(g_export.constants) == sorted(g_fx.constants)


@pytest.mark.parametrize("method", ["export", "fx"])
def test_names_and_sources(method: str) -> None:
    g = slimfx.trace(ConvBnRelu(), torch.randn(1, 3, 8, 8), method=method)
    assert [v.name for v in g.inputs] == ["image"]
    assert {"conv.weight", "conv.bias", "bn.running_mean", "bn.running_var", "bn.weight",
            "bn.bias", "head.1.weight", "head.1.bias"} == set(g.constants)
    conv = g.find("conv2d")[0]
    assert conv.name == "conv"
    assert conv.source.module == "conv"
    assert conv.source.location.startswith(__file__)  # the user's line, not torch's
    assert g.find("linear")[0].source.module == "head.1"
    if method == "export":
        assert conv.source.torch_op == "aten.conv2d.default"


def test_dict_inputs_are_named_after_keywords() -> None:
    class Two(nn.Module):
        def forward(self, input_ids: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return input_ids.float() * scale

    inputs = {"input_ids": torch.arange(6).reshape(2, 3), "scale": torch.randn(2, 3)}
    g = slimfx.trace(Two(), inputs)
    assert [v.name for v in g.inputs] == ["input_ids", "scale"]
    assert_close_to_eager(g, Two(), inputs)


def test_add_alpha_and_python_scalars_become_constants() -> None:
    class M(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.add(x, x, alpha=2) + 1

    g = check(M(), torch.randn(3))
    assert ops(g) == ["mul", "add", "add"]
    scalars = sorted((str(v.type), v.const.item()) for v in g.constants.values())
    assert scalars == [("i64[]", 1), ("i64[]", 2)]


def test_lstm_zero_state_becomes_constants() -> None:
    g = slimfx.trace(nn.LSTM(4, 3, batch_first=True).eval(), torch.randn(2, 5, 4),
                     dynamic_shapes={})
    (lstm,) = g.find("lstm")
    h0, c0 = lstm.inputs[1], lstm.inputs[2]
    assert h0.is_const and c0.is_const and not h0.const.any()
    assert len(lstm.outputs) == 3
    # with the default dynamic batch, the zero state is a zero expanded to [1,N,3]
    g = check(nn.LSTM(4, 3, batch_first=True), torch.randn(2, 5, 4))
    (lstm,) = g.find("lstm")
    for state in lstm.inputs[1:3]:
        assert str(state.type) == "f32[1,N,3]" and state.producer.op.name == "expand"
        assert state.producer.inputs[0].is_const and not state.producer.inputs[0].const.any()


@pytest.mark.parametrize("method", ["export", "fx"])
def test_unknown_op_stays_opaque_and_runs(method: str) -> None:
    class M(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cumsum(x, 1).relu()

    g = check(M(), torch.randn(2, 5), method)
    assert ops(g) == ["opaque", "relu"]
    assert g.find("opaque")[0].attrs["target"] == "aten.cumsum.default"


@pytest.mark.parametrize("method,other", [("export", 'method="fx"'), ("fx", 'method="export"')])
def test_data_dependent_control_flow_is_a_trace_error(method: str, other: str) -> None:
    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # the line the error must name
                return x * 2
            return x

    with pytest.raises(TraceError) as info:
        slimfx.trace(Branchy(), torch.randn(3), method=method)
    msg = str(info.value)
    assert other in msg
    assert f"{__file__}:" in msg and "x.sum() > 0" in msg


def test_fx_reports_every_data_dependent_call_at_once() -> None:
    class Items(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = x.max().item()
            b = x.min().tolist()
            return x * a + b

    with pytest.raises(TraceError) as info:
        slimfx.trace(Items(), torch.randn(3), method="fx")
    msg = str(info.value)
    assert "2 construct(s)" in msg and ".item()" in msg and ".tolist()" in msg


def test_bad_arguments() -> None:
    with pytest.raises(TraceError, match="unknown trace method"):
        slimfx.trace(nn.ReLU(), torch.randn(2), method="jit")
    with pytest.raises(TraceError, match="example_inputs"):
        slimfx.trace(nn.ReLU(), 3)


ZOO = [("resnet18", dict(input_size=32, num_classes=10, width=8)),
       ("mobilenet_v2", dict(input_size=32, num_classes=10, width_mult=0.25)),
       ("lstm", {}), ("transformer", {}), ("densenet_tiny", {}), ("small_cnn", {})]


_SLOW_FX = {"resnet18", "mobilenet_v2", "densenet_tiny"}  # fx lowers node by node: ~10-25 s


@pytest.mark.parametrize("method", ["export", "fx"])
@pytest.mark.parametrize("name,options", ZOO, ids=[z[0] for z in ZOO])
def test_project_zoo_models(name: str, options: dict, method: str,
                            request: pytest.FixtureRequest) -> None:
    if method == "fx" and name in _SLOW_FX:
        request.applymarker(pytest.mark.slow)
    model, inputs = get_model(name, batch_size=2, **options)
    g = check(model, inputs, method)
    assert "opaque" not in ops(g), str(g)


@pytest.mark.parametrize("method", ["export", "fx"])
def test_inplace_update_of_a_value_used_later(method: str) -> None:
    class M(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x + 1
            y.mul_(2)
            return y - x

    g = check(M(), torch.randn(4), method)
    assert ops(g) == ["add", "mul", "sub"]


@pytest.mark.parametrize("method", ["export", "fx"])
def test_static_sizes_fold_and_tensor_attributes_become_constants(method: str) -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.tensor([0.5, 2.0, 3.0])  # a plain attribute, not a buffer

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n, c = x.size(0), x.shape[-1]
            return (x * self.scale).reshape(n * c)

    g = check(M(), torch.randn(4, 3), method)
    assert ops(g) == ["mul", "reshape"]
    assert "= reshape(%mul) {shape=[N*3]} : f32[N*3]" in str(g)  # the batch: N
    (scale,) = [v for v in g.constants.values() if v.shape == (3,)]
    assert "scale" in scale.name
    static = slimfx.trace(M(), torch.randn(4, 3), method=method, dynamic_shapes={})
    assert static.find("reshape")[0].attrs["shape"] == (12,)


@pytest.mark.parametrize("method", ["export", "fx"])
def test_multi_result_opaque_has_one_result_per_tensor(method: str) -> None:
    class M(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            values, indices = torch.sort(x, dim=1)
            return values * 2, indices

    g = check(M(), torch.randn(2, 5), method)
    (node,) = g.find("opaque")
    assert [str(o.type) for o in node.outputs] == ["f32[N,5]", "i64[N,5]"]
