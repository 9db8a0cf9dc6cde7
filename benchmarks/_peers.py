"""Peer runtimes for ``benchmarks/latency.py``: torch eager, torch.ao int8 and onnxruntime.

Every builder returns a zero-argument callable that runs the model once on fixed inputs,
so the timing loop in :func:`time_call` treats all runtimes alike. A builder that cannot
do a model raises; the caller turns the exception into an ``n/a (reason)`` cell.

- torch.ao int8: FX graph-mode post-training static quantization (``prepare_fx`` /
  ``convert_fx``, x86 qconfig mapping) for CNNs; ``quantize_dynamic`` (Linear, LSTM)
  for sequence models.
- onnxruntime: the model exported with the TorchScript-based exporter
  (``torch.onnx.export(..., dynamo=False)``, opset 17), falling back to the dynamo
  exporter; int8 by ``quantize_static`` in QDQ format (per-channel weights) for CNNs
  and ``quantize_dynamic`` for sequence models.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

Inputs = tuple[torch.Tensor, ...]
Call = Callable[[], object]


def time_call(fn: Call, *, repeat: int, number: int, warmup: int,
              clock: Callable[[], float] = time.perf_counter) -> float:
    """Median latency of one call of ``fn`` in milliseconds.

    Args:
        fn: runs the model once.
        repeat: measurements; the median is taken over these.
        number: calls per measurement (the measurement is their mean).
        warmup: untimed calls first.
        clock: wall time by default; ``time.process_time`` measures the CPU time this
            process spent (with one thread: the latency an idle core would give, on a host
            whose cores other processes share).
    """
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        t0 = clock()
        for _ in range(number):
            fn()
        samples.append((clock() - t0) * 1e3 / number)
    return statistics.median(samples)


# ------------------------------------------------------------------------------ torch
def torch_fp32(model: nn.Module, inputs: Inputs) -> Call:
    """Eager PyTorch in fp32 under ``inference_mode``."""
    def run() -> object:
        with torch.inference_mode():
            return model(*inputs)
    return run


def torch_ao_int8(model: nn.Module, inputs: Inputs, kind: str,
                  calib: Sequence[Inputs]) -> Call:
    """torch.ao int8: FX static PTQ (x86 qconfig) for ``kind == "cnn"``, dynamic otherwise.

    Args:
        model: the float model (not modified).
        inputs: the inputs timed.
        kind: ``"cnn"`` or ``"seq"``.
        calib: calibration batches for the static path.
    """
    import copy

    from torch.ao.quantization import get_default_qconfig_mapping, quantize_dynamic
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    model = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "cnn":
            prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), inputs)
            with torch.inference_mode():
                for batch in calib:
                    prepared(*batch)
            qmodel = convert_fx(prepared)
        else:
            qmodel = quantize_dynamic(model, {nn.Linear, nn.LSTM}, dtype=torch.qint8)
    return torch_fp32(qmodel, inputs)


# ------------------------------------------------------------------------- onnxruntime
def export_onnx(model: nn.Module, inputs: Inputs, path: Path,
                input_names: Sequence[str]) -> str:
    """Exports ``model`` to ``path``; returns which exporter worked.

    The TorchScript exporter (``dynamo=False``) is tried first: it is quicker and its
    graphs quantize cleanly with onnxruntime; the dynamo exporter is the fallback.

    Raises:
        RuntimeError: both exporters failed (the message holds both reasons).
    """
    errors = []
    for dynamo in (False, True):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, inputs, str(path), input_names=list(input_names),
                                  output_names=["output"], opset_version=17, dynamo=dynamo)
            return "dynamo" if dynamo else "torchscript"
        except Exception as e:  # exporter failures come in many types
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}")
    raise RuntimeError("ONNX export failed (" + "; ".join(errors) + ")")


def ort_session(path: Path, threads: int):  # noqa: ANN201 - onnxruntime.InferenceSession
    """An onnxruntime CPU session with ``threads`` intra-op threads and full graph opts."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_call(session, inputs: Inputs) -> Call:  # noqa: ANN001
    """Runs ``session`` on ``inputs`` (fed in input order)."""
    feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs, strict=True)}
    return lambda: session.run(None, feed)


def ort_quantize(fp32_path: Path, int8_path: Path, kind: str,
                 calib: Sequence[Inputs]) -> None:
    """int8 onnxruntime model: QDQ static (per-channel weights) for CNNs, dynamic otherwise.

    Args:
        fp32_path: the float ONNX model.
        int8_path: where to write the quantized one.
        kind: ``"cnn"`` or ``"seq"``.
        calib: calibration batches for the static path.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = int8_path.with_suffix(".pre.onnx")
    try:
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
    except Exception as e:  # pre-processing is an optimisation; quantize the raw model
        log.info("onnxruntime quant_pre_process failed (%s); quantizing the raw model", e)
        pre = fp32_path
    if kind != "cnn":
        quantize_dynamic(str(pre), str(int8_path), weight_type=QuantType.QInt8)
        return
    names = [i.name for i in onnx.load(str(pre), load_external_data=False).graph.input]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calib)

        def get_next(self) -> dict | None:
            batch = next(self._it, None)
            return None if batch is None else {n: t.numpy() for n, t in zip(names, batch, strict=True)}

    quantize_static(str(pre), str(int8_path), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True)


def limit_threads(threads: int) -> None:
    """Pins torch and (through the environment) TVM/OpenMP to ``threads`` threads."""
    torch.set_num_threads(threads)
    for var in ("OMP_NUM_THREADS", "TVM_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
