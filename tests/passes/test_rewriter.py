"""The pattern rewriter: patterns, constraints, the worklist driver, listeners and explain."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from slimfx.errors import PassError
from slimfx.ir import Graph, Node, Trait, Value, parse
from slimfx.passes import Pipeline, register_pass
from slimfx.passes.rewriter import (
    Match,
    Pattern,
    RewriteListener,
    RewritePass,
    Rewriter,
    RewriteRule,
    apply_rules,
    explain,
    is_const,
    is_op,
    match,
    wildcard,
)
from tests.passes.pass_helpers import assert_same_outputs, run_graph

CHAIN = """\
graph @main(%x: f32[2,3]) {
  const %c : f32[3] = dense<[1.0,2.0,3.0]>
  %a = neg(%x) : f32[2,3]
  %b = neg(%a) : f32[2,3]
  %d = neg(%b) : f32[2,3]
  %e = neg(%d) : f32[2,3]
  %f = neg(%e) : f32[2,3]
  %m = mul(%f, %c) : f32[2,3]
  return %m
}
"""


@dataclass(frozen=True)
class DoubleNeg(RewriteRule):
    """neg(neg(x)) -> x."""

    name = "double-neg"

    def pattern(self) -> Pattern:
        return is_op("neg")(is_op("neg")(wildcard().named("x")).named("inner")).named("outer")

    def rewrite(self, match: Match, rewriter: Rewriter) -> None:
        outer, inner = match.node("outer"), match.node("inner")
        rewriter.replace_all_uses_with(outer.outputs[0], match["x"])
        rewriter.erase(outer)
        if not inner.outputs[0].uses():
            rewriter.erase(inner)


@register_pass
@dataclass(frozen=True)
class CancelNegations(RewritePass):
    """Cancel pairs of negations."""

    name = "test-cancel-negations"

    def rules(self) -> list[RewriteRule]:
        return [DoubleNeg()]


def test_driver_reaches_fixed_point() -> None:
    g = parse(CHAIN)
    result = apply_rules(g, [DoubleNeg()])
    assert result.changed and result.applied == {"double-neg": 2}
    assert [n.op.name for n in g.nodes] == ["neg", "mul"]
    g.verify()
    x = torch.randn(2, 3)
    assert_same_outputs(run_graph(g, x), run_graph(parse(CHAIN), x))
    assert apply_rules(g, [DoubleNeg()]).changed is False


def test_rewrite_pass_in_pipeline() -> None:
    out = Pipeline("test-cancel-negations")(parse(CHAIN))
    assert [n.op.name for n in out.nodes] == ["neg", "mul"]


def test_patterns_by_name_trait_const_and_attrs() -> None:
    g = parse("""\
graph @main(%x: f32[2,4]) {
  const %w : f32[3,4]
  %fc = linear(%x, %w) {act_min=none, act_max=none} : f32[2,3]
  %r = relu(%fc) : f32[2,3]
  %s = relu(%fc) : f32[2,3]
  %p = permute(%r) {dims=[1,0]} : f32[3,2]
  return %p, %s
}
""")
    fc, r, p = g.node("fc"), g.node("r"), g.node("p")
    m, reason = match(is_op(Trait.FUSABLE_ACTIVATION)(wildcard(), is_const().named("w")), fc)
    assert reason is None and m is not None and m["w"].name == "w"
    assert match(is_op("linear")(is_const()), fc)[1] == (
        "operand 0 of %fc: %x is not a constant")
    assert match(is_op(Trait.SHAPE_ONLY).has_attr(dims=(1, 0)), p)[1] is None
    assert match(is_op("permute").has_attr(dims=(0, 1)), p)[1] == (
        "%p: attribute dims=(1, 0), expected (0, 1)")
    assert match(is_op("relu")(is_op("linear").has_one_use()), r)[1] == "%fc has 2 uses"
    relu = is_op("relu")
    assert match(relu(is_op("linear").only_used_by(relu)), r)[1] == (
        "%fc is also used by %s")
    assert match(is_op("relu")(is_op("conv2d")), r)[1] == (
        "operand 0 of %r: %fc comes from linear, not conv2d")
    assert match(is_op("relu")(wildcard(), wildcard()), r)[1] == (
        "%r has 1 operands, expected 2")
    assert match(is_op("linear")(is_op("neg")), fc)[1] == (
        "operand 0 of %fc: %x is a graph input, not the result of neg")
    perm = is_op("permute")
    assert match(perm(is_op("relu").only_used_by(perm)), p)[1] is None
    assert match(is_op("relu").where(lambda v: v.shape == (9,), "not 9 wide"), r)[1] == (
        "%r: not 9 wide")
    with pytest.raises(ValueError, match="at least one op"):
        is_op()


def test_same_pattern_twice_binds_one_value() -> None:
    g = parse("""\
graph @main(%x: f32[2], %y: f32[2]) {
  %s = add(%x, %x) : f32[2]
  %t = add(%x, %y) : f32[2]
  return %s, %t
}
""")
    v = wildcard()
    pat = is_op("add")(v, v)
    assert match(pat, g.node("s"))[1] is None
    assert match(pat, g.node("t"))[1] == "operand 1 of %t: pattern bound to %x and %y"


class Recorder(RewriteListener):
    def __init__(self) -> None:
        self.events: list[str] = []

    def node_created(self, node: Node) -> None:
        self.events.append(f"created %{node.name}")

    def node_erased(self, node: Node) -> None:
        self.events.append(f"erased %{node.name}")

    def node_changed(self, node: Node) -> None:
        self.events.append(f"changed %{node.name}")

    def value_replaced(self, old: Value, new: Value) -> None:
        self.events.append(f"replaced %{old.name} by %{new.name}")


def test_rewriter_notifies_listeners() -> None:
    g = parse(CHAIN)
    rec = Recorder()
    rw = Rewriter(g, [rec])
    a, m = g.node("a"), g.node("m")
    rw.anchor = m
    t = rw.create("tanh", [a.outputs[0]], name="t")
    rw.replace_input(m, 0, t.outputs[0])
    rw.set_attrs(t)
    two = rw.add_constant(torch.tensor(2.0), "two")
    rw.set_inputs(m, [t.outputs[0], two])
    rw.replace_all_uses_with(g.value("f"), t.outputs[0])
    assert rec.events == ["created %t", "changed %m", "changed %t", "changed %m",
                          "replaced %f by %t"]
    assert rw.changed
    for name in ("f", "e", "d", "b"):
        rw.erase(g.node(name))
    g.verify()
    assert [n.op.name for n in g.nodes] == ["neg", "tanh", "mul"]
    x = torch.randn(2, 3)
    assert_same_outputs(run_graph(g, x), torch.tanh(-x) * 2)


@dataclass(frozen=True)
class Flip(RewriteRule):
    """neg(x) -> neg(x) forever: a rule that never reaches a fixed point."""

    name = "flip"

    def pattern(self) -> Pattern:
        return is_op("neg").named("n")

    def rewrite(self, match: Match, rewriter: Rewriter) -> None:
        n = match.node("n")
        new = rewriter.create("neg", list(n.inputs))
        rewriter.replace_node(n, new.outputs)


def test_driver_detects_endless_rewriting() -> None:
    with pytest.raises(PassError, match="did not reach a fixed point after 50 rewrites"):
        apply_rules(parse(CHAIN), [Flip()], max_rewrites=50)


def test_explain_reports_per_rule_and_root() -> None:
    g = parse(CHAIN)
    assert explain(g, [DoubleNeg()], "f") == ["double-neg at %f: would fire"]
    assert explain(g, [DoubleNeg()], "m") == ["double-neg at %m: %m comes from mul, not neg"]
    assert explain(g, [DoubleNeg()], "a") == [
        "double-neg at %a: operand 0 of %a: %x is a graph input, not the result of neg",
        "double-neg at %b: would fire"]
    assert str(g) == CHAIN  # explain edits nothing


def test_rewriter_create_needs_anchor() -> None:
    g = Graph()
    with pytest.raises(PassError, match="no insertion point"):
        Rewriter(g).create("relu", [])
