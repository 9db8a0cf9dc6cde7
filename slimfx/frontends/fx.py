"""The ``torch.fx`` frontend (``trace(..., method="fx")``).

``torch.fx`` symbolic tracing gives the model's structure (leaf ``nn`` modules,
functions and tensor methods). The graph is then run once on the example inputs,
node by node: non-tensor results (``x.size()``, ``x.shape[0]``, tuples of ints)
are folded into Python constants (the IR is static-shape), and each call on
tensors is traced to ATen with ``make_fx(pre_dispatch=True)`` (the level
``torch.export`` works at) and lowered with the same rules as the export
frontend. Leaf modules run through ``torch.func.functional_call`` so their
parameters become constants named ``<module path>.<parameter>``.
"""

from __future__ import annotations

import inspect
import logging
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
from torch.func import functional_call
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils._pytree import tree_flatten, tree_leaves, tree_map, tree_unflatten

from slimfx.errors import TraceError
from slimfx.frontends.builder import GraphBuilder, Unmapped, module_path, user_location
from slimfx.frontends.errors import condensed, raise_refusals
from slimfx.frontends.export import finish
from slimfx.frontends.lower import lower_graph
from slimfx.ir.core import Graph, Source, Value
from slimfx.ir.types import TensorType

__all__ = ["trace_fx"]

logger = logging.getLogger(__name__)

_DATA_DEPENDENT = {"item", "tolist", "numpy", "__bool__", "__int__", "__float__", "nonzero"}


def trace_fx(model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
             name: str = "main") -> Graph:
    """Traces ``model`` with torch.fx and lowers every call through ATen to slimfx IR."""
    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs)
    except TypeError as e:
        raise TraceError(f"example inputs do not match {type(model).__name__}.forward: {e}") from e
    bound.apply_defaults()
    tracer = fx.Tracer()
    tracer.record_stack_traces = True
    if tracer.is_leaf_module(model, ""):
        graph = _single_call(list(bound.arguments))  # e.g. a bare nn.LSTM: one call_module
    else:
        try:
            graph = tracer.trace(model)
        except Exception as e:  # fx raises TraceError, TypeError, RuntimeError, ...
            raise TraceError(condensed(e, "torch.fx symbolic tracing",
                                       other='method="export"')) from e

    g = Graph(name)
    b = GraphBuilder(g)
    concrete: dict[fx.Node, Any] = {}
    ir: dict[fx.Node, Any] = {}
    for node in graph.nodes:
        if node.op == "placeholder":
            arg = str(node.target).lstrip("*")
            val = bound.arguments.get(arg)
            concrete[node] = val
            ir[node] = _graph_input(g, arg, val)
        elif node.op == "get_attr":
            obj = _get_attr(model, str(node.target))
            concrete[node] = obj
            ir[node] = b.constant(obj, str(node.target)) if isinstance(obj, torch.Tensor) else obj
        elif node.op == "output":
            outs = [b.value(x) for x in tree_leaves(fx.node.map_arg(node.args[0], ir.__getitem__))
                    if isinstance(x, (Value, torch.Tensor))]
            raise_refusals(b.refusals, other='method="export"')
            finish(g, outs)
            return g
        else:
            _call(b, model, node, concrete, ir)
    raise TraceError("torch.fx graph has no output node")


def _single_call(names: list[str]) -> fx.Graph:
    graph = fx.Graph()
    args = tuple(graph.placeholder(n) for n in names)
    graph.output(graph.call_module("", args))
    return graph


def _graph_input(g: Graph, name: str, val: Any) -> Any:
    leaves, spec = tree_flatten(val)
    if isinstance(val, torch.Tensor):
        return g.add_input(name, TensorType.of(val))
    out = [g.add_input(f"{name}_{i}", TensorType.of(t)) if isinstance(t, torch.Tensor) else t
           for i, t in enumerate(leaves)]
    return tree_unflatten(out, spec)


def _get_attr(root: torch.nn.Module, target: str) -> Any:
    obj: Any = root
    for p in target.split("."):
        obj = getattr(obj, p)
    return obj


def _fx_op(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"module.{node.target}"
    if node.op == "call_method":
        return f"method.{node.target}"
    t = node.target
    return f"{getattr(t, '__module__', '') or ''}.{getattr(t, '__name__', str(t))}".lstrip(".")


def _call(b: GraphBuilder, model: torch.nn.Module, node: fx.Node, concrete: dict[fx.Node, Any],
          ir: dict[fx.Node, Any]) -> None:
    cargs: Any = fx.node.map_arg(node.args, concrete.__getitem__)
    ckwargs: Any = fx.node.map_arg(node.kwargs, concrete.__getitem__)
    iargs: Any = fx.node.map_arg(node.args, ir.__getitem__)
    ikwargs: Any = fx.node.map_arg(node.kwargs, ir.__getitem__)
    path = str(node.target) if node.op == "call_module" else module_path(
        node.meta.get("nn_module_stack"))
    b.source = Source(module=path, location=user_location(node.stack_trace), torch_op=_fx_op(node))

    fn: Callable[..., Any]
    params: dict[str, torch.Tensor] = {}
    if node.op == "call_module":
        mod = model.get_submodule(str(node.target))
        params = dict(mod.named_parameters())
        params.update(dict(mod.named_buffers()))

        def fn(p: dict[str, torch.Tensor], *a: Any, **k: Any) -> Any:
            return functional_call(mod, p, a, k)

        cargs, iargs = (params, *cargs), ({k: b.constant(v, f"{node.target}.{k}")
                                           for k, v in params.items()}, *iargs)
    elif node.op == "call_method":
        method = str(node.target)

        def fn(self: Any, *a: Any, **k: Any) -> Any:
            return getattr(self, method)(*a, **k)

        if method in _DATA_DEPENDENT:
            b.refuse(f"data-dependent call .{method}() (its result depends on tensor values)")
    else:
        fn = node.target  # type: ignore[assignment]

    with torch.no_grad():
        try:
            result = fn(*cargs, **ckwargs)
        except Exception as e:
            raise TraceError(f"running {node.format_node()} on the example inputs failed: "
                             f"{type(e).__name__}: {e} ({b.source})") from e
    concrete[node] = result
    has_value = any(isinstance(x, Value) for x in tree_leaves((iargs, ikwargs)))
    if not any(isinstance(x, torch.Tensor) for x in tree_leaves(result)):
        ir[node] = result  # static shapes, dtypes, python arithmetic on them
        return
    if not has_value:
        hint = b.name_hint(_fx_op(node).split(".")[-1], primary=False)
        ir[node] = tree_map(lambda t: b.constant(t, hint) if isinstance(t, torch.Tensor) else t,
                            result)
        return
    if node.target is operator.getitem and isinstance(iargs[0], (list, tuple)):
        ir[node] = iargs[0][iargs[1]]
        return
    ir[node] = _lower_aten(b, fn, cargs, ckwargs, iargs, ikwargs)
    target = str(node.target)
    if (node.op == "call_method" and target.endswith("_") and not target.startswith("_")
            and node.args and isinstance(node.args[0], fx.Node)):
        ir[node.args[0]] = ir[node]  # x.add_(y): later uses of x see the new value


def _lower_aten(b: GraphBuilder, fn: Callable[..., Any], cargs: Any, ckwargs: Any, iargs: Any,
                ikwargs: Any) -> Any:
    leaves, spec = tree_flatten((cargs, ckwargs))
    ileaves, _ = tree_flatten((iargs, ikwargs))
    idx = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor)]

    def call(*ts: torch.Tensor) -> Any:
        ls = list(leaves)
        for i, t in zip(idx, ts, strict=True):
            ls[i] = t
        a, k = tree_unflatten(ls, spec)
        return fn(*a, **k)

    inputs = [leaves[i] for i in idx]  # traced as fake tensors: in-place ops cannot touch them
    try:
        with torch.no_grad():
            gm = make_fx(call, tracing_mode="fake", pre_dispatch=True)(*inputs)
    except Exception as e:  # data-dependent control flow inside a leaf module, ...
        raise TraceError(condensed(e, f"tracing {b.source} to ATen",
                                   other='method="export"')) from e
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    env: dict[fx.Node, Any] = {p: b.value(ileaves[i]) for p, i in zip(placeholders, idx,
                                                                       strict=True)}
    base = b.source

    def source_of(n: fx.Node) -> Source:
        t = n.target
        op = (f"aten.{t._schema.name.split('::')[-1]}.{t._overloadname}"
              if isinstance(t, torch._ops.OpOverload) else getattr(t, "__name__", str(t)))
        return Source(module=base.module, location=base.location, torch_op=op)

    try:
        return lower_graph(b, gm.graph, env, source_of, lambda t: getattr(gm, t))
    except Unmapped as e:
        raise TraceError(f"cannot lower {base}: {e}") from e
