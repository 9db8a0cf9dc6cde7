"""Quantization-aware training: ``prepare_qat`` -> train ``to_torch`` -> ``convert``.

::

    gq = slimfx.prepare_qat(g, calib)          # fold BN, fuse, observe, calibrate, fake-quant
    # or slimfx.prepare_qat(g, calib, budget=slimfx.Budget(max_drop=...)): layers chosen
    # float / int8 / w4a8 by the post-training mixed-precision search first
    m = slimfx.to_torch(gq)                    # an nn.Module whose parameters train
    m.train(); ...your loop, any optimizer...; m.eval()
    g8 = slimfx.convert(m)                     # the exact integer program that was trained
    c = slimfx.compile(g8, "x86")

:func:`prepare_qat` runs the ``qat-int8`` pipeline under one :class:`PassContext` (pass
``ctx=`` for instruments): the passes of ``ptq-int8``
(``remove-identity,fold-bn,fuse-activation,dce,insert-observers``), ``calibrate`` on
``data``, then ``insert-fake-quant``; with ``fold_bn="batch-stats"`` it is ``qat-int8-bn``,
which adds ``record-conv-bn`` first and ``insert-conv-bn`` (the BN rewrite of
``qat_bn.py``) last. The fake quantization therefore sits exactly where
``convert-int8`` quantizes and starts from the post-training parameters. **Data is
required**: activation ranges come from calibrating on it (a guessed default range would
clip or waste most of the int8 levels of a real network, and training from it
mostly undoes the guess). Weight ranges come from the weights themselves.

Training updates the float weights (and, with ``learn_scales=True``, the scales by LSQ;
see ``slimfx/backends/torch/kernels_qat.py``); the ranges stay fixed otherwise.

:func:`convert` writes the module's parameters (weights, biases, scales, zero points)
into a copy of the graph and runs the ``convert-qat`` pipeline on it: ``fold-conv-bn``
(BatchNorm trained on batch statistics folds its final running statistics),
``fake-quant-to-qdq`` (every ``fake_quantize`` becomes the ``quantize`` / ``dequantize``
pair with its current parameters, weights quantized ahead of time, as
``quantize-dequantize`` does), ``hoist-passthrough``, ``qdq-to-int8`` and ``dce``. Because the fake quantization is
bit-identical to that QDQ form, ``convert(m, form="qdq")`` computes exactly what ``m``
computes in eval mode, and ``convert(prepare_qat(g, data))`` equals
``quantize(g, data)``.

BatchNorm (``fold_bn``): with ``"batch-stats"`` each ``conv2d -> batch_norm`` trains
as in Krishnamoorthi (2018), section 3.2: the weight folded with the *running*
statistics is fake-quantized, the conv output is rescaled to the *batch* statistics,
which also update the running ones (``slimfx/passes/quant/qat_bn.py`` has the
formulas); in eval mode, and after :func:`freeze_bn_stats`, the module computes the
folded program exactly, and :func:`convert` folds the final running statistics. With
``"running"`` BatchNorm is folded once before training, as post-training quantization
does, and stays a constant affine map.

``"running"`` is the default: fine-tuning the pretrained digits CNN (8-bit or 3-bit
weights, 60-300 Adam steps, batch 60) it was as accurate as ``"batch-stats"`` or
better, cheaper, and starts from exactly the post-training program; batch statistics
pay off when training moves the weights far (long schedules, training from scratch),
with :func:`freeze_bn_stats` for the last part of the steps. A usual schedule::

    m = slimfx.to_torch(slimfx.prepare_qat(g, calib, fold_bn="batch-stats"))
    for step, (x, y) in enumerate(loader):
        if step == int(0.7 * steps):
            qat.freeze_bn_stats(m)                           # train the deployed program
        if step == int(0.9 * steps):
            qat.freeze_observers(m)                          # learned scales stop moving
        ...

Distributed training: wrap the module in ``DistributedDataParallel`` like any other
(``torchrun --nnodes=N --nproc-per-node=P train.py``); :func:`convert` looks through
the wrapper, and the replicas hold the same weights and scales after every step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

import torch

from slimfx.backends.torch.module import SlimfxModule, sync_constants
from slimfx.errors import QuantizationError
from slimfx.ir.core import Graph
from slimfx.ir.ops import Trait
from slimfx.passes.context import PassContext
from slimfx.passes.pipeline import Pipeline
from slimfx.passes.quant.api import FORMS, run_steps
from slimfx.passes.quant.arguments import (
    check_data,
    check_num_batches,
    expect_graph,
    with_input_fn,
)
from slimfx.passes.quant.calibrate import Calibrate
from slimfx.passes.quant.convert_int8 import QdqToInt8
from slimfx.passes.quant.insert_fake_quant import InsertFakeQuant
from slimfx.passes.quant.pipelines import CONVERT_QAT, QAT_BN_PREPARE, QAT_PREPARE
from slimfx.passes.quant.qat_bn import (
    freeze_bn_stats,
    freeze_observers,
    update_bn_stats,
)
from slimfx.passes.quant.qconfig import QConfig

if TYPE_CHECKING:
    from slimfx.passes.quant.mixed_precision import Budget

__all__ = ["prepare_qat", "convert", "freeze_bn_stats", "update_bn_stats", "freeze_observers",
           "FOLD_BN_MODES"]

FOLD_BN_MODES = ("batch-stats", "running")


def prepare_qat(graph: Graph, data: Iterable[Any] | None = None,
                qconfig: QConfig | None = None, *, learn_scales: bool = False,
                learn_zero_points: bool = False,
                fold_bn: Literal["batch-stats", "running"] = "running",
                num_batches: int | None = None, progress: bool = False,
                input_fn: Callable[[Any], Any] | None = None,
                ctx: PassContext | None = None, budget: Budget | None = None) -> Graph:
    """A copy of ``graph`` ready for quantization-aware training (see the module docstring).

    Args:
        graph: a float graph from :func:`slimfx.trace` (left untouched).
        data: calibration batches (as for :func:`slimfx.calibrate`); required.
        qconfig: what to quantize and how (default: the x86 preset, as ``ptq-int8``).
        learn_scales: train the scales with LSQ gradients (else they stay fixed). Give
            them their own, small learning rate (e.g. ``1e-5`` with Adam, whose steps are
            about the learning rate whatever the gradient): weight scales are ~1e-3, and a
            scale trained to zero or below makes :func:`convert` fail.
        learn_zero_points: train the zero points too.
        fold_bn: ``"running"`` (default): fold BatchNorm once with its running
            statistics, as post-training quantization does; ``"batch-stats"``: each
            ``conv2d -> batch_norm`` trains with batch statistics (``conv2d_bn``; see the
            module docstring), then :func:`freeze_bn_stats`.
        num_batches: calibrate on at most this many batches.
        progress: show a progress bar during calibration.
        input_fn: ``batch -> inputs`` for batch layouts other than inputs or
            ``(inputs, labels)`` (as for :func:`slimfx.calibrate`).
        ctx: the :class:`PassContext` every pass runs under (instruments); a fresh one by
            default. ``prepare_qat`` sets its ``data`` and ``qconfig`` attributes.
        budget: a :class:`~slimfx.passes.quant.mixed_precision.Budget`: first choose the
            precision of each layer (float / int8, or w4a8 with ``Budget(precisions=("w4a8",
            "int8"))``) by the post-training search of
            :func:`~slimfx.passes.quant.mixed_precision.mixed_precision` on ``data``, then
            prepare that configuration for training (``qconfig`` is the search's base). It
            is ``prepare_qat(graph, data, mixed_precision(graph, data, budget).qconfig)``:
            the budget holds for the program training starts from (``convert`` of the
            untrained module is the chosen post-training program), not for the trained one
            (training is meant to narrow the drop; measure the trained program again).
            For the search's step table, call ``mixed_precision`` and pass its
            ``qconfig``.

    Returns:
        The graph with ``fake_quantize`` nodes; run it with :func:`slimfx.to_torch`.

    Raises:
        QuantizationError: ``graph`` is not a float slimfx graph (a module, or a graph
            already quantized or prepared), no ``data``, a bad ``qconfig`` or ``fold_bn``,
            or a qconfig that selects nothing.
        CalibrationError: unusable calibration data.
    """
    g = expect_graph(graph, "slimfx.prepare_qat", QuantizationError)
    quant = [n for n in g.nodes if n.op.has(Trait.QUANT)]
    if quant:
        raise QuantizationError(
            f"slimfx.prepare_qat: graph @{g.name} is already quantized or prepared "
            f"({quant[0].describe()} is a {quant[0].op.name} node); pass the float graph "
            "from slimfx.trace")
    if isinstance(data, str):
        raise QuantizationError(f"slimfx.prepare_qat: data is the string {data!r}; pass "
                                "calibration batches: slimfx.prepare_qat(graph, batches)")
    if data is None:
        raise QuantizationError(
            "slimfx.prepare_qat needs calibration data to initialise the activation ranges: "
            "slimfx.prepare_qat(graph, data=batches) (a few batches shaped like the traced "
            "inputs; the training data will do)")
    if qconfig is not None and not isinstance(qconfig, QConfig):
        raise QuantizationError(f"slimfx.prepare_qat: qconfig must be a QConfig (e.g. "
                                f"QConfig.preset('x86')), got {type(qconfig).__name__}")
    if fold_bn not in FOLD_BN_MODES:
        raise QuantizationError(f"slimfx.prepare_qat: fold_bn={fold_bn!r} is not a mode; choose "
                                "'batch-stats' (train with batch statistics) or 'running'")
    check_num_batches(num_batches, "slimfx.prepare_qat")
    if ctx is not None and not isinstance(ctx, PassContext):
        raise QuantizationError(f"slimfx.prepare_qat: ctx must be a slimfx PassContext, got "
                                f"{type(ctx).__name__}")
    ctx = ctx if ctx is not None else PassContext()
    data = with_input_fn(check_data(data, "slimfx.prepare_qat"), input_fn,
                         "slimfx.prepare_qat")
    if budget is not None:
        from slimfx.passes.quant.mixed_precision import mixed_precision

        data = list(data)  # read by the search and then by calibrate
        qconfig = mixed_precision(g, data, budget, qconfig=qconfig, num_batches=num_batches,
                                  progress=progress).qconfig
    setattr(ctx, "data", data)  # noqa: B010  (calibrate)
    setattr(ctx, "qconfig", qconfig or QConfig.preset())  # noqa: B010  (insert-observers)
    steps = []
    for p in Pipeline(QAT_BN_PREPARE if fold_bn == "batch-stats" else QAT_PREPARE).passes:
        if isinstance(p, Calibrate):
            p = Calibrate(num_batches=num_batches or 0, progress=progress)
        elif isinstance(p, InsertFakeQuant):
            p = InsertFakeQuant(learn_scale=learn_scales, learn_zero_point=learn_zero_points)
        steps.append(p)
    return run_steps(steps, g.clone(), ctx)


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while True:
        if isinstance(module, DataParallel | DistributedDataParallel):
            inner = module.module
        else:
            inner = getattr(module, "_orig_mod", None)  # torch.compile's OptimizedModule
        if not isinstance(inner, torch.nn.Module):
            return module
        module = inner


def _graph_of(obj: Any) -> Graph:
    if isinstance(obj, Graph):
        return obj.clone()
    if isinstance(obj, torch.nn.Module):
        m = _unwrap(obj)
        if not isinstance(m, SlimfxModule) or not isinstance(
                getattr(m, "source_graph", None), Graph):
            raise QuantizationError(
                f"slimfx.convert: {type(obj).__name__} is not a module built by "
                "slimfx.to_torch; pass the module slimfx.to_torch(slimfx.prepare_qat(graph, "
                "data)) returned (or that graph)")
        g = m.source_graph.clone()
        missing = sorted(set(m.value_names) - set(g.constants))
        if missing:
            raise QuantizationError(
                f"slimfx.convert: the graph behind this module changed since to_torch (its "
                f"constants {missing[:3]} are gone); convert the module before editing its "
                "graph")
        sync_constants(g, m)  # type: ignore[arg-type]
        return g
    raise QuantizationError(
        f"slimfx.convert: expected the module from slimfx.to_torch(slimfx.prepare_qat(...)) "
        f"or a graph from slimfx.prepare_qat, got {type(obj).__name__}")


def convert(model: torch.nn.Module | Graph, *, form: Literal["int8", "qdq"] = "int8",
            ctx: PassContext | None = None) -> Graph:
    """The quantized graph of a trained QAT module (or of a ``prepare_qat`` graph).

    Args:
        model: the module :func:`slimfx.to_torch` built from a :func:`prepare_qat` graph
            (possibly wrapped by DataParallel / DDP), after training; or such a graph.
        form: ``int8`` for the exact integer program (ready for :func:`slimfx.compile`),
            ``qdq`` for the quantize/dequantize form, which computes bit for bit what the
            module computes in eval mode.
        ctx: the :class:`PassContext` the ``convert-qat`` passes run under (instruments);
            a fresh one by default.

    Returns:
        A new graph; ``model`` is left untouched.

    Raises:
        QuantizationError: not a slimfx module or graph, a graph never prepared for QAT
            (call :func:`prepare_qat`), or trained scales that are not positive.
    """
    if form not in FORMS:
        raise QuantizationError(f"slimfx.convert: form={form!r} is not a form; choose 'int8' "
                                "(the exact integer program) or 'qdq'")
    g = _graph_of(model)
    fqs = g.find("fake_quantize")
    if not fqs:
        quantized = any(n.op.has(Trait.QUANT) for n in g.nodes)
        state = ("is already quantized (it has no fake_quantize nodes left)" if quantized
                 else "was never prepared for quantization-aware training")
        raise QuantizationError(
            f"slimfx.convert: graph @{g.name} {state}; call slimfx.prepare_qat(graph, data), "
            "train slimfx.to_torch(prepared), then slimfx.convert(module)")
    steps = [p for p in Pipeline(CONVERT_QAT).passes
             if form == "int8" or not isinstance(p, QdqToInt8)]
    return run_steps(steps, g, ctx if ctx is not None else PassContext())
