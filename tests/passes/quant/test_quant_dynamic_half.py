"""Dynamic int8 (linear, matmul, LSTM, GRU) and fp16/bf16 casting against PyTorch eager."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimfx
from slimfx.ir import Graph, TensorType
from slimfx.passes import Pipeline


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def _mlp_graph(lin: nn.Linear, w2: torch.Tensor, shape: tuple[int, ...]) -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType(shape))
    y = g.add("linear", [x, g.add_constant(lin.weight, "l.weight"),
                         g.add_constant(lin.bias, "l.bias")], name="l")
    y = g.add("matmul", [y, g.add_constant(w2, "w2")], name="mm")
    g.set_outputs([y])
    return g


def test_dynamic_linear_and_matmul():
    torch.manual_seed(0)
    lin, w2 = nn.Linear(32, 16), torch.randn(16, 8)
    x = torch.randn(4, 10, 32)
    x[:, 0] *= 50.0  # one outlier token per sequence
    g = _mlp_graph(lin, w2, tuple(x.shape))
    with torch.no_grad():
        ref = lin(x) @ w2
    q = slimfx.quantize(g, pipeline="dynamic-int8")  # per token by default
    assert [n.op.name for n in q.nodes] == ["dynamic_linear", "dynamic_linear"]
    assert all(n.attrs["per_token"] for n in q.nodes)
    assert all(c.dtype == "i8" for c in q.constants.values() if c.type.rank == 2)
    with torch.no_grad():
        per_token = slimfx.to_torch(q)(x)
        per_tensor = slimfx.to_torch(Pipeline("quantize-dynamic-int8")(g))(x)
    e_tensor = _rel(per_tensor[:, 1:], ref[:, 1:])  # the ordinary tokens
    e_token = _rel(per_token[:, 1:], ref[:, 1:])
    assert e_token < 0.02 and e_token < e_tensor / 3


def test_dynamic_excludes_by_name():
    lin, w2 = nn.Linear(8, 8), torch.randn(8, 8)
    g = _mlp_graph(lin, w2, (2, 8))
    q = Pipeline("quantize-dynamic-int8{exclude=[mm]}")(g)
    assert [n.op.name for n in q.nodes] == ["dynamic_linear", "matmul"]


def _rnn_graph(rnn: nn.RNNBase, x: torch.Tensor, kind: str) -> Graph:
    g = Graph()
    xv = g.add_input("x", TensorType(tuple(x.shape)))
    dirs = 2 if rnn.bidirectional else 1
    state = torch.zeros(rnn.num_layers * dirs, x.shape[1], rnn.hidden_size)
    states = [g.add_constant(state, "h0")] + ([g.add_constant(state, "c0")] if kind == "lstm"
                                              else [])
    weights = [g.add_constant(w, n) for n, w in rnn.named_parameters()]
    node = g.create(kind, [xv, *states, *weights], dict(
        hidden_size=rnn.hidden_size, num_layers=rnn.num_layers, bidirectional=rnn.bidirectional,
        batch_first=False, has_biases=True), name=kind)
    g.set_outputs([node.outputs[0]])
    return g


@pytest.mark.parametrize("kind,bidirectional", [("lstm", False), ("lstm", True), ("gru", True)])
def test_dynamic_rnn_close_to_float(kind, bidirectional):
    torch.manual_seed(1)
    cls = nn.LSTM if kind == "lstm" else nn.GRU
    rnn = cls(12, 16, num_layers=2, bidirectional=bidirectional)
    x = torch.randn(7, 3, 12)
    ref = rnn(x)[0].detach()
    g = _rnn_graph(rnn, x, kind)
    q = slimfx.quantize(g, pipeline="dynamic-int8")
    assert [n.op.name for n in q.nodes] == [f"dynamic_{kind}"]
    with torch.no_grad():
        out = slimfx.to_torch(q)(x)
    assert out.shape == ref.shape
    assert _rel(out, ref) < 0.03


@pytest.mark.parametrize("pipeline,dtype,tol", [("fp16", torch.float16, 2e-3),
                                                ("bf16", torch.bfloat16, 2e-2)])
def test_half_precision_within_dtype_tolerance(digits, pipeline, dtype, tol):
    m, g, _, test, _ = digits
    h = slimfx.quantize(g, pipeline=pipeline)
    half = {"fp16": "f16", "bf16": "bf16"}[pipeline]
    assert h.find("conv2d")[0].output.dtype == half
    assert h.outputs[0].dtype == "f32" and h.inputs[0].dtype == "f32"
    assert all(c.dtype == half for c in h.constants.values())
    with torch.no_grad():
        out, ref = slimfx.to_torch(h)(test[0]), m(test[0])
    assert _rel(out, ref) < tol


def test_half_keeps_softmax_and_layer_norm_fp32():
    g = Graph()
    x = g.add_input("x", TensorType((2, 8)))
    y = g.add("linear", [x, g.add_constant(torch.randn(8, 8), "w")], name="l")
    y = g.add("layer_norm", [y], dict(normalized_shape=[8]), name="ln")
    y = g.add("softmax", [y], dict(axis=-1), name="sm")
    g.set_outputs([y])
    h = Pipeline("fp16")(g)
    dtypes = {n.name: n.output.dtype for n in h.nodes}
    assert dtypes["l"] == "f16" and dtypes["ln"] == "f32" and dtypes["sm"] == "f32"
    xs = torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(slimfx.to_torch(h)(xs), slimfx.to_torch(g)(xs), rtol=5e-3,
                                   atol=5e-3)
    custom = Pipeline("cast-half{keep_fp32=[]}")(g)
    assert {n.output.dtype for n in custom.nodes if n.op.name != "cast"} == {"f16"}
