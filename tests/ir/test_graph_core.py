"""Graph editing, use-def chains, node order, clone and the networkx view."""

from __future__ import annotations

import pytest
import torch

import slimfx
from slimfx.errors import VerifyError
from slimfx.ir import Graph, TensorType

CONV = dict(stride=[1, 1], padding=[1, 1], dilation=[1, 1])


def small_graph() -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType((1, 3, 8, 8)))
    w = g.add_constant(torch.randn(4, 3, 3, 3), "conv.weight")
    c = g.add("conv2d", [x, w], CONV, name="conv")
    r = g.add("relu", [c])
    a = g.add("add", [r, c])
    g.set_outputs([a])
    return g


def test_uses_are_kept_by_the_ir() -> None:
    g = small_graph()
    conv = g.node("conv")
    users = [u.node.op.name for u in conv.output.uses()]
    assert users == ["relu", "add"]
    relu = g.node("relu")
    g.replace_all_uses_with(relu.output, conv.output)
    assert [(u.node.op.name, u.index) for u in conv.output.uses()] == [("relu", 0), ("add", 1), ("add", 0)]
    g.erase(relu)
    assert [n.op.name for n in g.nodes] == ["conv2d", "add"]
    g.verify()


def test_erase_refuses_used_node_and_names_users() -> None:
    g = small_graph()
    with pytest.raises(VerifyError, match="used by %relu"):
        g.erase(g.node("conv"))


def test_iteration_survives_erasing_current_node() -> None:
    g = small_graph()
    seen = []
    for n in g.nodes:
        seen.append(n.op.name)
        if n.op.name == "add":
            g.set_outputs([n.inputs[1]])
            g.erase(n)
    assert seen == ["conv2d", "relu", "add"]
    assert len(g) == 2


def test_uses_snapshot_allows_rewiring_while_iterating() -> None:
    g = small_graph()
    conv = g.node("conv").output
    other = g.add_input("y", TensorType((1, 4, 8, 8)))
    for use in conv.uses():
        use.node.replace_input(use.index, other)
    assert conv.uses() == []
    assert len(other.uses()) == 2


def test_insertion_points() -> None:
    g = small_graph()
    relu = g.node("relu")
    with g.inserting_before(relu):
        s = g.add("sigmoid", [g.node("conv").output])
    with g.inserting_after(relu):
        t1 = g.add("tanh", [s])
        t2 = g.add("neg", [t1])
    assert [n.op.name for n in g.nodes] == ["conv2d", "sigmoid", "relu", "tanh", "neg", "add"]
    assert t2.producer is not None
    g.verify()


def test_clone_is_independent_and_equal() -> None:
    g = small_graph()
    c = g.clone()
    assert str(c) == str(g)
    c.verify()
    relu = c.node("relu")
    c.set_outputs([relu.output])
    c.erase(c.node("add"))
    assert len(c) == 2 and len(g) == 3
    g.verify()


def test_result_types_are_inferred_and_checked() -> None:
    g = small_graph()
    assert g.node("conv").output.type == TensorType((1, 4, 8, 8))
    g.node("relu").outputs[0].type = TensorType((1, 4, 8, 9))
    with pytest.raises(VerifyError, match=r"relu.*differ from inferred f32\[1,4,8,8\]"):
        g.verify()


def test_verify_catches_use_before_def() -> None:
    g = small_graph()
    relu = g.node("relu")
    g.move_before(relu, g.node("conv"))
    with pytest.raises(VerifyError, match="not defined before use"):
        g.verify()


def test_bad_attributes_are_rejected_with_the_op_name() -> None:
    g = small_graph()
    with pytest.raises(TypeError, match="conv2d: unknown attributes"):
        g.add("conv2d", g.inputs + [g.constants["conv.weight"]], dict(CONV, strides=[1, 1]))
    with pytest.raises(TypeError, match="softmax: missing required attribute 'axis'"):
        g.add("softmax", g.inputs)


def test_multi_result_nodes_have_several_values() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((2, 6)))
    node = g.create("split", [x], dict(axis=1, sizes=[1, 2, 3]))
    assert [o.type.shape for o in node.outputs] == [(2, 1), (2, 2), (2, 3)]
    g.set_outputs(node.outputs)
    g.verify()
    m = slimfx.to_torch(g)
    xx = torch.randn(2, 6)
    outs = m(xx)
    assert all(torch.equal(a, b) for a, b in zip(outs, torch.split(xx, [1, 2, 3], 1), strict=True))


def test_networkx_view() -> None:
    g = small_graph()
    nxg = g.to_networkx()
    assert nxg.nodes["conv"]["op"] == "conv2d"
    assert set(nxg.successors("conv")) == {"relu", "add"}
    assert nxg.nodes["conv.weight"]["kind"] == "constant"


def test_unique_names() -> None:
    g = Graph()
    a = g.add_input("x", TensorType((1,)))
    b = g.add_input("x", TensorType((1,)))
    c = g.add_input("a/b c", TensorType((1,)))
    assert (a.name, b.name, c.name) == ("x", "x_1", "a_b_c")


def test_to_torch_trains_weights_but_not_batchnorm_statistics() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((2, 4, 3, 3)))
    consts = [g.add_constant(t, n) for t, n in (
        (torch.zeros(4), "bn.running_mean"), (torch.ones(4), "bn.running_var"),
        (torch.ones(4), "bn.weight"), (torch.zeros(4), "bn.bias"))]
    g.set_outputs([g.add("batch_norm", [x, *consts])])
    m = slimfx.to_torch(g)
    assert sorted(n for n, _ in m.named_parameters()) == ["bn.bias", "bn.weight"]
    m(torch.randn(2, 4, 3, 3)).sum().backward()
    assert m.bn.weight.grad is not None
