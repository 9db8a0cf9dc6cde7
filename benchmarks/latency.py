"""Latency of slimfx-compiled models next to PyTorch and onnxruntime, in one table.

Run: ``python benchmarks/latency.py`` (``make bench-latency``), or e.g.
``python benchmarks/latency.py --models resnet18,lstm --trials 64 --out results.json``;
``--quick`` shrinks inputs and repeats for a smoke run; ``--profile`` prints the per-kernel
time table of every slimfx row after the latency table (``Compiled.profile``).

Models (batch 1): ResNet-18 and MobileNetV2 at 224x224, a BERT-base-like encoder
(``transformers.BertModel`` with the bert-base config: hidden 768, 12 layers, 12 heads,
intermediate 3072, random init, sequence 128; ``--small`` keeps 2 layers) and a 2-layer
LSTM (64 features, hidden 256, 50 steps). Every runtime gets the same number of threads
(``--threads``, default 2): ``torch.set_num_threads``, onnxruntime
``intra_op_num_threads`` and the TVM target's ``num-cores`` (plus ``TVM_NUM_THREADS``).

Rows per model:

- ``torch fp32``: eager PyTorch, the baseline of the ``vs torch`` column.
- ``torch.ao int8``: FX static PTQ (x86 qconfig) for CNNs, ``quantize_dynamic`` for BERT/LSTM.
- ``ort fp32`` / ``ort int8``: onnxruntime on the exported model; int8 is QDQ static
  quantization (per-channel weights) for CNNs, dynamic quantization for BERT/LSTM.
  ``ort int8`` is the baseline of the ``vs ort-int8`` column.
- ``slimfx fp32`` / ``slimfx int8``: ``slimfx.trace`` (+ ``slimfx.quantize`` with
  ``ptq-int8`` for CNNs, ``dynamic-int8`` otherwise) then ``slimfx.compile(target="x86")``,
  untuned and tuned with ``--trials`` meta-schedule trials (a fresh tuning database per
  run unless ``--tuning-db`` is given, so the tuning time is real).

Latencies are medians in milliseconds; ratios are speedups (baseline ms / row ms, > 1 is
faster). ``prep s`` is trace/quantize/export/calibration time, ``build s`` the compile
time (including tuning on tuned rows). ``cos`` is the cosine similarity of the row's output
with torch fp32 (a sanity check, not an accuracy measure: calibration data is random).
A cell that fails prints ``n/a (reason)``; the rest of the table still runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# On a shared machine a spinning OpenMP worker that loses its core turns each parallel
# region of torch into a scheduler time slice (an LSTM step took 15 ms instead of 20 us):
# waiting threads sleep instead. Must be set before torch is imported; the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _peers  # noqa: E402

Inputs = tuple[torch.Tensor, ...]
log = logging.getLogger("latency")

RUNTIMES = ("torch fp32", "torch.ao int8", "ort fp32", "ort int8",
            "slimfx fp32", "slimfx fp32 tuned", "slimfx int8", "slimfx int8 tuned")


# ------------------------------------------------------------------------------ models
@dataclass(frozen=True)
class Workload:
    """A model ready to benchmark.

    Attributes:
        name: the name ``--models`` takes.
        desc: one line for the table header (sizes).
        kind: ``"cnn"`` (static int8) or ``"seq"`` (dynamic int8).
        model: the float model in eval mode.
        inputs: the timed inputs (batch 1).
        input_names: names for the ONNX export.
        calib: calibration batches (random data of the input's distribution).
    """

    name: str
    desc: str
    kind: str
    model: nn.Module
    inputs: Inputs
    input_names: tuple[str, ...]
    calib: tuple[Inputs, ...]


class _BertLastHidden(nn.Module):
    """``BertModel`` returning only ``last_hidden_state`` (one tensor out, for every runtime)."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids).last_hidden_state


def _cnn(name: str, size: int, calib_n: int) -> Workload:
    from slimfx.models import get_model

    model, (x,) = get_model(name, input_size=size, randomize_bn=True)
    gen = torch.Generator().manual_seed(1)
    calib = tuple((torch.randn(x.shape, generator=gen),) for _ in range(calib_n))
    pretty = {"resnet18": "ResNet-18", "mobilenet_v2": "MobileNetV2"}[name]
    return Workload(name, f"{pretty} 1x3x{size}x{size}", "cnn", model, (x,), ("x",), calib)


def _bert(seq: int, layers: int, calib_n: int) -> Workload:
    from transformers import BertConfig, BertModel

    config = BertConfig(hidden_size=768, num_hidden_layers=layers, num_attention_heads=12,
                        intermediate_size=3072, max_position_embeddings=512)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = _BertLastHidden(BertModel(config, add_pooling_layer=False)).eval()
    gen = torch.Generator().manual_seed(1)

    def ids() -> Inputs:
        return (torch.randint(0, config.vocab_size, (1, seq), generator=gen),)

    return Workload("bert", f"BERT-base-like encoder, {layers} layers, seq {seq}", "seq",
                    model, ids(), ("input_ids",), tuple(ids() for _ in range(calib_n)))


def _lstm(seq: int, hidden: int, calib_n: int) -> Workload:
    from slimfx.models import get_model

    model, (x,) = get_model("lstm", input_size=seq, num_features=64, hidden_size=hidden,
                            num_layers=2, num_classes=10)
    gen = torch.Generator().manual_seed(1)
    calib = tuple((torch.randn(x.shape, generator=gen),) for _ in range(calib_n))
    return Workload("lstm", f"2-layer LSTM, 64->{hidden}, seq {seq}", "seq", model, (x,),
                    ("x",), calib)


MODELS = ("resnet18", "mobilenet_v2", "bert", "lstm")


def build_workload(name: str, quick: bool, small: bool) -> Workload:
    """The workload called ``name`` at full size, or shrunk for ``--quick``/``--small``."""
    calib_n = 2 if quick else 8
    if name in ("resnet18", "mobilenet_v2"):
        return _cnn(name, 64 if quick else 224, calib_n)
    if name == "bert":
        return _bert(32 if quick else 128, 2 if quick or small else 12, calib_n)
    if name == "lstm":
        return _lstm(12 if quick else 50, 64 if quick else 256, calib_n)
    raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


# ------------------------------------------------------------------------------- cells
@dataclass
class Cell:
    """One (model, runtime) measurement; ``error`` set when it could not be measured."""

    model: str
    runtime: str
    ms: float | None = None
    prep_s: float | None = None
    build_s: float | None = None
    cos: float | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    profile: dict[str, Any] | None = None  # --profile: Compiled.profile figures and table


@dataclass(frozen=True)
class Timing:
    """How to time: ``repeat`` measurements of about ``target_ms`` each after ``warmup`` calls."""

    repeat: int
    warmup: int
    target_ms: float

    def number_for(self, fn: Callable[[], object]) -> int:
        """Calls per measurement so that one measurement lasts about ``target_ms``."""
        t0 = time.perf_counter()
        fn()
        one = (time.perf_counter() - t0) * 1e3
        return max(1, min(100, round(self.target_ms / max(one, 1e-3))))


def _first_tensor(out: Any) -> torch.Tensor:
    """The first output of any runtime as a float torch tensor."""
    while isinstance(out, (list, tuple)):
        out = out[0]
    if isinstance(out, torch.Tensor):
        return out.detach().float()
    if hasattr(out, "numpy"):
        out = out.numpy()
    return torch.as_tensor(out).float()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def _reason(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    text = " ".join(lines[:2]) if lines and lines[0].endswith(":") else (lines or [""])[0]
    return f"{type(e).__name__}: {text}"[:200]


class Bench:
    """Runs every requested cell of one workload, catching failures per cell."""

    def __init__(self, args: argparse.Namespace, timing: Timing, workdir: Path) -> None:
        self.args = args
        self.timing = timing
        self.workdir = workdir
        self.reference: torch.Tensor | None = None

    def _measure(self, cell: Cell, fn: Callable[[], object]) -> None:
        out = fn()
        if self.reference is not None:
            cell.cos = _cosine(_first_tensor(out), self.reference)
        number = self.timing.number_for(fn)
        cell.ms = _peers.time_call(fn, repeat=self.timing.repeat, number=number,
                                   warmup=self.timing.warmup, clock=self.clock)

    @property
    def clock(self) -> Callable[[], float]:
        return time.process_time if self.args.cpu_time else time.perf_counter

    # --- peers
    def torch_fp32(self, w: Workload, cell: Cell) -> None:
        fn = _peers.torch_fp32(w.model, w.inputs)
        self.reference = _first_tensor(fn())
        self._measure(cell, fn)

    def torch_ao_int8(self, w: Workload, cell: Cell) -> None:
        t0 = time.perf_counter()
        fn = _peers.torch_ao_int8(w.model, w.inputs, w.kind, w.calib)
        cell.prep_s = time.perf_counter() - t0
        self._measure(cell, fn)

    def _onnx_fp32(self, w: Workload) -> Path:
        path = self.workdir / f"{w.name}.fp32.onnx"
        if not path.exists():
            exporter = _peers.export_onnx(w.model, w.inputs, path, w.input_names)
            log.info("%s: exported to ONNX with the %s exporter", w.name, exporter)
        return path

    def ort_fp32(self, w: Workload, cell: Cell) -> None:
        t0 = time.perf_counter()
        session = _peers.ort_session(self._onnx_fp32(w), self.args.threads)
        cell.prep_s = time.perf_counter() - t0
        self._measure(cell, _peers.ort_call(session, w.inputs))

    def ort_int8(self, w: Workload, cell: Cell) -> None:
        t0 = time.perf_counter()
        int8 = self.workdir / f"{w.name}.int8.onnx"
        _peers.ort_quantize(self._onnx_fp32(w), int8, w.kind, w.calib)
        session = _peers.ort_session(int8, self.args.threads)
        cell.prep_s = time.perf_counter() - t0
        cell.notes.append("QDQ static" if w.kind == "cnn" else "dynamic")
        self._measure(cell, _peers.ort_call(session, w.inputs))

    # --- slimfx
    def slimfx(self, w: Workload, cell: Cell, graphs: dict[str, Any]) -> None:
        import slimfx

        int8 = "int8" in cell.runtime
        tuned = cell.runtime.endswith("tuned")
        if tuned and self.args.trials <= 0:
            raise _Skip("--trials 0")
        key = "int8" if int8 else "fp32"
        failed = graphs.get(f"{key}:error")
        if failed:
            raise _Skip(failed)
        if key not in graphs:
            t0 = time.perf_counter()
            try:
                if "fp32" not in graphs:
                    graphs["fp32"] = slimfx.trace(w.model, w.inputs)
                g = graphs["fp32"]
                if int8:
                    pipeline = "ptq-int8" if w.kind == "cnn" else "dynamic-int8"
                    data = list(w.calib) if w.kind == "cnn" else None
                    g = slimfx.quantize(g, data, pipeline=pipeline)
                graphs[key] = g
            except Exception as e:
                graphs[f"{key}:error"] = f"{'quantize' if int8 else 'trace'}: {_reason(e)}"
                raise _Skip(graphs[f"{key}:error"]) from e
            graphs[f"{key}:prep_s"] = time.perf_counter() - t0
        cell.prep_s = graphs[f"{key}:prep_s"]  # the tuned row reuses the untuned row's graph
        from slimfx.backends.tvm.targets import resolve_target

        target = dict(resolve_target("x86"), **{"num-cores": self.args.threads})
        # untuned rows get an empty database: the default one may hold earlier tunings
        db = str(self.workdir / "untuned-empty-db")
        if tuned:
            db = self.args.tuning_db or str(self.workdir / f"tuning-{w.name}-{key}")
            cell.notes.append(f"{self.args.trials} trials")
        t0 = time.perf_counter()
        try:
            # meta-schedule logs its task tables to stdout: keep stdout for the table
            with contextlib.redirect_stdout(sys.stderr):
                compiled = slimfx.compile(graphs[key], target=target,
                                          tune=self.args.trials if tuned else None,
                                          tuning_db=db, progress=False)
        except Exception as e:
            if not tuned:  # the tuned build would fail the same way: say so once
                graphs[f"{key}:error"] = f"compile: {_reason(e)}"
            raise
        cell.build_s = time.perf_counter() - t0
        out = compiled(*w.inputs)
        if self.reference is not None:
            cell.cos = _cosine(_first_tensor(out), self.reference)
        number = self.timing.number_for(lambda: compiled(*w.inputs))
        if self.args.cpu_time:  # the same clock as the other rows
            cell.ms = _peers.time_call(lambda: compiled(*w.inputs), repeat=self.timing.repeat,
                                       number=number, warmup=self.timing.warmup,
                                       clock=self.clock)
        else:
            res = compiled.benchmark(*w.inputs, repeat=self.timing.repeat, number=number,
                                     warmup=self.timing.warmup)
            cell.ms = res.median_ms
        if self.args.profile:
            report = compiled.profile(*w.inputs, repeat=self.timing.repeat,
                                      warmup=self.timing.warmup)
            cell.profile = {
                "total_ms": report.total_ms, "median_ms": report.median_ms,
                "kernel_ms": report.kernel_ms, "builtin_ms": report.builtin_ms,
                "other_ms": report.other_ms, "instrumented_ms": report.instrumented_ms,
                "rows": [asdict(r) for r in report.rows],
                "table": report.format(top=self.args.profile_top)}


class _Skip(Exception):
    """A cell not run because an earlier step of the same model failed or was not asked."""


def run_workload(w: Workload, runtimes: Sequence[str], bench: Bench,
                 bar: Any) -> list[Cell]:
    """Measures ``runtimes`` on ``w``; a failure fills that cell's ``error`` and moves on."""
    graphs: dict[str, Any] = {}
    bench.reference = None
    cells = []
    for runtime in runtimes:
        bar.set_description(f"{w.name}: {runtime}")
        cell = Cell(w.name, runtime)
        try:
            if runtime.startswith("slimfx"):
                bench.slimfx(w, cell, graphs)
            else:
                getattr(bench, runtime.replace(" ", "_").replace(".", "_"))(w, cell)
        except _Skip as e:
            cell.error = str(e)
        except Exception as e:  # one cell failing must not stop the table
            cell.error = _reason(e)
            log.debug("%s / %s failed:\n%s", w.name, runtime, traceback.format_exc())
        cells.append(cell)
        bar.update(1)
    return cells


# ------------------------------------------------------------------------------- table
def _ratio(base: Cell | None, cell: Cell) -> str:
    if base is None or base.ms is None or cell.ms is None:
        return "-"
    r = base.ms / cell.ms
    return f"{r:.3g}x" if r < 1 else f"{r:.2f}x"


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_table(workloads: Sequence[Workload], cells: Sequence[Cell]) -> str:
    """The results as one fixed-width table, a block of rows per model."""
    head = ("model", "runtime", "median ms", "vs torch", "vs ort-int8", "prep s", "build s",
            "cos", "note")
    rows: list[tuple[str, ...]] = []
    for w in workloads:
        mine = [c for c in cells if c.model == w.name]
        by = {c.runtime: c for c in mine}
        for c in mine:
            note = c.error and f"n/a ({c.error})" or ", ".join(c.notes)
            rows.append((w.name, c.runtime, _num(c.ms, ".3f"), _ratio(by.get("torch fp32"), c),
                         _ratio(by.get("ort int8"), c), _num(c.prep_s, ".1f"),
                         _num(c.build_s, ".1f"), _num(c.cos, ".4f"), note))
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head) - 1)]
    lines = []
    for k, r in enumerate((head, *rows)):
        if k == 1 or (k > 1 and r[0] != rows[k - 2][0]):
            lines.append("-" * (sum(widths) + 2 * len(widths) + 4))
        lines.append("  ".join(v.rjust(wd) if 2 <= i <= 7 else v.ljust(wd)
                               for i, (v, wd) in enumerate(zip(r[:-1], widths, strict=True))) + "  " + r[-1])
    return "\n".join(lines)


def environment(args: argparse.Namespace) -> dict[str, Any]:
    """Versions and settings printed above the table and stored in the JSON."""
    import onnxruntime

    env = {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
           "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
           "trials": args.trials, "quick": args.quick}
    try:
        import tvm

        env["tvm"] = tvm.__version__
    except ImportError:
        env["tvm"] = "missing"
    try:
        with open("/proc/cpuinfo") as f:
            env["cpu"] = next(ln.split(":", 1)[1].strip() for ln in f if "model name" in ln)
    except (OSError, StopIteration):
        pass
    return env


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--runtimes", default=",".join(RUNTIMES),
                   help="comma-separated subset of the rows (default: all)")
    p.add_argument("--trials", type=int, default=64,
                   help="meta-schedule trial budget of the tuned slimfx rows (0: skip them)")
    p.add_argument("--tuning-db", default=None,
                   help="reuse this tuning database (default: a fresh one per run)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true",
                   help="small inputs, 2-layer BERT and few repeats: a smoke run")
    p.add_argument("--small", action="store_true", help="2-layer BERT at sequence 128")
    p.add_argument("--repeat", type=int, default=None, help="measurements per cell")
    p.add_argument("--out", default=None, help="write the results to this JSON file")
    p.add_argument("--profile", action="store_true",
                   help="print the per-kernel time table of each slimfx row after the table")
    p.add_argument("--profile-top", type=int, default=15,
                   help="kernels listed per profile table (the rest summed in one line)")
    p.add_argument("--cpu-time", action="store_true",
                   help="time each call by this process's CPU time, not wall time (needs "
                        "--threads 1): stable on a host whose cores other processes share")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log failures with tracebacks")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    for r in args.runtimes:
        if r not in RUNTIMES:
            p.error(f"unknown runtime {r!r}; choose from {', '.join(RUNTIMES)}")
    for m in args.models:
        if m not in MODELS:
            p.error(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
    if args.cpu_time and args.threads != 1:
        p.error("--cpu-time needs --threads 1 (idle pool threads spin: CPU time is not latency)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    _peers.limit_threads(args.threads)
    from tqdm import tqdm

    timing = Timing(repeat=args.repeat or (5 if args.quick else 20),
                    warmup=2 if args.quick else 5, target_ms=20 if args.quick else 100)
    runtimes = [r for r in RUNTIMES if r in args.runtimes]
    cells: list[Cell] = []
    workloads: list[Workload] = []
    with tempfile.TemporaryDirectory(prefix="slimfx-latency-") as tmp:
        bench = Bench(args, timing, Path(tmp))
        with tqdm(total=len(args.models) * len(runtimes), disable=args.quiet,
                  file=sys.stderr) as bar:
            for name in args.models:
                bar.set_description(f"{name}: build")
                w = build_workload(name, args.quick, args.small)
                workloads.append(w)
                cells += run_workload(w, runtimes, bench, bar)
                if args.out:  # after each model, so a long run stopped early keeps its data
                    _write_json(Path(args.out), args, workloads, cells)
    env = environment(args)
    clock = "CPU time" if args.cpu_time else "wall time"
    print(f"batch 1, {args.threads} threads, {clock}, medians of {timing.repeat}; "
          f"tuned rows: {args.trials} trials; {env['cpu']}")
    print(f"torch {env['torch']}, onnxruntime {env['onnxruntime']}, tvm {env['tvm']}")
    for w in workloads:
        print(f"  {w.name}: {w.desc}")
    print(format_table(workloads, cells))
    print("vs torch / vs ort-int8: speedup over that row (baseline ms / row ms, > 1 is faster); "
          "prep s: trace/quantize/export; build s: slimfx.compile, tuning included; "
          "cos: output cosine similarity with torch fp32")
    for c in cells:
        if c.profile is not None:
            print(f"\nprofile: {c.model} / {c.runtime} (Compiled.profile, per call)")
            print(c.profile["table"])
    return 0


def _write_json(path: Path, args: argparse.Namespace, workloads: Sequence[Workload],
                cells: Sequence[Cell]) -> None:
    path.write_text(json.dumps(
        {"environment": environment(args), "models": {w.name: w.desc for w in workloads},
         "cells": [asdict(c) for c in cells], "table": format_table(workloads, cells)},
        indent=2))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
