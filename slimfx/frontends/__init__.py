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
from slimfx.ir.symbolic import ShapeError

__all__ = ["DEFAULT_DYNAMIC_BATCH", "trace", "TraceError"]

logger = logging.getLogger(__name__)


#: When True (the default), ``trace()`` without ``dynamic_shapes`` makes dim 0 of every
#: tensor input a dynamic batch wherever the model allows it (``Dim.AUTO``; inputs of one
#: example batch size share one symbol, ``N``), every other dim static; the dims that stay
#: static are logged (``INFO``, logger ``slimfx.frontends``) with the reason. When False,
#: it traces static shapes (pass ``dynamic_shapes={}`` for that in one call).
DEFAULT_DYNAMIC_BATCH = True


def trace(model: torch.nn.Module | torch.export.ExportedProgram, example_inputs: Any = None,
          method: str = "export", *, name: str = "main", dynamic_shapes: Any = None) -> Graph:
    """Turns ``model`` into a slimfx Graph (symbolic dims where ``dynamic_shapes`` says).

    Args:
        model: the module; it is put in eval mode (with a warning if it was training:
            batch norm is traced with its running statistics, dropout as identity).
        example_inputs: a tensor, a tuple (or list) of positional inputs, or a dict of
            keyword inputs (e.g. ``{"input_ids": ..., "attention_mask": ...}``).
            Shapes in the IR are the shapes of these inputs, but for the dynamic
            batch (below). An example batch of 1 gives a static batch (torch.export
            specialises size 1): trace with a batch of 2 or more.
        method: ``"export"`` (torch.export, default) or ``"fx"`` (torch.fx
            symbolic tracing).
        name: the graph name.

        dynamic_shapes: torch.export's spec, passed on as it is: per input (a tuple in
            argument order, or a dict by argument name), a dict ``{dim: Dim}`` or a
            tuple of ``Dim`` / ``None``; ``Dim("B", min=1, max=64)``, ``Dim.AUTO``
            (dynamic where the model allows), ``Dim.STATIC``. Dynamic dims become graph
            symbols named after their ``Dim`` (see :mod:`slimfx.frontends.dynamic`).
            ``None`` (the default, with :data:`DEFAULT_DYNAMIC_BATCH` on): dim 0 of every
            tensor input is a dynamic batch wherever the model allows it (``Dim.AUTO``,
            range from 1), inputs of one example batch size sharing one symbol ``N``,
            every other dim static; the dims that stay static are logged with the
            reason. ``{}``: static shapes. ``method="fx"`` reads only dim 0 entries of
            the spec (one batch symbol).

    ``model`` may also be a ``torch.export.ExportedProgram`` (e.g. from
    ``torch.export.load("model.pt2")``): it is lowered as it is, its size symbols
    becoming graph symbols; ``example_inputs`` and ``method`` are then unused.

    Returns:
        A verified Graph whose inputs are named after ``forward()``'s arguments.

    Raises:
        TraceError: the model cannot be traced; the message names the failing
            construct and its source line.
    """
    if isinstance(model, torch.export.ExportedProgram):
        from slimfx.frontends.export import lower_program

        return lower_program(model, name)
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
    spec, auto = dynamic_shapes, False
    if spec is None and DEFAULT_DYNAMIC_BATCH:
        from slimfx.frontends.dynamic import default_spec

        spec, auto = default_spec(model, args, kwargs), True
    if method == "export":
        from slimfx.frontends.export import trace_export

        if not auto:
            return trace_export(model, args, kwargs, name, spec)
        try:
            return trace_export(model, args, kwargs, name, spec, share_batch=True)
        except (TraceError, ShapeError) as e:
            logger.info("trace(): a dynamic batch dim does not trace (%s); %s is traced "
                        "with static shapes", str(e).splitlines()[0][:300], type(model).__name__)
            return trace_export(model, args, kwargs, name, None)
    from slimfx.frontends.fx import trace_fx

    if spec is None:
        return trace_fx(model, args, kwargs, name)
    from slimfx.frontends.fx_dynamic import trace_fx_dynamic

    return trace_fx_dynamic(model, args, kwargs, name, spec, auto)


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


