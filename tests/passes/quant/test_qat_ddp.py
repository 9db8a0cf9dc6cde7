"""QAT under torch.distributed: two gloo replicas on 127.0.0.1 (DistributedDataParallel,
each on its half of every global batch) end with the same weights and scales, equal to
single-process training on the whole batches. Bounded: the workers are subprocesses
killed after ``TIMEOUT_S``.

On several machines the same worker runs under ``torchrun`` (see README.md): it reads
``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` from the environment instead."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import slimfx
from slimfx.ir.serialize import load_graph, save_graph

WORKER = Path(__file__).with_name("qat_ddp_worker.py")
TIMEOUT_S = 50  # all three workers together (the gloo group itself times out at 30 s)
STEPS, GLOBAL_BATCH = 4, 32
# Replica vs single process: the same arithmetic except the order of the gradient sum
# (all-reduce of two local gradients, against autograd summing the two halves), ~1e-7
# relative per step in float32, amplified by at most a few steps of SGD with momentum.
RTOL, ATOL = 1e-4, 1e-5


class _ConvBnNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(nn.functional.max_pool2d(x, 2).flatten(1))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(workdir: Path) -> tuple[dict, dict, dict]:
    """Runs ranks 0 and 1 of a 2-process group and the single-process reference at once."""
    port = str(_free_port())
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    jobs = [("rank 0", ["0", "2"]), ("rank 1", ["1", "2"]), ("single process", ["0", "1"])]
    procs = [subprocess.Popen([sys.executable, str(WORKER), *args, port, str(workdir)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for _, args in jobs]
    deadline = time.monotonic() + TIMEOUT_S
    logs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            logs.append(out.decode(errors="replace")[-3000:])
    except subprocess.TimeoutExpired:
        pytest.fail(f"the DDP workers did not finish in {TIMEOUT_S} s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for (what, _), p, log in zip(jobs, procs, logs, strict=True):
        assert p.returncode == 0, f"{what} failed:\n{log}"
    r0, r1, single = (torch.load(workdir / f) for f in ("rank0.pt", "rank1.pt", "single.pt"))
    return r0, r1, single


def test_ddp_replicas_match_each_other_and_single_process(tmp_path):
    torch.manual_seed(0)
    net = _ConvBnNet().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 1.5)
    x = torch.rand(STEPS, GLOBAL_BATCH, 1, 8, 8)
    y = torch.randint(0, 10, (STEPS, GLOBAL_BATCH))
    g = slimfx.trace(net, (x[0, :GLOBAL_BATCH // 2],))  # static shapes: one rank's shard
    calib = list(x[:2, :GLOBAL_BATCH // 2])
    graphs = {}
    for name, kw in {"running": dict(fold_bn="running", learn_scales=True),
                     "batch-stats": dict(fold_bn="batch-stats", learn_scales=True)}.items():
        save_graph(slimfx.prepare_qat(g, calib, **kw), tmp_path / f"{name}.slimg")
        graphs[name] = str(tmp_path / f"{name}.slimg")
    torch.save({"graphs": graphs, "x": x, "y": y, "lr": 0.05}, tmp_path / "case.pt")

    r0, r1, single = _run(tmp_path)
    for name in graphs:
        # (batch-stats: the running statistics, and so the converted program, are rank 0's
        # broadcast at each forward plus this rank's last update: they differ by a step)
        params = [k for k in r0[name] if name == "running"
                  or not k.endswith(("running_mean", "running_var", "__converted__"))]
        assert any(k.endswith("fq_scale") for k in params)
        for k in params:  # weights, biases, scales, zero points: identical replicas
            assert torch.equal(r0[name][k], r1[name][k]), (name, k)
    # fold_bn="running": DDP on two halves is single-process training on the whole batch
    for k, v in single["running"].items():
        torch.testing.assert_close(r0["running"][k], v, rtol=RTOL, atol=ATOL, msg=k)
    start = slimfx.to_torch(load_graph(graphs["running"])).state_dict()
    moved = [k for k, v in start.items() if not torch.equal(v, single["running"][k])]
    assert any(k.endswith("fq_scale") for k in moved) and "fc.weight" in moved
    torch.testing.assert_close(r0["running"]["__converted__"], single["running"]["__converted__"])
    # fold_bn="batch-stats": each replica normalizes by its own shard's statistics (no
    # SyncBatchNorm), so only the replicas agree, not the single process
    diff = (r0["batch-stats"]["conv.weight"] - single["batch-stats"]["conv.weight"]).abs()
    assert 0 < float(diff.max()) < 0.1
