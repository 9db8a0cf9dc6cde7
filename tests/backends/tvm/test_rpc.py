"""Run and time a compiled model through a TVM RPC tracker (loopback only).

The fixture starts ``tvm.exec.rpc_tracker`` and ``tvm.exec.rpc_server`` as
subprocesses on free 127.0.0.1 ports, waits (bounded) for the server to
register, and always kills both.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from device_models import fp_conv_matmul, int8_conv_requant  # noqa: E402

from slimfx.backends.tvm.rpc import RemoteModel, RpcTarget, run_remote, time_remote  # noqa: E402
from slimfx.errors import DeviceError  # noqa: E402

pytestmark = pytest.mark.tvm

KEY = "x86"
START_TIMEOUT_S = 90.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", *args], stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server's workers go too
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _server_registered(port: int) -> bool:
    summary = tvm.rpc.connect_tracker("127.0.0.1", port).summary()
    return summary.get("queue_info", {}).get(KEY, {}).get("free", 0) > 0


def _wait(ready, procs: list[subprocess.Popen], logs: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        dead = [p.args for p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            text = "".join(f"--- {f.name}\n{f.read_text()[-2000:]}" for f in logs.iterdir())
            pytest.fail(f"RPC {what} did not come up in {START_TIMEOUT_S:.0f} s "
                        f"(exited: {dead}):\n{text}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, str]]:
    logs = tmp_path_factory.mktemp("rpc")
    port, server_port = _free_port(), _free_port()
    procs = [_start(["tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                     "--port-end", str(port + 1), "--silent"], logs / "tracker.log")]
    try:
        # the server retries a missing tracker only every 5 s: start it once the tracker listens
        _wait(lambda: _listening(port), procs, logs, "tracker")
        procs.append(_start(["tvm.exec.rpc_server", "--host", "127.0.0.1",
                             "--port", str(server_port), "--port-end", str(server_port + 1),
                             "--tracker", f"127.0.0.1:{port}", "--key", KEY],
                            logs / "server.log"))
        _wait(lambda: _server_registered(port), procs, logs, "server")
        yield ("127.0.0.1", port, KEY)
    finally:
        for proc in reversed(procs):
            _stop(proc)


def _local(ex, inputs) -> list[np.ndarray]:
    vm = tvm.relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(a) for a in inputs])
    return [out.numpy()] if hasattr(out, "numpy") else [o.numpy() for o in out]


@pytest.mark.slow  # the tracker + server start takes 10-30 s
def test_remote_run_matches_local(tracker, tmp_path: Path) -> None:
    for case in (int8_conv_requant(), fp_conv_matmul("float32")):
        ex = tvm.compile(case.mod, target="llvm")
        lib = tmp_path / f"{case.name}.so"
        ex.export_library(str(lib))
        remote = run_remote(lib, case.inputs, tracker)
        local = _local(ex, case.inputs)
        assert len(remote) == len(local) == len(case.expected)  # tuple outputs arrive whole
        for got, loc, ref in zip(remote, local, case.expected, strict=True):
            np.testing.assert_array_equal(got, loc)
            if ref.dtype.kind == "f":
                np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
            else:
                np.testing.assert_array_equal(got, ref)


@pytest.mark.slow
def test_remote_timing(tracker, tmp_path: Path) -> None:
    case = fp_conv_matmul("float32")
    lib = tmp_path / "m.so"
    tvm.compile(case.mod, target="llvm").export_library(str(lib))
    with RemoteModel(lib, RpcTarget(*tracker, session_timeout=60)) as remote:
        timing = remote.time(case.inputs, number=3, repeat=4)
        np.testing.assert_allclose(remote.run(case.inputs)[0], case.expected[0], rtol=1e-4,
                                   atol=1e-4)
    assert len(timing.results_ms) == 4 and timing.number == 3
    assert all(0 < t < 5_000 for t in timing.results_ms)
    assert min(timing.results_ms) <= timing.median_ms <= max(timing.results_ms)
    assert time_remote(lib, case.inputs, tracker, number=1, repeat=1).std_ms == 0.0


def test_bad_arguments_are_reported(tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="does not exist"):
        RemoteModel(tmp_path / "missing.so", ("127.0.0.1", 1, "x86"))
    lib = tmp_path / "m.so"
    lib.write_bytes(b"")
    with pytest.raises(DeviceError, match="host, port, key"):
        RemoteModel(lib, ("127.0.0.1", 1))
    with pytest.raises(DeviceError, match="unknown device"):
        RemoteModel(lib, RpcTarget("127.0.0.1", 1, "x86", device="tpu"))
