"""Sparsity and channel-count plots of pruning (matplotlib): the numbers they show are the
graph's, and the files are real images."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimfx
from slimfx.errors import SlimfxError
from slimfx.passes.prune import (
    layer_channels,
    layer_sparsity,
    magnitude_prune,
    plot_channels,
    plot_sparsity,
    prune_channels,
)

pytest.importorskip("matplotlib", reason="matplotlib is in the dev extra")


def _cnn() -> slimfx.ir.Graph:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(32, 10)).eval()
    return slimfx.trace(model, (torch.randn(2, 3, 8, 8),))


def test_sparsity_plot_shows_each_layers_share_of_zeros(tmp_path) -> None:  # noqa: ANN001
    g = _cnn()
    assert set(layer_sparsity(g).values()) == {0.0}
    magnitude_prune(g, 0.6, scope="layer")
    data = plot_sparsity(g, tmp_path / "sparsity.png")
    assert list(data) == [n.name for n in g.nodes if n.op.name in ("conv2d", "linear")]
    for n in g.nodes:
        if n.name in data:
            w = n.inputs[1].const
            assert data[n.name] == pytest.approx(float((w == 0).float().mean()))
            assert data[n.name] == pytest.approx(0.6, abs=0.02)
    assert (tmp_path / "sparsity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_channel_plot_compares_before_and_after(tmp_path) -> None:  # noqa: ANN001
    g = _cnn()
    p = prune_channels(g, 0.5, round_to=1)
    data = plot_channels(g, p, tmp_path / "channels.svg")
    assert data == {k: (v, layer_channels(p)[k]) for k, v in layer_channels(g).items()}
    before, after = zip(*data.values(), strict=True)
    assert before == (32, 32, 10) and after[-1] == 10 and sum(after) < sum(before)
    assert "<svg" in (tmp_path / "channels.svg").read_text()


def test_plots_of_graphs_without_layers_say_so(tmp_path) -> None:  # noqa: ANN001
    g = slimfx.trace(nn.ReLU(), (torch.randn(2, 3),))
    with pytest.raises(SlimfxError, match="no conv/linear layer"):
        plot_sparsity(g, tmp_path / "x.png")
    with pytest.raises(SlimfxError, match="share no conv/linear layer"):
        plot_channels(g, g, tmp_path / "x.png")
