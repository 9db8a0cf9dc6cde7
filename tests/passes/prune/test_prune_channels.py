"""prune-channels: weights sliced, attrs fixed, verify() passes, output == masked original."""

from __future__ import annotations

import pytest
import torch

from slimfx.errors import PruningError
from slimfx.ir import parse
from slimfx.passes import Pipeline
from slimfx.passes.prune import (
    analyze_channels,
    count_macs,
    count_params,
    plan_channel_pruning,
    prune_channels,
)
from tests.passes.prune.prune_nets import (
    Net,
    densenet_like,
    flatten_cnn,
    mobilenetv2_like,
    prune_and_check,
    resnet18_like,
    resnet50_like,
    run,
    split_groupnorm_net,
    transformer_block,
)

NETS = [resnet18_like, resnet50_like, mobilenetv2_like, densenet_like, flatten_cnn,
        split_groupnorm_net, transformer_block]


@pytest.mark.parametrize("build", NETS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("scope", ["global", "uniform"])
def test_pruned_equals_masked_original(build, scope) -> None:
    g = build()
    pruned, _ = prune_and_check(g, 0.5, scope=scope)
    assert count_params(pruned) < 0.75 * count_params(g)
    assert count_macs(pruned) < 0.75 * count_macs(g)
    assert [v.type for v in pruned.outputs] == [v.type for v in g.outputs]


def test_flatten_cnn_exact_reduction() -> None:
    """Uniform 50%: conv1 1->8, conv2 8->16, fc1 (16*3*3)->32, fc2 32->10."""
    g = flatten_cnn()
    pruned, _ = prune_and_check(g, 0.5, scope="uniform")
    shapes = {v.name: v.type.shape for v in pruned.constants.values()}
    assert shapes["conv1.weight"] == (8, 1, 3, 3)
    assert shapes["conv5.weight"] == (16, 8, 3, 3)
    assert shapes["bn6.running_var"] == (16,)
    assert shapes["fc10.weight"] == (32, 16 * 9)
    assert shapes["fc12.weight"] == (10, 32)
    assert pruned.node("reshape9").attrs["shape"] == (2, 144)
    macs = (2 * 12 * 12 * 8 * 9) + (2 * 6 * 6 * 16 * 8 * 9) + 2 * 32 * 144 + 2 * 10 * 32
    assert count_macs(pruned) == macs
    assert count_macs(g) == (2 * 144 * 16 * 9) + (2 * 36 * 32 * 16 * 9) + 2 * 64 * 288 + 2 * 640


def test_resnet_uniform_halves_every_inner_conv() -> None:
    g = resnet18_like()
    pruned, _ = prune_and_check(g, 0.5, scope="uniform")
    for node in pruned.find("conv2d"):
        orig = g.node(node.name).inputs[1].type.shape
        new = node.inputs[1].type.shape
        assert new[0] == orig[0] // 2
        assert new[1] == (orig[1] if node.name == "conv1" else orig[1] // 2)
    ratio = count_macs(pruned) / count_macs(g)
    assert 0.25 <= ratio < 0.3  # inner convs 1/4, the stem conv 1/2


def test_depthwise_groups_and_split_slice_attrs_follow() -> None:
    g = mobilenetv2_like()
    pruned, _ = prune_and_check(g, 0.5, scope="uniform")
    for node in pruned.find("conv2d"):
        if g.node(node.name).attrs["groups"] > 1:
            assert node.attrs["groups"] == node.inputs[0].type.shape[1] == \
                node.outputs[0].type.shape[1] == g.node(node.name).attrs["groups"] // 2
    g2 = split_groupnorm_net()
    pruned2, _ = prune_and_check(g2, 0.5, scope="uniform")
    split = pruned2.find("split")[0]
    assert sum(split.attrs["sizes"]) == split.inputs[0].type.shape[1] < 32
    assert min(split.attrs["sizes"]) >= 1  # a part that would be emptied keeps its best channel
    gn = pruned2.find("group_norm")[0]
    assert gn.attrs["num_groups"] == 2 and gn.inputs[0].type.shape[1] == 8
    sl = pruned2.find("slice")[0]
    assert 0 <= sl.attrs["start"] < sl.attrs["end"] <= sl.inputs[0].type.shape[1]


def test_attention_prunes_whole_heads_and_ffn() -> None:
    g = transformer_block(heads=4, head_dim=8, ffn=64, layers=2)
    pruned, _ = prune_and_check(g, 0.5, scope="uniform")
    for r in pruned.find("reshape"):
        if r.outputs[0].type.rank == 4:
            assert r.attrs["shape"][2] == 2 and r.attrs["shape"][3] == 8  # 2 of 4 heads
    shapes = [n.inputs[1].type.shape for n in pruned.find("linear")]
    # per layer: q, k, v keep 2 heads x 8 rows; out proj keeps 16 columns; FFN 64 -> 32
    assert shapes == [(16, 32)] * 3 + [(32, 16), (32, 32), (32, 32)] + \
        [(16, 32)] * 3 + [(32, 16), (32, 32), (32, 32)]
    assert count_macs(pruned) == pytest.approx(count_macs(g) / 2, rel=0.01)


def test_round_to_keeps_multiples() -> None:
    g = resnet18_like(width=32)
    plan = plan_channel_pruning(g, 0.3, round_to=8)
    pruned, _ = prune_and_check(g, 0.3, round_to=8)
    for node in pruned.find("conv2d"):
        assert node.inputs[1].type.shape[0] % 8 == 0
    assert plan.pruned


def test_heads_round_to_counts_head_width() -> None:
    g = transformer_block(heads=4, head_dim=8)
    plan = plan_channel_pruning(g, 0.5, round_to=16, scope="uniform")
    deps = plan.deps
    heads = next(grp for grp in deps.groups if grp.width == 8)
    assert sum(1 for a in heads.atoms if a in plan.pruned) == 2  # 2 heads = 16 features kept


def test_bn_scale_and_callable_importance() -> None:
    g = resnet18_like()
    prune_and_check(g, 0.5, importance="bn-scale")
    seen = []

    def rank_by_index(role, name, m):
        seen.append(role)
        return torch.arange(m.shape[0], dtype=torch.float32) if role == "out" else None

    plan = plan_channel_pruning(g, 0.5, importance=rank_by_index, scope="uniform")
    deps = plan.deps
    roots = deps.roots("conv5")
    assert all(r in plan.pruned for r in roots[:8]) and not any(r in plan.pruned for r in roots[8:])
    assert "out" in seen and "in" in seen


def test_l1_removes_the_weakest_channels() -> None:
    n = Net()
    x = n.cbr(n.input(1, 3, 8, 8), 8)
    y = n.conv(x, 4)
    g = n.done(y)
    w = g.constants["conv1.weight"]
    w.const = w.const.clone()
    w.const[[1, 5]] *= 1e-3  # two weak output channels
    plan = plan_channel_pruning(g, 0.25, scope="uniform")
    roots = plan.deps.roots("conv1")
    assert {i for i, r in enumerate(roots) if r in plan.pruned} == {1, 5}


def test_protect_keeps_channels() -> None:
    g = resnet18_like()
    pruned = prune_channels(g, 0.5, protect=["conv5"])
    assert pruned.node("conv5").inputs[1].type.shape[0] == 16
    assert pruned.node("conv12").inputs[1].type.shape[0] < 16


BEFORE = """\
graph @main(%x: f32[1,2,4,4]) {
  const %w1 : f32[4,2,1,1]
  const %b1 : f32[4]
  const %w2 : f32[3,4,1,1]
  %c1 = conv2d(%x, %w1, %b1) {stride=[1,1], padding=[0,0], dilation=[1,1], groups=1, act_min=none, act_max=none} : f32[1,4,4,4]
  %r = relu(%c1) : f32[1,4,4,4]
  %c2 = conv2d(%r, %w2) {stride=[1,1], padding=[0,0], dilation=[1,1], groups=1, act_min=none, act_max=none} : f32[1,3,4,4]
  return %c2
}
"""

AFTER = """\
graph @main(%x: f32[1,2,4,4]) {
  const %w1 : f32[3,2,1,1]
  const %b1 : f32[3]
  const %w2 : f32[3,3,1,1]
  %c1 = conv2d(%x, %w1, %b1) {stride=[1,1], padding=[0,0], dilation=[1,1], groups=1, act_min=none, act_max=none} : f32[1,3,4,4]
  %r = relu(%c1) : f32[1,3,4,4]
  %c2 = conv2d(%r, %w2) {stride=[1,1], padding=[0,0], dilation=[1,1], groups=1, act_min=none, act_max=none} : f32[1,3,4,4]
  return %c2
}
"""


def test_pass_in_pipeline_golden_ir() -> None:
    g = parse(BEFORE)
    gen = torch.Generator().manual_seed(0)
    for v in g.constants.values():
        v.const = torch.randn(v.type.shape, generator=gen)
    g.constants["w1"].const[2] = 0.0  # the weakest channel by L1 (also in w2's columns)
    g.constants["w2"].const[:, 2] = 0.0
    out = Pipeline.parse("prune-channels{ratio=0.25,round_to=1,scope=uniform}")(g)
    assert out.format(inline_limit=0) == AFTER
    torch.testing.assert_close(out.constants["w1"].const, g.constants["w1"].const[[0, 1, 3]])
    x = torch.randn(1, 2, 4, 4)
    torch.testing.assert_close(run(out, x), run(g, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_bad_ratio(ratio) -> None:
    with pytest.raises(PruningError, match=r"ratio=.* must lie in \[0, 1\)"):
        prune_channels(resnet18_like(), ratio)


def test_unknown_protected_name() -> None:
    with pytest.raises(PruningError, match="no node named 'layer9.conv'"):
        prune_channels(resnet18_like(), 0.5, protect=["layer9.conv"])


def test_everything_protected() -> None:
    n = Net()
    x = n.conv(n.input(1, 3, 8, 8), 8)
    g = n.done(x)
    with pytest.raises(PruningError, match="every channel is protected or excluded.*graph output"):
        prune_channels(g, 0.5)
    g2 = resnet18_like()
    names = [nd.name for nd in g2.nodes]
    with pytest.raises(PruningError, match="every channel is protected"):
        prune_channels(g2, 0.5, protect=names)


def test_ratio_zero_changes_nothing() -> None:
    g = resnet18_like()
    assert not plan_channel_pruning(g, 0.0).pruned
    out = Pipeline.parse("prune-channels{ratio=0.0}")(g)
    assert count_params(out) == count_params(g)


def test_original_graph_untouched() -> None:
    g = densenet_like()
    before = str(g)
    prune_channels(g, 0.5)
    assert str(g) == before
    assert analyze_channels(g).groups
