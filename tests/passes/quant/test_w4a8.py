"""W4A8: 4-bit weights per output channel with int8 activations, for PTQ and QAT; 4-bit
packing (slimfx/ir/int4.py) in graph files, size reports and compiled artifacts."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import slimfx
from slimfx.errors import ArtifactError, PipelineError, QuantizationError
from slimfx.ir.int4 import is_int4, pack_int4, packed_nbytes, unpack_int4
from slimfx.ir.serialize import load_graph, save_graph
from slimfx.passes import Pipeline
from slimfx.passes.quant import QConfig
from slimfx.passes.quant.report import constant_bytes

W4A8 = QConfig.preset("x86", weight_bits=4)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ptq(digits):
    """(float graph, int8 PTQ graph, W4A8 PTQ graph, test batches, labels)."""
    _, g, train, test, labels = digits
    return (g, slimfx.quantize(g, train[:4]), slimfx.quantize(g, train[:4], qconfig=W4A8),
            test, labels)


def _weights(g):
    return [v for v in g.constants.values() if v.dtype == "i8"]


# --------------------------------------------------------------------------- packing
@pytest.mark.parametrize("n", [0, 1, 2, 7, 16, 33])
def test_pack_round_trip(n):
    gen = torch.Generator().manual_seed(n)
    v = torch.randint(-8, 8, (n,), generator=gen, dtype=torch.int8)
    p = pack_int4(v)
    assert p.dtype == torch.uint8 and p.numel() == packed_nbytes(n) == (n + 1) // 2
    assert torch.equal(unpack_int4(p, [n]), v)


def test_pack_layout_every_pair():
    """Low nibble first, two's complement: all 256 (even, odd) pairs, and odd shapes."""
    vals = torch.arange(-8, 8, dtype=torch.int8)
    a, b = torch.meshgrid(vals, vals, indexing="ij")
    pairs = torch.stack([a.reshape(-1), b.reshape(-1)], 1).reshape(-1)
    p = pack_int4(pairs)
    expect = (a.reshape(-1).to(torch.int16) & 0xF) | ((b.reshape(-1).to(torch.int16) & 0xF) << 4)
    assert torch.equal(p.to(torch.int16), expect)
    assert sorted(p.tolist()) == list(range(256))  # a bijection onto the bytes
    w = torch.randint(-7, 8, (5, 3, 3, 3), dtype=torch.int8)  # 135 values: odd
    p = pack_int4(w)
    assert p.numel() == 68 and int(p[-1]) >> 4 == 0  # the spare high nibble is 0
    assert torch.equal(unpack_int4(p, w.shape), w)


def test_pack_refuses_out_of_range_and_bad_sizes():
    with pytest.raises(ValueError, match=r"\[-8, 7\], found \[-9, 3\]"):
        pack_int4(torch.tensor([-9, 3], dtype=torch.int8))
    with pytest.raises(ValueError, match="integer"):
        pack_int4(torch.zeros(3))
    with pytest.raises(ValueError, match=r"uint8\[3\]"):
        unpack_int4(torch.zeros(2, dtype=torch.uint8), [5])


# --------------------------------------------------------------------------- qconfig
def test_preset_weight_bits():
    w = W4A8.default.weight
    assert (w.qmin, w.qmax, w.symmetric, w.per_channel) == (-7, 7, True, True)
    assert W4A8.default.activation == QConfig.preset("x86").default.activation  # int8
    assert QConfig.preset("x86", weight_bits=8) == QConfig.preset("x86")
    assert QConfig.preset("arm", weight_bits=2).default.weight.qmax == 1
    for bad in (1, 9, True, 4.0):
        with pytest.raises(QuantizationError, match="weight_bits.*2 to 8"):
            QConfig.preset("x86", weight_bits=bad)
    # the pipeline option is checked when the pipeline is parsed, with a caret at the pass
    assert Pipeline("insert-observers{weight_bits=4}").passes[0].qconfig() == W4A8
    for bad in (1, 9):
        with pytest.raises(PipelineError, match=r"position 9: pass 'insert-observers': "
                           rf"QConfig.preset: weight_bits={bad} .*2 to 8.*\n.*\n {{11}}\^$"):
            Pipeline(f"ptq-int8,insert-observers{{weight_bits={bad}}}")


# --------------------------------------------------------------------------- PTQ
def test_ptq_w4a8_weights_and_accuracy(ptq):
    g, q8, q4, test, labels = ptq
    ws = _weights(q4)
    assert len(ws) == 3 and all(is_int4(v) for v in ws)  # conv1, conv2, fc
    for v in ws:
        assert int(v.const.min()) >= -7 and int(v.const.max()) <= 7 and v.qparams.axis == 0
        assert v.qparams.zero_point == (0,) * len(v.qparams.zero_point)
    assert not any(is_int4(v) for v in _weights(q8))
    # same activation quantization as int8: the input's qparams agree
    assert q4.find("quantize")[0].attrs["scale"] == q8.find("quantize")[0].attrs["scale"]
    ref, m4 = slimfx.to_torch(g), slimfx.to_torch(q4)
    with torch.no_grad():
        agree = torch.cat([ref(b).argmax(1) == m4(b).argmax(1) for b in test]).float().mean()
    assert agree > 0.8  # 4-bit weights lose some accuracy, not all of it


def test_graph_file_packs_4bit_weights(ptq, tmp_path):
    _, q8, q4, test, _ = ptq
    save_graph(q4, tmp_path / "w4.safetensors")
    save_graph(q8, tmp_path / "w8.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "w4.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        shapes = json.loads(f.metadata()["int4"])
        for v in _weights(q4):
            t = f.get_tensor(f"int4:{v.name}")
            assert v.name not in keys and t.dtype == torch.uint8
            assert t.numel() == packed_nbytes(v.const.numel())
            assert shapes[v.name] == list(v.type.shape)
    back = load_graph(tmp_path / "w4.safetensors")
    assert str(back) == str(q4)
    for name, v in q4.constants.items():
        assert torch.equal(back.constants[name].const, v.const)
    with torch.no_grad():
        assert torch.equal(slimfx.to_torch(back)(test[0]), slimfx.to_torch(q4)(test[0]))
    w8 = sum(v.const.numel() for v in _weights(q8))
    saved = (tmp_path / "w8.safetensors").stat().st_size - (tmp_path / "w4.safetensors").stat(
        ).st_size
    assert saved >= w8 // 2 - 200  # the file shrinks by half the weight bytes (header aside)


def test_graph_file_with_bad_packing_is_refused(ptq, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    _, q8, q4, _, _ = ptq
    path = tmp_path / "w4.safetensors"
    save_graph(q4, path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    shapes = json.loads(meta["int4"])
    ghost = {**meta, "int4": json.dumps({**shapes, "ghost": [3]})}
    save_file(tensors, str(path), metadata=ghost)
    with pytest.raises(ArtifactError, match="packed 4-bit tensors"):
        load_graph(path)
    save_graph(q8, path)  # an int8 weight (range [-127, 127]) stored packed is refused
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    w = _weights(q8)[0]
    tensors[f"int4:{w.name}"] = pack_int4(tensors.pop(w.name).clamp(-8, 7))
    save_file(tensors, str(path), metadata={**meta, "int4": json.dumps({
        w.name: list(w.type.shape)})})
    with pytest.raises(ArtifactError, match="no 4-bit qparams"):
        load_graph(path)


def test_report_counts_packed_bytes(ptq, digits):
    g, q8, q4, _, _ = ptq
    w8 = sum(v.const.numel() for v in _weights(q8))
    assert constant_bytes(q8) - constant_bytes(q4) == w8 - sum(
        packed_nbytes(v.const.numel()) for v in _weights(q4))
    _, _, train, _, _ = digits
    text = slimfx.report(g, train[:3], W4A8)
    line = next(ln for ln in text.splitlines() if ln.startswith("model size"))
    assert f"quantized {constant_bytes(q4):,} B" in line


# --------------------------------------------------------------------------- QAT
def test_qat_w4a8_trains_and_converts(digits, ptq):
    model, g, train, test, _ = digits
    _, _, q4, _, _ = ptq
    gq = slimfx.prepare_qat(g, train[:4], W4A8)
    fq_w = [n for n in gq.find("fake_quantize") if n.inputs[0].is_const]
    assert len(fq_w) == 3 and all((n.attrs["qmin"], n.attrs["qmax"]) == (-7, 7) for n in fq_w)
    assert str(slimfx.convert(gq)) == str(q4)  # untrained: exactly the PTQ program
    m = slimfx.to_torch(gq)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    m.train()
    for step in range(40):  # distil the float model into the 4-bit one
        x = train[step % len(train)]
        with torch.no_grad():
            target = model(x)
        loss = F.mse_loss(m(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    g4 = slimfx.convert(m)
    assert all(is_int4(v) for v in _weights(g4)) and len(_weights(g4)) == 3
    with torch.no_grad():
        assert torch.equal(slimfx.to_torch(slimfx.convert(m, form="qdq"))(test[0]), m(test[0]))

        def err(mod):
            return sum(float(F.mse_loss(mod(b), model(b))) for b in test)

        assert err(slimfx.to_torch(g4)) < 0.8 * err(slimfx.to_torch(q4))


# --------------------------------------------------------------------------- TVM
@pytest.mark.tvm
@pytest.mark.skipif(importlib.util.find_spec("tvm") is None, reason="needs apache-tvm")
def test_w4a8_compiles_bit_exact_and_stores_packed(ptq, tmp_path):
    import tvm

    from slimfx.backends.tvm import tuning
    from slimfx.backends.tvm.lower import LOAD_FN, lower_graph
    from slimfx.backends.tvm.targets import resolve_target

    _, q8, q4, test, _ = ptq
    c = slimfx.compile(q4, "x86")
    ref = slimfx.to_torch(q4)
    loaded = slimfx.load(c.save(tmp_path / "w4.slim"))
    assert c.load_fn == loaded.load_fn == LOAD_FN
    assert slimfx.compile(q8, "x86").load_fn is None  # int8: nothing to do at load time
    with torch.no_grad():
        for b in test[:3]:
            want = ref(b)
            assert torch.equal(torch.as_tensor(c(b)), want)
            assert torch.equal(torch.as_tensor(loaded(b)), want)

    def constants(g, fn="main"):  # the constants of one Relax function after the folding
        target = tvm.target.Target(resolve_target("x86"))  # and fusion compile runs
        mod = tuning.prepare(lower_graph(g, target=target), target)
        found = []
        tvm.relax.analysis.post_order_visit(
            mod[fn], lambda e: found.append(e.value.numpy())
            if isinstance(e, tvm.ir.expr.Constant) and hasattr(e.value, "numpy") else None)
        return found

    # one packed constant per weight, in its kernel's layout (which may pad K to 4), all in
    # the load function: the entry function holds none and gets the unpacked weights
    packed = [a.size for a in constants(q4, LOAD_FN) if a.dtype == np.uint8]
    w8 = sum(v.const.numel() for v in _weights(q8))
    assert len(packed) == 3 and sum(packed) >= sum(packed_nbytes(v.const.numel())
                                                   for v in _weights(q4))
    main4 = constants(q4)
    assert not any(a.dtype == np.uint8 for a in main4)
    # the int8 program holds its weights unpacked, in its kernels' layout (int8 or int16)
    assert sum(a.nbytes for a in constants(q8)) - sum(a.nbytes for a in main4) >= (
        w8 - sum(packed))
    int8_in_4 = [a.shape for a in main4 if a.dtype == np.int8 and a.size > 1]
    # no unpacked copy of the weights; about half the bytes of the int8 program's weights in
    # the same kernel layouts (which may pad channels to the kernel's block of 16)
    w8_layout = sum(a.nbytes for a in constants(q8) if a.dtype in (np.int8, np.int16)
                    and a.size >= 16)
    assert not int8_in_4 and sum(packed) <= 0.6 * w8_layout


@pytest.mark.tvm
@pytest.mark.skipif(importlib.util.find_spec("tvm") is None, reason="needs apache-tvm")
def test_w4a8_unpacks_once_at_load_not_per_call(ptq, tmp_path):
    _, _, q4, test, _ = ptq
    c = slimfx.load(slimfx.compile(q4, "x86").save(tmp_path / "w4.slim"))
    x = test[0].numpy()
    first = c(x)  # the first call runs the load function, once
    weights = c._weights
    assert weights is not None and len(weights) == 3  # conv1, conv2, fc: unpacked int8
    assert all(str(w.dtype) in ("int8", "int16", "int32") for w in weights)
    np.testing.assert_array_equal(c(x), first)
    assert c._weights is weights  # later calls reuse them
    kernels = [r.name for r in c.profile(x, repeat=2, warmup=0).rows]
    assert any("qconv" in k for k in kernels)  # the profile sees the call's kernels...
    assert not any("unpack" in k for k in kernels), kernels  # ...and no unpacking among them


@pytest.mark.tvm
@pytest.mark.arm
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("tvm") is None, reason="needs apache-tvm")
def test_w4a8_bit_exact_on_arm(ptq):
    """aarch64 under qemu: the runner calls the load function, then the entry function."""
    from slimfx.backends.tvm import arm_env

    if arm_env.find_env() is None:
        pytest.skip(f"aarch64 qemu environment not set up ({arm_env.missing_reason()}); "
                    "run `make arm-env`")
    _, _, q4, test, _ = ptq
    c = slimfx.compile(q4, "arm")
    assert c.load_fn is not None and c._runs_under_qemu()
    with torch.no_grad():
        want = slimfx.to_torch(q4)(test[0])
    assert torch.equal(torch.as_tensor(c(test[0].numpy())), want)
