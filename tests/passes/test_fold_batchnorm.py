"""fold-bn: golden IR, numerics against nn.Module, refusals with reasons, idempotence."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from slimfx.errors import PassError
from slimfx.ir import Graph, TensorType, parse
from slimfx.passes import PassContext, Pipeline
from slimfx.passes.fold_batchnorm import FoldBatchNorm, fold_bn_weights
from slimfx.passes.rewriter import apply_rules, explain
from tests.passes.pass_helpers import (
    assert_same_outputs,
    ir_from_sequential,
    randomize_bn,
    roundtrip,
    run_graph,
)

BEFORE = """\
graph @main(%x: f32[1,3,8,8]) {
  const %conv.weight : f32[4,3,3,3]
  const %conv.bias : f32[4]
  const %bn.running_mean : f32[4]
  const %bn.running_var : f32[4]
  const %bn.weight : f32[4]
  const %bn.bias : f32[4]
  %conv = conv2d(%x, %conv.weight, %conv.bias) {stride=[1,1], padding=[1,1], dilation=[1,1], groups=1, act_min=none, act_max=none} : f32[1,4,8,8]
  %bn = batch_norm(%conv, %bn.running_mean, %bn.running_var, %bn.weight, %bn.bias) {eps=1e-05} : f32[1,4,8,8]
  %relu = relu(%bn) : f32[1,4,8,8]
  return %relu
}
"""

AFTER = """\
graph @main(%x: f32[1,3,8,8]) {
  const %conv.weight_folded : f32[4,3,3,3]
  const %conv.bias_folded : f32[4]
  %conv = conv2d(%x, %conv.weight_folded, %conv.bias_folded) {stride=[1,1], padding=[1,1], dilation=[1,1], groups=1, act_min=none, act_max=none} : f32[1,4,8,8]
  %relu = relu(%conv) : f32[1,4,8,8]
  return %relu
}
"""


def conv_bn_relu() -> nn.Sequential:
    torch.manual_seed(0)
    return randomize_bn(nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3, padding=1),
                                                  bn=nn.BatchNorm2d(4), relu=nn.ReLU())))


def test_golden_and_numerics() -> None:
    model = conv_bn_relu()
    g = ir_from_sequential(model, (1, 3, 8, 8))
    assert g.format(inline_limit=0) == BEFORE
    out = Pipeline("fold-bn,dce")(g)
    assert out.format(inline_limit=0) == AFTER
    roundtrip(out)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert_same_outputs(run_graph(out, x), model(x))


@pytest.mark.parametrize("build", [
    lambda: nn.Sequential(nn.Conv1d(3, 6, 3, groups=3, bias=False), nn.BatchNorm1d(6)),
    lambda: nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, groups=2), nn.BatchNorm2d(6)),
    lambda: nn.Sequential(nn.Conv2d(4, 6, 1), nn.BatchNorm2d(6, affine=False)),
    lambda: nn.Sequential(nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), nn.BatchNorm2d(6)),
    lambda: nn.Sequential(nn.ConvTranspose2d(3, 5, 2, bias=False), nn.BatchNorm2d(5)),
    lambda: nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7)),
], ids=["conv1d-depthwise", "conv2d-groups", "bn-no-affine", "convT-groups", "convT-nobias",
        "linear"])
def test_numerics_per_producer(build) -> None:  # noqa: ANN001
    torch.manual_seed(1)
    model = randomize_bn(build())
    first = model[0]
    if isinstance(first, nn.Linear):
        shape: tuple[int, ...] = (3, first.in_features)
    elif isinstance(first, nn.Conv1d):
        shape = (2, first.in_channels, 9)
    else:
        shape = (2, first.in_channels, 6, 6)
    g = ir_from_sequential(model, shape)
    out = Pipeline("fold-bn,dce")(g)
    assert [n.op.name for n in out.nodes] == [g.nodes[0].op.name]
    x = torch.randn(shape)
    with torch.no_grad():
        assert_same_outputs(run_graph(out, x), model(x), atol=1e-4)


def test_fold_bn_weights_matches_torch_fusion() -> None:
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 4, 3)
    bn = randomize_bn(nn.BatchNorm2d(4))
    fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv.eval(), bn)
    w, b = fold_bn_weights("conv2d", conv.weight.detach(), conv.bias.detach(), 1,
                           bn.running_mean, bn.running_var, bn.weight.detach(), bn.bias.detach(),
                           bn.eps)
    torch.testing.assert_close(w, fused.weight.detach())
    torch.testing.assert_close(b, fused.bias.detach())


def test_idempotent() -> None:
    g = Pipeline("fold-bn")(ir_from_sequential(conv_bn_relu(), (1, 3, 8, 8)))
    assert Pipeline("fold-bn").run(g).changed is False


# ---------------------------------------------------------------- refusals
def refusal(g: Graph) -> list[str]:
    ctx = PassContext()
    result = Pipeline("fold-bn").run(g, ctx)
    assert result.changed is False
    return [r.reason for r in ctx.refusals]


def test_refuses_when_conv_output_has_other_users() -> None:
    g = ir_from_sequential(conv_bn_relu(), (1, 3, 8, 8))
    g.set_outputs([g.outputs[0], g.value("conv")])
    assert refusal(g) == ["the result %conv of conv2d is also used by the graph outputs; "
                          "folding would change what they see"]
    g = ir_from_sequential(conv_bn_relu(), (1, 3, 8, 8))
    g.set_outputs([g.outputs[0], g.add("sigmoid", [g.value("conv")], name="side")])
    assert refusal(g) == ["the result %conv of conv2d is also used by %side; "
                          "folding would change what they see"]


def test_refuses_shared_weight() -> None:
    g = ir_from_sequential(conv_bn_relu(), (1, 3, 8, 8))
    w = g.constants["conv.weight"]
    g.set_outputs([g.outputs[0], g.add("conv2d", [g.inputs[0], w],
                                       dict(stride=[1, 1], padding=[1, 1], dilation=[1, 1]),
                                       name="twin")])
    assert refusal(g) == ["the weight %conv.weight is shared with %twin; "
                          "folding would change that node too"]


def test_refuses_non_constant_weight_and_stats() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((2, 3)))
    w = g.add_input("w", TensorType((4, 3)))
    y = g.add("linear", [x, w], name="fc")
    stats = [g.add_constant(torch.ones(4), n) for n in ("mean", "var")]
    g.set_outputs([g.add("batch_norm", [y, *stats], name="bn")])
    assert refusal(g) == ["the weight %w of %fc is not a constant"]
    assert FoldBatchNorm().explain(g, "fc") == [
        "fold-bn at %fc: %fc comes from linear, not batch_norm",
        "fold-bn at %bn: the weight %w of %fc is not a constant"]

    g = parse("""\
graph @main(%x: f32[2,3], %m: f32[4]) {
  const %w : f32[4,3]
  const %v : f32[4] = dense<[1.0,1.0,1.0,1.0]>
  %fc = linear(%x, %w) {act_min=none, act_max=none} : f32[2,4]
  %bn = batch_norm(%fc, %m, %v) {eps=1e-05} : f32[2,4]
  return %bn
}
""")
    assert refusal(g) == ["the batch-norm parameter %m of %bn is not a constant"]


def test_refuses_fused_activation_and_3d_linear() -> None:
    g = ir_from_sequential(conv_bn_relu(), (1, 3, 8, 8))
    g.node("conv").set_attrs(act_min=0.0)
    assert refusal(g) == ["%conv has a fused activation; the batch norm comes after it"]

    g = Graph()
    x = g.add_input("x", TensorType((2, 4, 3)))
    y = g.add("linear", [x, g.add_constant(torch.randn(5, 3), "w")], name="fc")
    stats = [g.add_constant(torch.ones(4), n) for n in ("mean", "var")]
    g.set_outputs([g.add("batch_norm", [y, *stats], name="bn")])
    assert refusal(g) == ["linear %fc has a rank-3 result; batch_norm then normalizes axis 1, "
                          "which is not the feature axis"]


def test_driver_reports_refusals() -> None:
    g = ir_from_sequential(conv_bn_relu(), (1, 3, 8, 8))
    g.set_outputs([g.outputs[0], g.value("conv")])
    result = apply_rules(g, FoldBatchNorm().rules())
    assert not result.changed and result.applied == {}
    assert [str(r) for r in result.refusals] == [
        "fold-bn did not fire at %bn: the result %conv of conv2d is also used by the graph "
        "outputs; folding would change what they see"]


def test_explain_by_pass_name() -> None:
    g = ir_from_sequential(conv_bn_relu(), (1, 3, 8, 8))
    assert explain(g, "fold-bn", "bn") == ["fold-bn at %bn: would fire"]
    g.set_outputs([g.outputs[0], g.value("conv")])
    assert explain(g, "fold-bn", "conv") == [
        "fold-bn at %conv: %conv comes from conv2d, not batch_norm",
        "fold-bn at %bn: the result %conv of conv2d is also used by the graph outputs; "
        "folding would change what they see"]
    with pytest.raises(PassError, match="'dce' is not a RewritePass"):
        explain(g, "dce", "bn")
