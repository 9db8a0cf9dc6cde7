"""fuse-activation: golden IR, numerics against nn.Module, range composition, refusals."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from slimfx.ir import parse
from slimfx.passes import PassContext, Pipeline
from slimfx.passes.fuse_activation import FuseActivation, intersect
from tests.passes.pass_helpers import (
    assert_same_outputs,
    ir_from_sequential,
    randomize_bn,
    roundtrip,
    run_graph,
)

BEFORE = """\
graph @main(%x: f32[2,8]) {
  const %w : f32[4,8]
  %fc = linear(%x, %w) {act_min=none, act_max=none} : f32[2,4]
  %act = relu6(%fc) : f32[2,4]
  %clip = clamp(%act) {min=-1.0, max=3.0} : f32[2,4]
  return %clip
}
"""

AFTER = """\
graph @main(%x: f32[2,8]) {
  const %w : f32[4,8]
  %fc = linear(%x, %w) {act_min=0.0, act_max=3.0} : f32[2,4]
  return %fc
}
"""


def test_golden_composes_ranges() -> None:
    g = parse(BEFORE, {"w": torch.randn(4, 8)})
    out = Pipeline("fuse-activation")(g)
    assert out.format(inline_limit=0) == AFTER
    roundtrip(out)
    x = torch.randn(2, 8) * 4
    assert_same_outputs(run_graph(out, x), run_graph(g, x))


@pytest.mark.parametrize("act", [nn.ReLU(), nn.ReLU6(), nn.Hardtanh(-0.5, 0.25)],
                         ids=["relu", "relu6", "hardtanh"])
def test_numerics_against_module(act: nn.Module) -> None:
    torch.manual_seed(0)
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), act,
                                       nn.Flatten(), nn.Linear(4 * 36, 5), nn.ReLU()))
    g = ir_from_sequential(model, (2, 3, 8, 8))
    out = Pipeline("fold-bn,fuse-conv-relu,cleanup")(g)
    assert [n.op.name for n in out.nodes] == ["conv2d", "reshape", "linear"]
    assert out.nodes[2].attrs["act_min"] == 0.0
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert_same_outputs(run_graph(out, x), model(x), atol=1e-4)


def test_intersect() -> None:
    assert intersect((None, None), (0.0, None)) == (0.0, None)
    assert intersect((0.0, 6.0), (-1.0, 3.0)) == (0.0, 3.0)
    assert intersect((None, 2.0), (1.0, math.inf)) == (1.0, 2.0)
    assert intersect((0.0, 1.0), (2.0, 3.0)) is None


def test_refuses_other_users() -> None:
    g = parse("""\
graph @main(%x: f32[2,8]) {
  const %w : f32[4,8]
  %fc = linear(%x, %w) {act_min=none, act_max=none} : f32[2,4]
  %act = relu(%fc) : f32[2,4]
  %other = sigmoid(%fc) : f32[2,4]
  return %act, %other
}
""")
    ctx = PassContext()
    assert Pipeline("fuse-activation").run(g, ctx).changed is False
    assert [r.reason for r in ctx.refusals] == [
        "the result %fc of linear is also used by %other, which must see it before the "
        "activation"]
    assert FuseActivation().explain(g, "act") == [
        "fuse-activation at %act: the result %fc of linear is also used by %other, which must "
        "see it before the activation"]


def test_refuses_disjoint_ranges_and_non_fusable_producers() -> None:
    g = parse("""\
graph @main(%x: f32[2,8]) {
  const %w : f32[4,8]
  %fc = linear(%x, %w) {act_min=0.0, act_max=1.0} : f32[2,4]
  %act = clamp(%fc) {min=2.0, max=3.0} : f32[2,4]
  %n = neg(%act) : f32[2,4]
  %r = relu(%n) : f32[2,4]
  return %r
}
""")
    ctx = PassContext()
    assert Pipeline("fuse-activation").run(g, ctx).changed is False
    assert [r.reason for r in ctx.refusals] == [
        "the fused range (0.0, 1.0) of %fc and the range (2.0, 3.0) of %act do not overlap"]
    assert FuseActivation().explain(g, "r") == [
        "fuse-activation at %r: operand 0 of %r: %n comes from neg, not fusable_activation"]


def test_idempotent() -> None:
    g = Pipeline("fuse-activation")(parse(BEFORE))
    assert Pipeline("fuse-activation").run(g).changed is False
