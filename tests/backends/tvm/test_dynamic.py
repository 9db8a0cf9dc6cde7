"""Symbolic graphs through slimfx.compile: one Compiled (and one artifact) for every size.

Graphs are built on the IR directly (``Graph.add_symbol``); the references are the torch
backend on the same graph, or on the graph bound to the size of the call
(:func:`~slimfx.backends.tvm.specialize.bind_symbols`). int8 graphs are compared for
equality.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm", reason="the TVM backend needs apache-tvm")

import slimfx  # noqa: E402
from slimfx.backends.tvm.build import _specialize  # noqa: E402
from slimfx.backends.tvm.compiled import Compiled  # noqa: E402
from slimfx.backends.tvm.lower import lower_graph  # noqa: E402
from slimfx.backends.tvm.specialize import batch_symbols, bind_symbols  # noqa: E402
from slimfx.errors import (  # noqa: E402
    ArtifactError,
    LoweringError,
    RuntimeInputError,
    SlimfxError,
)
from slimfx.ir import Graph, TensorType  # noqa: E402
from slimfx.ir.symbolic import symbol  # noqa: E402

pytestmark = pytest.mark.tvm

CONV = dict(stride=[1, 1], padding=[1, 1], dilation=[1, 1])


# --------------------------------------------------------------------------- graphs
def _cnn(n: object = None) -> Graph:
    """conv -> relu -> pool -> linear over ``f32[N,3,8,8] where N in [1, 16]``.

    ``n``: an int builds the same graph static at that batch size.
    """
    torch.manual_seed(0)
    g = Graph()
    n = g.add_symbol("N", 1, 16) if n is None else n
    x = g.add_input("x", TensorType((n, 3, 8, 8)))
    w = g.add_constant(torch.randn(16, 3, 3, 3) * 0.3, "w")
    y = g.add("conv2d", [x, w, g.add_constant(torch.randn(16) * 0.1, "b")], CONV, name="conv")
    r = g.add("relu", [y], name="relu")
    p = g.add("adaptive_avg_pool2d", [r], {"output_size": [1, 1]}, name="pool")
    f = g.add("reshape", [p], {"shape": [-1, 16]}, name="flat")
    o = g.add("linear", [f, g.add_constant(torch.randn(16, 16), "fc"),
                         g.add_constant(torch.randn(16), "fcb")], name="fc")
    g.set_outputs([o])
    return g


def _sequence() -> Graph:
    """A token-mixing block over ``f32[N,S,16]``: N is a batch symbol, S is not."""
    torch.manual_seed(1)
    g = Graph()
    n, s = g.add_symbol("N", 1, 8), g.add_symbol("S", 1, 64)
    x = g.add_input("x", TensorType((n, s, 16)))
    ln = g.add("layer_norm", [x, g.add_constant(torch.randn(16), "g"),
                              g.add_constant(torch.randn(16), "b")],
               {"normalized_shape": [16]}, name="ln")
    h = g.add("linear", [ln, g.add_constant(torch.randn(32, 16), "w1"),
                         g.add_constant(torch.randn(32), "b1")], name="fc1")
    a = g.add("gelu", [h], name="act")
    sm = g.add("softmax", [a], {"axis": -1}, name="sm")
    m = g.add("mean", [sm], {"axes": [1]}, name="pool")
    g.set_outputs([m])
    return g


def _generalize(g: Graph, size: int, hi: int = 16) -> Graph:
    """``g`` (static at batch ``size``) with that batch made the symbol ``N in [1, hi]``.

    Dim 0 of the inputs and every ``dims`` attribute (reshape targets) starting with
    ``size`` get ``N``; every result type is inferred again, in order.
    """
    n = g.add_symbol("N", 1, hi)
    for v in g.inputs:
        v.type = TensorType((n, *v.type.shape[1:]), v.type.dtype)
    for node in g.nodes:
        for a in node.op.attrs:
            val = node.attrs[a.name]
            if a.kind == "dims" and isinstance(val, tuple) and val and val[0] == size:
                node.set_attrs(**{a.name: (n, *val[1:])})
        types = node.op.infer([v.type for v in node.inputs], node.attrs)
        for out, t in zip(node.outputs, types, strict=True):
            out.type = t
    g.verify()
    return g


class _Block(torch.nn.Module):
    """Pre-norm attention + MLP; ``permute(2, 0, 3, 1, 4)`` + ``unbind`` move the batch dim."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.norm = torch.nn.LayerNorm(dim)
        self.qkv, self.proj = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 32), torch.nn.GELU(),
                                       torch.nn.Linear(32, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, t, 3, self.heads, d // self.heads) \
            .permute(2, 0, 3, 1, 4).unbind(0)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(x)


def _int8_cnn() -> Graph:
    """``_cnn`` through ptq-int8, calibrated at batch 7, then with a symbolic batch."""
    static = _cnn(7)
    torch.manual_seed(2)
    g8 = slimfx.quantize(static, [torch.randn(7, 3, 8, 8) for _ in range(3)])
    return _generalize(g8, 7)


def _x(b: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def cnn() -> tuple[Graph, Compiled]:
    g = _cnn()
    return g, slimfx.compile(g, "x86")


@pytest.fixture(scope="module")
def int8() -> tuple[Graph, Compiled]:
    g = _int8_cnn()
    return g, slimfx.compile(g, "x86")


# --------------------------------------------------------------------------- one model, all sizes
def test_batch_symbol_float_matches_torch_at_every_size(cnn) -> None:
    g, c = cnn
    assert c.batch == "N" and {k: (r.min, r.max) for k, r in c.symbols.items()} == {"N": (1, 16)}
    assert str(c.inputs[0].type) == "f32[N,3,8,8]" and str(c.outputs[0].type) == "f32[N,16]"
    ref = slimfx.to_torch(g)
    for b in (1, 2, 5):
        x = _x(b, b)
        got = c(x)
        assert got.shape == (b, 16)
        torch.testing.assert_close(got, ref(x), rtol=1e-4, atol=1e-4)


def test_int8_bit_exact_at_every_size(int8) -> None:
    g, c = int8
    assert c.batch == "N"
    for b in (1, 2, 5, 16):
        x = _x(b, 10 + b)
        want = slimfx.to_torch(bind_symbols(g, {"N": b}))(x)
        assert torch.equal(c(x), want), f"batch {b}"
    assert torch.equal(c(_x(3, 3)), slimfx.to_torch(g)(_x(3, 3)))


@pytest.mark.slow
def test_int8_symbolic_batch_bit_exact(int8) -> None:
    g, _ = int8
    c = slimfx.compile(g, "x86", dynamic="symbolic")  # direct int32 conv, generic kernels
    assert c.batch is None
    for b in (1, 6):
        x = _x(b, 40 + b)
        assert torch.equal(c(x), slimfx.to_torch(bind_symbols(g, {"N": b}))(x)), f"batch {b}"


def test_symbolic_symbol_runs_generic_kernels() -> None:
    g = _sequence()
    reasons = batch_symbols(g)
    assert reasons["N"] is None
    assert reasons["S"] == "no graph input has S as its dim 0"
    c = slimfx.compile(g, "x86")
    assert c.batch == "N" and set(c.symbols) == {"N", "S"}
    for b, s in ((1, 5), (2, 17), (5, 64)):
        x = torch.randn(b, s, 16)
        want = slimfx.to_torch(bind_symbols(g, {"N": b, "S": s}))(x)
        torch.testing.assert_close(c(x), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeInputError, match=r"'x'.*f32\[N,S,16\].*S in \[1, 64\].*65"):
        c(torch.randn(1, 65, 16))


def test_batch_dim_followed_through_attention() -> None:
    torch.manual_seed(3)
    model = _Block().eval()
    g = _generalize(slimfx.trace(model, (torch.randn(7, 5, 16),), method="export"), 7)
    assert "f32[3,N,2,5,8]" in str(g)  # the batch dim moved by the permute
    assert batch_symbols(g) == {"N": None}
    c = slimfx.compile(g, "x86")
    assert c.batch == "N"
    for b in (1, 2, 5):
        x = torch.randn(b, 5, 16)
        torch.testing.assert_close(c(x), model(x), rtol=1e-4, atol=1e-4)


def _t(g: Graph, x, dims=(1, 0, 2)):
    return g.add("permute", [x], {"dims": list(dims)}, name="t")


@pytest.mark.parametrize("edit, reason", [
    (lambda g, x: g.add("softmax", [_t(g, x)], {"axis": 1}, name="mix"),
     r"^%mix = softmax.*: axis=1 is the batch dim$"),
    (lambda g, x: g.add("mean", [_t(g, x)], {"axes": [1]}, name="m"),
     r"^%m = mean.*: it reduces over the batch dim$"),
    (lambda g, x: g.add("reshape", [x], {"shape": [-1, 4]}, name="flat"),
     r"^output %flat \(f32\[N\*3,4\]\) does not have the batch dim N as its dim 0$"),
    (lambda g, x: g.add("reshape", [_t(g, x)], {"shape": [symbol("N"), 3, 4]}, name="r"),
     r"^%r = reshape.*: it reshapes f32\[3,N,4\] to f32\[N,3,4\], which moves samples$"),
    (lambda g, x: g.add("matmul", [_t(g, x, (1, 2, 0)), g.add(
        "select", [x], {"axis": 2, "index": 0}, name="col")], name="gram"),
     r"^%gram = matmul.*: the batch dim of its first operand is contracted$"),
])
def test_batch_dim_mixed_by_an_op_is_not_a_batch_symbol(edit, reason) -> None:
    g = Graph()
    n = g.add_symbol("N", 1, 8)
    x = g.add_input("x", TensorType((n, 3, 4)))
    g.set_outputs([edit(g, x)])
    got = batch_symbols(g)["N"]
    assert got is not None and re.search(reason, got), got


def test_batch_dims_that_line_up_stay_a_batch_symbol() -> None:
    g = Graph()
    n = g.add_symbol("N", 1, 8)
    x = g.add_input("x", TensorType((n, 3, 4)))
    gram = g.add("matmul", [x, _t(g, x, (0, 2, 1))], name="gram")  # per-sample x @ x^T
    t = g.add("permute", [g.add("softmax", [gram], {"axis": -1}, name="p")], {"dims": [1, 0, 2]},
              name="moved")
    back = g.add("permute", [g.add("mean", [t], {"axes": [2], "keepdim": True}, name="m")],
                 {"dims": [1, 0, 2]}, name="back")
    g.set_outputs([back])
    assert batch_symbols(g) == {"N": None}
    c = slimfx.compile(g, "x86")
    x = torch.randn(5, 3, 4)
    want = torch.softmax(x @ x.transpose(1, 2), -1).mean(2, keepdim=True)
    torch.testing.assert_close(c(x), want, rtol=1e-5, atol=1e-5)


def test_dynamic_symbolic_keeps_the_batch_symbolic_too(cnn) -> None:
    g, _ = cnn
    c = slimfx.compile(g, "x86", dynamic="symbolic")
    assert c.batch is None and set(c.symbols) == {"N"}
    ref = slimfx.to_torch(g)
    for b in (1, 4):
        torch.testing.assert_close(c(_x(b)), ref(_x(b)), rtol=1e-4, atol=1e-4)


def test_not_a_batch_symbol_when_an_op_mixes_samples() -> None:
    g = Graph()
    n = g.add_symbol("N", 1, 8)
    x = g.add_input("x", TensorType((n, 4)))
    total = g.add("sum", [x], {"axes": [0], "keepdim": True}, name="total")
    g.set_outputs([g.add("sub", [x, total], name="centred")])
    assert "%total = sum" in batch_symbols(g)["N"]
    c = slimfx.compile(g, "x86")
    assert c.batch is None  # compiled symbolically: the per-sample loop would be wrong
    x = torch.randn(5, 4)
    torch.testing.assert_close(c(x), x - x.sum(0, keepdim=True))


def test_a_lowering_that_needs_static_shapes_names_the_node() -> None:
    g = Graph()
    n, s = g.add_symbol("N", 1, 8), g.add_symbol("S", 2, 64)
    x = g.add_input("x", TensorType((n, s, 4)))
    g.set_outputs([g.add("slice", [x], {"axis": 1, "start": 1, "end": 2**63 - 1},
                         name="tail")])
    with pytest.raises(LoweringError, match=r"%tail = slice.*static dim 1.*shapes="):
        slimfx.compile(g, "x86")
    c = slimfx.compile(g, "x86", shapes={"x": (2, 9, 4)})
    x = torch.randn(2, 9, 4)
    assert torch.equal(c(x), x[:, 1:])


def _positions() -> Graph:
    """x + arange(8)[:N]: a slice of a constant whose end is a symbol (BERT's position ids)."""
    g = Graph()
    n = g.add_symbol("N", 1, 8)
    x = g.add_input("x", TensorType((n,), "i64"))
    positions = g.add_constant(torch.arange(8), "positions")
    head = g.add("slice", [positions], {"axis": 0, "start": 0, "end": n}, name="head")
    g.set_outputs([g.add("add", [x, head], name="shifted")])
    return g


def test_slice_with_a_symbolic_end_compiles() -> None:
    g = _positions()
    reason = batch_symbols(g)["N"]  # samples differ: no per-sample loop
    assert "%shifted" in reason and "sample index" in reason, reason
    c = slimfx.compile(g, "x86")
    for n in (1, 5, 8):
        x = torch.randint(-9, 9, (n,))
        assert torch.equal(torch.as_tensor(c(x)), x + torch.arange(n)), n


def test_binding_a_symbol_reaches_dim_attributes() -> None:
    bound = bind_symbols(_positions(), {"N": 3})  # verified: end=N became 3 with the types
    assert bound.node("head").attrs["end"] == 3 and str(bound.outputs[0].type) == "i64[3]"
    c = slimfx.compile(_positions(), "x86", shapes={"x": (3,)})
    x = torch.tensor([4, 5, 6])
    assert torch.equal(torch.as_tensor(c(x)), torch.tensor([4, 6, 8]))


# --------------------------------------------------------------------------- input checks
def test_out_of_range_and_wrong_static_dims_are_refused(cnn) -> None:
    _, c = cnn
    with pytest.raises(RuntimeInputError) as e:
        c(_x(17))
    msg = str(e.value)
    for part in ("'x'", "f32[N,3,8,8]", "N in [1, 16]", "[17, 3, 8, 8]"):
        assert part in msg, msg
    with pytest.raises(RuntimeInputError, match=r"'x'.*f32\[N,3,8,8\].*N in \[1, 16\]"
                                                r".*\[2, 3, 9, 8\]"):
        c(torch.randn(2, 3, 9, 8))
    with pytest.raises(RuntimeInputError, match="rank 3"):
        c(torch.randn(3, 8, 8))


def test_inputs_that_disagree_on_a_symbol() -> None:
    g = Graph()
    n = g.add_symbol("N", 1, 8)
    a = g.add_input("a", TensorType((n, 4)))
    b = g.add_input("b", TensorType((n, 4)))
    g.set_outputs([g.add("add", [a, b], name="y")])
    c = slimfx.compile(g, "x86")
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(c(a, b), a + b)
    with pytest.raises(RuntimeInputError, match=r"input 'b'.*float32\[2, 4\].*N=3"):
        c(a, b[:2])


# --------------------------------------------------------------------------- shapes=
def test_shapes_specialises_to_the_static_program(cnn) -> None:
    g, _ = cnn
    bound, symbols, batch, _ = _specialize(g, {"x": (1, 3, 8, 8)}, "auto")
    assert symbols == {} and batch is None
    tvm.ir.assert_structural_equal(lower_graph(bound), lower_graph(_cnn(1)))
    c = slimfx.compile(g, "x86", shapes={"x": (1, 3, 8, 8)})
    assert c.symbols == {} and str(c.inputs[0].type) == "f32[1,3,8,8]"
    torch.testing.assert_close(c(_x(1)), slimfx.to_torch(g)(_x(1)), rtol=1e-4, atol=1e-4)
    with pytest.raises(RuntimeInputError, match=r"'x'.*f32\[1,3,8,8\].*\[2, 3, 8, 8\]"):
        c(_x(2))


def test_per_sample_batch_one_is_the_static_program(cnn) -> None:
    g, _ = cnn
    bound, symbols, batch, _ = _specialize(g, None, "auto")
    assert batch == "N" and set(symbols) == {"N"}
    tvm.ir.assert_structural_equal(lower_graph(bound), lower_graph(_cnn(1)))


@pytest.mark.parametrize("shapes, match", [
    ({"y": (1, 3, 8, 8)}, r"unknown input\(s\) 'y'.*inputs are x"),
    ({"x": (1, 3, 8)}, r"input 'x'.*rank 4.*rank 3"),
    ({"x": (1, 4, 8, 8)}, r"input 'x': dim 1 is 4, expected 3"),
    ({"x": (32, 3, 8, 8)}, r"input 'x' dim 0: size 32 is outside the range of symbol N"),
    ([(1, 3, 8, 8)], r"shapes must map input names to shapes, got list"),
])
def test_bad_shapes_name_the_input(cnn, shapes, match) -> None:
    g, _ = cnn
    with pytest.raises(SlimfxError, match=match):
        slimfx.compile(g, "x86", shapes=shapes)


# --------------------------------------------------------------------------- artifacts
def test_artifact_records_symbols_and_serves_every_size(int8, tmp_path: Path) -> None:
    g, c = int8
    path = c.save(tmp_path / "m.slim")
    loaded = slimfx.load(path, sha256=c.saved_sha256)
    assert loaded.batch == "N" and loaded.symbols == c.symbols
    assert [s.type for s in loaded.inputs] == [s.type for s in c.inputs]
    for b in (1, 3, 8):
        x = _x(b, 20 + b)
        assert torch.equal(loaded(x), slimfx.to_torch(bind_symbols(g, {"N": b}))(x))
    with pytest.raises(RuntimeInputError, match=r"N in \[1, 16\].*\[17, 3, 8, 8\]"):
        loaded(_x(17))
    d = c.save(tmp_path / "dir")
    meta = json.loads((d / "meta.json").read_text())
    assert meta["symbols"] == {"N": [1, 16]} and meta["batch"] == "N"
    assert meta["inputs"][0]["shape"] == ["N", 3, 8, 8]


def test_symbolic_artifact_loads_and_runs(tmp_path: Path) -> None:
    g = _sequence()
    c = slimfx.compile(g, "x86", dynamic="symbolic")
    loaded = slimfx.load(c.save(tmp_path / "seq"))
    assert loaded.batch is None and set(loaded.symbols) == {"N", "S"}
    for b, s in ((1, 3), (4, 40)):
        x = torch.randn(b, s, 16)
        torch.testing.assert_close(loaded(x), c(x))


def _edit_meta(path: Path, edit) -> None:
    meta = json.loads((path / "meta.json").read_text())
    edit(meta)
    (path / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.update(symbols={"N": [4, 2]}), r"bad symbol 'N'.*empty"),
    (lambda m: m.update(symbols={"N": "1..16"}), r"bad symbol 'N'.*not \[min, max\]"),
    (lambda m: m.update(batch="B"), r"batch symbol 'B' is not among"),
    (lambda m: m["inputs"][0].update(shape=["M", 3, 8, 8]), r"bad inputs signature"),
    (lambda m: [m.pop("symbols"), m.pop("batch")], r"bad inputs signature"),
])
def test_load_checks_the_symbols(cnn, tmp_path: Path, edit, match) -> None:
    _, c = cnn
    d = c.save(tmp_path / "m")
    _edit_meta(d, edit)
    with pytest.raises(ArtifactError, match=match):
        slimfx.load(d)


def test_static_artifacts_have_no_symbols_and_still_load(tmp_path: Path) -> None:
    g = _cnn(2)
    c = slimfx.compile(g, "x86")
    assert c.symbols == {} and c.batch is None
    d = c.save(tmp_path / "static")
    meta = json.loads((d / "meta.json").read_text())
    assert "symbols" not in meta and "batch" not in meta  # the format before symbols
    x = _x(2)
    torch.testing.assert_close(slimfx.load(d)(x), c(x))


def test_benchmark_and_profile_of_a_batch_model(cnn) -> None:
    _, c = cnn
    assert c.benchmark(repeat=2, number=2).median_ms > 0  # random input at N = 1
    x8 = np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)
    assert c.benchmark(x8, repeat=2, number=1).median_ms > 0
    assert c.profile(x8, repeat=1, warmup=0).rows
    assert symbol("N") in c.inputs[0].type.shape


# --------------------------------------------------------------------------- dynamic int8, arm
def _mlp_dynamic_int8(per_token: bool) -> Graph:
    """dynamic-int8 linears over ``f32[N,S,16]`` (calibration-free), N and S symbolic."""
    torch.manual_seed(4)
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 16)).eval()
    g = slimfx.quantize(slimfx.trace(mlp, (torch.randn(7, 5, 16),), method="export"),
                        pipeline="dynamic-int8")
    for node in g.nodes:
        if node.op.name == "dynamic_linear":
            node.set_attrs(per_token=per_token)
    g = _generalize(g, 7, hi=8)
    s = g.add_symbol("S", 1, 64)
    for v in g.inputs:
        v.type = TensorType((v.type.shape[0], s, 16), v.type.dtype)
    for node in g.nodes:
        for out, t in zip(node.outputs, node.op.infer([v.type for v in node.inputs],
                                                      node.attrs), strict=True):
            out.type = t
    g.verify()
    return g


@pytest.mark.parametrize("per_token, batch", [
    (True, "N"), pytest.param(False, None, marks=pytest.mark.slow)])  # symbolic: ~13 s build
def test_dynamic_int8_exact_at_every_batch_and_length(per_token, batch) -> None:
    g = _mlp_dynamic_int8(per_token)
    c = slimfx.compile(g, "x86")
    assert c.batch == batch  # a per-tensor scale mixes the samples: compiled symbolically
    for b, s in ((1, 5), (3, 9), (7, 33)):
        x = torch.randn(b, s, 16)
        assert torch.equal(c(x), slimfx.to_torch(bind_symbols(g, {"N": b, "S": s}))(x)), (b, s)


@pytest.mark.slow
@pytest.mark.skipif(__import__("slimfx.backends.tvm.arm_env", fromlist=["x"]).find_env() is None,
                    reason="aarch64 qemu environment not set up (make arm-env)")
def test_int8_batch_model_on_arm_under_qemu(int8) -> None:
    g, _ = int8
    c = slimfx.compile(g, "arm")
    x = _x(3, 30)  # three per-sample calls in one qemu process
    assert torch.equal(c(x), slimfx.to_torch(bind_symbols(g, {"N": 3}))(x))


# --------------------------------------------------------------------------- batch buckets
def test_batch_buckets_run_chunks_with_the_same_numbers(int8, tmp_path: Path) -> None:
    g, per_sample = int8
    c = slimfx.compile(g, "x86", batch_buckets=(4,))
    assert c.buckets == {4: "main_b4"}
    assert [(f, a[0].shape[0]) for f, a in c._samples([_x(9).numpy()])] == [
        ("main_b4", 4), ("main_b4", 4), ("main", 1)]
    for b in (1, 3, 4, 9):
        x = _x(b, 50 + b)
        assert torch.equal(c(x), per_sample(x)), f"batch {b}"
    loaded = slimfx.load(c.save(tmp_path / "b"))
    assert loaded.buckets == {4: "main_b4"}
    assert torch.equal(loaded(_x(6, 7)), per_sample(_x(6, 7)))


@pytest.mark.parametrize("buckets, match", [
    ((32,), r"batch_buckets: 32 is not a batch size in the range of N \(\[1, 16\]\)"),
    ((1,), r"batch_buckets: 1 is not a batch size"),
])
def test_bad_batch_buckets(cnn, buckets, match) -> None:
    g, _ = cnn
    with pytest.raises(SlimfxError, match=match):
        slimfx.compile(g, "x86", batch_buckets=buckets)


def test_batch_buckets_need_a_batch_symbol() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((g.add_symbol("N", 1, 8), 4)))
    g.set_outputs([g.add("softmax", [x], {"axis": 0}, name="across")])
    with pytest.raises(SlimfxError, match=r"batch_buckets needs a batch symbol.*%across = "
                                          r"softmax.*axis=0 is the batch dim.*shapes= instead"):
        slimfx.compile(g, "x86", batch_buckets=(4,))


class _Recurrent(torch.nn.Module):
    """A 2-layer bidirectional LSTM and a GRU (batch first, zero initial states: ``expand``
    of a batch-free constant), the last step of each to a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(6, 8, num_layers=2, bidirectional=True, batch_first=True)
        self.gru = torch.nn.GRU(16, 8, batch_first=True)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(x)
        z, h = self.gru(y)
        return self.head(z[:, -1] + h[0])


@pytest.mark.parametrize("pipeline", [None, "dynamic-int8"])
def test_traced_lstm_and_gru_with_a_dynamic_batch_run_per_sample(pipeline) -> None:
    """The LSTM/GRU batch dim (sequence dim 0, states dim 1) and the zero states' expand are
    per sample: compiled once, the batch-1 program serves every size (the symbolic path has
    no RNN lowering); within 1e-5 of the torch reference at every size (the gates are float
    math, sigmoid/tanh, in both forms)."""
    torch.manual_seed(0)
    model = _Recurrent().eval()
    n = torch.export.Dim("N", min=1, max=16)
    g = slimfx.trace(model, (torch.randn(2, 5, 6),), dynamic_shapes={"x": {0: n}})
    if pipeline:
        g = slimfx.quantize(g, pipeline=pipeline)
        assert any(nd.op.name == "dynamic_lstm" for nd in g.nodes)
    assert batch_symbols(g) == {"N": None}
    c = slimfx.compile(g, "x86")
    assert c.batch == "N"
    ref = slimfx.to_torch(g)
    for b in (1, 3, 7):
        x = torch.randn(b, 5, 6)
        got, want = torch.as_tensor(np.asarray(c(x))), ref(x).detach()
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), b
        if not pipeline:
            assert torch.allclose(got, model(x), atol=1e-5, rtol=1e-5), b


def test_rnn_whose_scale_spans_the_batch_is_not_per_sample() -> None:
    torch.manual_seed(0)
    n = torch.export.Dim("N", min=1, max=16)
    g = slimfx.trace(_Recurrent().eval(), (torch.randn(2, 5, 6),), dynamic_shapes={"x": {0: n}})
    q = slimfx.quantize(g, pipeline="quantize-dynamic-int8{per_token=false}")
    assert "per_token=false" in batch_symbols(q)["N"]


def test_transformers_mask_batch_index_stays_per_sample() -> None:
    """transformers' mask code indexes the padding mask with ``arange(batch)`` (an opaque
    ``aten.index.Tensor``): each sample picks its own row, so ``N`` stays a batch symbol
    and a BERT traced with a dynamic batch compiles once for every size (was: symbolic
    path, which fails in the opaque index)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=64)
    model = transformers.BertModel(cfg).eval()
    ids, mask = torch.randint(0, 100, (2, 12)), torch.ones(2, 12, dtype=torch.long)
    n = torch.export.Dim("N", min=1, max=16)
    g = slimfx.trace(model, (ids, mask),
                     dynamic_shapes={"input_ids": {0: n}, "attention_mask": {0: n}})
    assert any(nd.op.name == "opaque" and nd.attrs["target"] == "aten.index.Tensor"
               for nd in g.nodes)
    assert batch_symbols(g) == {"N": None}
    c = slimfx.compile(g, "x86")
    assert c.batch == "N"
    for b in (1, 3):
        x, m = torch.randint(0, 100, (b, 12)), torch.ones(b, 12, dtype=torch.long)
        m[-1, 7:] = 0  # the last sample is padded: its row of the mask differs
        got = torch.as_tensor(np.asarray(c(x, m)[0]))
        assert torch.allclose(got, model(x, m)[0], atol=1e-5, rtol=1e-5), b


class _UsesBatchIndex(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.arange(x.shape[0]).reshape(-1, 1)  # a number per position


def test_computing_with_the_batch_index_is_not_per_sample() -> None:
    n = torch.export.Dim("N", min=1, max=16)
    g = slimfx.trace(_UsesBatchIndex(), (torch.randn(3, 4),), dynamic_shapes={"x": {0: n}})
    reason = batch_symbols(g)["N"]
    assert reason is not None and "sample index" in reason and "%add" in reason
    c = slimfx.compile(g, "x86")
    assert c.batch is None  # symbolic: the right numbers at every size
    x = torch.randn(5, 4)
    assert torch.allclose(torch.as_tensor(np.asarray(c(x))), _UsesBatchIndex()(x))


def test_gpt2_conv1d_rows_merge_the_batch_and_stay_per_sample() -> None:
    """GPT-2's ``Conv1D`` runs ``x.view(-1, d) @ W`` over ``f32[N*12, d]``: each sample is a
    block of rows, so ``N`` stays a batch symbol; compiled once, every size matches eager."""
    pytest.importorskip("transformers")
    from tests.models.zoo_hf import hf_model

    model, inputs = hf_model("gpt2")
    n = torch.export.Dim("N", min=1, max=16)
    g = slimfx.trace(model, inputs, dynamic_shapes={k: {0: n} for k in inputs})
    assert any(type(v.shape[0]) is not int and v.shape[0].is_Mul for v in g.values()
               if v.shape)
    assert batch_symbols(g) == {"N": None}
    c = slimfx.compile(g, "x86")
    assert c.batch == "N"
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    for b in (1, 3):
        x = {"input_ids": ids.repeat(2, 1)[:b], "attention_mask": mask.repeat(2, 1)[:b]}
        out = c(**x)
        got = torch.as_tensor(np.asarray(out[0] if isinstance(out, list | tuple) else out))
        assert torch.allclose(got, model(**x)[0], atol=1e-5, rtol=1e-5), b


class _MergedThenMixed(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, 4) @ torch.ones(4, 4)
        return rows - rows.mean(0, keepdim=True)  # a mean over every sample's rows


def test_a_merged_batch_that_is_reduced_over_is_not_per_sample() -> None:
    n = torch.export.Dim("N", min=1, max=16)
    g = slimfx.trace(_MergedThenMixed(), (torch.randn(3, 2, 4),), dynamic_shapes={"x": {0: n}})
    reason = batch_symbols(g)["N"]
    assert reason is not None and "merged into dim 0" in reason, reason
