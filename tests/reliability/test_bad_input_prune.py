"""Pruning under careless input: one round_to default, warnings when rounding cancels a
request, and named errors for bad arguments (reliability issue, defect 6 and the audit)."""

from __future__ import annotations

import inspect
import logging
import math

import pytest
import torch
from torch import nn

from slimfx.errors import PipelineError, PruningError
from slimfx.ir import Graph
from slimfx.passes import Pipeline
from slimfx.passes.prune import (
    PruneChannels,
    count_params,
    magnitude_prune,
    plan_channel_pruning,
    prune_channels,
)
from slimfx.passes.prune.prune_channels import DEFAULT_ROUND_TO
from tests.passes.prune.prune_nets import Net, resnet18_like, transformer_block

LOG = "slimfx.passes.prune.prune_channels"


def small_net() -> Graph:
    """x -> conv-bn-relu (8) -> conv-bn-relu (16) -> conv (4, the output): groups of 8 and 16."""
    n = Net()
    x = n.cbr(n.cbr(n.input(1, 3, 8, 8), 8), 16)
    return n.done(n.conv(x, 4))


def _out_channels(g: Graph) -> list[int]:
    return [node.inputs[1].type.shape[0] for node in g.find("conv2d")]


# --------------------------------------------------------------- one round_to default
def test_pass_and_function_share_one_round_to_default() -> None:
    defaults = {inspect.signature(f).parameters["round_to"].default
                for f in (prune_channels, plan_channel_pruning)}
    assert defaults == {PruneChannels().round_to} == {DEFAULT_ROUND_TO} == {1}


def test_default_pass_prunes_small_layers_like_the_function() -> None:
    g = small_net()
    by_pass = Pipeline("prune-channels{ratio=0.5,scope=uniform}")(g)
    assert _out_channels(by_pass) == [4, 8, 4]
    assert str(by_pass) == str(prune_channels(g, 0.5, scope="uniform"))
    assert count_params(Pipeline("prune-channels{ratio=0.5}")(g)) < 0.6 * count_params(g)


# ------------------------------------------------ warnings when rounding cancels a request
def test_round_to_larger_than_the_layers_warns_with_counts(caplog) -> None:
    g = small_net()
    with caplog.at_level(logging.WARNING, logger=LOG):
        out = Pipeline("prune-channels{ratio=0.5,scope=uniform,round_to=16}")(g)
    assert _out_channels(out) == [8, 16, 4]  # nothing could be pruned
    text = caplog.text
    assert "round_to=16 removes much less than ratio=0.5 asks in 2 group(s)" in text
    assert "group 0 (conv1[out], bn2): 4 of 8 channels asked, 0 removed" in text
    assert "group 1 (conv4[out], bn5): 8 of 16 channels asked, 0 removed" in text
    assert "lower round_to (1 prunes exactly the ratio)" in text


def test_rounding_up_that_cancels_a_small_request_warns(caplog) -> None:
    g = small_net()
    with caplog.at_level(logging.WARNING, logger=LOG):
        plan = plan_channel_pruning(g, 0.25, scope="uniform", round_to=8)
    assert not plan.pruned  # 16 - 4 = 12 rounds up to 16 kept; 8 - 2 = 6 rounds up to 8
    assert "4 of 16 channels asked, 0 removed" in caplog.text
    assert "2 of 8 channels asked, 0 removed" in caplog.text


def test_heads_report_channels_and_unit_width(caplog) -> None:
    g = transformer_block(heads=4, head_dim=8)
    with caplog.at_level(logging.WARNING, logger=LOG):
        plan_channel_pruning(g, 0.5, scope="uniform", round_to=32)
    assert "16 of 32 channels asked (units of 8), 0 removed" in caplog.text


@pytest.mark.parametrize("round_to", [1, 4])
def test_no_warning_when_rounding_achieves_the_request(caplog, round_to) -> None:
    g = small_net()
    with caplog.at_level(logging.WARNING, logger=LOG):
        out = prune_channels(g, 0.5, scope="uniform", round_to=round_to)
    assert _out_channels(out) == [4, 8, 4]
    assert "round_to" not in caplog.text


# ------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("ratio", [1.5, -0.1, 1.0, math.nan, "0.5", None, True])
def test_bad_ratio_is_named(ratio) -> None:
    with pytest.raises(PruningError, match=r"ratio=.* must lie in \[0, 1\): the share"):
        prune_channels(small_net(), ratio)


@pytest.mark.parametrize("text,message", [
    ("prune-channels{ratio=1.5}", r"ratio=1.5 must lie in \[0, 1\)"),
    ("prune-channels{ratio=-0.1}", r"ratio=-0.1 must lie in \[0, 1\)"),
    ("prune-channels{round_to=0}", "round_to=0 must be an int >= 1"),
    ("prune-channels{importance=l3}", "option 'importance' expects"),
])
def test_bad_pass_options_fail_when_the_pipeline_is_parsed(text, message) -> None:
    with pytest.raises(PipelineError, match=message) as info:
        Pipeline(text)
    assert "^" in str(info.value)  # points into the pipeline string


@pytest.mark.parametrize("round_to", [0, -8, 2.5, "8"])
def test_bad_round_to_is_named(round_to) -> None:
    with pytest.raises(PruningError, match=rf"round_to={round_to!r} must be an int >= 1"):
        prune_channels(small_net(), 0.5, round_to=round_to)


def test_bad_importance_and_scope_are_named() -> None:
    g = small_net()
    with pytest.raises(PruningError, match="unknown importance 'l3'; choose one of l1, l2, "
                       "bn-scale"):
        prune_channels(g, 0.5, importance="l3")
    with pytest.raises(PruningError, match="scope='local'; choose global or uniform"):
        prune_channels(g, 0.5, scope="local")


def test_protect_accepts_one_name_and_refuses_non_names() -> None:
    g = resnet18_like()
    assert str(prune_channels(g, 0.5, protect="conv5")) == \
        str(prune_channels(g, 0.5, protect=["conv5"]))
    with pytest.raises(PruningError, match="protect holds node names.*got 5"):
        prune_channels(g, 0.5, protect=[5])


def test_torch_module_instead_of_a_graph() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
    with pytest.raises(PruningError, match=r"graph is a torch module \(Sequential\).*"
                       r"slimfx.trace\(model, example_inputs\)"):
        prune_channels(model, 0.5)
    with pytest.raises(PruningError, match=r"graph is a Sequential.*slimfx.trace"):
        magnitude_prune(model, 0.5)


@pytest.mark.parametrize("kwargs,message", [
    (dict(sparsity=1.5), r"sparsity=1.5 must lie in \[0, 1\)"),
    (dict(sparsity="0.5"), r"sparsity='0.5' must lie in \[0, 1\)"),
    (dict(sparsity=0.5, scope="local"), "scope='local'; choose global .* or layer"),
    (dict(sparsity=0.5, exclude=["("]), r"exclude '\(' is not a regex"),
])
def test_bad_magnitude_arguments_are_named(kwargs, message) -> None:
    with pytest.raises(PruningError, match=message):
        magnitude_prune(small_net(), **kwargs)


def test_magnitude_takes_one_exclude_or_override_string_as_one() -> None:
    a, b = small_net(), small_net()
    magnitude_prune(a, 0.5, exclude="conv1", overrides="conv7=0.9")
    magnitude_prune(b, 0.5, exclude=["conv1"], overrides=["conv7=0.9"])
    w = {v.name: v for v in a.constants.values()}
    assert w["conv1.weight"].mask is None  # excluded: left dense
    assert float((w["conv7.weight"].const == 0).float().mean()) == pytest.approx(0.9, abs=0.01)
    for name, v in w.items():
        assert torch.equal(v.const, b.constants[name].const), name
