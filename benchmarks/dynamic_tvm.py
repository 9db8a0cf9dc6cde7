"""Symbolic batch in the TVM backend: compile time, batch-1 latency and batch-8 throughput.

For a small CNN (fp32 and ptq-int8), a small transformer block and a tiny MLP, traced
with a dynamic batch
(``dynamic_shapes``), compares:

- ``static``: compiled for the size measured (``compile(g, shapes=...)``: the program of a
  graph traced at that size, today's path and the reference);
- ``auto``: one artifact for every batch; the batch symbol runs the per-sample program
  once per sample (:mod:`slimfx.backends.tvm.specialize`);
- ``auto+b8``: ``auto`` with ``batch_buckets=(8,)``: the batch-8 program in the same
  library, a batch runs as chunks of 8 and the rest per sample;
- ``symbolic``: one artifact, the batch symbolic in Relax (generic kernels).

Usage: ``python benchmarks/dynamic_tvm.py [--repeat 15] [--number 5]
[--models cnn,transformer]``. Prints one table per model: compile seconds, the median
(and min) ms of one call over ``repeat`` rounds that visit every case in turn (so load
on the machine hits every case alike), ratios against ``static``, batch-8 images/s and
the median ms of a whole batch-8 call (``c(x)``: numpy in, transfers, per-sample
slicing and stacking, numpy out; ``benchmark`` counts only the kernels) and the largest
difference from eager torch (int8: from the torch backend's integer program).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn as nn
from torch.export import Dim

import slimfx
from slimfx.backends.tvm.specialize import batch_symbols, bind_symbols
from slimfx.ir import TensorType


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Block(nn.Module):
    """A pre-norm transformer encoder block (4 heads, width 128, MLP 512)."""

    def __init__(self, dim: int = 128, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.n1(x)).reshape(b, t, 3, self.heads, d // self.heads) \
            .permute(2, 0, 3, 1, 4).unbind(0)
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.n2(x))


class Tiny(nn.Module):
    """An MLP so small that the per-call cost of the VM dominates."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


MODELS = {  # name -> (model, sample shape, int8)
    "cnn": (SmallCNN, (3, 32, 32), False),
    "cnn-int8": (SmallCNN, (3, 32, 32), True),
    "transformer": (Block, (32, 128), False),
    "tiny": (Tiny, (64,), False),
}


def generalize(g, size: int, hi: int = 64):
    """``g`` traced at batch ``size`` with that batch made the symbol ``N in [1, hi]``.

    For models the WIP dynamic frontend cannot trace yet (``b, t, d = x.shape`` gives
    ``sym_size``): every activation whose dim 0 is ``size`` and every ``dims`` attribute
    (reshape targets) that starts with ``size`` gets ``N`` there; ``verify()`` checks the
    result. Pick a ``size`` that no other dim of the model has.
    """
    n = g.add_symbol("N", 1, hi)
    for v in g.inputs:
        v.type = TensorType((n, *v.type.shape[1:]), v.type.dtype)
    for node in g.nodes:  # in order: re-infer every result type from the operands
        for a in node.op.attrs:
            val = node.attrs[a.name]
            if a.kind == "dims" and isinstance(val, tuple) and val and val[0] == size:
                node.set_attrs(**{a.name: (n, *val[1:])})
        for out, t in zip(node.outputs, node.op.infer([v.type for v in node.inputs],
                                                      node.attrs), strict=True):
            out.type = t
    g.verify()
    return g


def _trace_dynamic(model, sample):
    try:
        spec = {"x": {0: Dim("N", min=1, max=64)}}
        return slimfx.trace(model, (torch.randn(2, *sample),), dynamic_shapes=spec,
                            method="export"), "trace(dynamic_shapes=)"
    except Exception:  # noqa: BLE001 - the WIP frontend: fall back to generalize()
        return generalize(slimfx.trace(model, (torch.randn(7, *sample),), method="export"),
                          7), "generalize(trace at batch 7)"


class _BoundReference:
    """``slimfx.to_torch`` of a symbolic graph, bound to the size of each call."""

    def __init__(self, g) -> None:
        self.g = g

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return slimfx.to_torch(bind_symbols(self.g, {"N": x.shape[0]}))(x)


def _timed_compile(g, **kw):
    t0 = time.perf_counter()
    c = slimfx.compile(g, "x86", progress=False, **kw)
    return c, time.perf_counter() - t0


def run(name: str, repeat: int, number: int) -> None:
    cls, sample, int8 = MODELS[name]
    torch.manual_seed(0)
    model = cls().eval()
    x1, x8 = torch.randn(1, *sample), torch.randn(8, *sample)
    g, how = _trace_dynamic(model, sample)
    if int8:  # ptq-int8 on the static graph (calibration of symbolic graphs is WIP), batch 7
        static = slimfx.trace(model, (torch.randn(7, *sample),), method="export")
        calib = [torch.randn(7, *sample) for _ in range(4)]
        g, how = generalize(slimfx.quantize(static, calib), 7), "ptq-int8, generalize(batch 7)"
    reasons = batch_symbols(g)
    # "static": the graph bound to the size (shapes=), which is the program a trace at
    # that size gives (tests/backends/tvm/test_dynamic.py checks they are structurally equal)
    builds = {
        "static b1": _timed_compile(g, shapes={"x": tuple(x1.shape)}),
        "static b8": _timed_compile(g, shapes={"x": tuple(x8.shape)}),
        "auto": _timed_compile(g),
        "auto+b8": _timed_compile(g, batch_buckets=(8,)),
        "symbolic": _timed_compile(g, dynamic="symbolic"),
    }
    if int8:  # references: the torch backend on the integer program at that size
        model = _BoundReference(g)
    a1, a8 = x1.numpy(), x8.numpy()
    ref1, ref8 = model(x1).detach().numpy(), model(x8).detach().numpy()
    cases = []  # (build, batch, compiled, input, reference)
    for key, (c, _) in builds.items():
        if key != "static b8":
            cases.append((key, 1, c, a1, ref1))
        if key != "static b1":
            cases.append((key, 8, c, a8, ref8))
    errs = {(k, b): float(np.abs(c(a) - ref).max()) for k, b, c, a, ref in cases}
    times: dict[tuple[str, int], list[float]] = {(k, b): [] for k, b, *_ in cases}
    calls: dict[tuple[str, int], list[float]] = {(k, b): [] for k, b, *_ in cases}
    for _ in range(repeat):  # rounds over every case: load on the machine hits all alike
        for k, b, c, a, _ref in cases:
            times[(k, b)].append(c.benchmark(a, repeat=1, number=number, warmup=1).median_ms)
            t0 = time.perf_counter()  # a whole call: numpy in, transfers, stacking, numpy out
            for _ in range(number):
                c(a)
            calls[(k, b)].append((time.perf_counter() - t0) * 1e3 / number)
    call8 = {key: statistics.median(t) for key, t in calls.items() if key[1] == 8}
    med = {key: statistics.median(t) for key, t in times.items()}
    low = {key: min(t) for key, t in times.items()}
    print(f"\n{name} (input [N, {', '.join(map(str, sample))}], N in [1, 64], by {how}; "
          f"N {'is a batch symbol' if reasons['N'] is None else 'stays symbolic: ' + reasons['N']})")
    print(f"{'build':<12}{'compile s':>10}{'b1 ms':>9}{'(min)':>8}{'x static':>9}{'b8 ms':>9}"
          f"{'(min)':>8}{'x static':>9}{'b8 img/s':>10}{'b8 call':>9}{'max err':>10}")
    for key, (_, secs) in builds.items():
        cols = []
        for b, base in ((1, "static b1"), (8, "static b8")):
            if (key, b) in med:
                cols.append(f"{med[key, b]:9.3f}{low[key, b]:8.3f}"
                            f"{med[key, b] / med[base, b]:9.2f}")
            else:
                cols.append(f"{'-':>9}{'-':>8}{'-':>9}")
        rate = (f"{8e3 / med[key, 8]:10.0f}{call8[key, 8]:9.3f}" if (key, 8) in med
                else f"{'-':>10}{'-':>9}")
        err = max(e for (k, _b), e in errs.items() if k == key)
        print(f"{key:<12}{secs:10.1f}{cols[0]}{cols[1]}{rate}{err:10.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15, help="rounds over all cases")
    ap.add_argument("--number", type=int, default=5, help="calls timed per round")
    ap.add_argument("--models", default="cnn,cnn-int8,transformer,tiny")
    args = ap.parse_args()
    for name in args.models.split(","):
        run(name, args.repeat, args.number)


if __name__ == "__main__":
    main()
