"""Run and time compiled models on devices reached through a TVM RPC tracker.

A board (or a GPU server) runs ``python -m tvm.exec.rpc_server --tracker
HOST:PORT --key KEY``; the tracker hands sessions to clients that ask for
``KEY``. Here the exported library is uploaded, loaded remotely and run with
the Relax VM over RPC. Tuple outputs need the stateful VM interface over RPC
(``set_input`` / ``invoke_stateful`` / ``get_outputs``), so every call uses it.
Timing uses ``time_evaluator`` on the remote device, so it measures the device,
not the network.

Example::

    with RemoteModel("model.so", rpc=("127.0.0.1", 9190, "rk3588")) as remote:
        outputs = remote.run([x])
        timing = remote.time([x], number=20, repeat=5)  # timing.median_ms: on the device
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slimfx.errors import DeviceError

__all__ = ["RemoteModel", "RemoteTiming", "RpcTarget", "run_remote", "time_remote"]

logger = logging.getLogger(__name__)

_DEVICES = ("cpu", "cuda", "opencl", "vulkan", "metal", "rocm")


@dataclass(frozen=True)
class RpcTarget:
    """Where a remote device is: a tracker address and the device key.

    Attributes:
        host: Tracker host.
        port: Tracker port.
        key: Device key the RPC server registered with.
        device: Device kind on the remote side (``cpu``, ``cuda``, ...).
        index: Device index on the remote side.
        session_timeout: Seconds after which the server ends the session (0: never).
        priority: Request priority at the tracker.
    """

    host: str
    port: int
    key: str
    device: str = "cpu"
    index: int = 0
    session_timeout: float = 0.0
    priority: int = 1

    @classmethod
    def of(cls, rpc: RpcTarget | tuple[str, int, str]) -> RpcTarget:
        """Accept an :class:`RpcTarget` or a ``(host, port, key)`` tuple."""
        if isinstance(rpc, RpcTarget):
            return rpc
        try:
            host, port, key = rpc
        except (TypeError, ValueError) as e:
            raise DeviceError(f"rpc must be (host, port, key) or RpcTarget, got {rpc!r}") from e
        return cls(str(host), int(port), str(key))


@dataclass(frozen=True)
class RemoteTiming:
    """Run times measured on the remote device by ``time_evaluator``.

    Attributes:
        results_ms: Mean time of one call for each repeat, in milliseconds.
        number: Calls averaged in each repeat.
    """

    results_ms: tuple[float, ...]
    number: int

    @property
    def mean_ms(self) -> float:
        """Mean over the repeats."""
        return statistics.fmean(self.results_ms)

    @property
    def median_ms(self) -> float:
        """Median over the repeats."""
        return statistics.median(self.results_ms)

    @property
    def std_ms(self) -> float:
        """Standard deviation over the repeats (0 for a single repeat)."""
        return statistics.pstdev(self.results_ms)


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor
        return value.detach().cpu().numpy()
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        return value.numpy()
    a = np.asarray(value)  # ascontiguousarray would turn a 0-d array into shape (1,)
    return a if a.flags.c_contiguous else a.copy(order="C")


def _remote_tensors(value: Any) -> list[Any]:
    """The tensors of a (remote) VM result, nested tuples flattened depth first."""
    if hasattr(value, "numpy"):
        return [value]
    return [t for item in value for t in _remote_tensors(item)]


def _flatten(value: Any, out: list[np.ndarray]) -> None:
    if hasattr(value, "numpy"):
        out.append(value.numpy())
    else:
        for item in value:
            _flatten(item, out)


class RemoteModel:
    """An exported Relax library loaded on a remote device; a context manager.

    Args:
        lib_path: The exported ``.so`` (built for the remote device's target).
        rpc: ``(host, port, key)`` of the tracker and device, or :class:`RpcTarget`.
        entry: Relax function to call.
        load_fn: the library's load-time weights function (``load_fn`` of the artifact's
            metadata; see :mod:`slimfx.backends.tvm.lower`): run once on the device when
            the library is loaded, its results passed after the inputs of every call.

    Raises:
        DeviceError: The tracker, the device or the upload failed.
    """

    def __init__(self, lib_path: str | os.PathLike[str],
                 rpc: RpcTarget | tuple[str, int, str], entry: str = "main",
                 load_fn: str | None = None) -> None:
        self.target = RpcTarget.of(rpc)
        self.entry = entry
        self.load_fn = load_fn
        self._weights: list[Any] = []
        self._lib_path = Path(lib_path)
        if not self._lib_path.is_file():
            raise DeviceError(f"RPC: library {self._lib_path} does not exist; export it first.")
        if self.target.device not in _DEVICES:
            raise DeviceError(f"RPC: unknown device {self.target.device!r}; use one of {_DEVICES}")
        self._session: Any = None
        self._vm: Any = None
        self._dev: Any = None

    def __enter__(self) -> RemoteModel:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Request a session, upload and load the library, make the VM."""
        if self._vm is not None:
            return
        from tvm import relax, rpc

        t = self.target
        try:
            tracker = rpc.connect_tracker(t.host, t.port)
            self._session = tracker.request(t.key, priority=t.priority,
                                            session_timeout=t.session_timeout)
        except Exception as e:  # TVM raises RuntimeError/TVMError/OSError here
            raise DeviceError(
                f"RPC: no session for key {t.key!r} from the tracker at {t.host}:{t.port}: {e}. "
                "Check that the tracker runs and a server registered with this key "
                "(`python -m tvm.exec.query_rpc_tracker`)."
            ) from e
        digest = hashlib.sha1(self._lib_path.read_bytes()).hexdigest()[:16]
        remote_name = f"slimfx_{digest}{self._lib_path.suffix or '.so'}"
        try:
            self._session.upload(str(self._lib_path), target=remote_name)
            rlib = self._session.load_module(remote_name)
            self._dev = self._session.device(t.device, t.index)
            self._vm = relax.VirtualMachine(rlib, self._dev)
            if self.load_fn is not None:
                self._weights = _remote_tensors(self._vm[self.load_fn]())
        except Exception as e:
            self.close()
            raise DeviceError(
                f"RPC: cannot load {self._lib_path.name} on {t.key!r} ({t.device}:{t.index}): "
                f"{e}. Was it compiled for that device's target?"
            ) from e
        logger.info("RPC: %s loaded on %s via %s:%d", self._lib_path.name, t.key, t.host, t.port)

    def close(self) -> None:
        """Drop the VM and the session, so that the server frees the device.

        The session ends only when its last reference goes; the VM and remote
        tensors sit in reference cycles, so collect them now rather than
        leave the device busy (and the next request waiting) until the
        garbage collector runs.
        """
        self._vm = self._dev = self._session = None
        self._weights = []
        gc.collect()

    def _set_inputs(self, inputs: Sequence[Any]) -> None:
        import tvm

        if self._vm is None:
            self.open()
        args = [tvm.runtime.tensor(_to_numpy(a), self._dev) for a in inputs]
        self._vm.set_input(self.entry, *args, *self._weights)

    def run(self, inputs: Sequence[Any]) -> list[np.ndarray]:
        """Run once on the device; outputs as numpy arrays (tuples flattened depth first)."""
        self._set_inputs(inputs)
        try:
            self._vm.invoke_stateful(self.entry)
            result = self._vm.get_outputs(self.entry)
        except Exception as e:
            raise DeviceError(f"RPC: running {self.entry!r} on {self.target.key!r} failed: {e}") from e
        flat: list[np.ndarray] = []
        _flatten(result, flat)
        return flat

    def time(self, inputs: Sequence[Any], *, number: int = 10, repeat: int = 3,
             min_repeat_ms: int = 0) -> RemoteTiming:
        """Time the entry function on the device with ``time_evaluator``.

        Args:
            inputs: Arguments of the entry function.
            number: Calls averaged per repeat.
            repeat: Repeats (each gives one result).
            min_repeat_ms: Minimum duration of one repeat; raises ``number`` if needed.
        """
        self._set_inputs(inputs)
        try:
            timer = self._vm.time_evaluator("invoke_stateful", self._dev, number=number,
                                            repeat=repeat, min_repeat_ms=min_repeat_ms)
            result = timer(self.entry)
        except Exception as e:
            raise DeviceError(f"RPC: timing {self.entry!r} on {self.target.key!r} failed: {e}") from e
        return RemoteTiming(tuple(r * 1e3 for r in result.results), number)


def run_remote(lib_path: str | os.PathLike[str], inputs: Sequence[Any],
               rpc: RpcTarget | tuple[str, int, str], entry: str = "main",
               load_fn: str | None = None) -> list[np.ndarray]:
    """Run an exported library once on a remote device; see :class:`RemoteModel`."""
    with RemoteModel(lib_path, rpc, entry, load_fn) as remote:
        return remote.run(inputs)


def time_remote(lib_path: str | os.PathLike[str], inputs: Sequence[Any],
                rpc: RpcTarget | tuple[str, int, str], entry: str = "main", *,
                load_fn: str | None = None, number: int = 10, repeat: int = 3,
                min_repeat_ms: int = 0) -> RemoteTiming:
    """Time an exported library on a remote device; see :meth:`RemoteModel.time`."""
    with RemoteModel(lib_path, rpc, entry, load_fn) as remote:
        return remote.time(inputs, number=number, repeat=repeat, min_repeat_ms=min_repeat_ms)
