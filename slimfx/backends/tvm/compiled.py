"""``Compiled``: a model built by TVM, with its signature, input checks and timing.

Inputs (by position or by name) are checked against the signature (count, names, rank,
shape, dtype, device) *before* anything reaches TVM, so a wrong input is a
:class:`RuntimeInputError` naming the input, never a crash inside the runtime; the target's
CPU features are checked against the host before the first call. numpy in -> numpy out;
torch in -> torch out. A ``Compiled`` may be called from several threads at once.

A model compiled from a graph with symbolic dimensions (``f32[N,3,32,32] where N in
[1, 64]``) keeps that signature and its symbols' ranges: a call binds the symbols from the
input shapes and refuses sizes outside the ranges (or two inputs that disagree on a
symbol) with a :class:`RuntimeInputError` naming the input, its symbolic type and the
given shape. With a *batch* symbol (``batch``, see :mod:`.specialize`) the library holds
the program for one sample, which runs once per sample; the results are stacked along
dim 0. Other symbols are symbolic in the library itself.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slimfx.errors import ArtifactError, DeviceError, RuntimeInputError
from slimfx.ir.signature import bind_inputs, shape_matches
from slimfx.ir.symbolic import (
    SymbolRange,
    bind_shapes,
    eval_dim,
    format_dim,
    format_symbol,
    parse_dim,
    symbols_of,
)
from slimfx.ir.types import QParams, TensorType

if TYPE_CHECKING:
    from slimfx.backends.tvm.profile import ProfileReport
    from slimfx.backends.tvm.tuning import TuneReport

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
        """The JSON form: a symbolic dimension is its text (``"N"``, ``"N*64"``)."""
        q = self.qparams
        shape = [d if type(d) is int else format_dim(d) for d in self.type.shape]
        return {
            "name": self.name, "shape": shape, "dtype": self.type.dtype,
            "qparams": None if q is None else {
                "dtype": q.dtype, "scale": list(q.scale), "zero_point": list(q.zero_point),
                "axis": q.axis, "qmin": q.qmin, "qmax": q.qmax},
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any],
                  symbols: Mapping[str, SymbolRange] | None = None) -> TensorSpec:
        """Reads :meth:`to_json` output; raises ``ValueError``/``TypeError``/``KeyError`` if bad.

        Args:
            obj: the JSON object.
            symbols: the declared symbols; a text dimension may use only these.
        """
        shape = obj["shape"]
        if not isinstance(shape, list) or not all(
                (isinstance(d, int) and not isinstance(d, bool) and d >= 0)
                or (isinstance(d, str) and symbols is not None) for d in shape):
            raise ValueError(f"bad shape {shape!r}")
        shape = [d if isinstance(d, int) else parse_dim(d, symbols) for d in shape]
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

    Thread safety: one ``Compiled`` may be called from any number of threads at once. The
    Relax VM keeps per-call state (registers, frames) and is not safe to share, so every
    calling thread gets its own VM over the one shared library, created on the thread's
    first call and freed with the thread; weights and the pooled device memory are shared,
    so a thread adds only its intermediate tensors. TVM's CPU thread pool is per calling
    thread too: with many calling threads, set ``TVM_NUM_THREADS`` (e.g. to 1) to avoid
    oversubscribing the cores.

    Attributes:
        inputs: the input signature, in call order (symbolic dims where the graph had them).
        outputs: the output signature.
        target: the TVM target dict it was built for.
        symbols: symbol name -> range, for every symbol of the signature.
        batch: the batch symbol whose samples run one at a time through the per-sample
            library, or ``None``.
        buckets: batch size -> the library function compiled for that many samples
            (``compile(..., batch_buckets=)``); a batch runs as chunks of the largest that
            fits, the rest one sample at a time.
        load_fn: the library function computing the load-time weights (4-bit weights,
            unpacked; see :mod:`.lower`), called once, on the first call of the model; its
            results follow the inputs in every call of an entry function. ``None``: none.
        tuning: what ``compile(..., tune=N)`` spent tuning (trials measured, seconds), or
            ``None`` (compiled without tuning, or loaded).
    """

    def __init__(self, library: Any, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                 target: Mapping[str, Any], *, executable: Any = None,
                 entry: str = "main", symbols: Mapping[str, SymbolRange] | None = None,
                 batch: str | None = None, buckets: Mapping[int, str] | None = None,
                 load_fn: str | None = None,
                 kernels: Sequence[tuple[str, str]] | None = None) -> None:
        self._library = library  # a tvm.runtime.Module (loaded) or None (only the executable)
        self._executable = executable  # relax.Executable when freshly compiled
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.target = dict(target)
        self.entry = entry
        self.symbols = dict(symbols or {})
        self.batch = batch
        self.buckets = dict(sorted((buckets or {}).items(), reverse=True))
        self.load_fn = load_fn
        self._check_symbols()
        self._kernels = None if kernels is None else [(str(f), str(k)) for f, k in kernels]
        # which inputs carry the batch dim (the others go whole to every per-sample call)
        self._batched = tuple(_is_batch_dim(s.type, batch) for s in self.inputs)
        self._device: Any = None
        self._runtime: Any = None  # the runnable module shared by the per-thread VMs
        self._weights: list[Any] | None = None  # results of load_fn, shared by the VMs
        self._local = threading.local()  # .vm: this thread's VirtualMachine
        self._lock = threading.Lock()
        self.target_features: list[str] | None = None  # recorded in the artifact, if any
        self.tuning: TuneReport | None = None  # what compile(tune=N) spent (not saved)
        self.saved_sha256: str | None = None  # digest of the last single-file save
        self._arm_lib: Path | None = None  # aarch64 .so for qemu runs, linked on first call
        self._arm_dir: Any = None  # its TemporaryDirectory, removed with this object

    def _check_symbols(self) -> None:
        """Refuses a signature whose symbols are undeclared, or a batch symbol that is not one."""
        used = symbols_of(s.type for s in (*self.inputs, *self.outputs))
        missing = sorted(used - set(self.symbols))
        if missing:
            raise ValueError(f"signature uses undeclared symbol(s) {', '.join(missing)}")
        if self.batch is None:
            return
        if self.batch not in self.symbols:
            raise ValueError(f"batch symbol {self.batch!r} is not declared")
        for spec in (*self.inputs, *self.outputs):
            t = spec.type
            if self.batch in symbols_of([t]) and not _is_batch_dim(t, self.batch):
                raise ValueError(f"batch symbol {self.batch} is not only dim 0 of {spec.name} "
                                 f"({t})")
        if not all(_is_batch_dim(s.type, self.batch) for s in self.outputs):
            raise ValueError(f"every output must have the batch symbol {self.batch} as dim 0")
        for size, name in self.buckets.items():
            if type(size) is not int or size < 2 or not isinstance(name, str) or \
                    not self.symbols[self.batch].contains(size):
                raise ValueError(f"bad batch bucket {size!r}: {name!r}")

    def kernels(self) -> list[tuple[str, str]]:
        """``(function name, kernel path)`` of every hand-scheduled kernel in the library.

        The kernel path is the stable name of the microkernel a lowering chose (e.g.
        ``qconv_vnni_dense``, ``qdense_avx2``, ``qconv_depthwise_nhwc``; all are listed in
        :data:`slimfx.backends.tvm.kernels.KERNEL_PATHS`); kernels left to TVM's generic
        schedules are not listed. Sorted by function name. Recorded at compile time and
        kept in saved artifacts.

        Raises:
            ArtifactError: a model loaded from an artifact saved without this record.
        """
        if self._kernels is None:
            raise ArtifactError("this compiled model has no record of its kernels (it was "
                                "saved by an older slimfx); compile it again to list them")
        return list(self._kernels)

    def describe_symbols(self) -> str:
        """``N in [1, 64], S >= 1``: the symbols and their ranges ('' when static)."""
        return ", ".join(format_symbol(k, r) for k, r in sorted(self.symbols.items()))

    def bind(self, arrays: Sequence[np.ndarray]) -> dict[str, int]:
        """The value of every symbol, from input arrays of the signature's order.

        Raises:
            RuntimeInputError: a size outside its symbol's range, or two inputs that give
                one symbol different sizes; the message names the input, its symbolic type
                (with the ranges) and the given shape.
        """
        if not self.symbols:
            return {}
        bound: dict[str, int] = {}
        fast = True  # plain symbol dims (the common case) are bound here, without sympy
        for spec, a in zip(self.inputs, arrays, strict=True):
            for i, d in enumerate(spec.type.shape):
                if type(d) is int:
                    continue
                name = d.name if d.is_Symbol else None
                if name is None or not self.symbols[name].contains(a.shape[i]) or \
                        bound.setdefault(name, a.shape[i]) != a.shape[i]:
                    fast = False
        if fast:
            return bound
        sig = _Signature(self.inputs, self.symbols)
        given: dict[str, tuple[int, ...]] = {}
        for spec, a in zip(self.inputs, arrays, strict=True):
            if not symbols_of([spec.type]):
                continue
            given[spec.name] = tuple(a.shape)
            try:
                bound = bind_shapes(sig, given)
            except RuntimeInputError as e:
                raise RuntimeInputError(
                    f"input {spec.name!r}: expected {spec.type} where {self.describe_symbols()}, "
                    f"got {np.dtype(a.dtype).name}{list(a.shape)}: {e}") from None
        return bound

    # ----------------------------------------------------------------- running
    def _ensure_vm(self) -> Any:
        """This thread's VM; the first call (any thread) checks the device and CPU features."""
        vm = getattr(self._local, "vm", None)
        if vm is not None:
            return vm
        with self._lock:
            if self._runtime is None:
                self._runtime = self._start()
            from tvm import relax

            vm = relax.VirtualMachine(self._runtime, self._device)
            if self._weights is None:
                # the load-time weights, once for all threads (a VM's results outlive it)
                self._weights = [] if self.load_fn is None else _tensors(vm[self.load_fn]())
        self._local.vm = vm
        return vm

    def _device_args(self, arrays: Sequence[np.ndarray]) -> list[Any]:
        """The arguments of an entry function: the inputs on the device, then the load-time
        weights (call :meth:`_ensure_vm` first)."""
        assert self._weights is not None, "_ensure_vm() computes the load-time weights"
        return [*self._to_device(arrays), *self._weights]

    def _start(self) -> Any:
        """Checks that this host can run the model and returns the runnable module."""
        from slimfx.backends.tvm.targets import (
            can_run_here,
            check_cpu_features,
            target_kind,
            use_cpu_threads,
        )

        reason = can_run_here(self.target)
        if reason is not None:
            raise DeviceError(f"cannot run this compiled model here: {reason}")
        check_cpu_features(self.target, self.target_features)
        use_cpu_threads(self.target)
        import tvm

        self._device = tvm.cuda(0) if target_kind(self.target) == "cuda" else tvm.cpu(0)
        if self._executable is not None:
            return self._executable.jit()  # links once (CUDA source); VMs share the module
        return self._library

    def _bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[Any]:
        """Inputs in signature order, from positional and keyword (input name) arguments."""
        return bind_inputs([s.name for s in self.inputs], args, kwargs,
                           who="the compiled model", call="compiled",
                           is_tensor=lambda a: _is_torch(a) or isinstance(a, np.ndarray))

    def _check(self, args: Sequence[Any],
               kwargs: Mapping[str, Any] | None = None) -> tuple[list[np.ndarray], bool]:
        bound = self._bind(args, kwargs or {})
        arrays, any_torch = [], False
        for spec, arg in zip(self.inputs, bound, strict=True):
            any_torch |= _is_torch(arg)
            arrays.append(_as_array(spec, arg, self.symbols))
        self.bind(arrays)
        return arrays, any_torch

    def _samples(self, arrays: Sequence[np.ndarray]) -> list[tuple[str, list[np.ndarray]]]:
        """The library calls (function, arguments): with a batch symbol, one per sample or
        per chunk of a bucket size."""
        if self.batch is None:
            return [(self.entry, list(arrays))]
        n = next(a.shape[0] for a, b in zip(arrays, self._batched, strict=True) if b)
        if n == 1:
            return [(self.entry, list(arrays))]
        calls, i = [], 0
        while i < n:
            size, fn = next(((k, f) for k, f in self.buckets.items() if k <= n - i),
                            (1, self.entry))
            calls.append((fn, [a[i:i + size] if b else a
                               for a, b in zip(arrays, self._batched, strict=True)]))
            i += size
        return calls

    def _run(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Runs checked inputs: one library call, or one per sample (results stacked)."""
        calls = self._samples(arrays)
        if self._runs_under_qemu():
            results = self._run_under_qemu(calls)
        else:
            vm = self._ensure_vm()
            results = [_flatten(vm[fn](*self._device_args(args))) for fn, args in calls]
        if len(results) == 1:
            return results[0]
        if not results:  # a batch of 0 samples: empty outputs of the signature's shapes
            bound = self.bind(arrays)
            return [np.zeros([eval_dim(d, bound) for d in s.type.shape],
                             _numpy_dtype(s.type.dtype)) for s in self.outputs]
        return [np.concatenate([r[k] for r in results], axis=0)
                for k in range(len(self.outputs))]

    def _to_device(self, arrays: Sequence[np.ndarray]) -> list[Any]:
        import tvm

        return [tvm.runtime.tensor(a, self._device) for a in arrays]

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        """Runs the model; returns one array, or a tuple when the graph has several outputs.

        Inputs go by position (signature order) or by name (the graph's input names, as for
        ``slimfx.to_torch`` modules): ``c(x, mask)`` or ``c(x=x, mask=mask)``. Each input is
        a numpy array or a dense torch tensor of exactly the declared shape and dtype (any
        memory layout; torch tensors on another device are copied; a Python or numpy
        scalar for a 0-d input). Safe to call from several threads at once (see the class
        docstring).

        Raises:
            RuntimeInputError: wrong number, names, rank, shape, dtype or device of inputs.
            DeviceError: the model was built for a device, or CPU features, this host does
                not have.
        """
        arrays, as_torch = self._check(args, kwargs)
        outs: list[Any] = self._run(arrays)
        if as_torch:
            outs = [_to_torch(o) for o in outs]
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

    def _run_under_qemu(self, calls: Sequence[tuple[str, Sequence[np.ndarray]]]
                        ) -> list[list[np.ndarray]]:
        """Cross-links the library once, then makes the calls in one qemu process.

        See :func:`slimfx.backends.tvm.arm.run_arm_batch`.
        """
        import tempfile

        from slimfx.backends.tvm.arm import ArmJob, export_arm_library, run_arm_batch

        with self._lock:  # one cross-link, whichever thread calls first
            if self._arm_lib is None:
                self._arm_dir = tempfile.TemporaryDirectory(prefix="slimfx-arm-")
                self._arm_lib = export_arm_library(self._executable,
                                                   Path(self._arm_dir.name) / "model.so")
        lib = self._arm_lib
        return run_arm_batch([ArmJob(lib, tuple(c), fn, self.load_fn) for fn, c in calls])

    def benchmark(self, *args: Any, repeat: int = 10, number: int = 10,
                  warmup: int = 2) -> BenchmarkResult:
        """Times calls of the model (inputs on the device; transfers not counted).

        With a batch symbol (:attr:`batch`), one call is the per-sample (or per-bucket)
        library calls for every sample of the inputs (the stacking of the results on the
        host is not counted).

        Args:
            *args: inputs; random ones matching the signature when omitted (each symbol
                at the smallest size of its range, at least 1).
            repeat: number of measurements (the median is over these).
            number: calls per measurement.
            warmup: untimed calls first.
        """
        if not args:
            args = self._random_inputs()
        arrays, _ = self._check(args)
        vm = self._ensure_vm()
        calls = [(vm[fn], self._device_args(c)) for fn, c in self._samples(arrays)]

        def once() -> None:
            for fn, dev_args in calls:
                fn(*dev_args)

        for _ in range(max(warmup, 0)):
            once()
        times = []
        for _ in range(max(repeat, 1)):
            self._device.sync()
            t0 = time.perf_counter()
            for _ in range(max(number, 1)):
                once()
            self._device.sync()
            times.append((time.perf_counter() - t0) * 1e3 / max(number, 1))
        return BenchmarkResult(statistics.median(times), statistics.fmean(times), min(times),
                               max(times), statistics.pstdev(times), len(times), max(number, 1))

    def _random_inputs(self) -> tuple[np.ndarray, ...]:
        rng = np.random.default_rng(0)
        sizes = {k: max(r.min, 1) for k, r in self.symbols.items()}
        return tuple(_random_input(TensorType(tuple(eval_dim(d, sizes) for d in s.type.shape),
                                              s.type.dtype), rng) for s in self.inputs)

    def profile(self, /, *args: Any, repeat: int = 10, warmup: int = 2,
                **kwargs: Any) -> ProfileReport:
        """Times every kernel of one call: a :class:`~.profile.ProfileReport`.

        ``str(report)`` is a table of kernels (name, calls, ms, ms per call, share of the
        call, median ms per call; slowest first, with rows for the VM builtins and for the
        "VM overhead / other" remainder) and the same by kind of kernel; ``report.rows``
        holds the figures. The calling
        thread's VM runs with a TVM VM instrument only during these calls (see
        :mod:`slimfx.backends.tvm.profile` for what is measured); results and later calls
        are unaffected.

        Args:
            *args: inputs, by position (or by name in ``kwargs``); random ones matching the
                signature when none are given.
            repeat: measured calls with and without the instrument (alternating; the
                figures are means over these, plus per-call medians).
            warmup: untimed calls first.
            **kwargs: inputs by name.

        Raises:
            RuntimeInputError: wrong inputs, as for a call.
            DeviceError: the model cannot run on this host (an aarch64 model under qemu
                cannot be profiled).
        """
        from slimfx.backends.tvm.profile import profile_vm

        if not args and not kwargs:
            args = self._random_inputs()
        arrays, _ = self._check(args, kwargs)
        if self._runs_under_qemu():
            raise DeviceError("profile() runs the model on this host's VM; an aarch64 model "
                              "under qemu cannot be profiled (its timings mean nothing)")
        vm = self._ensure_vm()
        fn, arrays = self._samples(arrays)[0]  # with a batch symbol: the first call only
        return profile_vm(vm, fn, self._device_args(arrays), self._device,
                          repeat=repeat, warmup=warmup)

    # ----------------------------------------------------------------- saving
    def save(self, path: str | Path) -> Path:
        """Writes the library and its JSON metadata: a directory, or one ``.slim``/``.tar`` file.

        Returns the path; for a file, ``slimfx.backends.tvm.sha256_file(path)`` (also in
        ``self.saved_sha256``) is the digest to publish with it and pass to
        ``slimfx.load(path, sha256=...)``. See :func:`slimfx.backends.tvm.artifact.save`.
        """
        from slimfx.backends.tvm.artifact import save

        return save(self, path)

    def __repr__(self) -> str:
        ins = ", ".join(f"{s.name}: {s.type}" for s in self.inputs)
        outs = ", ".join(str(s.type) for s in self.outputs)
        where = f" where {self.describe_symbols()}" if self.symbols else ""
        batch = f", per-sample over {self.batch}" if self.batch else ""
        return f"Compiled(({ins}) -> ({outs}){where}{batch}, target={self.target})"


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _numpy_dtype(dtype: str) -> Any:
    if dtype == "bf16":
        import ml_dtypes  # installed with TVM

        return np.dtype(ml_dtypes.bfloat16)
    return _NUMPY.get(dtype)


def _torch_to_numpy(name: str, t: Any) -> np.ndarray:
    import torch

    if t.device.type == "meta" or t.is_sparse or t.is_quantized or t.is_complex():
        kind = ("on the meta device" if t.device.type == "meta" else "sparse" if t.is_sparse
                else "a quantized tensor" if t.is_quantized else "complex")
        raise RuntimeInputError(f"input {name!r}: the tensor is {kind}; pass a dense, real "
                                "tensor with data (on the CPU or any device)")
    try:
        t = t.detach().cpu().resolve_conj().resolve_neg()
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16: reinterpret the bits
            return t.contiguous().view(torch.int16).numpy().view(_numpy_dtype("bf16"))
        return t.numpy()
    except (RuntimeError, TypeError) as e:
        raise RuntimeInputError(f"input {name!r}: cannot read the tensor ({e})") from e


class _Signature:
    """The inputs and symbols of a compiled model, as :func:`bind_shapes` reads a graph's."""

    def __init__(self, inputs: Sequence[TensorSpec], symbols: Mapping[str, SymbolRange]) -> None:
        self.inputs = inputs
        self.symbols = symbols


def _is_batch_dim(t: TensorType, batch: str | None) -> bool:
    """Whether ``t``'s dim 0 is exactly the symbol ``batch``."""
    if batch is None or t.rank == 0:
        return False
    d0 = t.shape[0]
    return type(d0) is not int and bool(d0.is_Symbol) and d0.name == batch


def _as_array(spec: TensorSpec, arg: Any,
              symbols: Mapping[str, SymbolRange] | None = None) -> np.ndarray:
    """``arg`` as a C-contiguous numpy array of ``spec``'s dtype and (static) dims.

    Symbolic dims accept any size here; :meth:`Compiled.bind` checks them.
    """
    want = _numpy_dtype(spec.type.dtype)
    if want is None:
        raise RuntimeInputError(f"input {spec.name!r}: dtype {spec.type.dtype} is not "
                                "supported at the numpy interface")
    want = np.dtype(want)
    if _is_torch(arg):
        arg = _torch_to_numpy(spec.name, arg)
    elif isinstance(arg, bool | int | float) and spec.type.rank == 0:
        ok = (want == np.bool_ if isinstance(arg, bool)
              else want.kind in "iuf" if isinstance(arg, int) else want.kind == "f")
        if not ok:
            raise RuntimeInputError(f"input {spec.name!r}: expected a {spec.type} scalar "
                                    f"({want.name}), got the Python {type(arg).__name__} {arg!r}")
        try:
            arg = np.asarray(arg, dtype=want)
        except OverflowError as e:
            raise RuntimeInputError(f"input {spec.name!r}: {arg!r} does not fit in "
                                    f"{want.name}") from e
    elif isinstance(arg, np.generic) and spec.type.rank == 0:
        arg = np.asarray(arg)
    elif not isinstance(arg, np.ndarray):
        raise RuntimeInputError(f"input {spec.name!r}: expected a numpy array or a "
                                f"torch tensor, got {type(arg).__name__}")
    if arg.dtype != want and arg.dtype.newbyteorder("=") == want:
        arg = arg.astype(want)  # same type, other byte order
    if not shape_matches(spec.type.shape, arg.shape) or arg.dtype != want:
        rank = (f" (rank {arg.ndim}, expected rank {spec.type.rank})"
                if arg.ndim != spec.type.rank else "")
        where = ""
        if symbols and symbols_of([spec.type]):
            where = " where " + ", ".join(format_symbol(k, symbols[k]) for k in
                                          sorted(symbols_of([spec.type])))
        shown = "[" + ", ".join(format_dim(d) for d in spec.type.shape) + "]"
        raise RuntimeInputError(
            f"input {spec.name!r}: expected {spec.type}{where} "
            f"({want.name}{shown}), got "
            f"{arg.dtype.name}{list(arg.shape)}{rank}; reshape/cast the input or recompile "
            "the graph for this shape")
    if not (arg.flags.c_contiguous and arg.flags.aligned):
        arg = arg.copy(order="C")  # (np.ascontiguousarray would make a 0-d array 1-d)
    return np.asarray(arg)


def _to_torch(a: np.ndarray) -> Any:
    import torch

    if a.dtype == _numpy_dtype("bf16"):
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _tensors(result: Any) -> list[Any]:
    """The tensors of a VM result (nested tuples flattened depth first), left on the device."""
    if hasattr(result, "numpy"):
        return [result]
    return [t for r in result for t in _tensors(r)]


def _flatten(result: Any) -> list[np.ndarray]:
    return [t.numpy() for t in _tensors(result)]


def _random_input(t: TensorType, rng: np.random.Generator) -> np.ndarray:
    dtype = _NUMPY[t.dtype]
    if t.dtype == "bool":
        return rng.integers(0, 2, t.shape).astype(dtype)
    if t.is_float:
        return rng.standard_normal(t.shape).astype(dtype)
    lo, hi = (0, 255) if t.dtype == "u8" else (-100, 100)
    return rng.integers(lo, hi, t.shape).astype(dtype)
