"""The ``torch.export`` frontend (the default).

``torch.export.export(model.eval(), args, kwargs, strict=False)`` gives an ATen
graph at the pre-dispatch level, which keeps high-level ops (``aten.conv2d``,
``aten.linear``, ``aten.batch_norm``, ``aten.scaled_dot_product_attention``...).
Placeholders are mapped through the graph signature: user inputs become graph
inputs named after the ``forward()`` arguments, parameters, buffers and lifted
tensor constants become IR constants named by their state-dict name.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.fx as fx
from torch.export.graph_signature import InputKind, OutputKind
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode
from torch.utils._pytree import tree_leaves

from slimfx.errors import TraceError
from slimfx.frontends.builder import GraphBuilder, module_path, user_location
from slimfx.frontends.dynamic import (
    is_violation,
    record_specialisations,
    symbol_names,
    violation_error,
)
from slimfx.frontends.errors import condensed, failing_line, raise_refusals
from slimfx.ir.core import Graph, Source, Value
from slimfx.ir.symbolic import SymbolRange, torch_symbol_names
from slimfx.ir.types import TensorType

__all__ = ["lower_program", "trace_export"]

logger = logging.getLogger(__name__)


def source_of(node: fx.Node) -> Source:
    """The Source of an ATen node of an exported program."""
    return Source(module=module_path(node.meta.get("nn_module_stack")),
                  location=user_location(node.meta.get("stack_trace")),
                  torch_op=_op_name(node.target))


def _op_name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return f"aten.{target._schema.name.split('::')[-1]}.{target._overloadname}"
    return getattr(target, "__name__", str(target))


def trace_export(model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                 name: str = "main", dynamic_shapes: Any = None, *,
                 share_batch: bool = False) -> Graph:
    """Traces ``model`` with torch.export and lowers the program to slimfx IR.

    ``dynamic_shapes`` is torch.export's spec (see :mod:`slimfx.frontends.dynamic`);
    ``share_batch`` (the default spec) gives the inputs of one batch size one symbol.
    """
    def export() -> torch.export.ExportedProgram:
        with torch.no_grad():
            return torch.export.export(model.eval(), args, kwargs, strict=False,
                                       dynamic_shapes=dynamic_shapes)

    try:
        if dynamic_shapes is None:
            ep, fixed = export(), []
        else:
            with record_specialisations() as fixed:
                ep = export()
    except GuardOnDataDependentSymNode as e:  # Python control flow on tensor values / sizes
        where = failing_line(e) or "a line of forward()"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TraceError(
            f"torch.export: {where} branches on a data-dependent value or size "
            f"(GuardOnDataDependentSymNode: {first}). slimfx graphs are static: "
            "data-dependent values and shapes are unsupported. Make the branch static, or "
            "compute both sides and pick with torch.where(cond, a, b); keep shapes fixed "
            "(a mask instead of boolean indexing). method=\"fx\" folds Python values "
            "computed from the example inputs, which may trace a branch on sizes.") from e
    except Exception as e:  # torch raises many unrelated types here
        if dynamic_shapes is not None and is_violation(e):
            raise violation_error(e, export) from e
        raise TraceError(condensed(e, "torch.export", other='method="fx"')) from e
    where: dict[tuple[str, int], str] = {}
    for arg, dim, line in fixed:
        if arg is not None:
            where.setdefault((arg, dim), line)
    return lower_program(ep, name, dynamic_shapes, model, args, kwargs,
                         share_batch=share_batch, where=where)


def lower_program(ep: torch.export.ExportedProgram, name: str = "main", spec: Any = None,
                  model: torch.nn.Module | None = None, args: tuple[Any, ...] = (),
                  kwargs: dict[str, Any] | None = None, *, share_batch: bool = False,
                  where: Mapping[tuple[str, int], str] | None = None) -> Graph:
    """Lowers an exported program (its size symbols become graph symbols).

    ``share_batch`` and ``where`` as in :func:`~slimfx.frontends.dynamic.symbol_names`.
    """
    names, ranges, static = symbol_names(ep, spec, model, args, kwargs or {},
                                         share_batch=share_batch, where=where)
    for line in static:
        logger.info("trace: %s", line)
    with torch_symbol_names(names):
        return _lower(ep, name, ranges)


def _lower(ep: torch.export.ExportedProgram, name: str,
           ranges: dict[str, SymbolRange]) -> Graph:
    from slimfx.frontends.lower import lower_graph

    g = Graph(name)
    for sym, rng in sorted(ranges.items()):
        g.add_symbol(sym, rng.min, rng.max)
    b = GraphBuilder(g)
    env: dict[fx.Node, Any] = {}
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    for spec, node in zip(ep.graph_signature.input_specs, placeholders, strict=True):
        val = node.meta.get("val")
        if spec.kind == InputKind.USER_INPUT:
            if isinstance(val, torch.Tensor):
                env[node] = g.add_input(spec.arg.name, TensorType.of(val))
            else:
                env[node] = getattr(spec.arg, "value", val)
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            target = spec.target or node.name
            tensor = ep.state_dict.get(target)
            if tensor is None:
                tensor = ep.constants.get(target)
            if not isinstance(tensor, torch.Tensor):
                raise TraceError(f"torch.export: no tensor for {spec.kind.name.lower()} {target!r}")
            env[node] = b.constant(tensor, target)
        else:
            raise TraceError(f"torch.export: unsupported input kind {spec.kind.name} "
                             f"({node.name}); try method=\"fx\"")

    out = lower_graph(b, ep.graph, env, source_of, lambda t: _get_attr(ep.graph_module, t))
    raise_refusals(b.refusals, other='method="fx"')
    outs: list[Value] = []
    for spec, v in zip(ep.graph_signature.output_specs, out, strict=True):
        if spec.kind != OutputKind.USER_OUTPUT:
            continue
        for leaf in tree_leaves(v):
            if isinstance(leaf, Value):
                outs.append(leaf)
            else:
                logger.warning("output %s is not a tensor (%r); it is dropped", spec.arg, leaf)
    finish(g, outs)
    return g


def _get_attr(root: torch.nn.Module, target: str) -> Any:
    obj: Any = root
    for p in target.split("."):
        obj = getattr(obj, p)
    return obj


def finish(g: Graph, outputs: list[Value]) -> None:
    """Sets the outputs, drops unused constants and verifies."""
    g.set_outputs(outputs)
    for v in list(g.constants.values()):
        if not v.uses() and all(v is not o for o in outputs):
            g.remove_constant(v)
    g.verify()
