"""Symbolic batch in the TVM backend: compile time, batch-1 latency and batch-8 throughput.

For a small CNN and a small transformer block, traced with a dynamic batch
(``dynamic_shapes``), compares:

- ``static``: traced and compiled at the size measured (today's path, the reference);
- ``shapes=``: the symbolic graph specialised with ``compile(g, shapes=...)``;
- ``auto``: one artifact for every batch; the batch symbol runs the per-sample program
  once per sample (:mod:`slimfx.backends.tvm.specialize`);
- ``symbolic``: one artifact, the batch symbolic in Relax (generic kernels).

Usage: ``python benchmarks/dynamic_tvm.py [--repeat 20] [--models cnn,transformer]``.
Prints one table per model (ms; ratios against ``static``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn as nn
from torch.export import Dim

import slimfx
from slimfx.backends.tvm.specialize import batch_symbols
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


MODELS = {
    "cnn": (SmallCNN, (3, 32, 32)),
    "transformer": (Block, (32, 128)),
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


def _timed_compile(g, **kw):
    t0 = time.perf_counter()
    c = slimfx.compile(g, "x86", progress=False, **kw)
    return c, time.perf_counter() - t0


def run(name: str, repeat: int) -> None:
    cls, sample = MODELS[name]
    torch.manual_seed(0)
    model = cls().eval()
    x1, x8 = torch.randn(1, *sample), torch.randn(8, *sample)
    g, how = _trace_dynamic(model, sample)
    reasons = batch_symbols(g)
    builds = {
        "static b1": _timed_compile(slimfx.trace(model, (x1,), method="export")),
        "static b8": _timed_compile(slimfx.trace(model, (x8,), method="export")),
        "shapes= b1": _timed_compile(g, shapes={"x": tuple(x1.shape)}),
        "auto": _timed_compile(g),
        "symbolic": _timed_compile(g, dynamic="symbolic"),
    }
    a1, a8 = x1.numpy(), x8.numpy()
    ref1, ref8 = model(x1).detach().numpy(), model(x8).detach().numpy()

    def bench(c, a, ref) -> tuple[float, float]:
        err = float(np.abs(c(a) - ref).max())
        return c.benchmark(a, repeat=repeat, number=5).median_ms, err

    rows = []
    for key, (c, secs) in builds.items():
        b1 = bench(c, a1, ref1) if key != "static b8" else None
        b8 = bench(c, a8, ref8) if key not in ("static b1", "shapes= b1") else None
        rows.append((key, secs, b1, b8))
    base1 = next(r[2][0] for r in rows if r[0] == "static b1")
    base8 = next(r[3][0] for r in rows if r[0] == "static b8")
    print(f"\n{name} (input [N, {', '.join(map(str, sample))}], N in [1, 64], by {how}; "
          f"N {'is a batch symbol' if reasons['N'] is None else 'stays symbolic: ' + reasons['N']})")
    print(f"{'build':<12}{'compile s':>10}{'b1 ms':>9}{'x static':>9}{'b8 ms':>9}"
          f"{'x static':>9}{'b8 img/s':>10}{'max err':>10}")
    for key, secs, b1, b8 in rows:
        c1 = f"{b1[0]:9.3f}{b1[0] / base1:9.2f}" if b1 else f"{'-':>9}{'-':>9}"
        c8 = (f"{b8[0]:9.3f}{b8[0] / base8:9.2f}{8e3 / b8[0]:10.0f}" if b8
              else f"{'-':>9}{'-':>9}{'-':>10}")
        err = max(e for e in (b1[1] if b1 else 0.0, b8[1] if b8 else 0.0))
        print(f"{key:<12}{secs:10.1f}{c1}{c8}{err:10.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--models", default="cnn,transformer")
    args = ap.parse_args()
    for name in args.models.split(","):
        run(name, args.repeat)


if __name__ == "__main__":
    main()
