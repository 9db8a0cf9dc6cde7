"""``slimfx.calibrate``: run data through the graph and record what every observer sees.

The graph is lowered with :func:`slimfx.to_torch`; each ``observer`` call of the
resulting fx graph is swapped for a stateful
:class:`~slimfx.passes.quant.observers.ObserverModule`. After the last batch the
range each observer chose is written back into the node's ``min_val`` /
``max_val`` attributes (typed IR fields), which is all later passes read.

The ``calibrate`` pass does the same inside a pipeline, on the batches in ``ctx.data``
(:func:`slimfx.quantize` and :func:`slimfx.prepare_qat` put the user's data there).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from slimfx.backends.torch import KERNELS, to_torch
from slimfx.errors import CalibrationError, SlimfxError
from slimfx.ir.core import Graph, Node
from slimfx.passes.base import Pass, PassResult
from slimfx.passes.context import PassContext
from slimfx.passes.quant.arguments import (
    batch_args,
    check_data,
    check_num_batches,
    expect_graph,
    no_data_error,
    with_input_fn,
)
from slimfx.passes.quant.observers import EPS, ObserverModule, make_observer, qparams_from_range
from slimfx.passes.registry import register_pass

__all__ = ["calibrate", "Calibrate"]

logger = logging.getLogger(__name__)


def instrumented_module(graph: Graph) -> tuple[torch.nn.Module, list[tuple[Node, ObserverModule]]]:
    """The torch module of ``graph`` with stateful observers, and the (node, observer) pairs."""
    observers = graph.find("observer")
    module = to_torch(graph, trainable=False)
    fx_calls = [n for n in module.graph.nodes
                if n.op == "call_function" and n.target is KERNELS["observer"]]
    if len(fx_calls) != len(observers):
        raise CalibrationError(f"graph @{graph.name}: {len(observers)} observer nodes but "
                               f"{len(fx_calls)} observer calls in the torch module")
    holder = torch.nn.Module()
    module.add_module("_slimfx_observers", holder)
    pairs = []
    for i, (node, call) in enumerate(zip(observers, fx_calls, strict=True)):
        obs = make_observer(node.name, dict(node.attrs))
        holder.add_module(f"o{i}", obs)
        call.op, call.target = "call_module", f"_slimfx_observers.o{i}"
        call.args, call.kwargs = call.args[:1], {}
        pairs.append((node, obs))
    # A fresh GraphModule (rather than recompile() on the SlimfxModule subclass) picks up
    # the edited fx graph and the observer submodules.
    return torch.fx.GraphModule(module, module.graph), pairs


def calibrate(graph: Graph, data: Iterable[Any], num_batches: int | None = None,
              progress: bool = True, *, input_fn: Callable[[Any], Any] | None = None) -> Graph:
    """Runs ``data`` through ``graph`` and writes the observed ranges into its observers.

    An observer of an activation that saw one value only (all zeros, or a constant) has
    an empty range: its scale comes from the range widened to contain 0 (``2**-23`` for
    all zeros, see :mod:`~slimfx.passes.quant.observers`) and a warning names it.

    Args:
        graph: a graph with ``observer`` nodes (see ``insert-observers``); edited in place.
        data: an iterable of batches (a list, a ``DataLoader`` as it is); a batch is a
            tensor, a tuple of tensors (one per graph input), a dict keyed by input name,
            or ``(inputs, labels)``, shaped like the graph's inputs (symbolic dims: any
            size in range, so batches may differ in size; see
            :mod:`~slimfx.passes.quant.arguments`).
        num_batches: stop after this many batches (all of them by default).
        progress: show a tqdm progress bar.
        input_fn: ``batch -> inputs``, applied to each batch first (for batch layouts
            other than the ones above).

    Returns:
        ``graph`` itself.

    Raises:
        CalibrationError: no observers, no data, a batch that does not fit the
            graph inputs, NaN/inf in the data (input named) or reaching an observer
            (observer named).
    """
    graph = expect_graph(graph, "slimfx.calibrate", CalibrationError)
    data = with_input_fn(check_data(data, "slimfx.calibrate"), input_fn, "slimfx.calibrate")
    check_num_batches(num_batches, "slimfx.calibrate")
    if not graph.find("observer"):
        raise CalibrationError(f"graph @{graph.name} has no observer nodes; run the "
                               "'insert-observers' pass (or slimfx.quantize) first")
    module, pairs = instrumented_module(graph)
    seen = 0
    total = num_batches
    if hasattr(data, "__len__"):
        n = len(data)  # type: ignore[arg-type]
        total = n if total is None else min(total, n)
    with torch.no_grad():
        for batch in tqdm(data, total=total, desc="calibrate", disable=not progress,
                          leave=False):
            args = batch_args(graph, batch, seen)
            try:
                module(*args)
            except SlimfxError:
                raise
            except Exception as e:
                raise CalibrationError(f"calibration batch {seen} failed in the torch "
                                       f"backend: {type(e).__name__}: {e}") from e
            seen += 1
            if num_batches is not None and seen >= num_batches:
                break
    if seen == 0:
        raise no_data_error(graph, data, "calibration")
    empty = []
    for node, obs in pairs:
        lo, hi = obs.range()
        node.set_attrs(min_val=lo, max_val=hi)
        if not node.inputs[0].is_const:  # weights: a zero (pruned) channel is expected
            empty += _empty_ranges(node, lo, hi)
    if empty:
        more = f"; and {len(empty) - 10} more" if len(empty) > 10 else ""
        logger.warning(
            "calibration of @%s: %d observer(s) saw a single value, an empty range: %s%s. "
            "Check that the calibration data is real (not zeros or a constant) and reaches "
            "these nodes", graph.name, len(empty), "; ".join(empty[:10]), more)
    logger.info("calibrated %d observers of @%s on %d batches", len(pairs), graph.name, seen)
    return graph


def _empty_ranges(node: Node, lo: list[float], hi: list[float]) -> list[str]:
    """One description per channel of ``node`` whose observed range is a single value."""
    a = node.attrs
    qp = qparams_from_range(lo, hi, dtype=a["dtype"], qmin=a["qmin"], qmax=a["qmax"],
                            symmetric=a["symmetric"], axis=a["axis"])
    out = []
    for c, (x, y, scale) in enumerate(zip(lo, hi, qp.scale, strict=True)):
        if x != y:
            continue
        src = f", {node.source}" if node.source is not None else ""
        where = (f"observer %{node.name} (of %{node.inputs[0].name}{src})"
                 + (f" channel {c}" if len(lo) > 1 else ""))
        what = "only zeros" if x == 0 else f"only the value {x:.6g}"
        widened = f"[{min(x, 0.0):.6g}, {max(x, 0.0):.6g}]"
        used = ("2**-23, the smallest scale" if scale == EPS
                else f"{scale:.6g} from the range {widened}")
        out.append(f"{where} saw {what}, scale {used}")
    return out


@register_pass
@dataclass(frozen=True)
class Calibrate(Pass):
    """Runs the batches of ``ctx.data`` through the graph and records the observers' ranges.

    Needs observers (``insert-observers`` first) and data: :func:`slimfx.quantize` and
    :func:`slimfx.prepare_qat` set ``ctx.data`` to their ``data``; in a pipeline of your own
    set ``ctx.data = batches`` on the :class:`PassContext` you run it with.
    """

    name = "calibrate"
    num_batches: int = 0  # 0: every batch
    progress: bool = False

    def requires(self, graph: Graph) -> None:
        if not graph.find("observer"):
            raise CalibrationError(f"graph @{graph.name} has no observer nodes to calibrate; "
                                   "run 'insert-observers' before 'calibrate'")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        data: Any = getattr(ctx, "data", None)
        if data is None:
            raise CalibrationError(
                "pass 'calibrate' needs calibration batches in ctx.data: use "
                "slimfx.quantize(graph, data) or slimfx.prepare_qat(graph, data), which run "
                "it on their data, or set ctx.data = batches on the PassContext")
        calibrate(graph, data, num_batches=self.num_batches or None, progress=self.progress)
        return PassResult(graph, True)
