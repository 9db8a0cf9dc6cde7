"""``slimfx bench MODEL.slim [--compare torch,ort --model MODEL]``: a latency table.

The compiled model is timed on ``--input`` files (random inputs matching its signature
otherwise, every symbol at its smallest size: batch 1 for a dynamic batch), ``--repeat`` measurements of ``--number`` calls each (``--number 0``: enough
calls for about 20 ms per measurement). With ``--compare``, the same inputs run through
torch (the original model given with ``--model``: a ``.pt2`` program's module, a factory's
model, or the torch backend of a slimfx graph) and onnxruntime (that module exported to
ONNX). A comparison that cannot run (not installed, no ``--model``, export failed) is a
row that says why; it does not fail the command.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimfx._cli.common import non_negative_int, positive_int, show_progress
from slimfx.errors import RuntimeInputError, SlimfxError

__all__ = ["add_parsers", "run_bench", "Row", "format_rows", "COMPARE"]

COMPARE = ("torch", "ort")
_NAMES = {"torch": "torch", "ort": "onnxruntime"}
_TARGET_MS = 20.0


@dataclass
class Row:
    """One line of the table: a runtime and its per-call times (ms), or why it is missing."""

    name: str
    times: list[float] | None = None
    reason: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from slimfx._cli.models import MODEL_HELP

    b = sub.add_parser("bench", parents=[common], help="latency of a compiled model",
                       description="Times a compiled model (.slim) and, with --compare, the "
                       "original model in torch and onnxruntime on the same inputs.")
    b.add_argument("compiled", metavar="MODEL.slim", help="a compiled model (slimfx compile -o)")
    b.add_argument("--input", "-i", nargs="+", metavar="X",
                   help="input files (default: random inputs matching the signature)")
    b.add_argument("--compare", type=_compare_list, default=(), metavar="torch,ort",
                   help="also time the original model in torch and/or onnxruntime")
    b.add_argument("--model", metavar="MODEL", help=f"the original model for --compare: "
                   f"{MODEL_HELP}")
    b.add_argument("--repeat", type=positive_int, default=20, metavar="N",
                   help="measurements per runtime (default 20; the median is reported)")
    b.add_argument("--number", type=non_negative_int, default=0, metavar="N",
                   help="calls per measurement (default 0: about 20 ms worth)")
    b.add_argument("--warmup", type=non_negative_int, default=3, metavar="N",
                   help="untimed calls first (default 3)")
    b.add_argument("--threads", type=positive_int, metavar="N",
                   help="CPU threads for torch and onnxruntime (default: their own)")
    b.add_argument("--sha256", metavar="DIGEST", help="verify MODEL.slim against this digest")
    b.set_defaults(run=run_bench)


def _compare_list(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in COMPARE]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown runtime {unknown[0]!r}; choose from "
                                         f"{', '.join(COMPARE)}")
    return names


def _time(fn: Callable[[], Any], repeat: int, number: int, warmup: int, desc: str,
          progress: bool) -> list[float]:
    """Milliseconds per call of ``fn``, one value per measurement."""
    from tqdm.auto import tqdm

    for _ in range(max(warmup, 0)):
        fn()
    if number <= 0:
        t0 = time.perf_counter()
        fn()
        once = (time.perf_counter() - t0) * 1e3
        number = max(1, min(1000, int(_TARGET_MS / max(once, 1e-3))))
    times = []
    for _ in tqdm(range(repeat), desc=desc, disable=not progress, leave=False):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) * 1e3 / number)
    return times


def format_rows(rows: Sequence[Row]) -> str:
    """The latency table: median, mean, min, std (ms) and time relative to the first row."""
    base = rows[0].median if rows else None
    head = ("runtime", "median ms", "mean ms", "min ms", "std ms", "time / slimfx")
    table: list[tuple[str, ...]] = [head]
    for r in rows:
        if r.times:
            med = statistics.median(r.times)
            table.append((r.name, f"{med:.4g}", f"{statistics.fmean(r.times):.4g}",
                          f"{min(r.times):.4g}", f"{statistics.pstdev(r.times):.3g}",
                          f"{med / base:.2f}x" if base else ""))
    widths = [max(len(r.name) for r in rows)] + [
        max(len(row[i]) for row in table) for i in range(1, len(head))]
    widths[0] = max(widths[0], len(head[0]))
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in table]
    lines.insert(1, "-" * len(lines[0]))
    lines += [f"{r.name.ljust(widths[0])}  n/a: {r.reason}" for r in rows if not r.times]
    return "\n".join(lines)


def _reason(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:200]


def _torch_callable(model: Any, args: Sequence[Any]) -> tuple[Any, Callable[[], Any]]:
    """The torch module of ``--model`` and a call of it on ``args``."""
    import torch

    module = model.module
    if module is None:  # a slimfx graph: its torch backend
        from slimfx.backends.torch import to_torch

        module = to_torch(model.graph)

    def call() -> Any:
        with torch.inference_mode():
            return module(*args)

    return module, call


def _ort_callable(module: Any, args: Sequence[Any], names: Sequence[str], threads: int | None,
                  workdir: Path) -> Callable[[], Any]:
    import warnings

    import onnxruntime as ort
    import torch

    path = workdir / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(args), str(path), input_names=list(names),
                          opset_version=17, dynamo=False)
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args, strict=False)}
    return lambda: session.run(None, feed)


def _inputs(compiled: Any, paths: list[str] | None) -> list[Any]:
    """Arrays from ``paths``, or random ones: floats N(0, 1), integers and bools all ones."""
    import torch

    from slimfx._cli.arrays import match_inputs, read_arrays

    names = [s.name for s in compiled.inputs]
    if paths:
        return match_inputs(read_arrays(paths, "input", RuntimeInputError), names, paths,
                            "input", RuntimeInputError)
    from slimfx.ir.symbolic import eval_dim

    gen = torch.Generator().manual_seed(0)
    # symbols (a dynamic batch N) at their smallest size: batch 1
    sizes = {k: max(r.min, 1) for k, r in getattr(compiled, "symbols", {}).items()}
    out = []
    for s in compiled.inputs:
        dtype = s.type.torch_dtype
        shape = [d if type(d) is int else eval_dim(d, sizes) for d in s.type.shape]
        if dtype.is_floating_point:
            t = torch.randn(shape, generator=gen).to(dtype)
        else:  # token ids and masks: ones are valid for both
            t = torch.ones(shape, dtype=dtype)
        out.append(t.numpy())
    return out


def run_bench(args: argparse.Namespace) -> int:
    from slimfx._cli.cmd_deploy import load_compiled
    from slimfx.backends.tvm.targets import target_kind

    compiled = load_compiled(args.compiled, args.sha256)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    arrays = _inputs(compiled, args.input)
    compiled(*arrays)  # checks the inputs (and the host) before anything is timed
    progress = show_progress(args)
    label = f"slimfx {target_kind(compiled.target)}"
    rows = [Row(label, _time(lambda: compiled(*arrays), args.repeat, args.number, args.warmup,
                             label, progress))]
    if args.compare:
        rows += _peer_rows(args, arrays, [s.name for s in compiled.inputs], progress)
    print(format_rows(rows))
    return 0


def _peer_rows(args: argparse.Namespace, arrays: Sequence[Any], names: Sequence[str],
               progress: bool) -> list[Row]:
    """The torch / onnxruntime rows of ``--compare`` (a reason instead of times when missing)."""
    import numpy as np
    import torch

    from slimfx._cli.models import load_model

    if not args.model:
        return [Row(_NAMES[n], reason="give the original model with --model")
                for n in args.compare]
    model = load_model(args.model)  # a bad --model is an error, not a row
    targs = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
    try:
        module, call = _torch_callable(model, targs)
    except SlimfxError as e:  # e.g. a graph the torch backend cannot run
        return [Row(_NAMES[n], reason=str(e).splitlines()[0]) for n in args.compare]
    rows = []
    if "torch" in args.compare:
        try:
            rows.append(Row("torch", _time(call, args.repeat, args.number, args.warmup, "torch",
                                           progress)))
        except Exception as e:  # noqa: BLE001 - a failing peer is a row, not an error
            rows.append(Row("torch", reason=_reason(e)))
    if "ort" in args.compare:
        rows.append(_ort_row(module, targs, names, args, progress))
    return rows


def _ort_row(module: Any, targs: Sequence[Any], names: Sequence[str], args: argparse.Namespace,
             progress: bool) -> Row:
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return Row("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
    try:
        with tempfile.TemporaryDirectory(prefix="slimfx-bench-") as d:
            call = _ort_callable(module, targs, names, args.threads, Path(d))
            times = _time(call, args.repeat, args.number, args.warmup, "onnxruntime", progress)
    except Exception as e:  # noqa: BLE001 - export or session failures become the row
        return Row("onnxruntime", reason=_reason(e))
    return Row("onnxruntime", times)
