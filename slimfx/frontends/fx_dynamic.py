"""A batch symbol for ``trace(..., method="fx", dynamic_shapes=...)``.

``torch.fx`` runs the model on concrete inputs, so its graphs are static. A batch
symbol is recovered by anti-unification: the model is traced at three batch sizes
``b, b+1, b+2`` (the marked inputs repeated / cut along dim 0) and the three graphs
are compared node by node. They must be the same but for integers (dims of value
types, attributes such as ``reshape {shape=[4,128]}``); each integer that differs must
be ``a*b + c`` for integers ``a > 0``, ``c`` at all three sizes, and becomes
``a*N + c``. Anything else is a :class:`~slimfx.errors.TraceError` naming the node:
a structure that changes with the batch (a branch on the size), a constant computed
from it, or a size that is not affine in it. Three points check the affine fit at one
more size than the two that define it; use ``method="export"``, whose shape analysis
is symbolic, when that is not enough. A constant holding one value everywhere whose
shape follows the batch (an LSTM's zero initial state, ``x.new_zeros(B, H)``) becomes
that value expanded to the symbolic shape.

Only dim 0 entries of the spec are read (a batch); every marked input shares one
symbol, named after the first ``Dim`` of the spec (``N`` otherwise), with that
``Dim``'s range (``[1, inf)`` for ``Dim.AUTO``). Under the default spec (``auto``), as
torch.export's ``Dim.AUTO``: an input whose example batch is 0 or 1 stays static, and
inputs whose batch differs from the first marked input's stay static (logged).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterator
from typing import Any

import torch

from slimfx.errors import TraceError
from slimfx.frontends.dynamic import _dim_name, _per_dim, _spec_for
from slimfx.ir.core import Graph, Node
from slimfx.ir.symbolic import SymbolRange, normalize_dim, symbol
from slimfx.ir.types import TensorType

__all__ = ["trace_fx_dynamic"]

logger = logging.getLogger(__name__)


def trace_fx_dynamic(model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                     name: str, spec: Any, auto: bool = False) -> Graph:
    """Traces ``model`` with torch.fx and gives the marked inputs' dim 0 a batch symbol.

    Raises:
        TraceError: the spec marks dims other than 0, the marked inputs disagree on
            their batch size, or the traces at other batch sizes do not generalize
            (see the module docstring).
    """
    from slimfx.frontends.fx import trace_fx

    params = list(inspect.signature(model.forward).parameters)
    named = dict(zip(params, args, strict=False)) | kwargs
    per_arg = _spec_for(spec, model, args, kwargs)
    marked: list[str] = []
    dims: list[Any] = []
    for arg, part in per_arg.items():
        x = named.get(arg)
        if not isinstance(x, torch.Tensor) or part is None:
            continue
        others = [i for i in range(1, x.dim()) if _dynamic(_per_dim(part, i))]
        if others:
            raise TraceError(f"dynamic_shapes with method=\"fx\": input {arg!r} marks dim(s) "
                             f"{others} as dynamic; the fx frontend gives dim 0 (a batch) "
                             "only: use method=\"export\" for other dims")
        if x.dim() >= 1 and _dynamic(_per_dim(part, 0)):
            marked.append(arg)
            dims.append(_per_dim(part, 0))
    if not marked:
        return trace_fx(model, args, kwargs, name)
    if auto:  # as torch.export's Dim.AUTO: an example size of 0 or 1 stays static
        for a in [a for a in marked if int(named[a].shape[0]) < 2]:
            logger.info("trace: dim 0 of input %r is static (%d): the example size is 0 or 1, "
                        "which torch.export specialises (method='fx' does the same); trace "
                        "with an example of size 2 or more for a dynamic dim", a,
                        int(named[a].shape[0]))
        dims = [d for a, d in zip(marked, dims, strict=True) if int(named[a].shape[0]) >= 2]
        marked = [a for a in marked if int(named[a].shape[0]) >= 2]
        if not marked:
            return trace_fx(model, args, kwargs, name)
    batches = {int(named[a].shape[0]) for a in marked}
    if auto and len(batches) != 1:  # the default spec: the first input's batch is the batch
        first = int(named[marked[0]].shape[0])
        for a in marked:
            if int(named[a].shape[0]) != first:
                logger.info("trace: dim 0 of input %r is static (%d): the fx frontend gives "
                            "one batch symbol, and input %r has batch %d", a,
                            int(named[a].shape[0]), marked[0], first)
        dims = [d for a, d in zip(marked, dims, strict=True) if int(named[a].shape[0]) == first]
        marked = [a for a in marked if int(named[a].shape[0]) == first]
        batches = {first}
    if len(batches) != 1:
        raise TraceError(f"dynamic_shapes with method=\"fx\": the marked inputs "
                         f"{', '.join(map(repr, marked))} have different dim 0 sizes "
                         f"{sorted(batches)}; they share one batch symbol")
    sym = next((n for n in map(_dim_name, dims) if n), "N")
    rng = _range(dims)
    sizes = _sizes(batches.pop(), rng)
    if sizes is None:
        if auto:
            logger.info("trace(): the range %s of %s is too narrow for method='fx' to trace "
                        "three batch sizes; traced with static shapes", rng, sym)
            return trace_fx(model, args, kwargs, name)
        raise TraceError(f"dynamic_shapes with method=\"fx\": the range {rng} of {sym} is too "
                         "narrow to trace at three batch sizes; widen it or use "
                         "method=\"export\"")
    try:
        graphs = []
        for b in sizes:
            a2 = tuple(_resize(x, b) if p in marked else x
                       for p, x in zip(params, args, strict=False))
            k2 = {k: _resize(v, b) if k in marked else v for k, v in kwargs.items()}
            graphs.append(trace_fx(model, a2, k2, name))
        g = _generalize(graphs, sizes, sym, rng)
    except TraceError as e:
        if not auto:
            raise
        logger.info("trace(): %s has no batch symbol with method='fx' (%s); traced with "
                    "static shapes", type(model).__name__, str(e).splitlines()[0][:300])
        return trace_fx(model, args, kwargs, name)
    return g


def _dynamic(d: Any) -> bool:
    return d is not None and d is not torch.export.Dim.STATIC


def _range(dims: list[Any]) -> SymbolRange:
    lo, hi = 1, None
    for d in dims:
        m, x = getattr(d, "min", None), getattr(d, "max", None)
        if isinstance(m, int) and not isinstance(m, bool):
            lo = max(lo, m)
        if isinstance(x, int) and not isinstance(x, bool) and x < (1 << 62):
            hi = x if hi is None else min(hi, x)
    return SymbolRange(lo, hi)


def _sizes(b: int, rng: SymbolRange) -> list[int] | None:
    """Three consecutive batch sizes >= 2 in ``rng``, from ``b`` when it can."""
    start = max(b, 2, rng.min)
    if rng.max is not None:
        start = min(start, rng.max - 2)
    if start < max(2, rng.min):
        return None
    return [start, start + 1, start + 2]


def _resize(x: torch.Tensor, b: int) -> torch.Tensor:
    """``x`` with ``b`` rows along dim 0 (its rows repeated, then cut)."""
    reps = -(-b // x.shape[0])
    return torch.cat([x] * reps)[:b]


@contextlib.contextmanager
def _nowhere() -> Iterator[None]:
    yield


def _fit(values: list[int], sizes: list[int], n: Any, where: str) -> Any:
    """``a*n + c`` through the three (size, value) points, or a TraceError."""
    a = values[1] - values[0]  # the sizes are consecutive
    c = values[0] - a * sizes[0]
    if a <= 0 or values[2] != a * sizes[2] + c:
        raise TraceError(f"dynamic_shapes with method=\"fx\": {where} is "
                         f"{', '.join(map(str, values))} at batch sizes "
                         f"{', '.join(map(str, sizes))}, not a*N + c (a > 0); use "
                         "method=\"export\"")
    return normalize_dim(a * n + c)


def _join(vals: list[Any], sizes: list[int], n: Any, where: str) -> Any:
    """One generalized attribute / dim from its three traced values."""
    first = vals[0]
    if all(v == first for v in vals[1:]) and all(type(v) is type(first) for v in vals):
        return first
    if all(type(v) is int for v in vals):
        return _fit(vals, sizes, n, where)
    if all(isinstance(v, tuple) for v in vals) and len({len(v) for v in vals}) == 1:
        return tuple(_join([v[i] for v in vals], sizes, n, f"{where}[{i}]")
                     for i in range(len(first)))
    raise TraceError(f"dynamic_shapes with method=\"fx\": {where} changes with the batch "
                     f"size ({', '.join(map(repr, vals))}); use method=\"export\"")


def _type(ts: list[TensorType], sizes: list[int], n: Any, where: str) -> TensorType:
    if len({t.rank for t in ts}) != 1 or len({t.dtype for t in ts}) != 1:
        raise TraceError(f"dynamic_shapes with method=\"fx\": the type of {where} changes "
                         f"with the batch size ({', '.join(map(str, ts))}); use "
                         "method=\"export\"")
    shape = _join([t.shape for t in ts], sizes, n, f"the type of {where}")
    return TensorType(tuple(shape), ts[0].dtype)


def _generalize(graphs: list[Graph], sizes: list[int], sym: str, rng: SymbolRange) -> Graph:
    """The first graph with every batch-dependent integer as an expression of ``sym``."""
    g = graphs[0].clone()
    g.add_symbol(sym, rng.min, rng.max)
    n = symbol(sym)
    fills: list[tuple[str, TensorType]] = []
    for name, c in g.constants.items():
        found = [h.constants.get(name) for h in graphs[1:]]
        consts = [c.const] + [o.const if o is not None else None for o in found]
        tensors = [t for t in consts if t is not None]
        if len(tensors) == len(consts) and all(
                TensorType.of(t) == c.type and torch.equal(t, tensors[0]) for t in tensors):
            continue
        values = {_fill_value(t) for t in tensors}
        if len(tensors) == len(consts) and len(values) == 1 and None not in values:
            # zeros(B, H): one value whose shape follows the batch, an expanded scalar
            fills.append((name, _type([TensorType.of(t) for t in tensors], sizes, n,
                                      f"constant %{name}")))
            continue
        raise TraceError(f"dynamic_shapes with method=\"fx\": constant %{name} depends on the "
                         "batch size (a tensor computed from it at trace time); use "
                         "method=\"export\"")
    nodes = [list(h.nodes) for h in graphs]
    if len({len(ns) for ns in nodes}) != 1 or len({len(h.inputs) for h in graphs}) != 1:
        raise TraceError("dynamic_shapes with method=\"fx\": the graph changes with the "
                         "batch size (a branch on the size?); use method=\"export\"")
    for i, v in enumerate(g.inputs):
        v.type = _type([v.type] + [h.inputs[i].type for h in graphs[1:]], sizes, n,
                       f"input %{v.name}")
    for j, node in enumerate(g.nodes):
        _generalize_node(node, [ns[j] for ns in nodes[1:]], sizes, n)
    for name, t in fills:
        _expand_fill(g, g.constants[name], t)
    g.verify()
    return g


def _fill_value(t: torch.Tensor) -> Any:
    """The one value every element of ``t`` holds, or None."""
    if t.numel() == 0 or t.dim() == 0:
        return None
    first = t.flatten()[0]
    return first.item() if bool((t == first).all()) else None


def _expand_fill(g: Graph, c: Any, t: TensorType) -> None:
    """Replaces constant ``c`` (one value everywhere) by that value expanded to ``t``."""
    scalar = g.add_constant(c.const.flatten()[:1].reshape([1] * t.rank).clone(),
                            f"{c.name}.value")
    first = next(iter(g.nodes), None)
    name = c.name
    with g.inserting_before(first) if first is not None else _nowhere():
        v = g.add("expand", [scalar], {"shape": list(t.shape)}, name=f"{name}.expand")
    g.replace_all_uses_with(c, v)
    g.remove_constant(c)
    g.rename(v, name)


def _generalize_node(node: Node, others: list[Node], sizes: list[int], n: Any) -> None:
    where = node.describe()
    if any(o.op.name != node.op.name or o.name != node.name or
           len(o.outputs) != len(node.outputs) for o in others):
        raise TraceError(f"dynamic_shapes with method=\"fx\": {where} differs at other batch "
                         "sizes (a branch on the size?); use method=\"export\"")
    updates = {}
    for key, value in node.attrs.items():
        joined = _join([value] + [o.attrs[key] for o in others], sizes, n,
                       f"attribute {key} of {where}")
        if joined is not value:
            updates[key] = joined
    if updates:
        try:
            node.set_attrs(**updates)
        except TypeError as e:
            raise TraceError(f"dynamic_shapes with method=\"fx\": {e} (it depends on the batch "
                             "size); use method=\"export\"") from e
    for i, out in enumerate(node.outputs):
        out.type = _type([out.type] + [o.outputs[i].type for o in others], sizes, n,
                         f"result {i} of {where}")
