"""aarch64: cross-compile here, run under qemu, compare with x86 and torch.

Needs the environment of ``make arm-env``; ``make test`` sets it up first. The
tests skip (with the reason) only when it is not there.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from device_models import Case, fp_conv_matmul, int8_conv_requant, int8_matmul  # noqa: E402

from slimfx.backends.tvm import arm_env  # noqa: E402
from slimfx.backends.tvm.arm import (  # noqa: E402
    ArmJob,
    arm_target,
    export_arm_library,
    run_arm,
    run_arm_batch,
)
from slimfx.errors import DeviceError  # noqa: E402

pytestmark = [pytest.mark.tvm, pytest.mark.arm]

ENV = arm_env.find_env()
needs_env = pytest.mark.skipif(
    ENV is None, reason=f"aarch64 qemu environment not set up ({arm_env.missing_reason()}); "
    "run `make arm-env`")


def _x86(case: Case) -> list[np.ndarray]:
    vm = tvm.relax.VirtualMachine(tvm.compile(case.mod, target="llvm"), tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(a) for a in case.inputs])
    return [o.numpy() for o in out] if not hasattr(out, "numpy") else [out.numpy()]


@pytest.fixture(scope="module")
def arm_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Case, list]]:
    """Build every case for aarch64 and run them all in ONE qemu process (~10 s)."""
    tmp = tmp_path_factory.mktemp("arm")
    cases = [int8_matmul(), int8_conv_requant(), fp_conv_matmul("float32"),
             fp_conv_matmul("float16")]
    jobs = []
    for case in cases:
        ex = tvm.compile(case.mod, target=arm_target())
        jobs.append(ArmJob(export_arm_library(ex, tmp / f"{case.name}.so"), case.inputs))
    outputs = run_arm_batch(jobs, env=ENV)
    return {c.name: (c, out) for c, out in zip(cases, outputs, strict=True)}


@needs_env
@pytest.mark.parametrize("name", ["int8_matmul", "int8_conv_requant"])
def test_int8_bit_exact_on_arm(arm_results, name: str) -> None:
    case, arm_out = arm_results[name]
    x86_out = _x86(case)
    assert len(arm_out) == len(case.expected) == len(x86_out)
    for got, x86, ref in zip(arm_out, x86_out, case.expected, strict=True):
        assert got.dtype == ref.dtype and got.shape == ref.shape
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(got, x86)
    if name == "int8_conv_requant":  # the requantized output really spans the int8 range
        assert arm_out[1].min() == -128 and arm_out[1].max() == 127


@needs_env
def test_fp32_close_on_arm(arm_results) -> None:
    case, arm_out = arm_results["float32_conv_matmul"]
    np.testing.assert_allclose(arm_out[0], case.expected[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(arm_out[0], _x86(case)[0], rtol=1e-5, atol=1e-5)


@needs_env
def test_fp16_close_on_arm(arm_results) -> None:
    case, arm_out = arm_results["float16_conv_matmul"]
    assert arm_out[0].dtype == np.float16
    np.testing.assert_allclose(arm_out[0].astype(np.float32), case.expected[0].astype(np.float32),
                               rtol=2e-2, atol=2e-2)


@needs_env
def test_library_is_aarch64_elf(tmp_path: Path) -> None:
    case = int8_matmul(m=2, k=8, n=4)
    lib = export_arm_library(tvm.compile(case.mod, target=arm_target()), tmp_path / "m.so")
    header = lib.read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    assert int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64


@needs_env
@pytest.mark.slow
def test_run_arm_named_inputs(tmp_path: Path) -> None:
    case = int8_matmul(m=3, k=16, n=5, seed=7)
    lib = export_arm_library(tvm.compile(case.mod, target=arm_target()), tmp_path / "m.so")
    meta = {"entry": "main", "inputs": [{"name": "a"}, {"name": "b"}]}
    out = run_arm(lib, {"b": case.inputs[1], "a": case.inputs[0]}, meta)
    np.testing.assert_array_equal(out[0], case.expected[0])


@needs_env
@pytest.mark.slow
def test_slimfx_int8_op_table_bit_exact_on_arm() -> None:
    """Every integer op of slimfx, compiled for "arm" and run under qemu through
    ``Compiled.__call__``, EQUALS the torch backend and the x86 build."""
    import torch
    from _cases import build_graph, int8_cases

    import slimfx

    g, info = build_graph(int8_cases())
    feeds = info["feeds"]
    arm = slimfx.compile(g, "arm")(*[f.numpy() for f in feeds])
    x86 = slimfx.compile(g, "x86")(*[f.numpy() for f in feeds])
    ref = slimfx.to_torch(g)(*feeds)
    ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    assert len(arm) == len(x86) == len(ref) == len(g.outputs)
    for case_id, (start, count) in info["index"].items():
        for i in range(start, start + count):
            expected = ref[i].detach().numpy()
            if expected.dtype.kind == "f":  # quantize inputs / dequantize outputs are float
                np.testing.assert_allclose(arm[i], expected, rtol=1e-6, atol=1e-6,
                                           err_msg=case_id)
            else:
                np.testing.assert_array_equal(arm[i], expected, err_msg=case_id)
            np.testing.assert_array_equal(arm[i], x86[i], err_msg=case_id)


def test_missing_env_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLIMFX_ARM_ENV", str(tmp_path / "nowhere"))
    monkeypatch.setattr("slimfx.backends.tvm.arm.is_arm_host", lambda: False)
    lib = tmp_path / "m.so"
    lib.write_bytes(b"\x7fELF")
    assert arm_env.find_env() is None
    with pytest.raises(DeviceError, match="make arm-env"):
        run_arm(lib, [np.zeros(2, np.int8)])


def test_missing_named_input_is_reported(tmp_path: Path) -> None:
    from slimfx.errors import RuntimeInputError

    with pytest.raises(RuntimeInputError, match=r"\['b'\]"):
        run_arm(tmp_path / "m.so", {"a": np.zeros(2)}, {"inputs": ["a", "b"]})


@needs_env
def test_arm_env_second_run_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"arm-env ran a command on a finished environment: {args}")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    start = time.perf_counter()
    env = arm_env.ensure_env(ENV.dir)
    assert env == ENV and time.perf_counter() - start < 1.0
    assert env.python.is_file() and (env.pyarm / "tvm" / "lib" / "libtvm_runtime.so").is_file()


def test_stale_stamp_is_not_trusted(tmp_path: Path) -> None:
    (tmp_path / arm_env.STAMP_NAME).write_text("suite=bookworm\napache-tvm==0.0.1\n")
    assert arm_env.find_env(tmp_path) is None
