"""``slimfx.quantize``: one call from a float graph to a quantized one.

Static int8 runs in three steps: passes that *prepare* the graph (ending with
``insert-observers``), calibration on the user's data (not a pass: it needs the data),
then the passes that *convert* it (``quantize-dequantize``, ``convert-int8``). The named
pipeline ``ptq-int8`` is the prepare half; ``quantize`` adds the rest. Any other
pipeline string is run the same way, pass by pass:

- right after the pass that leaves uncalibrated observers in the graph
  (``insert-observers``), ``quantize`` calibrates on ``data`` (and corrects the biases
  when ``bias_correction=True``), then runs the remaining passes;
- observers still in the graph at the end are converted: ``quantize-dequantize``, then
  ``convert-int8`` unless ``form="qdq"``; so ``"fold-bn,insert-observers"`` gives the
  same integer program as ``ptq-int8`` with that preparation;
- a pipeline that runs ``quantize-dequantize`` or ``convert-int8`` with no observer before
  it, or that inserts observers which select no node, raises :class:`QuantizationError`:
  ``quantize`` never returns a float graph while claiming to have quantized it.

Pipelines without observers (``dynamic-int8``, ``fp16``, ``bf16``, ...) simply run.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

from slimfx.errors import QuantizationError
from slimfx.ir.core import Graph
from slimfx.passes.base import Pass
from slimfx.passes.context import PassContext
from slimfx.passes.pipeline import Pipeline
from slimfx.passes.quant import pipelines as _pipelines  # noqa: F401  (registers pipelines)
from slimfx.passes.quant.adaround import AdaRound
from slimfx.passes.quant.arguments import check_data, check_num_batches, expect_graph
from slimfx.passes.quant.bias_correction import BiasCorrection
from slimfx.passes.quant.bias_correction import bias_correction as correct_biases
from slimfx.passes.quant.calibrate import calibrate
from slimfx.passes.quant.convert_int8 import ConvertInt8, convert_int8
from slimfx.passes.quant.insert_fake_quant import InsertFakeQuant
from slimfx.passes.quant.insert_observers import InsertObservers, insert_observers
from slimfx.passes.quant.qconfig import INTEGER_OPS, QConfig
from slimfx.passes.quant.quantize_dequantize import QuantizeDequantize, to_qdq
from slimfx.passes.quant.smooth_quant import SmoothQuant

if TYPE_CHECKING:
    from slimfx.passes.quant.mixed_precision import Budget

__all__ = ["quantize", "prepare_ptq", "FORMS"]

_PREPARE_FLOAT = "remove-identity,fold-bn,fuse-activation,dce"

FORMS = ("int8", "qdq")
"""The values of ``quantize(..., form=...)``."""


def prepare_ptq(graph: Graph, qconfig: QConfig | None = None) -> Graph:
    """A copy of ``graph`` with BN folded, activations fused and observers inserted.

    Raises:
        QuantizationError: the qconfig selects no node of the graph.
    """
    g = Pipeline(_PREPARE_FLOAT)(graph)
    if insert_observers(g, qconfig) == 0:
        raise _nothing_selected(g, "the qconfig")
    return g


def _nothing_selected(graph: Graph, what: str) -> QuantizationError:
    ops = sorted({n.op.name for n in graph.nodes})
    return QuantizationError(
        f"static int8 of graph @{graph.name}: {what} selects no node to quantize, so the "
        f"result would be the float graph. The graph's ops are {', '.join(ops) or 'none'}; "
        f"those with an int8 form are {', '.join(sorted(INTEGER_OPS))}. Check the qconfig's "
        "exclusions, or use pipeline 'dynamic-int8' or 'fp16'")


def _as_pipeline(pipeline: Any) -> Pipeline:
    if isinstance(pipeline, Pipeline):
        return pipeline
    if isinstance(pipeline, str | Pass):
        return Pipeline(pipeline)
    raise QuantizationError(f"slimfx.quantize: pipeline must be a pipeline string such as "
                            f"'ptq-int8' (or a Pipeline), got {type(pipeline).__name__}")


def _check_arguments(graph: Any, data: Any, pipeline: Any, qconfig: Any, form: Any,
                     num_batches: Any) -> Graph:
    g = expect_graph(graph, "slimfx.quantize", QuantizationError)
    if isinstance(data, str):
        raise QuantizationError(
            f"slimfx.quantize: data is the string {data!r}; data is the calibration batches "
            f"and the pipeline comes third: slimfx.quantize(graph, batches, {data!r}) or "
            f"slimfx.quantize(graph, pipeline={data!r})")
    if form not in FORMS:
        raise QuantizationError(f"slimfx.quantize: form={form!r} is not a form; choose 'int8' "
                                "(the exact integer program) or 'qdq' (simulated "
                                "quantize/dequantize pairs around float ops)")
    if qconfig is not None and not isinstance(qconfig, QConfig):
        raise QuantizationError(f"slimfx.quantize: qconfig must be a QConfig (e.g. "
                                f"QConfig.preset('x86')), got {type(qconfig).__name__}")
    if qconfig is not None and pipeline != "ptq-int8":
        raise QuantizationError(f"qconfig applies to pipeline 'ptq-int8' only, not {pipeline!r}; "
                                "pass the options in the pipeline string instead")
    check_num_batches(num_batches, "slimfx.quantize")
    return g


def quantize(graph: Graph, data: Iterable[Any] | None = None, pipeline: str = "ptq-int8",
             qconfig: QConfig | None = None, *, num_batches: int | None = None,
             form: Literal["int8", "qdq"] = "int8", progress: bool = False,
             bias_correction: bool = False, budget: Budget | None = None) -> Graph:
    """Quantizes a copy of ``graph`` (see the module docstring for any pipeline string).

    Args:
        graph: a float graph from :func:`slimfx.trace` (left untouched).
        data: calibration batches (tensors, tuples of tensors, or dicts keyed by input
            name); required by pipelines that insert observers (``ptq-int8``).
        pipeline: ``ptq-int8`` (prepare -> calibrate -> convert), ``dynamic-int8``,
            ``fp16``, ``bf16``, or any pipeline string.
        qconfig: what to quantize and how (``ptq-int8`` only; default: the x86 preset).
        num_batches: calibrate on at most this many batches.
        form: for static int8, ``int8`` for the exact integer program, ``qdq`` for the
            simulated form.
        progress: show a progress bar during calibration.
        bias_correction: after calibration, subtract from each conv/linear bias the
            mean output shift its int8 weight causes on ``data`` (``bias-correction``).
        budget: a :class:`~slimfx.passes.quant.mixed_precision.Budget` (``ptq-int8``
            only): the layers whose int8 form costs too much stay float; see
            :func:`~slimfx.passes.quant.mixed_precision.mixed_precision` for the search and
            its report.

    Raises:
        QuantizationError: ``graph`` is not a slimfx graph (a torch module: trace it
            first), an unknown ``form``, a pipeline that inserts observers without data,
            converts without observers or selects nothing, ``form``/``qconfig``/
            ``bias_correction`` with a pipeline they do not apply to.
        CalibrationError: unusable calibration data.
    """
    g = _check_arguments(graph, data, pipeline, qconfig, form, num_batches)
    if budget is not None:
        return _with_budget(g, data, pipeline, qconfig, budget, num_batches=num_batches,
                            form=form, progress=progress, bias_correction=bias_correction)
    if pipeline == "ptq-int8":
        if data is None:
            raise QuantizationError("pipeline 'ptq-int8' needs calibration data: "
                                    "slimfx.quantize(graph, data=batches)")
        data = check_data(data, "slimfx.quantize")
        g = prepare_ptq(g, qconfig)
        data = list(data) if bias_correction else data  # read twice
        _calibrate(g, data, num_batches, progress, bias_correction)
        return _finish(g, form, converted=False)
    return _run_pipeline(g, data, _as_pipeline(pipeline), num_batches=num_batches, form=form,
                         progress=progress, bias_correction=bias_correction)


def _with_budget(g: Graph, data: Iterable[Any] | None, pipeline: Any, qconfig: QConfig | None,
                 budget: Budget, *, num_batches: int | None, form: str, progress: bool,
                 bias_correction: bool) -> Graph:
    from slimfx.passes.quant.mixed_precision import mixed_precision

    if pipeline != "ptq-int8" or form != "int8" or bias_correction:
        raise QuantizationError("slimfx.quantize: budget= works with pipeline 'ptq-int8', "
                                "form='int8' and no bias_correction for now; got "
                                f"pipeline={str(pipeline)!r}, form={form!r}, "
                                f"bias_correction={bias_correction}")
    return mixed_precision(g, data, budget, qconfig=qconfig, num_batches=num_batches,
                           progress=progress).graph


def _calibrate(g: Graph, data: Iterable[Any], num_batches: int | None, progress: bool,
               bias_correction: bool) -> None:
    calibrate(g, data, num_batches=num_batches, progress=progress)
    if bias_correction:
        correct_biases(g, data, num_batches=num_batches)


def _finish(g: Graph, form: str, *, converted: bool) -> Graph:
    """Converts the observers left in ``g`` to QDQ, then int8 (unless ``form="qdq"``)."""
    if g.find("observer"):
        to_qdq(g)
    if form == "int8" and not converted:
        convert_int8(g)
    return Pipeline("dce")(g, inplace=True)


def _uncalibrated(g: Graph) -> bool:
    return any(not n.inputs[0].is_const and n.attrs["min_val"] is None
               for n in g.find("observer"))


def _run_pipeline(graph: Graph, data: Iterable[Any] | None, pipe: Pipeline, *,
                  num_batches: int | None, form: str, progress: bool,
                  bias_correction: bool) -> Graph:
    passes = pipe.passes
    if any(isinstance(p, InsertFakeQuant) for p in passes):
        raise QuantizationError(f"pipeline {str(pipe)!r} prepares quantization-aware training "
                                "('insert-fake-quant'), it does not quantize: use "
                                "slimfx.prepare_qat(graph, data), train slimfx.to_torch(...) "
                                "and slimfx.convert(module)")
    static = any(isinstance(p, InsertObservers) for p in passes)
    if static and data is None:
        raise QuantizationError(f"pipeline {str(pipe)!r} inserts observers ('insert-observers') "
                                "and needs calibration data: slimfx.quantize(graph, batches, "
                                "pipeline)")
    if not static and (form != "int8" or bias_correction):
        what = f"form={form!r}" if form != "int8" else "bias_correction=True"
        raise QuantizationError(f"slimfx.quantize: {what} applies to static int8 pipelines "
                                f"(with 'insert-observers'), and {str(pipe)!r} has none; use "
                                "'ptq-int8' or add insert-observers")
    if form == "qdq" and any(isinstance(p, ConvertInt8) for p in passes):
        raise QuantizationError(f"slimfx.quantize: form='qdq' asks for the simulated form but "
                                f"pipeline {str(pipe)!r} runs 'convert-int8'; drop one of them")
    ctx = PassContext()
    if data is not None:
        data = check_data(data, "slimfx.quantize")
        if bias_correction or any(isinstance(p, BiasCorrection | SmoothQuant | AdaRound) for p in passes):
            data = list(data)  # read more than once
            setattr(ctx, "data", data)  # noqa: B010  (bias-correction, smooth-quant, adaround)
    g = graph.clone()
    calibrated = converted = False
    for i, p in enumerate(passes):
        if isinstance(p, QuantizeDequantize | ConvertInt8) and not (
                g.find("observer") or g.find("quantize")):
            raise QuantizationError(
                f"pipeline {str(pipe)!r}: pass {p.name!r} (#{i}) has nothing to convert, no "
                "observer comes before it, so the result would stay float; add "
                f"'insert-observers' before {p.name!r} (or use pipeline 'ptq-int8')")
        g = Pipeline([p]).run(g, ctx).graph
        if isinstance(p, InsertObservers) and not g.find("observer"):
            raise _nothing_selected(g, f"pass {str(p)!r}")
        if _uncalibrated(g):
            if data is None:
                raise QuantizationError(f"pipeline {str(pipe)!r}: pass {str(p)!r} inserted "
                                        "observers; pass calibration data to slimfx.quantize")
            _calibrate(g, data, num_batches, progress, bias_correction)
            calibrated, converted = True, False
        elif isinstance(p, ConvertInt8):
            converted = True
    if not (static or calibrated):
        return g
    return _finish(g, form, converted=converted)
