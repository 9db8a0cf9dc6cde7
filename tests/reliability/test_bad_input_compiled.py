"""``Compiled.__call__`` under bad inputs, keyword inputs, 0-d inputs, bf16 graphs and threads.

Every bad input must be a :class:`RuntimeInputError` that names the input (and what was
expected and given), never an error from inside TVM; accepted inputs must give exactly the
result of the plain positional call. Calls from several threads must give the
single-thread results (a shared Relax VM crashed or returned garbage).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm", reason="the TVM backend needs apache-tvm")

import slimfx  # noqa: E402
from slimfx.backends.tvm.compiled import Compiled  # noqa: E402
from slimfx.errors import RuntimeInputError  # noqa: E402
from slimfx.ir import Graph, TensorType  # noqa: E402

pytestmark = pytest.mark.tvm


def _two_input_graph() -> Graph:
    """``tanh(linear(x, w) * s)`` with ``x: f32[2,8]`` and a 0-d ``s: f32[]``."""
    g = Graph("two")
    x = g.add_input("x", TensorType((2, 8)))
    s = g.add_input("s", TensorType(()))
    w = g.add_constant(torch.randn(4, 8, generator=torch.Generator().manual_seed(3)), "fc.w")
    y = g.add("linear", [x, w], {}, name="fc")
    g.set_outputs([g.add("tanh", [g.add("mul", [y, s])], name="out")])
    g.verify()
    return g


@pytest.fixture(scope="module")
def model() -> tuple[Graph, Compiled]:
    g = _two_input_graph()
    return g, slimfx.compile(g, "x86")


X = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
S = np.asarray(1.5, np.float32)


@pytest.fixture(scope="module")
def expected(model) -> np.ndarray:
    g, c = model
    out = c(X, S)
    ref = slimfx.to_torch(g)(torch.from_numpy(X), torch.from_numpy(S)).detach().numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)
    return out


# --------------------------------------------------------------------------- 0-d inputs
def test_zero_d_input_compiles_and_runs(model, expected) -> None:
    """A 0-d input used to reach TVM as a 1-d tensor (np.ascontiguousarray) and fail there."""
    g, c = model
    assert c.inputs[1].type.shape == ()
    assert expected.shape == (2, 4)


@pytest.mark.parametrize("s", [
    pytest.param(S, id="numpy-0d"),
    pytest.param(torch.tensor(1.5), id="torch-0d"),
    pytest.param(1.5, id="python-float"),
    pytest.param(np.float32(1.5), id="numpy-scalar"),
    pytest.param(np.asarray(1.5, np.dtype(">f4")), id="big-endian-0d"),
])
def test_zero_d_input_forms_equal(model, expected, s) -> None:
    out = model[1](X, s)
    np.testing.assert_array_equal(np.asarray(out), expected)


# --------------------------------------------------------------------------- accepted forms
def _non_contiguous() -> np.ndarray:
    a = np.asfortranarray(X)
    assert not a.flags.c_contiguous
    return a


@pytest.mark.parametrize("x", [
    pytest.param(_non_contiguous(), id="numpy-fortran-order"),
    pytest.param(np.ascontiguousarray(X[:, ::-1])[:, ::-1], id="numpy-negative-stride"),
    pytest.param(torch.from_numpy(X.T.copy()).T, id="torch-transposed"),
    pytest.param(torch.from_numpy(X).requires_grad_(), id="torch-requires-grad"),
    pytest.param(X.astype(">f4"), id="numpy-big-endian"),
])
def test_accepted_input_forms_equal(model, expected, x) -> None:
    out = model[1](x, S)
    np.testing.assert_array_equal(np.asarray(out.detach() if hasattr(out, "detach") else out),
                                  expected)


def test_keyword_inputs_equal_positional(model, expected) -> None:
    c = model[1]
    np.testing.assert_array_equal(c(x=X, s=S), expected)
    np.testing.assert_array_equal(c(s=S, x=X), expected)
    np.testing.assert_array_equal(c(X, s=S), expected)


# --------------------------------------------------------------------------- refused inputs
BAD: dict[str, tuple[tuple[Any, ...], dict[str, Any], list[str]]] = {
    # name: (args, kwargs, substrings the message must contain)
    "int64-for-f32": ((torch.zeros(2, 8, dtype=torch.int64), S), {},
                      ["'x'", "f32[2,8]", "float32", "int64[2, 8]"]),
    "float64-numpy": ((X.astype(np.float64), S), {}, ["'x'", "float32", "float64"]),
    "wrong-rank": ((X[..., None], S), {}, ["'x'", "rank 3", "expected rank 2"]),
    "wrong-shape": ((np.zeros((3, 8), np.float32), S), {}, ["'x'", "[3, 8]"]),
    "0d-given-1d": ((X, np.ones(1, np.float32)), {}, ["'s'", "f32[]", "rank 1"]),
    "too-few": ((X,), {}, ["takes 2 input(s)", "x, s", "got 1"]),
    "too-many": ((X, S, S), {}, ["takes 2 input(s)", "got 3"]),
    "inputs-as-list": (([X, S],), {}, ["as separate arguments", "one list", "compiled(*inputs)"]),
    "inputs-as-tuple": (((torch.from_numpy(X), torch.tensor(1.5)),), {}, ["one tuple"]),
    "python-list": (([[0.0] * 8] * 2, S), {}, ["'x'", "list"]),
    "none": ((None, S), {}, ["'x'", "NoneType"]),
    "meta-device": ((torch.empty(2, 8, device="meta"), S), {}, ["'x'", "meta device"]),
    "complex": ((torch.zeros(2, 8, dtype=torch.complex64), S), {}, ["'x'", "complex"]),
    "sparse": ((torch.zeros(2, 8).to_sparse(), S), {}, ["'x'", "sparse"]),
    "bool-for-f32-scalar": ((X, True), {}, ["'s'", "bool"]),
    "str-scalar": ((X, "1.5"), {}, ["'s'", "str"]),
    "unknown-name": ((), {"x": X, "s": S, "mask": S}, ["unknown input name(s) 'mask'", "x, s"]),
    "missing-name": ((), {"x": X}, ["missing input(s) 's'", "in order: x, s"]),
    "duplicate-name": ((X,), {"x": X, "s": S}, ["both by position and by name: 'x'"]),
    "too-many-positional-with-names": ((X, S, S), {"s": S}, ["3 positional inputs"]),
    "wrong-dtype-by-name": ((), {"x": X, "s": np.asarray(1, np.int64)}, ["'s'", "int64"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_runtime_input_error(model, case) -> None:
    args, kwargs, needles = BAD[case]
    with pytest.raises(RuntimeInputError) as info:
        model[1](*args, **kwargs)
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, f"{case}: {needle!r} not in {msg!r}"


def test_input_named_self_by_keyword() -> None:
    """``self`` is positional-only in ``__call__``, so an input may be called ``self``."""
    g = Graph("selfname")
    g.set_outputs([g.add("relu", [g.add_input("self", TensorType((3,)))])])
    c = slimfx.compile(g, "x86")
    out = c(self=np.array([-1.0, 0.5, 2.0], np.float32))
    np.testing.assert_array_equal(out, [0.0, 0.5, 2.0])


# --------------------------------------------------------------------------- bf16
def test_bf16_graph_compiles_and_matches_torch_backend() -> None:
    """Lowering a bf16 constant used to fail (torch's ``numpy()`` has no bfloat16)."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                            torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 4)).eval()
    x = torch.randn(2, 3, 6, 6)
    gb = slimfx.quantize(slimfx.trace(m, (x,)), None, "bf16")
    assert any(v.dtype == "bf16" for n in gb.nodes for v in n.outputs)
    out = slimfx.compile(gb, "x86")(x)
    ref = slimfx.to_torch(gb)(x).detach()
    with torch.no_grad():
        fp32 = m(x)
    scale = fp32.abs().max().item()
    assert out.dtype == torch.float32 and out.shape == ref.shape
    # bf16 keeps 8 bits of mantissa: both backends round differently inside the sums
    assert (out - ref).abs().max().item() <= 3e-2 * scale
    assert (out - fp32).abs().max().item() <= 5e-2 * scale


def test_bf16_tensor_crosses_the_interface() -> None:
    """A bf16 graph input and output: torch bfloat16 in, torch bfloat16 out."""
    g = Graph("bfio")
    g.set_outputs([g.add("relu", [g.add_input("x", TensorType((4,), "bf16"))])])
    c = slimfx.compile(g, "x86")
    x = torch.tensor([-1.0, 0.5, 2.0, -3.0], dtype=torch.bfloat16)
    out = c(x)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, torch.relu(x))


# --------------------------------------------------------------------------- threads
_THREADS_SCRIPT = textwrap.dedent("""
    import threading
    import numpy as np
    import torch
    import slimfx
    from slimfx.ir import Graph, TensorType

    torch.manual_seed(0)
    g = Graph("mlp")  # built by hand: tracing would add seconds to the subprocess
    h = g.add("linear", [g.add_input("x", TensorType((4, 16))),
                         g.add_constant(torch.randn(32, 16), "fc1.w"),
                         g.add_constant(torch.randn(32), "fc1.b")], {})
    g.set_outputs([g.add("linear", [g.add("relu", [h]), g.add_constant(torch.randn(16, 32),
                                                                        "fc2.w")], {})])
    g8 = slimfx.quantize(g, [torch.randn(4, 16) for _ in range(4)], "ptq-int8")
    assert any(n.op.name == "qlinear" for n in g8.nodes)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((4, 16)).astype(np.float32) for _ in range(8)]
    for name, graph in (("fp32", g), ("int8", g8)):
        c = slimfx.compile(graph, "x86")
        ref = [c(a) for a in xs]  # single-thread results
        bad = []

        def work(k, c=c, ref=ref, bad=bad):
            for i in range(100):
                j = (i + k) % len(xs)
                if not np.array_equal(c(xs[j]), ref[j]):
                    bad.append((k, i))

        threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not bad, (name, bad[:5])
        print(name, "ok", flush=True)
""")


def test_one_compiled_called_from_many_threads() -> None:
    """6 threads x 100 calls on one Compiled (fp32 and int8), in a subprocess: a segfault
    fails this test instead of killing pytest."""
    proc = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, (f"exit status {proc.returncode} (negative: killed by that "
                                  f"signal)\n{proc.stdout}\n{proc.stderr[-3000:]}")
    assert "fp32 ok" in proc.stdout and "int8 ok" in proc.stdout


def test_threads_get_their_own_vm(model, expected) -> None:
    import threading

    c = model[1]
    vms: list[Any] = []
    outs: list[np.ndarray] = []

    def work() -> None:
        outs.append(c(X, S))
        vms.append(c._ensure_vm())

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(v) for v in vms}) == 3
    for o in outs:
        np.testing.assert_array_equal(o, expected)
