"""Build Relax executables for aarch64 and run them, under qemu on an x86 host.

The x86 host cross-compiles (``tvm.compile`` for an aarch64 LLVM target, then
``export_library`` linked by ``aarch64-linux-gnu-gcc``); :func:`run_arm` runs
the exported ``.so`` with the aarch64 TVM runtime of the environment made by
``make arm-env`` (``qemu-aarch64-static -L ROOT ROOT/usr/bin/python3.11``).
Inputs and outputs cross the process boundary as ``.npy`` files, read with
``allow_pickle=False``. On an aarch64 host the library is loaded in-process.

qemu runs are for correctness only (int8 must be bit-exact with x86 and the
torch backend): their timings say nothing about ARM speed; time ARM boards
through :mod:`slimfx.backends.tvm.rpc`.

Example::

    ex = tvm.compile(mod, target=arm_target())
    lib = export_arm_library(ex, tmp / "model.so")
    outputs = run_arm(lib, [x_int8, w_int8])
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slimfx.backends.tvm.arm_env import ArmEnv, find_env, missing_reason
from slimfx.errors import DeviceError, RuntimeInputError

__all__ = [
    "ARM_MATTR",
    "ArmJob",
    "arm_target",
    "export_arm_library",
    "is_arm_host",
    "run_arm",
    "run_arm_batch",
]

logger = logging.getLogger(__name__)

#: CPU features of the default ``arm`` target (Armv8.2-A+ boards: dot product, i8mm, fp16).
ARM_MATTR = ("+neon", "+dotprod", "+i8mm", "+fullfp16")
_RUNNER = Path(__file__).with_name("_arm_runner.py")


def arm_target(mattr: Sequence[str] = ARM_MATTR, **extra: Any) -> Any:
    """The TVM target for 64-bit ARM Linux boards.

    Args:
        mattr: LLVM CPU features.
        **extra: More target keys (``mcpu``, ``num-cores``, ...).

    Returns:
        A ``tvm.target.Target``.
    """
    from tvm.target import Target

    spec: dict[str, Any] = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": list(mattr)}
    spec.update(extra)
    return Target(spec)


def export_arm_library(executable: Any, path: str | os.PathLike[str]) -> Path:
    """Export a Relax executable built for :func:`arm_target` as an aarch64 ``.so``.

    Args:
        executable: The result of ``tvm.compile(mod, target=arm_target())``.
        path: Where to write the shared library.

    Returns:
        ``path`` as a :class:`Path`.

    Raises:
        DeviceError: The cross compiler is missing or failed.
    """
    import tvm

    from slimfx.backends.tvm.arm_env import CROSS_CC

    path = Path(path)
    try:
        executable.export_library(str(path), fcompile=tvm.support.cc.cross_compiler(CROSS_CC))
    except Exception as e:  # TVM raises plain RuntimeError/TVMError from the linker
        raise DeviceError(
            f"cannot link the aarch64 library {path} with {CROSS_CC}: {e}. "
            "Run `make arm-env` to install the cross compiler."
        ) from e
    return path


def is_arm_host() -> bool:
    """Whether this machine runs aarch64 code natively."""
    return platform.machine().lower() in ("aarch64", "arm64")


@dataclass(frozen=True)
class ArmJob:
    """One call of an exported library's entry function.

    Attributes:
        lib: Path of the aarch64 ``.so``.
        inputs: Positional arguments of the entry function.
        entry: Name of the Relax function to call.
        load_fn: The library's load-time weights function (see
            :mod:`slimfx.backends.tvm.lower`), if it has one: called once when the library
            is loaded, its results passed after ``inputs``.
    """

    lib: Path
    inputs: tuple[np.ndarray, ...]
    entry: str = "main"
    load_fn: str | None = None


def _ordered_inputs(
    inputs: Sequence[Any] | Mapping[str, Any], meta: Mapping[str, Any] | None
) -> tuple[np.ndarray, ...]:
    if isinstance(inputs, Mapping):
        names = [s["name"] if isinstance(s, Mapping) else str(s)
                 for s in (meta or {}).get("inputs", [])]
        if not names:
            names = list(inputs)
        missing = [n for n in names if n not in inputs]
        if missing:
            raise RuntimeInputError(
                f"ARM run: inputs {missing} missing; the model takes {names}."
            )
        values: list[Any] = [inputs[n] for n in names]
    else:
        values = list(inputs)
    # ascontiguousarray turns a 0-d array into shape (1,): copy only when needed
    return tuple(_c_order(_to_numpy(v)) for v in values)


def _c_order(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a if a.flags.c_contiguous else a.copy(order="C")


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        return value.detach().cpu().numpy()
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):  # tvm Tensor
        return value.numpy()
    return np.asarray(value)


def run_arm(
    lib_path: str | os.PathLike[str],
    inputs: Sequence[Any] | Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
    *,
    env: ArmEnv | None = None,
    timeout: float = 600.0,
) -> list[np.ndarray]:
    """Run an exported aarch64 library once and return its outputs.

    Args:
        lib_path: The ``.so`` from :func:`export_arm_library`.
        inputs: Arrays (numpy, torch or TVM tensors) in the entry function's
            order, or a mapping by input name (ordered by ``meta["inputs"]``).
        meta: Optional artifact metadata; reads ``entry`` (default ``"main"``),
            ``inputs`` (a list of names or of ``{"name": ...}``) and ``load_fn``.
        env: The qemu environment; found with :func:`find_env` when omitted.
        timeout: Seconds before the qemu process is killed.

    Returns:
        The outputs as numpy arrays, nested tuples flattened depth first.

    Raises:
        DeviceError: No aarch64 environment, or the run failed.
        RuntimeInputError: A named input is missing.
    """
    entry = str((meta or {}).get("entry", "main"))
    load_fn = (meta or {}).get("load_fn")
    job = ArmJob(Path(lib_path), _ordered_inputs(inputs, meta), entry,
                 None if load_fn is None else str(load_fn))
    return run_arm_batch([job], env=env, timeout=timeout)[0]


def run_arm_batch(
    jobs: Sequence[ArmJob], *, env: ArmEnv | None = None, timeout: float = 600.0
) -> list[list[np.ndarray]]:
    """Run several jobs in ONE aarch64 process (``import tvm`` costs ~5 s under qemu).

    Args:
        jobs: The calls to make, in order.
        env: The qemu environment; found with :func:`find_env` when omitted.
        timeout: Seconds before the whole batch is killed.

    Returns:
        For each job, its outputs as numpy arrays.

    Raises:
        DeviceError: No aarch64 environment, or a run failed.
    """
    if not jobs:
        return []
    for job in jobs:
        if not Path(job.lib).is_file():
            raise DeviceError(f"ARM run: library {job.lib} does not exist; export it first.")
    if is_arm_host():
        return [_run_native(job) for job in jobs]
    env = env if env is not None else find_env()
    if env is None:
        raise DeviceError(
            f"cannot run aarch64 code on this {platform.machine()} host: {missing_reason()}. "
            "Run `make arm-env` (or `python -m slimfx.backends.tvm.arm_env`) once."
        )
    with tempfile.TemporaryDirectory(prefix="slimfx-arm-") as tmp:
        spec = []
        for j, job in enumerate(jobs):
            paths = []
            for i, array in enumerate(job.inputs):
                p = Path(tmp, f"job{j}_in{i}.npy")
                np.save(p, array, allow_pickle=False)
                paths.append(str(p))
            spec.append({"lib": str(Path(job.lib).resolve()), "entry": job.entry,
                         "load_fn": job.load_fn, "inputs": paths,
                         "out_dir": str(Path(tmp, f"job{j}_out"))})
        jobs_file = Path(tmp, "jobs.json")
        jobs_file.write_text(json.dumps(spec))
        _run_qemu(env, jobs_file, timeout)
        return [_read_outputs(Path(s["out_dir"])) for s in spec]


def _run_qemu(env: ArmEnv, jobs_file: Path, timeout: float) -> None:
    argv = env.command(_RUNNER, str(jobs_file))
    environ = env.environ()
    environ["TVM_USE_RUNTIME_LIB"] = "1"  # skip the 229 MB compiler library: 11 s -> 5 s
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, env=environ, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise DeviceError(f"ARM run under qemu timed out after {timeout:.0f} s") from e
    except OSError as e:
        raise DeviceError(f"cannot start qemu ({argv[0]}): {e}. Run `make arm-env`.") from e
    logger.debug("qemu run took %.1f s", time.perf_counter() - start)
    if proc.returncode != 0:
        raise DeviceError(
            f"ARM run under qemu failed (exit {proc.returncode}):\n"
            f"{(proc.stdout + proc.stderr)[-4000:]}"
        )


def _read_outputs(out_dir: Path) -> list[np.ndarray]:
    count = int((out_dir / "count.txt").read_text())
    return [np.load(out_dir / f"out_{i}.npy", allow_pickle=False) for i in range(count)]


def _run_native(job: ArmJob) -> list[np.ndarray]:
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from slimfx.backends.tvm.compiled import _flatten, _tensors

    vm = VirtualMachine(tvm.runtime.load_module(str(job.lib)), tvm.cpu())
    weights = [] if job.load_fn is None else _tensors(vm[job.load_fn]())
    return _flatten(vm[job.entry](*[tvm.runtime.tensor(a) for a in job.inputs], *weights))
