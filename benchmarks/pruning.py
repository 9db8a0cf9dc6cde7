"""Pruning benchmark on Fashion-MNIST: structured channel pruning and unstructured sparsity.

Trains a Conv-BN-ReLU CNN in eager PyTorch, traces it to slimfx IR, then

1. ``prune-channels`` (50%, l1, global, round_to=8) -> brief fine-tune: accuracy
   before/after, parameter and MAC reduction, latency ratio in torch eager (and
   TVM fp32 when ``slimfx.compile`` is available);
2. unstructured magnitude pruning to 80% global sparsity, one shot and with the
   gradual cubic schedule during fine-tuning: accuracy drop, dense vs sparse bytes.

Data: the Debian package ``dataset-fashion-mnist`` (``apt-get install -y
dataset-fashion-mnist``; files under ``/usr/share/datasets/fashion-mnist``).

Run: ``python benchmarks/pruning.py [--train-size 20000] [--epochs 2] [--finetune-size 5000]``.
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

import slimfx
from slimfx.ir import Graph
from slimfx.passes.prune import (
    PolynomialSchedule,
    count_macs,
    count_params,
    export_sparse,
    finetune,
    magnitude_prune,
    prune_channels,
)
from slimfx.passes.prune.report import format_table

DATA = Path("/usr/share/datasets/fashion-mnist")


def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float [N,1,28,28] normalized, labels as int64 [N]."""
    prefix = "train" if split == "train" else "t10k"
    with gzip.open(DATA / f"{prefix}-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(DATA / f"{prefix}-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    xt = (torch.from_numpy(x.copy()).float() / 255.0 - 0.286) / 0.353
    return xt, torch.from_numpy(y.astype(np.int64))


def cnn() -> nn.Module:
    def cbr(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*cbr(1, 32), nn.MaxPool2d(2), *cbr(32, 64), nn.MaxPool2d(2),
                         *cbr(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))


def batches(x: torch.Tensor, y: torch.Tensor, size: int, seed: int = 0
            ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return [(x[perm[i:i + size]], y[perm[i:i + size]]) for i in range(0, len(x) - size + 1, size)]


def train_eager(model: nn.Module, data: list[tuple[torch.Tensor, torch.Tensor]], epochs: int) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(epochs):
        for x, y in data:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    model.eval()


def accuracy(graph: Graph, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 on the largest multiple of the graph's static batch size."""
    m, b = slimfx.to_torch(graph), graph.inputs[0].type.shape[0]
    n = len(x) // b * b
    with torch.no_grad():
        pred = torch.cat([m(x[i:i + b]).argmax(1) for i in range(0, n, b)])
    return float((pred == y[:n]).float().mean())


def latency_ms(fn: Callable[[], object], repeat: int = 30) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def tvm_latency(graph: Graph, x: torch.Tensor) -> float | None:
    try:
        tvm = importlib.import_module("slimfx.backends.tvm")
    except ImportError:
        return None
    if not hasattr(tvm, "compile"):
        return None
    compiled = tvm.compile(graph, target="x86")
    return latency_ms(lambda: compiled(x))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-size", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--finetune-size", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    xtr, ytr = load("train")
    xte, yte = load("test")
    train = batches(xtr[:args.train_size], ytr[:args.train_size], 64)
    tune = batches(xtr[:args.finetune_size], ytr[:args.finetune_size], 64, seed=1)
    t0 = time.time()
    model = cnn()
    train_eager(model, train, args.epochs)
    g = slimfx.trace(model, (xte[:64],))
    base_acc = accuracy(g, xte, yte)
    print(f"trained {args.epochs} epochs on {args.train_size} images in {time.time() - t0:.0f}s; "
          f"test accuracy {base_acc:.4f}")

    # the same fine-tuning on the dense graph: the fair reference for "after fine-tune"
    dense_ft = g.clone()
    finetune(dense_ft, tune, args.finetune_epochs, optimizer="sgd", lr=0.01, progress=False)
    acc_dense_ft = accuracy(dense_ft, xte, yte)

    # ---------------------------------------------------------------- structured
    pruned = prune_channels(g, 0.5, importance="l1", scope="global", round_to=8)
    acc_pruned = accuracy(pruned, xte, yte)
    finetune(pruned, tune, args.finetune_epochs, optimizer="sgd", lr=0.01, progress=False)
    acc_tuned = accuracy(pruned, xte, yte)
    x1 = xte[:64]
    m0, m1 = slimfx.to_torch(g), slimfx.to_torch(pruned)
    with torch.no_grad():
        lat0, lat1 = latency_ms(lambda: m0(x1)), latency_ms(lambda: m1(x1))
    tvm0, tvm1 = tvm_latency(g, x1), tvm_latency(pruned, x1)
    rows = [("metric", "original", "pruned 50% ch", "ratio"),
            ("test accuracy", f"{base_acc:.4f}", f"{acc_pruned:.4f} (no ft)", "-"),
            ("test accuracy after ft", f"{acc_dense_ft:.4f}", f"{acc_tuned:.4f}",
             f"{acc_tuned - acc_dense_ft:+.4f}"),
            ("parameters", str(count_params(g)), str(count_params(pruned)),
             f"{count_params(pruned) / count_params(g):.3f}"),
            ("MACs (batch 64)", str(count_macs(g) // 64), str(count_macs(pruned) // 64),
             f"{count_macs(pruned) / count_macs(g):.3f}"),
            ("torch eager ms (batch 64)", f"{lat0:.2f}", f"{lat1:.2f}", f"{lat1 / lat0:.3f}")]
    if tvm0 is not None and tvm1 is not None:
        rows.append(("TVM fp32 ms (batch 64)", f"{tvm0:.2f}", f"{tvm1:.2f}", f"{tvm1 / tvm0:.3f}"))
    else:
        rows.append(("TVM fp32 ms (batch 64)", "n/a", "n/a", "slimfx.compile not available"))
    print("\nStructured channel pruning (prune-channels ratio=0.5 l1 global round_to=8)")
    print(format_table(rows))

    # ---------------------------------------------------------------- unstructured
    oneshot = g.clone()
    magnitude_prune(oneshot, 0.8, scope="global")
    acc_oneshot = accuracy(oneshot, xte, yte)
    gradual = g.clone()
    steps = len(tune) * args.finetune_epochs
    sched = PolynomialSchedule(final=0.8, end_step=max(1, int(0.7 * steps)), frequency=20)
    finetune(gradual, tune, args.finetune_epochs, optimizer="sgd", lr=0.01, schedule=sched,
             progress=False)
    acc_gradual = accuracy(gradual, xte, yte)
    with tempfile.TemporaryDirectory() as tmp:
        rep = export_sparse(gradual, Path(tmp) / "sparse.safetensors")
    rows = [("variant", "test accuracy", "vs dense"),
            ("dense", f"{base_acc:.4f}", "-"),
            ("80% global, one shot", f"{acc_oneshot:.4f}", f"{acc_oneshot - base_acc:+.4f}"),
            ("dense + same fine-tune", f"{acc_dense_ft:.4f}", "-"),
            ("80% global, gradual + ft", f"{acc_gradual:.4f}",
             f"{acc_gradual - acc_dense_ft:+.4f} (vs dense + ft)")]
    print("\nUnstructured magnitude pruning (prune-magnitude sparsity=0.8 scope=global)")
    print(format_table(rows))
    print(format_table([("weights", "dense bytes", "sparse bytes", "ratio", "file bytes"),
                        ("all constants", str(rep.dense_bytes), str(rep.sparse_bytes),
                         f"{rep.ratio:.3f}", str(rep.file_bytes))]))


if __name__ == "__main__":
    main()
