"""``Compiled``: a model built by TVM, with its signature, input checks and timing.

Inputs are checked against the signature (count, shape, dtype) *before* anything
reaches TVM, so a wrong input is a :class:`RuntimeInputError` naming the input,
never a crash inside the runtime. numpy in -> numpy out; torch in -> torch out.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slimfx.errors import DeviceError, RuntimeInputError
from slimfx.ir.types import QParams, TensorType

__all__ = ["TensorSpec", "Compiled", "BenchmarkResult"]

logger = logging.getLogger(__name__)

_NUMPY = {
    "f64": np.float64, "f32": np.float32, "f16": np.float16, "i64": np.int64, "i32": np.int32,
    "i16": np.int16, "i8": np.int8, "u8": np.uint8, "bool": np.bool_,
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a compiled model: its name, type and interface quant params."""

    name: str
    type: TensorType
    qparams: QParams | None = None

    def to_json(self) -> dict[str, Any]:
        q = self.qparams
        return {
            "name": self.name, "shape": list(self.type.shape), "dtype": self.type.dtype,
            "qparams": None if q is None else {
                "dtype": q.dtype, "scale": list(q.scale), "zero_point": list(q.zero_point),
                "axis": q.axis, "qmin": q.qmin, "qmax": q.qmax},
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> TensorSpec:
        """Reads :meth:`to_json` output; raises ``ValueError``/``TypeError``/``KeyError`` if bad."""
        shape = obj["shape"]
        if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise ValueError(f"bad shape {shape!r}")
        name = obj["name"]
        if not isinstance(name, str):
            raise TypeError(f"bad name {name!r}")
        q = obj.get("qparams")
        qp = None if q is None else QParams(q["dtype"], tuple(q["scale"]),
                                            tuple(q["zero_point"]), q["axis"], q["qmin"],
                                            q["qmax"])
        return cls(name, TensorType(tuple(shape), obj["dtype"]), qp)


@dataclass(frozen=True)
class BenchmarkResult:
    """Latency of one call, in milliseconds, over ``repeat`` measurements of ``number`` calls."""

    median_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    repeat: int
    number: int

    def __str__(self) -> str:
        return (f"{self.median_ms:.3f} ms median (mean {self.mean_ms:.3f}, min {self.min_ms:.3f}, "
                f"max {self.max_ms:.3f}, {self.repeat}x{self.number} calls)")


class Compiled:
    """A compiled model: call it like a function, time it, save it.

    Built by :func:`slimfx.compile` or :func:`slimfx.load`; not constructed directly.

    Attributes:
        inputs: the input signature, in call order.
        outputs: the output signature.
        target: the TVM target dict it was built for.
    """

    def __init__(self, library: Any, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                 target: Mapping[str, Any], *, executable: Any = None,
                 entry: str = "main") -> None:
        self._library = library  # a tvm.runtime.Module (loaded) or None (only the executable)
        self._executable = executable  # relax.Executable when freshly compiled
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.target = dict(target)
        self.entry = entry
        self._vm: Any = None
        self._device: Any = None
        self._arm_lib: Path | None = None  # aarch64 .so for qemu runs, linked on first call
        self._arm_dir: Any = None  # its TemporaryDirectory, removed with this object

    # ----------------------------------------------------------------- running
    def _ensure_vm(self) -> Any:
        if self._vm is not None:
            return self._vm
        from slimfx.backends.tvm.targets import can_run_here, target_kind, use_cpu_threads

        reason = can_run_here(self.target)
        if reason is not None:
            raise DeviceError(f"cannot run this compiled model here: {reason}")
        use_cpu_threads(self.target)
        import tvm
        from tvm import relax

        self._device = tvm.cuda(0) if target_kind(self.target) == "cuda" else tvm.cpu(0)
        lib = self._executable if self._executable is not None else self._library
        self._vm = relax.VirtualMachine(lib, self._device)
        return self._vm

    def _check(self, args: Sequence[Any]) -> tuple[list[np.ndarray], bool]:
        if len(args) != len(self.inputs):
            names = ", ".join(s.name for s in self.inputs)
            raise RuntimeInputError(f"the compiled model takes {len(self.inputs)} input(s) "
                                    f"({names}), got {len(args)}")
        arrays, any_torch = [], False
        for spec, arg in zip(self.inputs, args, strict=True):
            if _is_torch(arg):
                any_torch = True
                arg = arg.detach().cpu()
                if str(arg.dtype) == "torch.bfloat16":
                    raise RuntimeInputError(f"input {spec.name!r}: bfloat16 tensors cannot cross "
                                            "into TVM through numpy; cast the model with fp16")
                arg = arg.numpy()
            elif not isinstance(arg, np.ndarray):
                if np.isscalar(arg) and spec.type.rank == 0:
                    arg = np.asarray(arg)
                else:
                    raise RuntimeInputError(f"input {spec.name!r}: expected a numpy array or a "
                                            f"torch tensor, got {type(arg).__name__}")
            want = _NUMPY.get(spec.type.dtype)
            if want is None:
                raise RuntimeInputError(f"input {spec.name!r}: dtype {spec.type.dtype} is not "
                                        "supported at the numpy interface")
            if tuple(arg.shape) != spec.type.shape or arg.dtype != want:
                raise RuntimeInputError(
                    f"input {spec.name!r}: expected {spec.type} "
                    f"({np.dtype(want).name}{list(spec.type.shape)}), got "
                    f"{arg.dtype.name}{list(arg.shape)}; reshape/cast the input or recompile "
                    "the graph for this shape")
            arrays.append(np.ascontiguousarray(arg))
        return arrays, any_torch

    def _to_device(self, arrays: Sequence[np.ndarray]) -> list[Any]:
        import tvm

        return [tvm.runtime.tensor(a, self._device) for a in arrays]

    def __call__(self, *args: Any) -> Any:
        """Runs the model; returns one array, or a tuple when the graph has several outputs.

        Raises:
            RuntimeInputError: wrong number, shape or dtype of inputs.
            DeviceError: the model was built for a device this host does not have.
        """
        arrays, as_torch = self._check(args)
        outs: list[Any]
        if self._runs_under_qemu():
            outs = self._run_under_qemu(arrays)
        else:
            vm = self._ensure_vm()
            outs = list(_flatten(vm[self.entry](*self._to_device(arrays))))
        if as_torch:
            import torch

            outs = [torch.from_numpy(o) for o in outs]
        return outs[0] if len(self.outputs) == 1 else tuple(outs)

    # ------------------------------------------------------- aarch64 under qemu
    def _runs_under_qemu(self) -> bool:
        """An aarch64 model on a non-ARM host runs under qemu when `make arm-env` was run."""
        from slimfx.backends.tvm.targets import target_kind

        if target_kind(self.target) != "arm" or self._executable is None:
            return False
        from slimfx.backends.tvm.arm import is_arm_host
        from slimfx.backends.tvm.arm_env import find_env

        return not is_arm_host() and find_env() is not None

    def _run_under_qemu(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Cross-links the library once, then runs it (see slimfx.backends.tvm.arm.run_arm)."""
        import tempfile

        from slimfx.backends.tvm.arm import export_arm_library, run_arm

        if self._arm_lib is None:
            self._arm_dir = tempfile.TemporaryDirectory(prefix="slimfx-arm-")
            self._arm_lib = export_arm_library(self._executable,
                                               Path(self._arm_dir.name) / "model.so")
        return run_arm(self._arm_lib, arrays, {"entry": self.entry})

    def benchmark(self, *args: Any, repeat: int = 10, number: int = 10,
                  warmup: int = 2) -> BenchmarkResult:
        """Times calls of the model (inputs on the device; transfers not counted).

        Args:
            *args: inputs; random ones matching the signature when omitted.
            repeat: number of measurements (the median is over these).
            number: calls per measurement.
            warmup: untimed calls first.
        """
        if not args:
            rng = np.random.default_rng(0)
            args = tuple(_random_input(s.type, rng) for s in self.inputs)
        arrays, _ = self._check(args)
        vm = self._ensure_vm()
        fn = vm[self.entry]
        dev_args = self._to_device(arrays)
        for _ in range(max(warmup, 0)):
            fn(*dev_args)
        times = []
        for _ in range(max(repeat, 1)):
            self._device.sync()
            t0 = time.perf_counter()
            for _ in range(max(number, 1)):
                fn(*dev_args)
            self._device.sync()
            times.append((time.perf_counter() - t0) * 1e3 / max(number, 1))
        return BenchmarkResult(statistics.median(times), statistics.fmean(times), min(times),
                               max(times), statistics.pstdev(times), len(times), max(number, 1))

    # ----------------------------------------------------------------- saving
    def save(self, path: str | Path) -> Path:
        """Writes the library and its JSON metadata: a directory, or one ``.slim``/``.tar`` file.

        See :func:`slimfx.backends.tvm.artifact.save`.
        """
        from slimfx.backends.tvm.artifact import save

        return save(self, path)

    def __repr__(self) -> str:
        ins = ", ".join(f"{s.name}: {s.type}" for s in self.inputs)
        outs = ", ".join(str(s.type) for s in self.outputs)
        return f"Compiled(({ins}) -> ({outs}), target={self.target})"


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _flatten(result: Any) -> list[np.ndarray]:
    if hasattr(result, "numpy"):
        return [result.numpy()]
    out: list[np.ndarray] = []
    for item in result:
        out.extend(_flatten(item))
    return out


def _random_input(t: TensorType, rng: np.random.Generator) -> np.ndarray:
    dtype = _NUMPY[t.dtype]
    if t.dtype == "bool":
        return rng.integers(0, 2, t.shape).astype(dtype)
    if t.is_float:
        return rng.standard_normal(t.shape).astype(dtype)
    lo, hi = (0, 255) if t.dtype == "u8" else (-100, 100)
    return rng.integers(lo, hi, t.shape).astype(dtype)
