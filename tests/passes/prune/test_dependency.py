"""Channel dependency groups: coupling through residuals, concat/split, depthwise, heads."""

from __future__ import annotations

import json

import torch

from slimfx.ir import Graph
from slimfx.passes import PassContext
from slimfx.passes.prune import ChannelDependencyAnalysis, analyze_channels
from tests.passes.prune.prune_nets import (
    Net,
    densenet_like,
    mobilenetv2_like,
    resnet18_like,
    split_groupnorm_net,
    transformer_block,
)


def _group_of(graph: Graph, node: str) -> int:
    deps = analyze_channels(graph)
    roots = deps.roots(node)
    assert roots is not None, f"%{node} is not tracked"
    return deps.group_of[roots[0]]


def test_residual_add_couples_both_branches() -> None:
    g = resnet18_like()
    deps = analyze_channels(g)
    # stem conv1, both blocks' second convs of stage 1 and the residual adds share one group
    assert _group_of(g, "conv1") == _group_of(g, "conv8") == _group_of(g, "add10")
    assert _group_of(g, "conv1") == _group_of(g, "conv15")
    # the first conv of a block is free on its own
    assert _group_of(g, "conv5") != _group_of(g, "conv1")
    # stage 2: its downsample conv joins the block's second conv, not the stem
    assert _group_of(g, "conv22") == _group_of(g, "conv24") == _group_of(g, "conv31")
    assert _group_of(g, "conv22") != _group_of(g, "conv1")
    # members printed in the table; the classifier output is excluded with a reason
    table = deps.table(max_members=100)
    assert "conv1[out]" in table and "add10" in table
    last = deps.groups[-1]
    assert last.excluded.endswith("graph output") and not last.prunable


def test_depthwise_conv_shares_the_expand_group() -> None:
    g = mobilenetv2_like()
    dw = [n for n in g.find("conv2d") if n.attrs["groups"] > 1]
    assert dw
    for node in dw:
        expand = node.inputs[0].producer.inputs[0].producer.inputs[0].producer  # relu6<-bn<-conv
        assert _group_of(g, node.name) == _group_of(g, expand.name)


def test_grouped_conv_is_excluded_with_reason() -> None:
    n = Net()
    x = n.cbr(n.input(1, 3, 8, 8), 16)
    y = n.conv(x, 16, 3, groups=4)
    g = n.done(n.head(y))
    deps = analyze_channels(g)
    grp = deps.groups[deps.group_of[deps.roots("conv1")[0]]]
    assert not grp.prunable and "grouped convolution (groups=4" in grp.excluded


def test_concat_offsets_and_split() -> None:
    g = densenet_like()
    deps = analyze_channels(g)
    cat = g.find("cat")[0]
    roots = deps.roots(cat.name)
    a, b = (deps.roots(v.name) for v in cat.inputs)
    assert roots == a + b  # positions of the concat are the operands' positions in order
    g2 = split_groupnorm_net()
    deps2 = analyze_channels(g2)
    split = g2.find("split")[0]
    assert deps2.roots(split.outputs[0].name) == deps2.roots(split.inputs[0].name)[:24]
    assert deps2.roots(split.outputs[1].name) == deps2.roots(split.inputs[0].name)[24:]


def test_group_norm_prunes_whole_groups() -> None:
    g = split_groupnorm_net()
    deps = analyze_channels(g)
    gn = g.find("group_norm")[0]
    roots = deps.roots(gn.name)
    assert len(set(roots)) == 4 and roots == sorted(roots)  # 16 channels, 4 groups of 4
    assert deps.groups[deps.group_of[roots[0]]].width == 4


def test_flatten_into_linear_expands_channels() -> None:
    n = Net()
    x = n.cbr(n.input(2, 3, 4, 4), 8)
    flat = n.op("reshape", [x], shape=[2, 8 * 16])
    g = n.done(n.linear(flat, 5))
    deps = analyze_channels(g)
    roots = deps.roots(flat.name)
    conv = deps.roots("conv1")
    assert roots == [c for c in conv for _ in range(16)]


def test_attention_heads_and_ffn_groups() -> None:
    g = transformer_block(heads=4, head_dim=8, ffn=64)
    deps = analyze_channels(g)
    heads = [grp for grp in deps.groups if grp.width == 8]
    assert len(heads) == 1 and len(heads[0].atoms) == 4 and len(heads[0].prunable) == 4
    assert any(m.startswith("sdpa") for m in heads[0].members)
    ffn = [grp for grp in deps.groups if len(grp.atoms) == 64]
    assert len(ffn) == 1 and ffn[0].prunable
    # the residual stream is excluded: it ends in a layer norm and the graph output
    blocked = [grp for grp in deps.groups if grp.excluded]
    assert blocked and all(not grp.prunable for grp in blocked)


def test_opaque_consumer_and_unknown_reshape_block() -> None:
    n = Net()
    x = n.cbr(n.input(1, 3, 8, 8), 8)
    y = n.cbr(x, 8)
    spec = json.dumps({"args": [{"$in": 0}], "kwargs": {}})
    o = n.g.create("opaque", [y], dict(target="torch.nn.functional.relu", spec=spec),
                   types=[y.type], name="opq").output
    c = n.cbr(o, 8)
    z = n.op("reshape", [c], shape=[1, 4, 128])  # splits channels oddly
    g = n.done(n.op("sum", [z], axes=[1, 2]))
    deps = analyze_channels(g)
    reasons = {grp.id: grp.excluded for grp in deps.groups}
    assert "no channel rule" in reasons[deps.group_of[deps.roots(y.name)[0]]]
    assert "unknown reshape" in reasons[deps.group_of[deps.roots(c.name)[0]]]
    assert deps.groups[deps.group_of[deps.roots("conv1")[0]]].prunable  # the first one is free


def test_layer_norm_over_channels_blocks() -> None:
    n = Net()
    x = n.linear(n.input(2, 6), 12)
    w = n.g.add_constant(torch.ones(12), "ln.weight")
    y = n.op("layer_norm", [x, w], normalized_shape=[12], eps=1e-5)
    g = n.done(n.linear(y, 3))
    deps = analyze_channels(g)
    assert "normalizes over the channels" in deps.groups[0].excluded


def test_analysis_is_cached_by_the_pass_context() -> None:
    g = resnet18_like()
    ctx = PassContext()
    a = ctx.analysis(g, ChannelDependencyAnalysis)
    assert ctx.analysis(g, ChannelDependencyAnalysis) is a
    assert len(a.groups) == len(analyze_channels(g).groups)
