"""dce, fold-constants, remove-identity and the cleanup pipeline: golden IR, numerics, negatives."""

from __future__ import annotations

import torch
from torch import nn

from slimfx.ir import Graph, TensorType, parse
from slimfx.passes import Pipeline
from slimfx.passes.fold_constants import FoldConstants
from tests.passes.pass_helpers import assert_same_outputs, ir_from_sequential, roundtrip, run_graph

DCE_BEFORE = """\
graph @main(%x: f32[2,3]) {
  const %unused : f32[3] = dense<[1.0,2.0,3.0]>
  const %one : f32[] = dense<[1.0]>
  %dead1 = exp(%x) : f32[2,3]
  %dead2 = add(%dead1, %unused) : f32[2,3]
  %live = add(%x, %one) : f32[2,3]
  %op = opaque(%x) {target="aten.sin.default", spec="{\\"args\\": [{\\"$in\\": 0}], \\"kwargs\\": {}}"} : f32[2,3]
  return %live
}
"""

DCE_AFTER = """\
graph @main(%x: f32[2,3]) {
  const %one : f32[] = dense<[1.0]>
  %live = add(%x, %one) : f32[2,3]
  %op = opaque(%x) {target="aten.sin.default", spec="{\\"args\\": [{\\"$in\\": 0}], \\"kwargs\\": {}}"} : f32[2,3]
  return %live
}
"""


def test_dce_golden() -> None:
    g = parse(DCE_BEFORE)
    out = Pipeline("dce")(g)
    assert str(out) == DCE_AFTER  # the opaque node may have effects: kept
    roundtrip(out)
    x = torch.randn(2, 3)
    assert_same_outputs(run_graph(out, x), x + 1)
    assert Pipeline("dce").run(out).changed is False


def test_dce_keeps_constants_when_asked() -> None:
    out = Pipeline("dce{constants=false}")(parse(DCE_BEFORE))
    assert set(out.constants) == {"unused", "one"}


FOLD_BEFORE = """\
graph @main(%x: f32[2,3]) {
  const %a : f32[3] = dense<[1.0,2.0,3.0]>
  const %b : f32[3] = dense<[0.5,0.5,0.5]>
  %s = mul(%a, %b) : f32[3]
  %e = exp(%s) : f32[3]
  %parts.0, %parts.1 = split(%e) {axis=0, sizes=[1,2]} : f32[1], f32[2]
  %y = add(%x, %e) : f32[2,3]
  %z = mul(%y, %parts.0) : f32[2,3]
  return %z
}
"""

FOLD_AFTER = """\
graph @main(%x: f32[2,3]) {
  const %e : f32[3]
  const %parts.0 : f32[1]
  %y = add(%x, %e) : f32[2,3]
  %z = mul(%y, %parts.0) : f32[2,3]
  return %z
}
"""


def test_fold_constants_golden_and_numerics() -> None:
    g = parse(FOLD_BEFORE)
    out = Pipeline("fold-constants,dce")(g)
    assert out.format(inline_limit=0) == FOLD_AFTER
    e = torch.exp(torch.tensor([0.5, 1.0, 1.5]))
    torch.testing.assert_close(out.constants["e"].const, e)
    torch.testing.assert_close(out.constants["parts.0"].const, e[:1])
    x = torch.randn(2, 3)
    assert_same_outputs(run_graph(out, x), run_graph(g, x))
    roundtrip(out)


def test_fold_constants_size_limit_and_non_constant_inputs() -> None:
    g = parse(FOLD_BEFORE)
    out = Pipeline("fold-constants{max_numel=2}")(g)
    # mul/exp make 3 elements: over the limit; nothing folds, nothing changes
    assert str(out) == str(g)
    node = g.node("y")
    assert not FoldConstants().foldable(node)  # %x is an input
    assert not FoldConstants(max_numel=2).foldable(g.node("s"))
    assert FoldConstants().foldable(g.node("s"))


def test_fold_constants_leaves_opaque_alone() -> None:
    g = Graph()
    c = g.add_constant(torch.ones(2), "c")
    spec = '{"args": [{"$in": 0}], "kwargs": {}}'
    node = g.create("opaque", [c], dict(target="torch.sin", spec=spec), [TensorType((2,))],
                    name="op")
    g.set_outputs(node.outputs)
    assert Pipeline("fold-constants").run(g).changed is False


IDENTITY_BEFORE = """\
graph @main(%x: f32[2,3]) {
  %a = identity(%x) : f32[2,3]
  %b = dropout(%a) {p=0.1} : f32[2,3]
  %c = reshape(%b) {shape=[2,3]} : f32[2,3]
  %d = permute(%c) {dims=[0,1]} : f32[2,3]
  %e = cast(%d) {dtype="f32"} : f32[2,3]
  %f = relu(%e) : f32[2,3]
  %g = permute(%f) {dims=[1,0]} : f32[3,2]
  %h = reshape(%g) {shape=[6]} : f32[6]
  %i = cast(%h) {dtype="f16"} : f16[6]
  return %i, %e
}
"""

IDENTITY_AFTER = """\
graph @main(%x: f32[2,3]) {
  %f = relu(%x) : f32[2,3]
  %g = permute(%f) {dims=[1,0]} : f32[3,2]
  %h = reshape(%g) {shape=[6]} : f32[6]
  %i = cast(%h) {dtype="f16"} : f16[6]
  return %i, %x
}
"""


def test_remove_identity_golden() -> None:
    g = parse(IDENTITY_BEFORE)
    out = Pipeline("remove-identity")(g)
    assert str(out) == IDENTITY_AFTER
    x = torch.randn(2, 3)
    for a, b in zip(run_graph(out, x), run_graph(g, x), strict=True):
        assert_same_outputs(a, b)
    assert Pipeline("remove-identity").run(out).changed is False


def test_remove_identity_numerics_against_module() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.3), nn.Identity(), nn.ReLU()).eval()
    g = ir_from_sequential(model, (2, 4))
    out = Pipeline("cleanup")(g)
    assert [n.op.name for n in out.nodes] == ["linear", "relu"]
    x = torch.randn(2, 4)
    with torch.no_grad():
        assert_same_outputs(run_graph(out, x), model(x))
