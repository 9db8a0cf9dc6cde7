"""Frontends: PyTorch models -> slimfx IR.

``trace(model, example_inputs)`` uses ``torch.export`` by default and
``torch.fx.symbolic_trace`` with ``method="fx"``; both lower through the same
ATen rules (``aten.py``), so they give the same IR for the same model.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils._pytree import tree_leaves

from slimfx.errors import TraceError
from slimfx.ir.core import Graph

__all__ = ["trace", "TraceError"]

logger = logging.getLogger(__name__)


def trace(model: torch.nn.Module, example_inputs: Any, method: str = "export", *,
          name: str = "main") -> Graph:
    """Turns ``model`` into a static-shape slimfx Graph.

    Args:
        model: the module; it is put in eval mode (with a warning if it was training:
            batch norm is traced with its running statistics, dropout as identity).
        example_inputs: a tensor, a tuple (or list) of positional inputs, or a dict of
            keyword inputs (e.g. ``{"input_ids": ..., "attention_mask": ...}``).
            Shapes in the IR are the shapes of these inputs.
        method: ``"export"`` (torch.export, default) or ``"fx"`` (torch.fx
            symbolic tracing).
        name: the graph name.

    Returns:
        A verified Graph whose inputs are named after ``forward()``'s arguments.

    Raises:
        TraceError: the model cannot be traced; the message names the failing
            construct and its source line.
    """
    if method not in ("export", "fx"):
        raise TraceError(f"unknown trace method {method!r}; use 'export' or 'fx'")
    _check_model(model)
    if isinstance(example_inputs, torch.Tensor):
        args: tuple[Any, ...] = (example_inputs,)
        kwargs: dict[str, Any] = {}
    elif isinstance(example_inputs, Mapping):
        args, kwargs = (), dict(example_inputs)
    elif isinstance(example_inputs, (tuple, list)):
        args, kwargs = tuple(example_inputs), {}
    else:
        raise TraceError(f"example_inputs must be a tensor, a tuple (or list) of positional "
                         f"inputs or a dict of keyword inputs, got {type(example_inputs).__name__}")
    _check_inputs(model, args, kwargs)
    if model.training:
        logger.warning(
            "trace(): %s is in training mode; it is put in eval mode and traced so (batch "
            "norm uses its running statistics, dropout is off), as slimfx graphs are "
            "inference graphs. For quantization-aware training trace it, then train the "
            "module of slimfx.prepare_qat(graph, data).", type(model).__name__)
    model.eval()
    if method == "export":
        from slimfx.frontends.export import trace_export

        return trace_export(model, args, kwargs, name)
    from slimfx.frontends.fx import trace_fx

    return trace_fx(model, args, kwargs, name)


def _check_model(model: Any) -> None:
    if isinstance(model, torch.nn.Module):
        return
    if isinstance(model, type) and issubclass(model, torch.nn.Module):
        raise TraceError(f"trace() takes an nn.Module instance, got the class "
                         f"{model.__name__}; pass an instance: {model.__name__}(...)")
    if callable(model):
        raise TraceError(f"trace() takes an nn.Module, got the {type(model).__name__} "
                         f"{getattr(model, '__name__', model)!r}; wrap it in a module whose "
                         "forward() calls it")
    raise TraceError(f"trace() takes an nn.Module, got {type(model).__name__}")


def _check_inputs(model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Example inputs must bind to ``forward()`` and hold tensors, not numpy arrays."""
    try:
        inspect.signature(model.forward).bind(*args, **kwargs)
    except TypeError as e:
        try:
            sig = str(inspect.signature(model.forward))
        except (TypeError, ValueError):
            sig = "(...)"
        raise TraceError(f"example inputs do not match {type(model).__name__}.forward{sig}: "
                         f"{e}; pass a tuple of positional inputs or a dict keyed by "
                         "argument name") from e
    for where, x in [*((f"input {i}", a) for i, a in enumerate(args)),
                     *((f"input {k!r}", v) for k, v in kwargs.items())]:
        for leaf in tree_leaves(x):
            if type(leaf).__module__ == "numpy" and hasattr(leaf, "shape"):
                raise TraceError(f"example {where} holds a numpy array; pass torch tensors "
                                 "(torch.from_numpy(a))")


