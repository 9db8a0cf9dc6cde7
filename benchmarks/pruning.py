"""Pruning benchmark on Fashion-MNIST: structured channel pruning and unstructured sparsity.

Trains a Conv-BN-ReLU CNN (32-64-128 channels) in eager PyTorch on the full 60k
training set (Adam + one-cycle schedule), traces it to slimfx IR, then

1. ``prune-channels`` at 50%: the importance criterion (l1 / l2 / bn-scale) and
   the scope (global / uniform) are chosen by accuracy on a slice of the
   *training* set after pruning (the test set is used for the final figures only);
   batch-norm statistics are re-estimated on training batches (adaptive BN);
   then the pruned graph is fine-tuned with :func:`slimfx.passes.prune.finetune`
   (Adam, step-decayed learning rate, knowledge distillation from the unpruned
   model through ``loss_fn``). Reported: test accuracy before/after on the full
   10k test set, parameter and MAC reduction, measured latency in torch eager
   (batch 1 and 64) and TVM fp32 (``slimfx.compile(graph, "x86")``, untuned);
2. latency-aware vs MAC-proxy channel counts, both at 50% of the channels (``round_to=16``,
   l2 importance, the same fine-tune): (a) ``prune-channels{ratio=0.5}`` ranks channels of
   all groups together (the MAC proxy: a channel's cost is what it removes), (b)
   ``prune-channels{latency_target=0.5}`` picks per-group widths from the latency of the
   batch-1 graph compiled for x86 (:mod:`slimfx.passes.prune.latency`; ``ratio=0.5`` caps
   each group). Reported: MAC ratio, measured TVM latency ratio, accuracy after fine-tuning,
   and the latency model's predicted ratio; measurements are cached in
   ``--latency-cache`` so a rerun only fine-tunes;
3. unstructured magnitude pruning to 80% global sparsity, one shot and with the
   gradual cubic schedule during fine-tuning: accuracy drop, dense vs sparse bytes.

Data: the Debian package ``dataset-fashion-mnist`` (``apt-get install -y
dataset-fashion-mnist``; files under ``/usr/share/datasets/fashion-mnist``).

Run: ``python benchmarks/pruning.py`` (full recipe) or ``--quick`` (smoke run on
small subsets; its accuracies mean nothing); ``--sections latency`` runs only part 2.

Measured on 2 shared vCPUs (8 min in all): unpruned 90.17% after 3 epochs; 50% of the
channels (l2, global; MACs 0.326x, parameters 0.282x) then 6 fine-tuning epochs with
distillation: 89.41% (-0.76 pt); 2 epochs gave -1.81 pt, 4 epochs -1.06 pt.
"""

from __future__ import annotations

import argparse
import gzip
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
from slimfx.passes.prune.latency import LatencyReport, plan_for_latency
from slimfx.passes.prune.prune_channels import apply_channel_plan, plan_kept_counts, score_units
from slimfx.passes.prune.report import format_table

DATA = Path("/usr/share/datasets/fashion-mnist")
BATCH = 100  # static batch of the working graph: divides 60000 and 10000
Batches = list[tuple[torch.Tensor, torch.Tensor]]


def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float [N,1,28,28] normalized, labels as int64 [N]."""
    prefix = "train" if split == "train" else "t10k"
    with gzip.open(DATA / f"{prefix}-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(DATA / f"{prefix}-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    xt = (torch.from_numpy(x.copy()).float() / 255.0 - 0.286) / 0.353
    return xt, torch.from_numpy(y.astype(np.int64))


def cnn(widths: tuple[int, int, int] = (32, 64, 128)) -> nn.Module:
    """The Conv-BN-ReLU CNN; ``widths`` are the channels of its three convolutions."""
    def cbr(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    c1, c2, c3 = widths
    return nn.Sequential(*cbr(1, c1), nn.MaxPool2d(2), *cbr(c1, c2), nn.MaxPool2d(2),
                         *cbr(c2, c3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c3, 10))


def eager_from_graph(graph: Graph) -> nn.Module:
    """The eager ``cnn`` with the (possibly pruned) widths and constants of ``graph``."""
    widths = tuple(graph.constants[f"{i}.weight"].type.shape[0] for i in (0, 4, 8))
    model = cnn(widths)  # type: ignore[arg-type]
    state = {name: v.const for name, v in graph.constants.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), missing
    return model.eval()


def batches(x: torch.Tensor, y: torch.Tensor, size: int, seed: int = 0) -> Batches:
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return [(x[perm[i:i + size]], y[perm[i:i + size]]) for i in range(0, len(x) - size + 1, size)]


def train_eager(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int,
                lr: float = 4e-3, batch: int = 128) -> None:
    """Adam with a one-cycle learning rate, reshuffled every epoch."""
    steps = epochs * (len(x) // batch)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        for xb, yb in batches(x, y, batch, seed=epoch):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
            sched.step()
    model.eval()


def accuracy(graph: Graph, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 of the graph (static batch ``BATCH``) on all of ``x`` (len divisible by it)."""
    m, b = slimfx.to_torch(graph, trainable=False), graph.inputs[0].type.shape[0]
    assert len(x) % b == 0, (len(x), b)
    with torch.no_grad():
        pred = torch.cat([m(x[i:i + b]).argmax(1) for i in range(0, len(x), b)])
    return float((pred == y).float().mean())


def recalibrate_bn(graph: Graph, data: Batches, num_batches: int) -> None:
    """Re-estimates batch-norm running statistics in place (adaptive BN after pruning)."""
    model = eager_from_graph(graph)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
    model.train()
    with torch.no_grad():
        for x, _ in data[:num_batches]:
            model(x)
    for name, t in model.state_dict().items():
        if name.endswith(("running_mean", "running_var")):
            graph.constants[name].const = t.clone()


def kd_loss(temperature: float = 4.0, alpha: float = 0.5
            ) -> Callable[[torch.Tensor, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Hinton distillation: ``(1-alpha) CE(labels) + alpha T^2 KL(teacher || student)``."""
    def loss(out: torch.Tensor, target: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        labels, teacher = target
        ce = nn.functional.cross_entropy(out, labels)
        kl = nn.functional.kl_div(nn.functional.log_softmax(out / temperature, 1),
                                  nn.functional.log_softmax(teacher / temperature, 1),
                                  reduction="batchmean", log_target=True)
        return (1 - alpha) * ce + alpha * temperature ** 2 * kl
    return loss


def finetune_decayed(graph: Graph, data: list, lrs: list[float], loss_fn=None) -> None:
    """``finetune`` one epoch per learning rate (Adam, step decay)."""
    for lr in lrs:
        finetune(graph, data, 1, optimizer="adam", lr=lr, loss_fn=loss_fn, progress=False)


def latency_ms(fn: Callable[[], object], repeat: int = 30) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def latencies(graph: Graph, tvm: bool) -> dict[str, float]:
    """Eager and TVM (untuned, x86) latency of ``graph``'s network at batch 1 and 64."""
    model = eager_from_graph(graph)
    out: dict[str, float] = {}
    for b in (1, 64):
        x = torch.randn(b, 1, 28, 28)
        with torch.no_grad():
            out[f"eager{b}"] = latency_ms(lambda x=x: model(x), repeat=50 if b == 1 else 20)
        if tvm:
            out[f"tvm{b}"] = tvm_ms(model, b)
    return out


def tvm_ms(model: nn.Module, batch: int = 1) -> float:
    """Median TVM (untuned, x86) latency in ms of the eager ``model`` traced at ``batch``."""
    x = torch.randn(batch, 1, 28, 28)
    compiled = slimfx.compile(slimfx.trace(model, (x,)), "x86", progress=False)
    return compiled.benchmark(x.numpy(), repeat=15, number=5 if batch == 1 else 2).median_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run on small subsets")
    ap.add_argument("--epochs", type=int, default=3, help="base training epochs")
    ap.add_argument("--finetune-lrs", default="1e-3,1e-3,1e-3,3e-4,3e-4,1e-4",
                    help="one fine-tuning epoch per learning rate (Adam)")
    ap.add_argument("--no-kd", action="store_true", help="fine-tune without distillation")
    ap.add_argument("--dense-ft", action="store_true",
                    help="also fine-tune the unpruned model with the same recipe (reference)")
    ap.add_argument("--gradual-size", type=int, default=30000,
                    help="training images for the one gradual-sparsity epoch")
    ap.add_argument("--no-tvm", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sections", default="structured,latency,unstructured",
                    help="comma-separated parts to run: structured, latency, unstructured")
    ap.add_argument("--latency-cache", default=str(Path(tempfile.gettempdir())
                                                   / "slimfx-pruning-latency.json"),
                    help="JSON file of latency measurements (reruns measure nothing)")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clock = time.time()

    def stamp(what: str) -> None:
        print(f"[{time.time() - clock:6.0f}s] {what}", flush=True)

    xtr, ytr = load("train")
    xte, yte = load("test")
    lrs = [float(s) for s in args.finetune_lrs.split(",")]
    if args.quick:
        xtr, ytr, xte, yte = xtr[:3000], ytr[:3000], xte[:1000], yte[:1000]
        args.epochs, lrs, args.gradual_size = 1, lrs[:1], 3000
    train = batches(xtr, ytr, BATCH, seed=1)
    select_x, select_y = xtr[-5000:], ytr[-5000:]  # criterion selection: training images

    model = cnn()
    train_eager(model, xtr, ytr, args.epochs)
    g = slimfx.trace(model, (xte[:BATCH],))
    base_acc = accuracy(g, xte, yte)
    stamp(f"base: {args.epochs} epochs on {len(xtr)} images, test accuracy {base_acc:.4f}")

    if args.no_kd:
        data, loss_fn = train, None
    else:
        teacher = eager_from_graph(g)
        with torch.no_grad():
            data = [(x, (y, teacher(x))) for x, y in train]
        loss_fn = kd_loss()
    if "structured" in sections:
        structured(args, g, base_acc, train, data, loss_fn, lrs, select_x, select_y, xte, yte,
                   stamp)
    if "latency" in sections:
        latency_vs_macs(args, g, base_acc, train, data, loss_fn, lrs, xte, yte, stamp)
    if "unstructured" in sections:
        unstructured(g, base_acc, train, args.gradual_size, xte, yte, stamp)
    stamp("done")


def latency_vs_macs(args, g: Graph, base_acc: float, train: Batches, data: list, loss_fn,
                    lrs: list[float], xte: torch.Tensor, yte: torch.Tensor,
                    stamp: Callable[[str], None]) -> None:
    """Part 2: MAC-proxy vs latency-aware channel counts at 50% of the channels."""
    importance, round_to = "l2", 16
    mac = prune_channels(g, 0.5, importance=importance, scope="global", round_to=round_to)
    # the latency model times the batch-1 graph (deployment latency); same groups as ``g``
    g1 = slimfx.trace(eager_from_graph(g), (torch.randn(1, 1, 28, 28),))
    _, rep = plan_for_latency(g1, 0.5, ratio=0.5, importance=importance, round_to=round_to,
                              target="x86", latency_cache=args.latency_cache, progress=True)
    deps, scores = score_units(g, importance, (), None, False)
    lat = apply_channel_plan(g, plan_kept_counts(deps, scores, {
        gid: k for gid, (k, _) in rep.kept.items()}))
    lat.verify()
    stamp(f"latency model: {rep.summary()}")
    rows = [("variant (50% channels, round_to=16, l2)", "widths", "MACs ratio",
             "TVM batch-1 latency ratio", "predicted ratio", "test acc (BN recal. + ft)")]
    lat0 = tvm_ms(eager_from_graph(g))
    variants: list[tuple[str, Graph, LatencyReport | None]] = [
        ("(a) MAC proxy: ratio=0.5 global", mac, None),
        ("(b) latency-aware: latency_target=0.5", lat, rep)]
    for name, p, r in variants:
        recalibrate_bn(p, train, 20)
        finetune_decayed(p, data, lrs, loss_fn)
        acc = accuracy(p, xte, yte)
        lat1 = tvm_ms(eager_from_graph(p))
        widths = [p.constants[f"{i}.weight"].type.shape[0] for i in (0, 4, 8)]
        pred = "-" if r is None else f"{r.predicted_ratio:.3f}"
        rows.append((name, str(widths), f"{count_macs(p) / count_macs(g):.3f}",
                     f"{lat1 / lat0:.3f} ({lat0:.3f} -> {lat1:.3f} ms)", pred,
                     f"{acc:.4f} ({acc - base_acc:+.4f})"))
        stamp(f"{name} fine-tuned")
    print(f"\nLatency-aware vs MAC-proxy channel counts (TVM fp32 x86 untuned, "
          f"{args.threads} threads; unpruned test accuracy {base_acc:.4f})")
    print(format_table(rows))


def structured(args, g: Graph, base_acc: float, train: Batches, data: list, loss_fn,
               lrs: list[float], select_x: torch.Tensor, select_y: torch.Tensor,
               xte: torch.Tensor, yte: torch.Tensor, stamp: Callable[[str], None]) -> None:
    """Part 1: criterion selection, then the best criterion pruned and fine-tuned."""
    rows = [("importance", "scope", "MACs ratio", "train-slice acc (no ft, BN recal.)")]
    best: tuple[float, str, str, Graph] | None = None
    for importance in ("l1", "l2", "bn-scale"):
        for scope in ("global", "uniform"):
            p = prune_channels(g, 0.5, importance=importance, scope=scope, round_to=8)
            recalibrate_bn(p, train, 20)
            acc = accuracy(p, select_x, select_y)
            rows.append((importance, scope, f"{count_macs(p) / count_macs(g):.3f}", f"{acc:.4f}"))
            if best is None or acc > best[0]:
                best = (acc, importance, scope, p)
    assert best is not None
    _, importance, scope, _ = best
    stamp("criterion selection (50% channels, round_to=8)")
    print(format_table(rows))

    pruned = prune_channels(g, 0.5, importance=importance, scope=scope, round_to=8)
    acc_raw = accuracy(pruned, xte, yte)
    recalibrate_bn(pruned, train, 20)
    acc_recal = accuracy(pruned, xte, yte)
    finetune_decayed(pruned, data, lrs, loss_fn)
    acc_tuned = accuracy(pruned, xte, yte)
    stamp(f"pruned ({importance}, {scope}) and fine-tuned {len(lrs)} epochs (lr {lrs})")
    acc_dense_ft = None
    if args.dense_ft:
        dense_ft = g.clone()
        finetune_decayed(dense_ft, data, lrs, loss_fn)
        acc_dense_ft = accuracy(dense_ft, xte, yte)
        stamp("dense reference fine-tuned")

    lat0, lat1 = latencies(g, not args.no_tvm), latencies(pruned, not args.no_tvm)
    stamp("latency measured")
    p0, p1, mac0, mac1 = count_params(g), count_params(pruned), count_macs(g), count_macs(pruned)
    ft = f"{len(lrs)} ep ft" + ("" if args.no_kd else " + KD")
    rows = [("metric", "unpruned", "pruned 50% ch", "pruned/unpruned"),
            ("test accuracy (10k)", f"{base_acc:.4f}", f"{acc_raw:.4f} (no ft)",
             f"{acc_raw - base_acc:+.4f}"),
            ("  + BN re-estimated", "-", f"{acc_recal:.4f}", f"{acc_recal - base_acc:+.4f}"),
            (f"  + {ft}", "-" if acc_dense_ft is None else f"{acc_dense_ft:.4f} (same ft)",
             f"{acc_tuned:.4f}", f"{acc_tuned - base_acc:+.4f} (vs unpruned)"),
            ("parameters", str(p0), str(p1), f"{p1 / p0:.3f}"),
            ("MACs per image", str(mac0 // BATCH), str(mac1 // BATCH), f"{mac1 / mac0:.3f}")]
    for key, label in (("eager1", "torch eager ms, batch 1"), ("eager64", "torch eager ms, batch 64"),
                       ("tvm1", "TVM fp32 ms, batch 1"), ("tvm64", "TVM fp32 ms, batch 64")):
        if key in lat0:
            rows.append((label, f"{lat0[key]:.3f}", f"{lat1[key]:.3f}",
                         f"{lat1[key] / lat0[key]:.3f}"))
    widths = [pruned.constants[f"{i}.weight"].type.shape[0] for i in (0, 4, 8)]
    print(f"\nStructured channel pruning: prune-channels ratio=0.5 importance={importance} "
          f"scope={scope} round_to=8 -> widths {widths} (from [32, 64, 128]); TVM untuned, "
          f"{args.threads} threads")
    print(format_table(rows))
    if acc_dense_ft is not None:
        print(f"pruned vs unpruned with the same fine-tune: {acc_tuned - acc_dense_ft:+.4f}")


def unstructured(g: Graph, base_acc: float, train: Batches, gradual_size: int,
                 xte: torch.Tensor, yte: torch.Tensor, stamp: Callable[[str], None]) -> None:
    """Part 3: 80% magnitude sparsity, one shot and gradual."""
    oneshot = g.clone()
    magnitude_prune(oneshot, 0.8, scope="global")
    acc_oneshot = accuracy(oneshot, xte, yte)
    gradual = g.clone()
    tune = train[:gradual_size // BATCH]
    sched = PolynomialSchedule(final=0.8, end_step=max(1, int(0.7 * len(tune))), frequency=10)
    finetune(gradual, tune, 1, optimizer="adam", lr=3e-4, schedule=sched, progress=False)
    acc_gradual = accuracy(gradual, xte, yte)
    with tempfile.TemporaryDirectory() as tmp:
        rep = export_sparse(gradual, Path(tmp) / "sparse.safetensors")
    stamp("unstructured")
    rows = [("variant", "test accuracy", "vs unpruned"),
            ("dense", f"{base_acc:.4f}", "-"),
            ("80% global, one shot (no ft)", f"{acc_oneshot:.4f}",
             f"{acc_oneshot - base_acc:+.4f}"),
            (f"80% global, gradual over 1 ep ft ({len(tune) * BATCH} imgs)",
             f"{acc_gradual:.4f}", f"{acc_gradual - base_acc:+.4f}")]
    print("\nUnstructured magnitude pruning (prune-magnitude sparsity=0.8 scope=global)")
    print(format_table(rows))
    print(format_table([("weights", "dense bytes", "sparse bytes", "ratio", "file bytes"),
                        ("all constants", str(rep.dense_bytes), str(rep.sparse_bytes),
                         f"{rep.ratio:.3f}", str(rep.file_bytes))]))


if __name__ == "__main__":
    main()
