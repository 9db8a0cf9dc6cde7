"""``slimfx.calibrate``: run data through the graph and record what every observer sees.

The graph is lowered with :func:`slimfx.to_torch`; each ``observer`` call of the
resulting fx graph is swapped for a stateful
:class:`~slimfx.passes.quant.observers.ObserverModule`. After the last batch the
range each observer chose is written back into the node's ``min_val`` /
``max_val`` attributes (typed IR fields), which is all later passes read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from tqdm.auto import tqdm

from slimfx.backends.torch import KERNELS, to_torch
from slimfx.errors import CalibrationError, SlimfxError
from slimfx.ir.core import Graph, Node
from slimfx.passes.quant.observers import ObserverModule, make_observer

__all__ = ["calibrate"]

logger = logging.getLogger(__name__)


def _as_args(batch: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(batch, torch.Tensor):
        return (batch,)
    if isinstance(batch, (list, tuple)):
        return tuple(batch)
    if isinstance(batch, dict):
        return tuple(batch.values())
    raise CalibrationError(f"calibration batches must be tensors or tuples of tensors, got "
                           f"{type(batch).__name__}")


def _check_inputs(graph: Graph, args: tuple, index: int) -> None:
    if len(args) != len(graph.inputs):
        raise CalibrationError(
            f"calibration batch {index} has {len(args)} tensors but graph @{graph.name} takes "
            f"{len(graph.inputs)} inputs ({', '.join('%' + v.name for v in graph.inputs)}); "
            "for (inputs, labels) batches pass the inputs only, e.g. (x for x, _ in loader)")
    for v, a in zip(graph.inputs, args, strict=True):
        if not isinstance(a, torch.Tensor):
            raise CalibrationError(f"calibration batch {index}: input %{v.name} is a "
                                   f"{type(a).__name__}, not a tensor")
        if tuple(a.shape) != v.type.shape:
            raise CalibrationError(
                f"calibration batch {index}: input %{v.name} has shape {tuple(a.shape)} but "
                f"the graph was traced with {v.type}; batch the data like the example inputs "
                "(shapes are static; use drop_last=True in a DataLoader)")


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
              progress: bool = True) -> Graph:
    """Runs ``data`` through ``graph`` and writes the observed ranges into its observers.

    Args:
        graph: a graph with ``observer`` nodes (see ``insert-observers``); edited in place.
        data: an iterable of batches; a batch is a tensor or a tuple of tensors, one per
            graph input, shaped like the graph's inputs.
        num_batches: stop after this many batches (all of them by default).
        progress: show a tqdm progress bar.

    Returns:
        ``graph`` itself.

    Raises:
        CalibrationError: no observers, no data, a batch that does not fit the
            graph inputs, or NaN/inf values reaching an observer (named).
    """
    if not graph.find("observer"):
        raise CalibrationError(f"graph @{graph.name} has no observer nodes; run the "
                               "'insert-observers' pass (or slimfx.quantize) first")
    module, pairs = instrumented_module(graph)
    seen = 0
    total = num_batches
    if total is None and hasattr(data, "__len__"):
        total = len(data)  # type: ignore[arg-type]
    with torch.no_grad():
        for batch in tqdm(data, total=total, desc="calibrate", disable=not progress,
                          leave=False):
            if num_batches is not None and seen >= num_batches:
                break
            args = _as_args(batch)
            _check_inputs(graph, args, seen)
            try:
                module(*args)
            except SlimfxError:
                raise
            except Exception as e:
                raise CalibrationError(f"calibration batch {seen} failed in the torch "
                                       f"backend: {type(e).__name__}: {e}") from e
            seen += 1
    if seen == 0:
        raise CalibrationError(f"calibration of graph @{graph.name} got no data; pass an "
                               "iterable with at least one batch")
    for node, obs in pairs:
        lo, hi = obs.range()
        node.set_attrs(min_val=lo, max_val=hi)
    logger.info("calibrated %d observers of @%s on %d batches", len(pairs), graph.name, seen)
    return graph
