"""slimfx.compile on small models, artifacts (save -> load -> run), and the error paths."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

tvm = pytest.importorskip("tvm", reason="the TVM backend needs apache-tvm")

import slimfx  # noqa: E402
from slimfx.backends.tvm.compiled import Compiled  # noqa: E402
from slimfx.backends.tvm.targets import resolve_target, target_kind  # noqa: E402
from slimfx.errors import (  # noqa: E402
    ArtifactError,
    DeviceError,
    LoweringError,
    RuntimeInputError,
    SlimfxError,
)
from slimfx.ir import Graph, Source, TensorType  # noqa: E402

pytestmark = pytest.mark.tvm


# --------------------------------------------------------------------------- models
class ConvBnRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
        for m in self.modules():  # non-trivial running statistics
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Attention(nn.Module):
    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, t, 3, self.heads, d // self.heads) \
            .permute(2, 0, 3, 1, 4).unbind(0)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return x + self.proj(y.transpose(1, 2).reshape(b, t, d))


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(6, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(x)
        return self.head(y[:, -1])


MODELS = {
    "conv_bn_relu": (ConvBnRelu, (2, 3, 16, 16)),
    "attention": (Attention, (2, 5, 16)),
    "lstm": (Recurrent, (2, 4, 6)),
}


def _trace(name: str) -> tuple[nn.Module, Graph, torch.Tensor]:
    torch.manual_seed(0)
    cls, shape = MODELS[name]
    model = cls().eval()
    x = torch.randn(*shape)
    return model, slimfx.trace(model, (x,)), x


@pytest.mark.parametrize("name", sorted(MODELS))
def test_traced_model_matches_eager(name: str) -> None:
    model, g, x = _trace(name)
    compiled = slimfx.compile(g, "x86")
    with torch.no_grad():
        ref = model(x)
    out = compiled(x)
    assert isinstance(out, torch.Tensor)
    err = (out - ref).abs().max().item()
    assert err <= 1e-4 * max(1.0, ref.abs().max().item()), f"{name}: max abs error {err}"


# --------------------------------------------------------------------------- artifacts
def _small_graph() -> Graph:
    g = Graph("small")
    x = g.add_input("x", TensorType((2, 8)))
    w = g.add_constant(torch.randn(4, 8, generator=torch.Generator().manual_seed(1)), "fc.w")
    y = g.add("linear", [x, w], {}, name="fc")
    g.set_outputs([g.add("tanh", [y], name="out"), g.add("softmax", [y], {"axis": -1})])
    g.verify()
    return g


@pytest.fixture(scope="module")
def small() -> tuple[Graph, Compiled]:
    g = _small_graph()
    return g, slimfx.compile(g, "x86")


@pytest.fixture(scope="module")
def saved_dir(small, tmp_path_factory) -> Path:
    return small[1].save(tmp_path_factory.mktemp("art") / "model")


def test_multi_output_numpy_in_numpy_out(small) -> None:
    g, compiled = small
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    out = compiled(x)
    ref = slimfx.to_torch(g)(torch.from_numpy(x))
    assert isinstance(out, tuple) and len(out) == 2
    for o, r in zip(out, ref, strict=True):
        assert isinstance(o, np.ndarray)
        np.testing.assert_allclose(o, r.detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("suffix", ["", ".slim"])
def test_save_load_run_equal(small, tmp_path, suffix) -> None:
    _, compiled = small
    path = compiled.save(tmp_path / f"model{suffix}")
    assert path.is_dir() == (suffix == "")
    loaded = slimfx.load(path)
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    for a, b in zip(compiled(x), loaded(x), strict=True):
        np.testing.assert_array_equal(a, b)
    assert [s.name for s in loaded.inputs] == ["x"]
    assert loaded.target == compiled.target
    meta = json.loads((path / "meta.json").read_text()) if path.is_dir() else None
    if meta is not None:
        assert meta["tvm_version"] == tvm.__version__
        assert meta["inputs"][0] == {"name": "x", "shape": [2, 8], "dtype": "f32",
                                     "qparams": None}


def test_benchmark_reports_positive_latency(small) -> None:
    res = small[1].benchmark(repeat=3, number=2)
    assert 0 < res.min_ms <= res.median_ms <= res.max_ms
    assert res.repeat == 3 and res.number == 2


# --------------------------------------------------------------------------- bad inputs
def test_wrong_input_count(small) -> None:
    with pytest.raises(RuntimeInputError, match="takes 1 input"):
        small[1]()


def test_wrong_shape_names_input(small) -> None:
    with pytest.raises(RuntimeInputError, match=r"input 'x': expected f32\[2,8\].*\[3, 8\]"):
        small[1](np.zeros((3, 8), np.float32))


def test_wrong_dtype(small) -> None:
    with pytest.raises(RuntimeInputError, match="float64"):
        small[1](torch.zeros(2, 8, dtype=torch.float64))


def test_not_a_tensor(small) -> None:
    with pytest.raises(RuntimeInputError, match="list"):
        small[1]([[0.0] * 8] * 2)


def _copy_dir(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_corrupt_json(saved_dir, tmp_path) -> None:
    bad = _copy_dir(saved_dir, tmp_path / "bad")
    (bad / "meta.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        slimfx.load(bad)


def test_checksum_mismatch(saved_dir, tmp_path) -> None:
    bad = _copy_dir(saved_dir, tmp_path / "bad")
    lib = bad / "model.so"
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lib.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum"):
        slimfx.load(bad)


@pytest.mark.parametrize("field,value,match", [
    ("tvm_version", "0.1.0", "TVM"),
    ("slimfx_version", "9.9.9", "slimfx"),
    ("target", {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}, "aarch64"),
    ("target", {"kind": "cuda", "arch": "sm_80"}, "CUDA"),
    ("format_version", 99, "format version"),
])
def test_foreign_metadata(saved_dir, tmp_path, field, value, match) -> None:
    if field == "target" and target_kind(value) == "cuda" and tvm.cuda(0).exist:
        pytest.skip("this host has a CUDA device")
    bad = _copy_dir(saved_dir, tmp_path / "bad")
    meta = json.loads((bad / "meta.json").read_text())
    meta[field] = value
    (bad / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=match):
        slimfx.load(bad)


def test_truncated_archive(small, tmp_path) -> None:
    path = small[1].save(tmp_path / "m.slim")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ArtifactError):
        slimfx.load(path)


def test_archive_without_library(tmp_path) -> None:
    path = tmp_path / "empty.slim"
    with tarfile.open(path, "w"):
        pass
    with pytest.raises(ArtifactError, match="no file"):
        slimfx.load(path)


def test_missing_artifact(tmp_path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        slimfx.load(tmp_path / "nope")


# --------------------------------------------------------------------------- targets / lowering
def test_unknown_target_lists_known() -> None:
    with pytest.raises(SlimfxError, match="known targets: x86, arm, cuda"):
        slimfx.compile(_small_graph(), "riscv")


def test_named_targets_are_dicts() -> None:
    x86 = resolve_target("x86")
    assert x86["kind"] == "llvm" and x86["mcpu"] and x86["num-cores"] >= 1
    arm = resolve_target("arm")
    assert arm["mtriple"] == "aarch64-linux-gnu" and "+dotprod" in arm["mattr"]
    assert resolve_target("cuda")["arch"] == "sm_80"
    assert resolve_target("cuda:sm_90")["arch"] == "sm_90"
    with pytest.raises(SlimfxError, match="CUDA architecture"):
        resolve_target("cuda:ampere")


def test_cuda_compiles_without_gpu_but_refuses_to_run() -> None:
    compiled = slimfx.compile(_small_graph(), "cuda")
    if tvm.cuda(0).exist:
        pytest.skip("this host has a CUDA device")
    with pytest.raises(DeviceError, match="no CUDA device"):
        compiled(np.zeros((2, 8), np.float32))


def test_opaque_and_unlowered_nodes_reported_together() -> None:
    from slimfx.ir import OpDef, register_op

    register_op(OpDef("test_unlowered_op", ("x",), infer=lambda ts, a: [ts[0]]), override=True)
    g = Graph("bad")
    x = g.add_input("x", TensorType((2, 3)))
    a = g.create("opaque", [x], {"target": "torch.special.i0", "spec": "{}"},
                 [TensorType((2, 3))], name="weird",
                 source=Source("blocks.0", "model.py:12")).output
    b = g.add("relu", [a])
    c = g.add("test_unlowered_op", [b], name="custom", source=Source("head", "model.py:40"))
    g.set_outputs([c])
    with pytest.raises(LoweringError) as info:
        slimfx.compile(g, "x86")
    msg = str(info.value)
    assert "2 node(s)" in msg
    assert "%weird = opaque (blocks.0 at model.py:12)" in msg
    assert "%custom = test_unlowered_op (head at model.py:40)" in msg
    assert "register_lowering" in msg


def test_user_registered_lowering() -> None:
    from tvm import relax

    from slimfx.backends.tvm import register_lowering
    from slimfx.ir import OpDef, register_op

    register_op(OpDef("test_twice", ("x",), infer=lambda ts, a: [ts[0]]), override=True)

    @register_lowering("test_twice", override=True)
    def _twice(ctx, node, x):
        return relax.op.multiply(x, ctx.scalar(2.0, node.outputs[0].dtype))

    g = Graph("user")
    x = g.add_input("x", TensorType((3,)))
    g.set_outputs([g.add("test_twice", [x])])
    out = slimfx.compile(g, "x86")(np.array([1.0, -2.0, 3.5], np.float32))
    np.testing.assert_array_equal(out, [2.0, -4.0, 7.0])


def test_arm_artifact_refused_on_x86(tmp_path) -> None:
    import platform
    import shutil

    if platform.machine().lower() in ("aarch64", "arm64"):
        pytest.skip("this host runs aarch64 code")
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("no aarch64 cross compiler (make arm-env installs it)")
    compiled = slimfx.compile(_small_graph(), "arm")
    from slimfx.backends.tvm.arm_env import find_env

    if find_env() is None:  # with `make arm-env` the call runs under qemu (see test_arm.py)
        with pytest.raises(DeviceError, match="aarch64"):
            compiled(np.zeros((2, 8), np.float32))
    path = compiled.save(tmp_path / "arm.slim")
    with pytest.raises(ArtifactError, match="aarch64 code and this host is x86_64"):
        slimfx.load(path)
