"""Each ``slimfx`` model command on bad input: one line on stderr naming the problem, status 2.

Runs on the ``.pt2``/graph/``.slim`` files of ``tests/test_cli_commands.py`` (a tiny
``transformers`` ResNet), through :func:`slimfx.cli.main`. Also: TVM's own console noise
("BlockBuilder destroyed with remaining blocks!") does not follow a lowering error.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slimfx import cli
from tests.test_cli_commands import BATCH, HAS_TVM, Files

_TVM = pytest.mark.skipif(not HAS_TVM, reason="the TVM backend needs apache-tvm")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    f = Files(tmp_path_factory.mktemp("cli_bad"))
    np.save(f.root / "wrongshape.npy", np.zeros((BATCH, 3, 9, 9), np.float32))
    np.save(f.root / "int.npy", np.zeros((BATCH, 3, 16, 16), np.int64))
    (f.root / "afile").write_text("not a directory")
    (f.root / "fake.slim").write_bytes(b"not an archive")
    return f


@pytest.fixture(scope="module")
def slim(files: Files) -> Path:
    if not HAS_TVM:
        pytest.skip("the TVM backend needs apache-tvm")
    path = files.root / "m.slim"
    assert cli.main(["compile", str(files.float_file), "-o", str(path), "-q"]) == 0
    return path


def _bad(capsys: pytest.CaptureFixture[str], argv: list, why: str) -> None:
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if not ln.startswith("WARNING ")]  # logged notes
    assert rc == 2, (out, err)
    assert len(lines) == 1, err
    assert lines[0].startswith("slimfx") and "error: " in lines[0], err
    assert why in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv, why", [
    (["quantize", "{float}", "--pipeline", "qat-int8", "--calib", "{calib}",
      "-o", "{root}/q.safetensors"], "slimfx.prepare_qat"),
    (["quantize", "{float}", "--pipeline", "convert-int8", "--calib", "{calib}",
      "-o", "{root}/q.safetensors"], "add 'insert-observers' before 'convert-int8'"),
    (["quantize", "{float}", "--calib", "{calib}", "-o", "{root}/afile/q.safetensors"],
     "afile' is a file, not a directory"),
    (["quantize", "{float}", "--calib", "{calib}", "-o", "{root}/no/such/q.safetensors"],
     "does not exist"),
    (["quantize", "{float}", "--calib", "{calib}", "--num-batches", "0",
      "-o", "{root}/q.safetensors"], "--num-batches: must be at least 1"),
    (["quantize", "{float}", "--qconfig", "avx", "--calib", "{calib}",
      "-o", "{root}/q.safetensors"], "invalid choice: 'avx'"),
    (["quantize", "{float}", "--form", "int4", "--calib", "{calib}",
      "-o", "{root}/q.safetensors"], "invalid choice: 'int4'"),
    (["prune", "{float}", "--ratio", "0.5", "--round-to", "0", "-o", "{root}/p.safetensors"],
     "--round-to: must be at least 1"),
    (["prune", "{float}", "--ratio", "0.5", "--protect", "nonode", "-o", "{root}/p.safetensors"],
     "no node named 'nonode' to protect"),
    (["prune", "{float}", "--ratio", "nan", "-o", "{root}/p.safetensors"],
     "ratio=nan must lie in [0, 1)"),
    (["prune", "{float}", "--ratio", "0.5", "--importance", "taylor",
      "-o", "{root}/p.safetensors"], "invalid choice: 'taylor'"),
    (["prune", "{float}", "-o", "{root}/p.safetensors"], "--ratio"),
    (["report", "{float}", "--calib", "{calib}", "--html", "{root}/afile/r.html"],
     "is a file, not a directory"),
    (["report", "{float}", "--calib", "{root}/wrongshape.npy"],
     "samples of shape (3, 9, 9), the graph takes f32[N,3,16,16]"),
    (["report", "{float}"], "--calib"),
    (["inspect", "{root}"], "is not a file"),
    (["inspect", "{root}/fake.slim"], "is a compiled model: it can be run ('slimfx run'"),
    (["compile", "{root}/fake.slim", "-o", "{root}/m3.slim"], "is a compiled model"),
])
def test_model_commands_on_bad_input(files: Files, capsys: pytest.CaptureFixture[str],
                                     argv: list[str], why: str) -> None:
    subs = {"root": files.root, "float": files.float_file, "calib": files.calib}
    _bad(capsys, [a.format(**subs) for a in argv], why)


@_TVM
@pytest.mark.parametrize("argv, why", [
    (["compile", "{float}", "--tune", "-3", "-o", "{root}/m2.slim"], "--tune: must be 0 or more"),
    (["compile", "{float}", "--tuning-db", "{root}/afile", "-o", "{root}/m2.slim"],
     "is a file; tuning_db names a directory"),
    (["compile", "{float}", "-o", "{root}/m2.txt"], "must end in .slim or .tar"),
    (["compile", "{float}", "-o", "{root}/afile/m2.slim"], "is a file, not a directory"),
    (["run", "{slim}", "--input", "{root}/wrongshape.npy", "-o", "{root}/y.npy"],
     "input 'pixel_values': expected f32[N,3,16,16]"),
    (["run", "{slim}", "--input", "{root}/int.npy", "-o", "{root}/y.npy"],
     "got int64[2, 3, 16, 16]"),
    (["run", "{slim}", "--input", "{calib}", "{calib}", "-o", "{root}/y.npy"],
     "holds 2 array(s), the model takes 1 input(s) (pixel_values)"),
    (["run", "{slim}", "--input", "{x}", "-o", "{root}/y.npy", "{root}/z.npy", "{root}/w.npy"],
     "the model has 2 output(s)"),
    (["run", "{slim}", "--input", "{x}", "-o", "{root}/afile/y.npy"], "is a file, not a"),
    (["run", "{slim}", "--input", "{x}", "-o", "{root}/y.npy", "--sha256", "abc"],
     "sha256 must be 64 hex digits"),
    (["run", "{slim}", "--input", "{x}", "-o", "{root}/y.npy", "--sha256", "0" * 64],
     "SHA-256 mismatch: expected 000"),
    (["run", "{root}/afile", "--input", "{x}", "-o", "{root}/y.npy"], "cannot read the archive"),
    (["run", "{slim}", "-o", "{root}/y.npy"], "--input"),
    (["bench", "{slim}", "--threads", "0"], "--threads: must be at least 1"),
    (["bench", "{slim}", "--repeat", "-1"], "--repeat: must be at least 1"),
    (["bench", "{slim}", "--input", "{root}/wrongshape.npy"], "expected f32[N,3,16,16]"),
])
def test_compiled_model_commands_on_bad_input(files: Files, slim: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              argv: list[str], why: str) -> None:
    subs = {"root": files.root, "float": files.float_file, "calib": files.calib,
            "slim": slim, "x": files.x_npy}
    _bad(capsys, [a.format(**subs) for a in argv], why)


@_TVM
def test_a_lowering_error_leaves_no_tvm_noise_on_stderr(tmp_path: Path) -> None:
    """The error is the only thing on stderr: TVM printed "BlockBuilder destroyed with
    remaining blocks!" (C++, fd 2) after every lowering that raised."""
    script = tmp_path / "fail.py"
    script.write_text(
        "import torch, slimfx\n"
        "m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.AvgPool2d(\n"
        "    3, stride=2, ceil_mode=True, divisor_override=2)).eval()\n"
        "g = slimfx.trace(m, (torch.randn(1, 1, 9, 9),))\n"
        "try:\n"
        "    slimfx.compile(g, 'x86')\n"
        "except slimfx.SlimfxError as e:\n"
        "    print(type(e).__name__, e)\n"
        "import gc; gc.collect()\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("LoweringError %1 = avg_pool2d"), r.stdout
    assert "divisor_override and ceil_mode" in r.stdout
    assert "BlockBuilder" not in r.stderr and "Warning" not in r.stderr, r.stderr
