"""The op registry: traits, attribute typing, and ops users register themselves."""

from __future__ import annotations

import pytest
import torch

import slimfx
from slimfx.backends.torch import register_kernel
from slimfx.errors import UnsupportedOpError
from slimfx.ir import AttrDef, Graph, OpDef, TensorType, Trait, get_op, parse, register_op


def test_traits_are_queried_not_names() -> None:
    assert get_op("conv2d").has(Trait.FUSABLE_ACTIVATION)
    assert get_op("dropout").has(Trait.IDENTITY)
    assert not get_op("softmax").has(Trait.ELEMENTWISE)


def test_unknown_op_says_how_to_register() -> None:
    with pytest.raises(UnsupportedOpError, match="register_op"):
        get_op("no_such_op")


def test_user_op_works_everywhere() -> None:
    def infer(ts, attrs):
        return [ts[0]]

    register_op(OpDef("user_scale", ("x",), (AttrDef("factor", "float", 1.0),),
                      frozenset({Trait.PURE, Trait.ELEMENTWISE}), infer), override=True)

    @register_kernel("user_scale", override=True)
    def _scale(x, *, factor):
        return x * factor

    g = Graph()
    x = g.add_input("x", TensorType((2, 3)))
    g.set_outputs([g.add("user_scale", [x], dict(factor=3))])
    g.verify()
    text = str(g)
    assert "user_scale(%x) {factor=3.0}" in text
    assert str(parse(text)) == text
    xx = torch.randn(2, 3)
    assert torch.equal(slimfx.to_torch(g)(xx), xx * 3)


def test_missing_kernel_lists_all_nodes() -> None:
    register_op(OpDef("user_nokernel", ("x",), (), frozenset(), lambda ts, a: [ts[0]]),
                override=True)
    g = Graph()
    x = g.add_input("x", TensorType((2,)))
    a = g.add("user_nokernel", [x])
    b = g.add("user_nokernel", [a])
    g.set_outputs([b])
    with pytest.raises(UnsupportedOpError, match=r"2 node\(s\)(.|\n)*%user_nokernel_1"):
        slimfx.to_torch(g)
