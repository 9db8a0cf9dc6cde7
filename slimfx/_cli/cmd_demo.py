"""``slimfx demo`` (``make demo``): the main slimfx story on a real, trained model.

A program (``python -m slimfx.demo`` too) that prints its steps as it goes:

1. train (or load from the cache) a small CNN on sklearn's 8x8 digits;
2. trace it into slimfx IR;
3. run ``fold-bn,fuse-activation,cleanup``, print the IR, check the float graph
   against PyTorch eager (max abs error, accuracy);
4. calibrate and quantize to the exact int8 program (``ptq-int8``): accuracy vs
   fp32 and a check that the outputs lie on the int8 output grid;
5. compile the int8 graph for x86 with TVM: bit-exact against the torch
   reference, latency against fp32 eager, save -> load -> run.

A step whose slimfx module is not built yet prints "not available yet (...)"
and the demo goes on; any other error fails the demo loudly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from slimfx.models.digits import (
    DigitsData,
    TrainConfig,
    accuracy,
    batches,
    predict,
    pretrained_digits_cnn,
)

__all__ = ["DemoResult", "main", "run_demo"]

BATCH = 32
PIPELINE = "fold-bn,fuse-activation,cleanup"


@dataclass
class DemoResult:
    """What the demo measured; None where a step was not available."""

    fp32_accuracy: float
    cached: bool
    graph_max_abs_err: float | None = None
    graph_accuracy: float | None = None
    int8_accuracy: float | None = None
    int8_on_grid: bool | None = None
    compiled_bit_exact: bool | None = None
    compiled_latency_ms: float | None = None
    eager_latency_ms: float | None = None
    reloaded_bit_exact: bool | None = None
    skipped: dict[str, str] | None = None


class _Unavailable(Exception):
    """A slimfx module the demo needs is not built yet."""


def _api(name: str) -> Any:
    """``slimfx.<name>``, or :class:`_Unavailable` when its module does not exist (yet).

    Only a missing slimfx module or a missing attribute of the lazy ``slimfx``
    namespace counts as unavailable; errors inside an existing module propagate.
    """
    slimfx = importlib.import_module("slimfx")
    try:
        return getattr(slimfx, name)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("slimfx"):
            raise _Unavailable(f"module {e.name} is missing") from e
        if e.name and e.name.split(".")[0] == "tvm":
            raise _Unavailable("apache-tvm is not installed: pip install -e '.[tvm]'") from e
        raise
    except AttributeError as e:
        module = getattr(slimfx, "_LAZY", {}).get(name, "slimfx")
        if f"module '{module}' has no attribute" in str(e) or "module 'slimfx'" in str(e):
            raise _Unavailable(f"{module}.{name} is not defined") from e
        raise


def _section(title: str, start: float) -> None:
    elapsed = time.perf_counter() - start
    print(f"\n== {title} " + "=" * max(0, 64 - len(title)) + f" [{elapsed:5.1f} s]")


def _skip(result: DemoResult, step: str, why: _Unavailable) -> None:
    print(f"{step}: not available yet ({why})")
    result.skipped = {**(result.skipped or {}), step: str(why)}


def _first(y: Any) -> torch.Tensor:
    """The first output of a model as a torch tensor (compiled models may return arrays)."""
    if isinstance(y, tuple | list):
        y = y[0]
    if isinstance(y, torch.Tensor):
        return y
    return torch.as_tensor(y.numpy() if hasattr(y, "numpy") else y)


def _latency_ms(fn: Callable[[], Any], repeat: int = 30, budget_s: float = 1.0) -> float:
    """Median wall time of ``fn`` over up to ``repeat`` runs within about ``budget_s``."""
    fn()  # warm up
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeat and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def _on_int8_grid(graph: Any, y: torch.Tensor) -> tuple[bool, str]:
    """Whether ``y`` is exactly ``scale * (q - zp)`` for int8 ``q`` of the output's dequantize."""
    prod = graph.outputs[0].producer
    if prod is None or prod.op.name != "dequantize":
        return False, f"output comes from {prod.op.name if prod else 'an input'}, not dequantize"
    scale, zp = prod.attrs["scale"][0], prod.attrs["zero_point"][0]
    q = torch.round(y / scale) + zp
    rebuilt = (q - zp).float() * torch.tensor(scale, dtype=torch.float32)
    in_range = bool(((q >= prod.attrs["qmin"]) & (q <= prod.attrs["qmax"])).all())
    ok = in_range and torch.equal(rebuilt, y)
    return ok, f"scale={scale:.6g}, zero_point={zp}, q in [{int(q.min())}, {int(q.max())}]"


def run_demo(retrain: bool = False, compile_target: str | None = "x86",
             out_dir: Path | None = None, config: TrainConfig | None = None,
             threads: int | None = 1) -> DemoResult:
    """Runs every step of the demo, printing as it goes, and returns the figures.

    Args:
        retrain: train the CNN even if cached weights exist.
        compile_target: TVM target of step 5; None skips compilation.
        out_dir: where the compiled artifact is saved (a temporary folder by default).
        config: how the CNN is trained (tests use a cheaper recipe); the default recipe
            when None.
        threads: CPU threads for PyTorch during the demo (restored after) and for TVM
            (``TVM_NUM_THREADS``, unless already set or TVM already started); None keeps
            the defaults. One thread is the fast setting for this tiny model, keeps a
            busy machine responsive, and makes the latency comparison like for like.
    """
    if threads is None:
        return _run(retrain, compile_target, out_dir, config)
    os.environ.setdefault("TVM_NUM_THREADS", str(threads))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(retrain, compile_target, out_dir, config)
    finally:
        torch.set_num_threads(before)


def _run(retrain: bool, compile_target: str | None, out_dir: Path | None,
         config: TrainConfig | None) -> DemoResult:
    t0 = time.perf_counter()
    _section("1. model: SmallCNN on sklearn digits (8x8, 10 classes)", t0)
    t = time.perf_counter()
    model, data = pretrained_digits_cnn(config or TrainConfig(), retrain=retrain)
    cached = bool(getattr(model, "cached", False))
    fp32 = accuracy(model, data.x_test, data.y_test, BATCH)
    print(f"{'loaded from cache' if cached else 'trained'} in {time.perf_counter() - t:.1f} s; "
          f"{sum(p.numel() for p in model.parameters()):,} parameters; "
          f"test accuracy {fp32:.2%} on {len(data.y_test)} images")
    result = DemoResult(fp32_accuracy=fp32, cached=cached)
    example = data.x_test[:BATCH]

    _section("2. trace: g = slimfx.trace(model, (x,))", t0)
    try:
        trace = _api("trace")
    except _Unavailable as e:
        _skip(result, "trace", e)
        return result
    g = trace(model, (example,))
    print(f"graph @{g.name}: {len(g.nodes)} nodes, input {g.inputs[0].type}")

    _section(f"3. passes: slimfx.Pipeline({PIPELINE!r})", t0)
    try:
        pipeline = _api("Pipeline")(PIPELINE)
        to_torch = _api("to_torch")
    except _Unavailable as e:
        _skip(result, "passes", e)
        return result
    print(pipeline.describe())
    g = pipeline(g)
    print(g)
    ref = to_torch(g)
    with torch.no_grad():
        err = max(float((ref(b) - model(b)).abs().max()) for b, _ in batches(data.x_test, BATCH))
    result.graph_max_abs_err = err
    result.graph_accuracy = accuracy(ref, data.x_test, data.y_test, BATCH)
    print(f"to_torch(g) vs eager: max abs err {err:.2e}; accuracy {result.graph_accuracy:.2%}")
    if err > 1e-4:
        raise AssertionError(f"the float graph disagrees with PyTorch eager: max abs err {err}")

    _section("4. int8: slimfx.quantize(g, calibration, 'ptq-int8')", t0)
    try:
        quantize = _api("quantize")
    except _Unavailable as e:
        _skip(result, "int8", e)
        return result
    calib = [b for b, _ in batches(data.x_train[:8 * BATCH], BATCH)]
    g8 = quantize(g, calib, "ptq-int8")
    _int8_report(g8, data, model, result, to_torch)

    _section(f"5. compile: slimfx.compile(g_int8, {compile_target!r}, batch_buckets=({BATCH},))"
             " with TVM", t0)
    if compile_target is None:
        print("compile: skipped (--no-compile)")
        return result
    try:
        compile_, load = _api("compile"), _api("load")
    except _Unavailable as e:
        _skip(result, "compile", e)
        return result
    _compile_report(g8, model, data, result, to_torch, compile_, load, compile_target, out_dir)
    return result


def _int8_report(g8: Any, data: DigitsData, model: torch.nn.Module, result: DemoResult,
                 to_torch: Callable[..., Any]) -> None:
    ops: dict[str, int] = {}
    for n in g8.nodes:
        ops[n.op.name] = ops.get(n.op.name, 0) + 1
    print("int8 graph ops: " + ", ".join(f"{k} x{v}" for k, v in sorted(ops.items())))
    ref8 = to_torch(g8)
    result.int8_accuracy = accuracy(ref8, data.x_test, data.y_test, BATCH)
    print(f"accuracy: fp32 {result.fp32_accuracy:.2%} -> int8 {result.int8_accuracy:.2%} "
          f"({100 * (result.int8_accuracy - result.fp32_accuracy):+.2f} points)")
    with torch.no_grad():
        y = _first(ref8(data.x_test[:BATCH]))
        again = _first(ref8(data.x_test[:BATCH]))
    ok, detail = _on_int8_grid(g8, y)
    result.int8_on_grid = ok and torch.equal(y, again)
    print(f"exact integer check: outputs on the int8 output grid and deterministic: "
          f"{'yes' if result.int8_on_grid else 'NO'} ({detail})")
    if not result.int8_on_grid:
        raise AssertionError(f"the int8 program is not exact: {detail}")


def _compile_report(g8: Any, model: torch.nn.Module, data: DigitsData, result: DemoResult,
                    to_torch: Callable[..., Any], compile_: Callable[..., Any],
                    load: Callable[..., Any], target: str, out_dir: Path | None) -> None:
    t = time.perf_counter()
    # the graph's batch is dynamic: one build serves every size (each sample through the
    # batch-1 program); batch_buckets adds the batch-32 program the latency is taken at
    buckets = (BATCH,) if g8.symbols else ()
    compiled = compile_(g8, target=target, batch_buckets=buckets)
    print(f"compiled for {target} in {time.perf_counter() - t:.1f} s")
    ref8 = to_torch(g8)
    want = predict(ref8, data.x_test, BATCH)
    got = predict(lambda b: _first(compiled(b)), data.x_test, BATCH)
    result.compiled_bit_exact = torch.equal(want, got)
    diff = float((want - got).abs().max())
    print(f"bit-exact vs the torch reference on {len(want)} images: "
          f"{'yes' if result.compiled_bit_exact else f'NO (max abs diff {diff:.3g})'}")
    x = data.x_test[:BATCH]
    with torch.no_grad():
        result.eager_latency_ms = _latency_ms(lambda: model(x))
    result.compiled_latency_ms = _latency_ms(lambda: compiled(x))
    tvm_threads = os.environ.get("TVM_NUM_THREADS", "default")
    print(f"latency, batch {BATCH} (threads: torch {torch.get_num_threads()}, TVM {tvm_threads}): "
          f"torch fp32 eager {result.eager_latency_ms:.3f} ms, "
          f"TVM int8 {result.compiled_latency_ms:.3f} ms "
          f"(speed-up {result.eager_latency_ms / result.compiled_latency_ms:.2f}x)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(out_dir or tmp) / "digits_int8.slim"
        compiled.save(str(path))
        reloaded = load(str(path))
        result.reloaded_bit_exact = torch.equal(_first(reloaded(x)), _first(compiled(x)))
        print(f"save -> load -> run ({path.name}): "
              f"{'same outputs' if result.reloaded_bit_exact else 'OUTPUTS DIFFER'}")
    if not (result.compiled_bit_exact and result.reloaded_bit_exact):
        raise AssertionError("the compiled int8 model disagrees with the torch reference")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m slimfx.demo`` and ``slimfx demo``."""
    parser = argparse.ArgumentParser(prog="slimfx demo", description=__doc__.splitlines()[0])
    parser.add_argument("--retrain", action="store_true", help="ignore cached weights")
    parser.add_argument("--target", default="x86", help="TVM target of step 5 (default x86)")
    parser.add_argument("--no-compile", action="store_true", help="stop after int8")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch and TVM (default 1; 0 = library defaults)")
    args = parser.parse_args(argv)
    t = time.perf_counter()
    result = run_demo(args.retrain, None if args.no_compile else args.target,
                      threads=args.threads or None)
    done = "all steps ran" if not result.skipped else (
        "skipped: " + ", ".join(result.skipped))
    print(f"\ndemo finished in {time.perf_counter() - t:.1f} s ({done})")
    return 0
