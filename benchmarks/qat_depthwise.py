"""A depthwise CNN whose per-tensor int8 PTQ collapses, and what QAT wins back (digits).

The model: conv-BN-ReLU stem, a depthwise 3x3 conv (with bias) - ReLU - pointwise 1x1 conv
block with a residual add, a max pool, a conv-BN-ReLU, global average pooling and a linear
head, trained on sklearn's digits (1,437 training / 360 test images, ``load_digits_split``).
Then the depthwise channels are rescaled the way BN folding leaves MobileNet's: channel
``c`` of the depthwise conv (weights and bias) times ``s_c``, input channel ``c`` of the
pointwise conv times ``1 / s_c``, with ``s_c`` log-uniform in ``[1/spread, spread]``. ReLU
is positively homogeneous, so the float model computes the same function (checked), but
one int8 scale per tensor now rounds the small channels of the depthwise weights and of its
output to zero: per-tensor post-training quantization collapses (Nagel et al. 2019, "Data-
Free Quantization", Fig. 2). Per-channel weights fix the weights, not the activation.

Rows: fp32; fp32 fine-tuned for the same steps (the fair reference); PTQ int8 with
per-channel weights (the default); PTQ int8 per-tensor; PTQ int8 per-tensor after
cross-layer equalization (``fold-bn,equalize-cross-layer``, which undoes the spread); QAT
int8 per-tensor (the same steps, Adam 1e-3 with cosine decay, batch 64, same batches).
Top-1 on the first 320 test images.

Run: ``PYTHONPATH=$PWD python benchmarks/qat_depthwise.py [--steps 300] [--spread 100]``
(~1 min on 2 shared cores). The numbers are in ``notes/qat.md``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

import slimfx
from slimfx.models.digits import load_digits_split
from slimfx.passes import Pipeline
from slimfx.passes.quant import QConfig

BATCH = 64


class DepthwiseCNN(nn.Module):
    """Stem, a depthwise-separable residual block, a conv, global pooling, a linear head."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.dw = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.pw = nn.Conv2d(width, width, 1)
        self.conv = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(2 * width), nn.ReLU())
        self.head = nn.Linear(2 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.pw(F.relu(self.dw(x))))
        x = self.conv(F.max_pool2d(x, 2))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def rescale_depthwise_(model: DepthwiseCNN, spread: float, seed: int = 0) -> torch.Tensor:
    """Scales depthwise channel c by s_c and the pointwise input channel c by 1/s_c, in
    place (the function is unchanged: ReLU(s x) = s ReLU(x) for s > 0); returns s."""
    gen = torch.Generator().manual_seed(seed)
    c = model.dw.out_channels
    s = torch.exp((torch.rand(c, generator=gen) * 2 - 1) * torch.log(torch.tensor(spread)))
    with torch.no_grad():
        model.dw.weight.mul_(s.view(-1, 1, 1, 1))
        model.dw.bias.mul_(s)
        model.pw.weight.div_(s.view(1, -1, 1, 1))
    return s


def fit(m: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float,
        seed: int = 0) -> None:
    """``steps`` Adam steps with cosine decay on random batches of ``BATCH``, in place."""
    opt = torch.optim.Adam(m.parameters(), lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    picks = torch.randint(0, len(y), (steps, BATCH), generator=torch.Generator().manual_seed(seed))
    m.train()
    for idx in picks:
        opt.zero_grad()
        F.cross_entropy(m(x[idx]), y[idx]).backward()
        opt.step()
        sched.step()
    m.eval()


def top1(fn, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        pred = torch.cat([fn(x[i:i + BATCH]).argmax(1) for i in range(0, len(x), BATCH)])
    return 100.0 * float((pred == y).double().mean())


def run(steps: int, spread: float) -> list[tuple[str, float, float]]:
    """The rows (label, top-1 %, seconds) of the module docstring's table."""
    torch.manual_seed(0)
    data = load_digits_split()
    # the traced graphs have a static batch: test on the first 320 of the 360 (5 batches)
    xte, yte = data.x_test[:320], data.y_test[:320]
    model = DepthwiseCNN()
    fit(model, data.x_train, data.y_train, steps=600, lr=1e-2, seed=1)
    before = top1(model, xte, yte)
    with torch.no_grad():
        ref = model(xte)
    rescale_depthwise_(model, spread)
    with torch.no_grad():
        torch.testing.assert_close(model(xte), ref, rtol=1e-4, atol=1e-4)  # same function
    g = slimfx.trace(model, (xte[:BATCH],))
    calib = list(data.x_train[:8 * BATCH].split(BATCH))
    per_tensor = QConfig.preset("x86", per_channel_weights=False)
    rows = [("fp32", before, 0.0)]
    start = time.time()
    tuned = DepthwiseCNN()
    tuned.load_state_dict(model.state_dict())
    fit(tuned, data.x_train, data.y_train, steps, 1e-3)
    rows.append((f"fp32 fine-tuned {steps} steps", top1(tuned, xte, yte), time.time() - start))
    for label, qc in (("PTQ int8, per-channel weights", None),
                      ("PTQ int8, per-tensor", per_tensor)):
        start = time.time()
        q = slimfx.to_torch(slimfx.quantize(g, calib, qconfig=qc), trainable=False)
        rows.append((label, top1(q, xte, yte), time.time() - start))
    start = time.time()  # cross-layer equalization undoes the spread, then per tensor
    eq = Pipeline("fold-bn,equalize-cross-layer,dce")(g)
    q = slimfx.to_torch(slimfx.quantize(eq, calib, qconfig=per_tensor), trainable=False)
    rows.append(("PTQ int8, per-tensor, after CLE", top1(q, xte, yte), time.time() - start))
    start = time.time()
    m = slimfx.to_torch(slimfx.prepare_qat(g, calib, per_tensor))
    fit(m, data.x_train, data.y_train, steps, 1e-3)
    q = slimfx.to_torch(slimfx.convert(m), trainable=False)
    rows.append((f"QAT int8, per-tensor ({steps} steps)", top1(q, xte, yte), time.time() - start))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--spread", type=float, default=100.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = run(args.steps, args.spread)
    width = max(len(r[0]) for r in rows) + 2
    print(f"\ndepthwise CNN on digits, channel spread {args.spread:g}: top-1 on 320 test images")
    print(f"{'':<{width}}top-1 %  vs fp32  seconds")
    for label, acc, secs in rows:
        print(f"{label:<{width}}{acc:6.2f}  {acc - rows[0][1]:+6.2f}  {secs:7.0f}")


if __name__ == "__main__":
    main()
