"""Smoke test of ``benchmarks/latency.py``: a ``--quick`` run on the small LSTM.

Only the peer rows (torch, torch.ao, onnxruntime) are timed, so it stays well under 30 s;
one slimfx row is asked for with ``--trials 0`` to check that a cell that cannot run
prints ``n/a (reason)`` instead of stopping the table.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PEERS = ("torch fp32", "torch.ao int8", "ort fp32", "ort int8")

pytest.importorskip("onnxruntime")


def test_quick_table_prints_every_peer_row(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    runtimes = ",".join((*PEERS, "slimfx fp32 tuned"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "latency.py"), "--quick", "--quiet",
         "--models", "lstm", "--runtimes", runtimes, "--trials", "0", "--repeat", "3",
         "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = next(ln for ln in lines if ln.startswith("model"))
    for column in ("median ms", "vs torch", "vs ort-int8", "build s"):
        assert column in header
    rows = {ln.split("  ")[1].strip(): ln for ln in lines if ln.startswith("lstm ")}
    assert set(rows) == {*PEERS, "slimfx fp32 tuned"}, proc.stdout
    assert "n/a (--trials 0)" in rows["slimfx fp32 tuned"]
    assert "1.00x" in rows["torch fp32"]

    cells = {c["runtime"]: c for c in json.loads(out.read_text())["cells"]}
    for runtime in PEERS:
        cell = cells[runtime]
        assert cell["error"] is None, f"{runtime}: {cell['error']}"
        assert cell["ms"] > 0
        # every peer computes the same function as torch fp32 (int8 approximately)
        assert cell["cos"] > (0.9999 if "fp32" in runtime else 0.98), (runtime, cell["cos"])
    assert cells["slimfx fp32 tuned"]["ms"] is None


def test_cpu_time_clock_needs_one_thread_and_counts_cpu_not_sleep() -> None:
    import time

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import _peers
        import latency
    finally:
        sys.path.pop(0)
    with pytest.raises(SystemExit):
        latency.parse_args(["--cpu-time", "--threads", "2"])
    assert latency.parse_args(["--cpu-time", "--threads", "1"]).cpu_time

    def sleepy() -> None:
        time.sleep(0.02)  # 20 ms of wall time, almost no CPU time

    wall = _peers.time_call(sleepy, repeat=3, number=1, warmup=0)
    cpu = _peers.time_call(sleepy, repeat=3, number=1, warmup=0, clock=time.process_time)
    assert wall >= 19 and cpu < 5
