"""Mixed precision under an accuracy budget on the Fashion-MNIST CNN of ``accuracy.py``.

The trained CNN (cached by ``benchmarks/accuracy.py``, trained here if missing) is
quantized by :func:`slimfx.passes.quant.mixed_precision` under a budget of ``--budget``
points of top-1 accuracy, measured on 2000 *validation* images (held-out training images,
never the test set); calibration uses 2000 other training images. Reported: every step
of the search (layers float, validation top-1, constant bytes, compiled latency with
``--target``), then the test top-1 of fp32, all-int8 and the chosen program, for int8 and
for the W4A8 ladder (``precisions=("w4a8", "int8")``).

Run: ``python benchmarks/mixed_precision.py [--budget 0.1] [--target x86]``.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from accuracy import BATCH, load_fashion, predict, top1, train  # benchmarks/ is sys.path[0]

import slimfx
from slimfx.passes.quant import Budget, mixed_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.1, help="top-1 points")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--target", default=None, help="also measure compiled latency")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    xtr, ytr, xte, yte = load_fashion()
    model = train(xtr, ytr, args.epochs)
    pick = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(1))
    calib = [xtr[pick[i * BATCH:(i + 1) * BATCH]] for i in range(8)]
    val_idx = pick[-2000:]
    xval, yval = xtr[val_idx], ytr[val_idx]

    def val_top1(module: torch.nn.Module) -> float:
        return top1(predict(module, xval), yval)

    g = slimfx.trace(model, (xte[:BATCH],))
    fp32 = top1(predict(model, xte), yte)
    all_int8 = top1(predict(slimfx.to_torch(slimfx.quantize(g, calib), trainable=False), xte),
                    yte)
    print(f"fp32 test top-1 {fp32:.2f}; all int8 {all_int8:.2f} ({all_int8 - fp32:+.2f})")
    for precisions in (("int8",), ("w4a8", "int8")):
        start = time.time()
        r = mixed_precision(g, calib, Budget(args.budget, val_top1, precisions=precisions),
                            target=args.target)
        test = top1(predict(slimfx.to_torch(r.graph, trainable=False), xte), yte)
        print(f"\nbudget {args.budget} pt on validation top-1, precisions {precisions} "
              f"({time.time() - start:.0f} s)")
        print(r)
        print(f"chosen: test top-1 {test:.2f} ({test - fp32:+.2f} vs fp32), precisions "
              f"{r.precisions}, float {list(r.float_layers)}")


if __name__ == "__main__":
    main()
