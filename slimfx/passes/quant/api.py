"""``slimfx.quantize``: one call from a float graph to a quantized one, as one pipeline.

Static int8 is a pipeline of visible passes run under one :class:`PassContext` (its
instruments see every step: timing, print-IR-after, verify-after-each, dump-to-dir)::

    ptq-int8      remove-identity,fold-bn,fuse-activation,dce,insert-observers
    calibrate     (on ctx.data: the user's data)      [bias-correction, when asked]
    convert-int8  quantize-dequantize,hoist-passthrough,qdq-to-int8
    dce

(:data:`~slimfx.passes.quant.pipelines.PTQ_FULL`). Any other pipeline string is completed
the same way, and the passes added are visible in ``ctx.history`` like the others:

- each ``insert-observers`` not followed by ``calibrate`` gets ``calibrate`` (and
  ``bias-correction`` when ``bias_correction=True``) right after it;
- a ``quantize-dequantize`` without ``hoist-passthrough`` gets it right after; observers
  never converted get ``quantize-dequantize,hoist-passthrough``, then ``qdq-to-int8``
  unless ``form="qdq"``, then ``dce``; so ``"fold-bn,insert-observers"`` gives the same
  integer program as ``ptq-int8`` with that preparation;
- a pipeline that converts with no ``insert-observers`` before it, or whose observers
  select no node, raises :class:`QuantizationError`: ``quantize`` never returns a float
  graph while claiming to have quantized it.

Pipelines without observers (``dynamic-int8``, ``fp16``, ``bf16``, ...) simply run.
A failing pass raises the error of its own kind (:class:`QuantizationError`,
:class:`CalibrationError`, ...) with the pipeline position and the passes run before it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

from slimfx.errors import PassError, QuantizationError, SlimfxError
from slimfx.ir.core import Graph
from slimfx.passes.base import Pass
from slimfx.passes.context import PassContext
from slimfx.passes.eliminate_dead_code import EliminateDeadCode
from slimfx.passes.instruments import Instrument, PassRecord
from slimfx.passes.pipeline import Pipeline
from slimfx.passes.quant import pipelines as _pipelines  # noqa: F401  (registers pipelines)
from slimfx.passes.quant.adaround import AdaRound
from slimfx.passes.quant.arguments import (
    check_data,
    check_num_batches,
    expect_graph,
    with_input_fn,
)
from slimfx.passes.quant.bias_correction import BiasCorrection
from slimfx.passes.quant.calibrate import Calibrate
from slimfx.passes.quant.convert_int8 import QdqToInt8
from slimfx.passes.quant.hoist_passthrough import HoistPassthrough
from slimfx.passes.quant.insert_fake_quant import InsertFakeQuant
from slimfx.passes.quant.insert_observers import InsertObservers
from slimfx.passes.quant.pipelines import PTQ_PREPARE
from slimfx.passes.quant.qconfig import INTEGER_OPS, QConfig
from slimfx.passes.quant.quantize_dequantize import QuantizeDequantize
from slimfx.passes.quant.smooth_quant import SmoothQuant

if TYPE_CHECKING:
    from slimfx.passes.quant.mixed_precision import Budget

__all__ = ["quantize", "prepare_ptq", "FORMS", "static_steps", "run_steps"]

_PREPARE_FLOAT = "remove-identity,fold-bn,fuse-activation,dce"

FORMS = ("int8", "qdq")
"""The values of ``quantize(..., form=...)``."""


def prepare_ptq(graph: Graph, qconfig: QConfig | None = None, *,
                ctx: PassContext | None = None) -> Graph:
    """A copy of ``graph`` with BN folded, activations fused and observers inserted (the
    ``ptq-int8`` pipeline, with ``qconfig`` in ``ctx.qconfig``).

    Raises:
        QuantizationError: the qconfig selects no node of the graph.
    """
    ctx = ctx if ctx is not None else PassContext()
    setattr(ctx, "qconfig", qconfig if qconfig is not None else QConfig.preset())  # noqa: B010
    return run_steps(list(Pipeline(PTQ_PREPARE).passes), graph.clone(), ctx)


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
             bias_correction: bool = False, ctx: PassContext | None = None,
             input_fn: Callable[[Any], Any] | None = None,
             budget: Budget | None = None) -> Graph:
    """Quantizes a copy of ``graph`` (see the module docstring for any pipeline string).

    Args:
        graph: a float graph from :func:`slimfx.trace` (left untouched).
        data: calibration batches (tensors, tuples of tensors, dicts keyed by input
            name, or ``(inputs, labels)``; a ``DataLoader`` as it is, batches of any size
            where the graph's dims are symbolic); required by pipelines that insert
            observers (``ptq-int8``).
        pipeline: ``ptq-int8`` (prepare -> calibrate -> convert), ``dynamic-int8``,
            ``fp16``, ``bf16``, or any pipeline string.
        qconfig: what to quantize and how (``ptq-int8`` only; default: the x86 preset).
        num_batches: calibrate on at most this many batches.
        form: for static int8, ``int8`` for the exact integer program, ``qdq`` for the
            simulated form.
        progress: show a progress bar during calibration.
        bias_correction: after calibration, subtract from each conv/linear bias the
            mean output shift its int8 weight causes on ``data`` (``bias-correction``).
        ctx: the :class:`PassContext` every pass runs under (instruments: timing,
            print-IR-after, verify-after-each, dump-to-dir); a fresh one by default.
            ``quantize`` sets its ``data`` (and ``qconfig``) attributes.
        input_fn: ``batch -> inputs``, applied to each batch of ``data`` first (see
            :mod:`~slimfx.passes.quant.arguments`).
        budget: a :class:`~slimfx.passes.quant.mixed_precision.Budget` (``ptq-int8``
            only; with ``precisions=("w4a8", "int8")`` layers start at 4-bit weights; for
            QAT, ``slimfx.prepare_qat(graph, data, budget=...)``): the layers whose int8 form
            costs too much stay float; see
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
    if data is not None:
        data = with_input_fn(check_data(data, "slimfx.quantize"), input_fn, "slimfx.quantize")
    if budget is not None:
        return _with_budget(g, data, pipeline, qconfig, budget, num_batches=num_batches,
                            form=form, progress=progress, bias_correction=bias_correction)
    if pipeline == "ptq-int8" and data is None:
        raise QuantizationError("pipeline 'ptq-int8' needs calibration data: "
                                "slimfx.quantize(graph, data=batches)")
    if ctx is not None and not isinstance(ctx, PassContext):
        raise QuantizationError(f"slimfx.quantize: ctx must be a slimfx PassContext, got "
                                f"{type(ctx).__name__}")
    if pipeline == "ptq-int8" and qconfig is None:
        qconfig = QConfig.preset()
    return _run_pipeline(g, data, _as_pipeline(pipeline), num_batches=num_batches, form=form,
                         progress=progress, bias_correction=bias_correction, qconfig=qconfig,
                         ctx=ctx)


def _with_budget(g: Graph, data: Iterable[Any] | None, pipeline: Any, qconfig: QConfig | None,
                 budget: Budget, *, num_batches: int | None, form: str, progress: bool,
                 bias_correction: bool) -> Graph:
    from slimfx.passes.quant.mixed_precision import mixed_precision

    if str(pipeline) in ("qat-int8", "qat-int8-bn"):
        fold = ", fold_bn='batch-stats'" if str(pipeline) == "qat-int8-bn" else ""
        raise QuantizationError(
            f"slimfx.quantize: pipeline {str(pipeline)!r} prepares quantization-aware "
            "training, which quantize does not run; for a budget with QAT use "
            f"slimfx.prepare_qat(graph, data{fold}, budget=...) (the layers' precisions are "
            "chosen by the post-training search, then prepared for training), train "
            "slimfx.to_torch(prepared) and slimfx.convert(module)")
    if pipeline != "ptq-int8" or form != "int8" or bias_correction:
        raise QuantizationError("slimfx.quantize: budget= works with pipeline 'ptq-int8', "
                                "form='int8' and no bias_correction for now (4-bit weights: "
                                "Budget(precisions=('w4a8', 'int8')); QAT: "
                                "slimfx.prepare_qat(..., budget=)); got "
                                f"pipeline={str(pipeline)!r}, form={form!r}, "
                                f"bias_correction={bias_correction}")
    return mixed_precision(g, data, budget, qconfig=qconfig, num_batches=num_batches,
                           progress=progress).graph


class _CheckSelected(Instrument):
    """Fails right after an ``insert-observers`` that selected nothing."""

    def after_pass(self, record: PassRecord, ctx: PassContext) -> None:
        g = record.result.graph
        if isinstance(record.pass_, InsertObservers) and not g.find("observer"):
            what = "the qconfig" if getattr(ctx, "qconfig", None) else f"pass {str(record.pass_)!r}"
            raise _nothing_selected(g, what)


def _origin(p: Pass, origin: tuple[str, ...]) -> str:
    return origin[0] if origin else p.name


def static_steps(pipe: Pipeline, *, form: str = "int8", bias_correction: bool = False,
                 num_batches: int | None = None, progress: bool = False) -> list[Pass]:
    """The passes :func:`quantize` runs for ``pipe`` (see the module docstring).

    Raises:
        QuantizationError: a conversion pass with no ``insert-observers`` before it.
    """
    walked = list(pipe._walk(()))
    calib = [Calibrate(num_batches=num_batches or 0, progress=progress)]
    if bias_correction:
        calib.append(BiasCorrection())
    out: list[Pass] = []
    observed = False
    for i, (p, origin) in enumerate(walked):
        if isinstance(p, QuantizeDequantize | HoistPassthrough | QdqToInt8) and not observed:
            name = _origin(p, origin)
            raise QuantizationError(
                f"pipeline {str(pipe)!r}: pass {name!r} (#{i}) has nothing to convert, no "
                "observer comes before it, so the result would stay float; add "
                f"'insert-observers' before {name!r} (or use pipeline 'ptq-int8')")
        out.append(p)
        if isinstance(p, InsertObservers):
            observed = True
            nxt = walked[i + 1][0] if i + 1 < len(walked) else None
            if not isinstance(nxt, Calibrate):
                out += calib
        elif isinstance(p, QuantizeDequantize):
            nxt = walked[i + 1][0] if i + 1 < len(walked) else None
            if not isinstance(nxt, HoistPassthrough):
                out.append(HoistPassthrough())
    if not observed:
        return out
    last_obs = max(i for i, p in enumerate(out) if isinstance(p, InsertObservers))
    tail = out[last_obs:]
    if not any(isinstance(p, QuantizeDequantize) for p in tail):
        out += [QuantizeDequantize(), HoistPassthrough()]
    if form == "int8" and not any(isinstance(p, QdqToInt8) for p in tail):
        out.append(QdqToInt8())
    out.append(EliminateDeadCode())
    return out


def run_steps(passes: list[Pass], graph: Graph, ctx: PassContext) -> Graph:
    """Runs ``passes`` as one pipeline on ``graph`` (in place) under ``ctx``; a pass that
    fails raises the error of its own kind, with the PassError's context in the message."""
    ctx.instruments.append(_CheckSelected())
    try:
        return Pipeline(passes).run(graph, ctx).graph
    except PassError as e:
        cause = e.__cause__
        if isinstance(cause, SlimfxError) and not isinstance(cause, PassError):
            raise type(cause)(str(e)) from cause
        raise
    finally:
        ctx.instruments = [i for i in ctx.instruments if not isinstance(i, _CheckSelected)]


def _run_pipeline(graph: Graph, data: Iterable[Any] | None, pipe: Pipeline, *,
                  num_batches: int | None, form: str, progress: bool,
                  bias_correction: bool, qconfig: QConfig | None,
                  ctx: PassContext | None) -> Graph:
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
    if form == "qdq" and any(isinstance(p, QdqToInt8) for p in passes):
        raise QuantizationError(f"slimfx.quantize: form='qdq' asks for the simulated form but "
                                f"pipeline {str(pipe)!r} runs 'convert-int8'; drop one of them")
    steps = static_steps(pipe, form=form, bias_correction=bias_correction,
                         num_batches=num_batches, progress=progress)
    ctx = ctx if ctx is not None else PassContext()
    if data is not None:
        data = check_data(data, "slimfx.quantize")
        if sum(isinstance(p, Calibrate | BiasCorrection | SmoothQuant | AdaRound)
               for p in steps) > 1:
            data = list(data)  # read more than once
        setattr(ctx, "data", data)  # noqa: B010  (what calibrate and bias-correction read)
    if qconfig is not None:
        setattr(ctx, "qconfig", qconfig)  # noqa: B010  (what insert-observers reads)
    return run_steps(steps, graph.clone(), ctx)
