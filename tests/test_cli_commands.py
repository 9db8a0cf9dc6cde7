"""The ``slimfx`` model commands end to end, on a ``.pt2`` of a third-party model.

A tiny randomly initialised ``transformers`` ResNet is exported with ``torch.export.save``;
``inspect`` / ``quantize`` / ``prune`` / ``report`` / ``compile`` / ``run`` / ``bench`` run on
it through :func:`slimfx.cli.main`, and what they write is compared *exactly* with what the
Python API gives on the same model and the same arrays (graphs by their text form and
constants, outputs with ``np.array_equal``). Bad input is one line on stderr and status 2.
"""

from __future__ import annotations

import importlib.util
import io
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import slimfx
from slimfx import cli
from slimfx._cli.cmd_compress import CALIB_BATCH
from slimfx.ir import Graph, load_graph, save_graph
from slimfx.ir.symbolic import eval_dim

HAS_TVM = importlib.util.find_spec("tvm") is not None
HAS_DOT = shutil.which("dot") is not None
BATCH = 2


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _ok(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    rc, out, err = _cli(capsys, *argv)
    assert rc == 0, err
    return out


def _same_graph(a: Graph, b: Graph) -> None:
    assert a.format(locations=False) == b.format(locations=False)
    assert list(a.constants) == list(b.constants)
    for name, v in a.constants.items():
        assert v.const is not None and b.constants[name].const is not None
        assert torch.equal(v.const, b.constants[name].const), name


class Files:
    """The files of one session: the exported model, data, and the original module."""

    def __init__(self, root: Path) -> None:
        transformers = pytest.importorskip("transformers")
        torch.manual_seed(0)
        cfg = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16],
                                        depths=[1, 1], layer_type="basic", return_dict=False)
        self.model = transformers.ResNetModel(cfg).eval()
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((BATCH, 3, 16, 16)).astype(np.float32)
        self.root = root
        self.pt2 = root / "resnet.pt2"
        torch.export.save(torch.export.export(self.model, (torch.from_numpy(self.x),),
                                              strict=False), self.pt2)
        self.calib_arr = rng.standard_normal((4 * BATCH + 1, 3, 16, 16)).astype(np.float32)
        self.calib = root / "calib.npy"
        np.save(self.calib, self.calib_arr)
        self.x_npy = root / "x.npy"
        np.save(self.x_npy, self.x)
        self.graph = slimfx.trace(self.model, (torch.from_numpy(self.x),))
        self.float_file = root / "float.safetensors"
        save_graph(self.graph, self.float_file)

    def batches(self) -> list[torch.Tensor]:
        """The calibration batches the CLI makes for a graph with a dynamic batch: dim 0
        split into batches of CALIB_BATCH, the last one smaller."""
        assert str(self.graph.inputs[0].type) == "f32[N,3,16,16]"
        return list(torch.from_numpy(self.calib_arr).split(CALIB_BATCH))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    return Files(tmp_path_factory.mktemp("cli"))


@pytest.fixture(scope="module")
def int8_file(files: Files) -> Path:
    """The ptq-int8 graph written by the Python API (the CLI's is checked against it)."""
    path = files.root / "api_int8.safetensors"
    save_graph(slimfx.quantize(files.graph, files.batches(), "ptq-int8"), path)
    return path


# ------------------------------------------------------------------------------ commands
def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert _ok(capsys, "--version") == f"slimfx {slimfx.__version__}\n"


def test_inspect_prints_the_ir_and_draws_it(files: Files, capsys: pytest.CaptureFixture[str]
                                            ) -> None:
    svg = files.root / "resnet.svg"
    argv = ["inspect", files.pt2] + (["--dot", svg] if HAS_DOT else [])
    out = _ok(capsys, *argv)
    assert out.startswith(str(files.graph))  # the .pt2 traces to the eager model's graph
    assert "conv2d" in out and "batch_norm" in out
    assert "symbols: N >= 1\n" in out  # the default: a dynamic batch
    macs = sum(n.outputs[0].type.numel * n.inputs[1].type.shape[1]
               * n.inputs[1].type.shape[2] * n.inputs[1].type.shape[3]
               for n in files.graph.find("conv2d"))
    per_sample = eval_dim(macs, {"N": 1})
    assert f"MACs: {per_sample:,} at N=1 ({per_sample}*N)\n" in out
    params = sum(v.type.numel for v in files.graph.constants.values())
    assert f"parameters: {params:,} in {len(files.graph.constants)} constants" in out
    if not HAS_DOT:
        pytest.skip("Graphviz 'dot' is not installed (make test installs it)")
    root = ET.parse(svg).getroot()  # valid XML
    assert root.tag.endswith("svg")
    nodes = [e for e in root.iter() if e.get("class") == "node"]
    assert len(nodes) >= len(files.graph)
    assert f"wrote {svg}" in out


def _factory(root: Path, monkeypatch: pytest.MonkeyPatch, module: str, model: str) -> None:
    """Writes ``module.py`` whose ``build()`` returns ``(model, (randn(2, 4),))``, importable."""
    (root / f"{module}.py").write_text(
        "import torch\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        f"    return {model}, (torch.randn(2, 4),)\n")
    monkeypatch.chdir(root)
    monkeypatch.syspath_prepend(str(root))


def test_inspect_a_factory_entry_point(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _factory(tmp_path, monkeypatch, "my_models_cli",
             "torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())")
    out = _ok(capsys, "inspect", "my_models_cli:build", "--summary", "--dot", "g.dot")
    assert "linear" in out and "MACs: 12 at N=1 (12*N)\n" in out and "graph @main" in out
    assert "inputs: %input f32[N,4]\n" in out and "symbols: N >= 1\n" in out
    assert (tmp_path / "g.dot").read_text().startswith('digraph "main" {')


def test_quantize_equals_the_python_api(files: Files, int8_file: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out_file = files.root / "cli_int8.safetensors"
    out = _ok(capsys, "quantize", files.pt2, "--calib", files.calib, "-o", out_file, "-q")
    assert out.startswith(f"wrote {out_file}")
    _same_graph(load_graph(out_file), load_graph(int8_file))


def test_quantize_fp16_needs_no_data(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = files.root / "fp16.safetensors"
    _ok(capsys, "quantize", files.float_file, "--pipeline", "fp16", "-o", out_file)
    _same_graph(load_graph(out_file), slimfx.quantize(files.graph, None, "fp16"))


def test_prune_equals_the_python_api(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    from slimfx.passes.prune import prune_channels

    out_file = files.root / "pruned.safetensors"
    out = _ok(capsys, "prune", files.float_file, "--ratio", "0.5", "--importance", "l2",
              "-o", out_file)
    assert "parameters" in out and "MACs" in out
    _same_graph(load_graph(out_file), prune_channels(files.graph, 0.5, importance="l2"))


def test_report_equals_the_python_api(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    out = _ok(capsys, "report", files.float_file, "--calib", files.calib, "--qconfig", "x86")
    assert out == slimfx.report(files.graph, files.batches(),
                                slimfx.QConfig.preset("x86")) + "\n"


# ------------------------------------------------------------------------------ TVM
@pytest.fixture(scope="module")
def slim_file(files: Files, int8_file: Path) -> Path:
    path = files.root / "resnet_int8.slim"
    assert cli.main(["compile", str(int8_file), "--target", "x86", "-o", str(path), "-q"]) == 0
    return path


@pytest.mark.tvm
@pytest.mark.skipif(not HAS_TVM, reason="the TVM backend needs apache-tvm")
def test_compile_and_run_equal_the_python_api(files: Files, int8_file: Path, slim_file: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    compiled = slimfx.load(slim_file)
    assert [s.name for s in compiled.inputs] == ["pixel_values"]
    expected = compiled(files.x)
    assert isinstance(expected, tuple) and len(expected) == 2
    # the integer program is exact: the compiled model equals the torch reference
    ref = slimfx.to_torch(load_graph(int8_file))(torch.from_numpy(files.x))
    for a, b in zip(expected, ref, strict=True):
        assert np.array_equal(a, b.numpy())

    y = files.root / "y.npz"
    out = _ok(capsys, "run", slim_file, "--input", files.x_npy, "-o", y)
    assert out.startswith(f"wrote {y}")
    with np.load(y) as z:
        assert z.files == [s.name for s in compiled.outputs]
        for name, e in zip(z.files, expected, strict=True):
            assert np.array_equal(z[name], e)
    ys = [files.root / "y0.npy", files.root / "y1.npy"]
    _ok(capsys, "run", slim_file, "-i", files.x_npy, "-o", *ys)
    for p, e in zip(ys, expected, strict=True):
        assert np.array_equal(np.load(p), e)


@pytest.mark.tvm
@pytest.mark.skipif(not HAS_TVM, reason="the TVM backend needs apache-tvm")
def test_bench_prints_a_latency_table(files: Files, slim_file: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = _ok(capsys, "bench", slim_file, "--input", files.x_npy, "--compare", "torch,ort",
              "--model", files.pt2, "--repeat", "2", "--number", "1", "--warmup", "1", "-q")
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["runtime", "median", "ms"]
    assert lines[2].startswith("slimfx x86") and lines[2].endswith("1.00x")
    assert any(ln.startswith("torch ") and "n/a" not in ln for ln in lines)
    ort = [ln for ln in lines if ln.startswith("onnxruntime")]
    assert len(ort) == 1
    if importlib.util.find_spec("onnxruntime") is not None:
        assert "n/a" not in ort[0], ort[0]
    out = _ok(capsys, "bench", slim_file, "--compare", "torch", "--repeat", "1", "-q")
    assert re.search(r"^torch +n/a: give the original model with --model$", out, re.M)


@pytest.mark.tvm
@pytest.mark.skipif(not HAS_TVM, reason="the TVM backend needs apache-tvm")
def test_run_with_the_wrong_input_is_one_line(files: Files, slim_file: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    bad = files.root / "bad_shape.npy"
    np.save(bad, np.zeros((1, 3, 15, 16), np.float32))  # any batch fits, not 15x16
    _bad(capsys, ["run", slim_file, "--input", bad, "-o", files.root / "z.npy"], "pixel_values")
    _bad(capsys, ["run", slim_file, "--input", files.x_npy, "-o", files.root / "z.npy"],
         "has 2 output(s)")


# ------------------------------------------------------------------------------ bad input
def _bad(capsys: pytest.CaptureFixture[str], argv: list[Any], why: str) -> str:
    rc, out, err = _cli(capsys, *argv)
    assert rc == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("slimfx") and "error: " in lines[0], err
    assert why in lines[0], err
    assert "Traceback" not in err and out == ""
    return lines[0]


def _bad_files(root: Path) -> dict[str, Path]:
    made = {}
    made["text"] = root / "text.npy"
    made["text"].write_text("this is not an array\n")
    made["objects"] = root / "objects.npy"
    np.save(made["objects"], np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    made["two"] = root / "two.npz"
    np.savez(made["two"], np.zeros((2, 3, 16, 16), np.float32), np.zeros(2, np.float32))
    made["strings"] = root / "strings.npy"
    np.save(made["strings"], np.array(["a", "b"]))
    made["f64"] = root / "f64.npy"
    np.save(made["f64"], np.zeros((4, 3, 16, 16)))
    made["bad_pt2"] = root / "broken.pt2"
    made["bad_pt2"].write_bytes(b"PK\x03\x04 not really a zip")
    made["model_txt"] = root / "model.txt"
    made["model_txt"].write_text("hello")
    return made


@pytest.mark.tvm
@pytest.mark.skipif(not HAS_TVM, reason="the TVM backend needs apache-tvm")
def test_compile_shapes_specialises(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _factory(tmp_path, monkeypatch, "my_linear_cli", "torch.nn.Sequential(torch.nn.Linear(4, 3))")
    out = _ok(capsys, "compile", "my_linear_cli:build", "-o", "any.slim", "-q")
    assert "inputs input f32[N,4] where N >= 1;" in out
    out = _ok(capsys, "compile", "my_linear_cli:build", "--shapes", "input=1,4", "-o",
              "one.slim", "-q")
    assert "inputs input f32[1,4];" in out
    anysize, one = slimfx.load(tmp_path / "any.slim"), slimfx.load(tmp_path / "one.slim")
    assert [str(s.type) for s in one.inputs] == ["f32[1,4]"] and not one.symbols
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(np.concatenate([one(x[i:i + 1]) for i in range(3)]),
                               anysize(x), rtol=1e-6, atol=1e-6)
    with pytest.raises(slimfx.errors.RuntimeInputError, match="input"):
        one(x)
    _bad(capsys, ["compile", "my_linear_cli:build", "--shapes", "input=1,5", "-o", "b.slim"],
         "input")
    _bad(capsys, ["compile", "my_linear_cli:build", "--shapes", "nope=1,4", "-o", "b.slim"],
         "nope")


@pytest.mark.parametrize("argv, why", [
    (["compile", "m.pt2", "--shapes", "x=1,a", "-o", "m.slim"], "NAME=D,D,..."),
    (["compile", "m.pt2", "--shapes", "x", "-o", "m.slim"], "NAME=D,D,..."),
])
def test_bad_shapes_argument(capsys: pytest.CaptureFixture[str], argv: list[str],
                             why: str) -> None:
    rc, _, err = _cli(capsys, *argv)
    assert rc == 2 and why in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, why", [
    (["inspect", "{root}/missing.pt2"], "does not exist"),
    (["inspect", "{root}/model.txt"], "unknown kind of file '.txt'"),
    (["inspect", "no_such_module_xyz:build"], "cannot import 'no_such_module_xyz'"),
    (["inspect", "{root}/broken.pt2"], "cannot load"),
    (["quantize", "{float}", "--pipeline", "nonexistent", "--calib", "{calib}",
      "-o", "{root}/o.safetensors"], "unknown pass 'nonexistent'"),
    (["quantize", "{float}", "-o", "{root}/o.safetensors"], "--calib"),
    (["quantize", "{float}", "--calib", "{calib}", "-o", "{root}/o.onnx"], "must end in"),
    (["quantize", "{float}", "--calib", "{root}/text.npy", "-o", "{root}/o.safetensors"],
     "cannot read calibration file"),
    (["quantize", "{float}", "--calib", "{root}/objects.npy", "-o", "{root}/o.safetensors"],
     "object array"),
    (["quantize", "{float}", "--calib", "{root}/strings.npy", "-o", "{root}/o.safetensors"],
     "only numeric"),
    (["quantize", "{float}", "--calib", "{root}/two.npz", "-o", "{root}/o.safetensors"],
     "holds 2 array(s), the model takes 1 input(s) (pixel_values)"),
    (["quantize", "{float}", "--calib", "{calib}", "{root}/two.npz",
      "-o", "{root}/o.safetensors"], "holds 3 array(s)"),
    (["quantize", "{float}", "--calib", "{root}/f64.npy", "-o", "{root}/o.safetensors"],
     "dtype"),
    (["quantize", "{float}", "--calib", "{root}/missing.npy", "-o", "{root}/o.safetensors"],
     "does not exist"),
    (["report", "{float}", "--calib", "{calib}", "--batch-size", "0"], "at least 1"),
    (["prune", "{float}", "--ratio", "1.5", "-o", "{root}/p.safetensors"], "ratio"),
    (["compile", "{float}", "--target", '{{"kind": ', "-o", "{root}/m.slim"], "malformed JSON"),
    (["compile", "{float}", "--target", "z80", "-o", "{root}/m.slim"], "z80"),
    (["run", "{root}/missing.slim", "--input", "{calib}", "-o", "{root}/y.npy"],
     "does not exist"),
    (["bench", "{root}/missing.slim", "--compare", "tf"], "unknown runtime 'tf'"),
])
def test_bad_input_is_one_line_and_status_2(files: Files, capsys: pytest.CaptureFixture[str],
                                            argv: list[str], why: str) -> None:
    if argv[0] == "compile" and not HAS_TVM:
        pytest.skip("the TVM backend needs apache-tvm")
    _bad_files(files.root)
    subs = {"root": files.root, "float": files.float_file, "calib": files.calib}
    _bad(capsys, [a.format(**subs) for a in argv], why)


def test_verbose_shows_the_traceback(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    _bad_files(files.root)
    rc, _, err = _cli(capsys, "quantize", files.float_file, "--calib",
                      files.root / "objects.npy", "-o", files.root / "o.safetensors", "-v")
    assert rc == 2
    assert "Traceback (most recent call last)" in err and "CalibrationError" in err
    assert err.splitlines()[-1].startswith("slimfx: error: cannot read calibration file")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("quiet", [False, True])
def test_progress_bars_on_a_terminal_unless_quiet(files: Files, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str],
                                                  quiet: bool) -> None:
    term = _Terminal()
    monkeypatch.setattr("sys.stderr", term)
    argv = ["quantize", str(files.float_file), "--calib", str(files.calib),
            "-o", str(files.root / "bars.safetensors")] + (["-q"] if quiet else [])
    assert cli.main(argv) == 0
    assert ("calibrate" in term.getvalue()) is not quiet
