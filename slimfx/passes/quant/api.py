"""``slimfx.quantize``: one call from a float graph to a quantized one."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from slimfx.errors import QuantizationError
from slimfx.ir.core import Graph
from slimfx.passes.pipeline import Pipeline
from slimfx.passes.quant import pipelines as _pipelines  # noqa: F401  (registers pipelines)
from slimfx.passes.quant.bias_correction import bias_correction as correct_biases
from slimfx.passes.quant.calibrate import calibrate
from slimfx.passes.quant.convert_int8 import convert_int8
from slimfx.passes.quant.insert_observers import insert_observers
from slimfx.passes.quant.qconfig import QConfig
from slimfx.passes.quant.quantize_dequantize import to_qdq

__all__ = ["quantize", "prepare_ptq"]

_PREPARE_FLOAT = "remove-identity,fold-bn,fuse-activation,dce"


def prepare_ptq(graph: Graph, qconfig: QConfig | None = None) -> Graph:
    """A copy of ``graph`` with BN folded, activations fused and observers inserted."""
    g = Pipeline(_PREPARE_FLOAT)(graph)
    insert_observers(g, qconfig)
    return g


def quantize(graph: Graph, data: Iterable[Any] | None = None, pipeline: str = "ptq-int8",
             qconfig: QConfig | None = None, *, num_batches: int | None = None,
             form: Literal["int8", "qdq"] = "int8", progress: bool = False,
             bias_correction: bool = False) -> Graph:
    """Quantizes a copy of ``graph``.

    Args:
        graph: a float graph (left untouched).
        data: calibration batches (tensors or tuples of tensors); required by ``ptq-int8``.
        pipeline: ``ptq-int8`` (prepare -> calibrate -> convert), ``dynamic-int8``,
            ``fp16``, ``bf16``, or any pipeline string.
        qconfig: what to quantize and how (``ptq-int8`` only; default: the x86 preset).
        num_batches: calibrate on at most this many batches.
        form: ``int8`` for the exact integer program, ``qdq`` for the simulated form.
        progress: show a progress bar during calibration.
        bias_correction: after calibration, subtract from each conv/linear bias the
            mean output shift its int8 weight causes on ``data`` (``bias-correction``).

    Raises:
        QuantizationError: ``ptq-int8`` without data, or a qconfig with another pipeline.
        CalibrationError: unusable calibration data.
    """
    if pipeline == "ptq-int8":
        if data is None:
            raise QuantizationError("pipeline 'ptq-int8' needs calibration data: "
                                    "slimfx.quantize(graph, data=batches)")
        g = prepare_ptq(graph, qconfig)
        data = list(data) if bias_correction else data  # read twice
        calibrate(g, data, num_batches=num_batches, progress=progress)
        if bias_correction:
            correct_biases(g, data, num_batches=num_batches)
        to_qdq(g)
        if form == "int8":
            convert_int8(g)
        return Pipeline("dce")(g, inplace=True)
    if qconfig is not None:
        raise QuantizationError(f"qconfig applies to pipeline 'ptq-int8' only, not {pipeline!r}; "
                                "pass the options in the pipeline string instead")
    return Pipeline(pipeline)(graph)
