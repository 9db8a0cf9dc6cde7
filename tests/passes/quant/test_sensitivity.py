"""slimfx.sensitivity: a deliberately sensitive layer ranks first, user metrics, the table,
the plot, and the errors."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import slimfx
from slimfx.errors import QuantizationError
from slimfx.passes.quant import QConfig, SensitivityReport
from tests.passes.pass_helpers import ir_from_sequential

PER_TENSOR = QConfig.preset("x86", per_channel_weights=False)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny convs: one thread avoids oversubscription on a busy machine (10x here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_cnn() -> nn.Sequential:
    """conv1 -> conv2 -> conv3 -> fc; conv2 has huge weights (x1000) on an input channel
    that is always 0 (conv1's channel 7 is dead: bias -100, then ReLU), so they change
    nothing in float, but per-tensor they set conv2's scale and its other weights round
    to zero (a dead channel with large weights, as trained networks have)."""
    torch.manual_seed(0)
    m = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 8, 3, padding=1), relu1=nn.ReLU(),
        conv2=nn.Conv2d(8, 8, 3, padding=1), relu2=nn.ReLU(),
        conv3=nn.Conv2d(8, 8, 3, padding=1), relu3=nn.ReLU(),
        flat=nn.Flatten(), fc=nn.Linear(8 * 6 * 6, 10)))
    with torch.no_grad():
        m.conv1.bias[7] = -100.0
        m.conv2.weight[:, 7] *= 1000
    return m.eval()


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, slimfx.Graph, list[torch.Tensor]]:
    model = small_cnn()
    gen = torch.Generator().manual_seed(1)
    data = [torch.randn(4, 3, 6, 6, generator=gen) for _ in range(3)]
    return model, ir_from_sequential(model, (4, 3, 6, 6)), data


@pytest.fixture(scope="module")
def report(setup) -> SensitivityReport:  # noqa: ANN001
    _, g, data = setup
    return slimfx.sensitivity(g, data, qconfig=PER_TENSOR)


def test_outlier_layer_ranks_first(report) -> None:  # noqa: ANN001
    assert report.metric == "output SQNR (dB)"
    assert sorted(report.ranked()) == ["conv1", "conv2", "conv3", "fc"]
    assert report.ranked()[0] == "conv2"
    first, *rest = report.layers
    assert first.only < min(s.only for s in rest) - 10  # dB
    assert report.recovery(first) == max(report.recovery(s) for s in report.layers)
    assert report.recovery(first) > 10
    assert report.float_value == float("inf")
    assert report.quantized_value <= first.only + 1


def test_table(report) -> None:  # noqa: ANN001
    text = str(report)
    lines = text.splitlines()
    assert lines[0].startswith("sensitivity: output SQNR (dB); float inf, all quantized ")
    assert lines[1].split() == ["layer", "op", "prec", "only", "loss", "all", "but", "recovery"]
    rows = [ln.split()[0] for ln in lines[3:7]]
    assert rows == report.ranked()
    assert lines[3].split()[:3] == ["conv2", "conv2d", "int8"]


def test_plot_png_and_svg(report, tmp_path) -> None:  # noqa: ANN001
    pytest.importorskip("matplotlib", reason="matplotlib is in the dev extra")
    png = tmp_path / "sensitivity.png"
    report.plot(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = tmp_path / "sensitivity.svg"
    report.plot(svg, top=2)
    assert b"<svg" in svg.read_bytes()[:1000]


def test_user_metric_accuracy(setup) -> None:  # noqa: ANN001
    model, g, data = setup
    gen = torch.Generator().manual_seed(2)
    held_out = [torch.randn(4, 3, 6, 6, generator=gen) for _ in range(3)]
    with torch.no_grad():
        labels = [model(x).argmax(1) for x in held_out]

    def agreement(module: torch.nn.Module) -> float:
        with torch.no_grad():
            hits = sum(int((module(x).argmax(1) == y).sum())
                       for x, y in zip(held_out, labels, strict=True))
        return 100.0 * hits / sum(len(y) for y in labels)

    rep = slimfx.sensitivity(g, data, agreement, qconfig=PER_TENSOR)
    assert rep.metric == "agreement"
    assert rep.float_value == 100.0
    assert rep.ranked()[0] == "conv2"
    assert rep.loss(rep.layers[0]) > 0
    assert len(rep.layers) == 4


def test_per_channel_default_and_lower_is_better(setup) -> None:  # noqa: ANN001
    _, g, data = setup
    calls = []

    def noise(module: torch.nn.Module) -> float:  # a "lower is better" metric
        calls.append(module)
        with torch.no_grad():
            return float(sum((module(x) - g_float(x)).pow(2).sum() for x in data))

    g_float = slimfx.to_torch(g)
    rep = slimfx.sensitivity(g, data[:1], noise, higher_is_better=False,
                             qconfig=QConfig.preset("x86", exclude=["fc"]))
    assert sorted(rep.ranked()) == ["conv1", "conv2", "conv3"]  # fc excluded by the qconfig
    assert len(calls) == 2 + 2 * 3  # float, all quantized, then only / all-but per layer
    worst = rep.layers[0]
    assert worst.only == max(s.only for s in rep.layers)


def test_errors(setup) -> None:  # noqa: ANN001
    _, g, data = setup
    with pytest.raises(QuantizationError, match="'w2' not supported; valid precisions: int8, w4a8"):
        slimfx.sensitivity(g, data, precisions=("int8", "w2"))
    with pytest.raises(QuantizationError, match="trace it first"):
        slimfx.sensitivity(small_cnn(), data)
    with pytest.raises(QuantizationError, match="metric must be a callable"):
        slimfx.sensitivity(g, data, metric="accuracy")  # type: ignore[arg-type]


def test_public_api() -> None:
    assert "sensitivity" in slimfx.__all__
    assert slimfx.sensitivity is slimfx.passes.quant.sensitivity
