"""convert-int8 on each integer-capable op: integer program vs simulated QDQ vs float."""

from __future__ import annotations

import pytest
import torch

import slimfx
from slimfx.ir import Graph, TensorType


def _graph_1d() -> Graph:
    g = Graph("ops1d")
    x = g.add_input("x", TensorType((2, 3, 16)))
    w = g.add_constant(torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(0)), "w")
    b = g.add_constant(torch.randn(4), "b")
    c = g.add("conv1d", [x, w, b], dict(stride=[1], padding=[1], dilation=[1], act_min=0.0,
                                        act_max=6.0), name="conv")
    m = g.add("mul", [c, c], name="sq")
    cat = g.add("cat", [c, m], dict(axis=1), name="cat")
    t = g.add("permute", [cat], dict(dims=[0, 2, 1]), name="t")
    mm = g.add("matmul", [cat, t], name="gram")
    g.set_outputs([mm])
    return g


def _graph_pool() -> Graph:
    g = Graph("pool")
    x = g.add_input("x", TensorType((2, 3, 8, 8)))
    a = g.add("avg_pool2d", [x], dict(kernel=[3, 3], stride=[2, 2], padding=[1, 1]), name="avg")
    s = g.add("add", [a, a], name="dbl")
    y = g.add("adaptive_avg_pool2d", [s], dict(output_size=[2, 2]), name="gap")
    g.set_outputs([y])
    return g


@pytest.mark.parametrize("build,ops", [
    (_graph_1d, {"qconv1d", "qmul", "qcat", "qmatmul", "requantize"}),
    (_graph_pool, {"qavg_pool2d", "qadd"}),
])
def test_every_op_becomes_integer_and_stays_close(build, ops):
    g = build()
    gen = torch.Generator().manual_seed(1)
    data = [torch.randn(g.inputs[0].shape, generator=gen) for _ in range(4)]
    int8 = slimfx.quantize(g, data)
    qdq = slimfx.quantize(g, data, form="qdq")
    names = {n.op.name for n in int8.nodes}
    assert ops <= names
    float_ops = names - ops - {"quantize", "dequantize", "permute", "reshape"}
    assert not float_ops, float_ops
    with torch.no_grad():
        ref = slimfx.to_torch(g)(data[0])
        sim, out = slimfx.to_torch(qdq)(data[0]), slimfx.to_torch(int8)(data[0])
    step = int8.outputs[0].producer.attrs["scale"][0]
    assert float((sim - out).abs().max()) <= 3 * step + 1e-6
    assert float((out - ref).abs().max()) <= 0.05 * float(ref.abs().max()) + 3 * step


def test_fused_relu6_clamps_at_both_ends():
    g = _graph_1d()
    data = [torch.randn(2, 3, 16) * 4 for _ in range(2)]
    req = [n for n in slimfx.quantize(g, data).find("requantize") if n.name == "conv"][0]
    qp = req.output.qparams
    z, s = req.attrs["out_zero_point"], qp.scale[0]
    assert req.attrs["qmin"] == z  # ReLU: real 0
    assert (req.attrs["qmax"] - z) * s <= 6.0 + 1e-6  # ReLU6: nothing above 6 survives


def test_avg_pool_without_counted_padding_stays_float():
    g = Graph()
    x = g.add_input("x", TensorType((1, 2, 6, 6)))
    y = g.add("avg_pool2d", [x], dict(kernel=[3, 3], stride=[1, 1], padding=[1, 1],
                                      count_include_pad=False), name="avg")
    g.set_outputs([y])
    q = slimfx.quantize(g, [torch.randn(1, 2, 6, 6)])
    assert [n.op.name for n in q.nodes if n.name == "avg"] == ["avg_pool2d"]
