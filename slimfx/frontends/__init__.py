"""Frontends: PyTorch models -> slimfx IR.

``trace(model, example_inputs)`` uses ``torch.export`` by default and
``torch.fx.symbolic_trace`` with ``method="fx"``; both lower through the same
ATen rules (``aten.py``), so they give the same IR for the same model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from slimfx.errors import TraceError
from slimfx.ir.core import Graph

__all__ = ["trace", "TraceError"]


def trace(model: torch.nn.Module, example_inputs: Any, method: str = "export", *,
          name: str = "main") -> Graph:
    """Turns ``model`` into a static-shape slimfx Graph.

    Args:
        model: the module (put in eval mode).
        example_inputs: a tensor, a tuple of positional inputs, or a dict of
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
    if isinstance(example_inputs, torch.Tensor):
        args: tuple[Any, ...] = (example_inputs,)
        kwargs: dict[str, Any] = {}
    elif isinstance(example_inputs, Mapping):
        args, kwargs = (), dict(example_inputs)
    elif isinstance(example_inputs, (tuple, list)):
        args, kwargs = tuple(example_inputs), {}
    else:
        raise TraceError(f"example_inputs must be a tensor, a tuple or a dict, got "
                         f"{type(example_inputs).__name__}")
    if not isinstance(model, torch.nn.Module):
        raise TraceError(f"trace() takes an nn.Module, got {type(model).__name__}")
    model.eval()
    if method == "export":
        from slimfx.frontends.export import trace_export

        return trace_export(model, args, kwargs, name)
    if method == "fx":
        from slimfx.frontends.fx import trace_fx

        return trace_fx(model, args, kwargs, name)
    raise TraceError(f"unknown trace method {method!r}; use 'export' or 'fx'")
