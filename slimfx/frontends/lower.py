"""Walks an ATen-level ``torch.fx`` graph and lowers each call with the rules of ``aten.py``.

Generic policies live here, not in the rules:

- ``getitem`` of a multi-result call picks a result (no getitem nodes in the IR);
- a call with no tensor operand (``arange``, ``zeros``, ``full``...) and the
  ``*_like``/``new_*`` factories are evaluated at trace time into constants;
- in-place ops lower as their functional form and rebind the mutated value;
- a rule's result types are checked against torch's example result; on any
  mismatch, or if no rule exists, the call becomes an ``opaque`` node;
- data-dependent calls (``item``, ``nonzero``...) are refused (reported together);
  a call whose result *shape* depends on tensor values (``x[x > 0]``: torch gives it an
  unbacked size symbol) is a :class:`~slimfx.errors.TraceError` at once.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols
from torch.utils._pytree import tree_flatten, tree_leaves, tree_map

from slimfx.errors import TraceError
from slimfx.frontends.aten import RULES, Call, bind, packet_name
from slimfx.frontends.builder import GraphBuilder, Unmapped
from slimfx.ir.core import Source, Value
from slimfx.ir.symbolic import eval_dim, from_torch_dim
from slimfx.ir.types import TensorType

__all__ = ["lower_graph", "lower_call"]

logger = logging.getLogger(__name__)

_DROP = {"_assert_async", "_assert_scalar", "sym_constrain_range", "sym_constrain_range_for_size",
         "_functional_assert_async", "_functional_assert_scalar", "_assert_tensor_metadata"}
_REFUSE = {"item", "_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2",
           "tolist", "nonzero_static"}
_SHAPE_FACTORIES = {"zeros_like", "ones_like", "full_like", "empty_like", "new_zeros", "new_ones",
                    "new_full", "new_empty", "rand_like", "randn_like"}

SourceFn = Callable[[fx.Node], Source]


def lower_graph(b: GraphBuilder, graph: fx.Graph, env: dict[fx.Node, Any],
                source_of: SourceFn, attr: Callable[[str], Any] | None = None) -> Any:
    """Lowers every call of ``graph``; ``env`` binds its placeholders. Returns the output."""
    for node in graph.nodes:
        if node.op == "placeholder":
            if node not in env:
                raise Unmapped(f"unbound placeholder {node.name}")
            continue
        if node.op == "get_attr":
            if attr is None:
                raise Unmapped(f"get_attr {node.target}")
            obj = attr(str(node.target))
            env[node] = b.constant(obj, str(node.target)) if isinstance(obj, torch.Tensor) else obj
            continue
        if node.op == "output":
            return fx.node.map_arg(node.args[0], lambda n: env[n])
        if node.op != "call_function":
            raise Unmapped(f"{node.op} node {node.name}")
        args = fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
        if node.target is operator.getitem:
            env[node] = args[0][args[1]]
            continue
        b.source = source_of(node)
        sub = _subgraph_call(b, node, args, source_of, attr)
        if sub is not _NO:
            env[node] = sub
            continue
        used = frozenset(u.args[1] for u in node.users
                         if u.target is operator.getitem and u.users)
        result = lower_call(b, node.target, tuple(args), dict(kwargs), node.meta.get("val"),
                            used if all(u.target is operator.getitem for u in node.users) else None)
        env[node] = result
        target = node.target
        if (isinstance(target, torch._ops.OpOverload) and _is_inplace(target)
                and isinstance(node.args[0], fx.Node)):
            env[node.args[0]] = result  # later uses of the mutated tensor see the new value
    raise Unmapped("graph has no output")


_NO = object()


def _subgraph_call(b: GraphBuilder, node: fx.Node, args: Any, source_of: SourceFn,
                   attr: Callable[[str], Any] | None) -> Any:
    """Inlines higher-order wrappers (autocast / set_grad_enabled regions)."""
    name = getattr(node.target, "__name__", "")
    if name not in ("wrap_with_set_grad_enabled", "wrap_with_autocast") or attr is None:
        return _NO
    skip = 1 if name == "wrap_with_set_grad_enabled" else 4
    sub = node.args[skip]
    gm: Any = attr(str(sub.target)) if isinstance(sub, fx.Node) else sub
    operands = args[skip + 1:]
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    env = dict(zip(placeholders, operands, strict=True))
    out = lower_graph(b, gm.graph, env, source_of, lambda t: getattr(gm, t))
    return out


def _is_inplace(op: torch._ops.OpOverload) -> bool:
    name = packet_name(op)
    return name.endswith("_") and not name.startswith("_")


def _functional(op: torch._ops.OpOverload) -> torch._ops.OpOverload:
    name = packet_name(op)[:-1]
    packet = getattr(torch.ops.aten, name, None)
    return getattr(packet, op._overloadname, op) if packet is not None else op


def _materialize(x: Any) -> Any:
    """Concrete stand-ins for Values: constants give their tensor, others zeros of their type."""
    if isinstance(x, Value):
        if x.const is not None:
            return x.const
        # a stand-in: symbolic dims at 1 (only dtype / rank matter where this is used)
        return torch.zeros([d if type(d) is int else 1 for d in x.shape],
                           dtype=x.type.torch_dtype)
    return x


def lower_call(b: GraphBuilder, op: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
               meta: Any, used: frozenset[int] | None) -> Any:
    """Lowers one call whose tensor arguments are Values; returns the result structure."""
    if isinstance(meta, torch.SymInt):  # a size (sym_size, arithmetic on sizes): torch's
        return from_torch_dim(meta)     # own expression of it, in the graph's symbols
    if not isinstance(op, torch._ops.OpOverload):
        if not any(isinstance(x, Value) for x in tree_leaves((args, kwargs))):
            return op(*args, **kwargs)  # python arithmetic on static sizes
        return b.opaque(op, args, kwargs, meta if meta is not None else _run(op, args, kwargs))
    name = packet_name(op)
    if name in _DROP:
        return None
    if _is_inplace(op):
        op = _functional(op)
        name = packet_name(op)
    if name in _REFUSE:
        b.refuse(f"data-dependent op aten.{name} (its result depends on tensor values, "
                 "which a static graph cannot hold)")
        return _placeholder_result(b, op, args, kwargs, meta)
    _check_static(b, name, meta)
    operands = [x for x in tree_leaves((args, kwargs)) if isinstance(x, Value)]
    if _symbolic(meta) and name == "arange" and not operands:
        return _arange(b, op, args, kwargs, meta)
    if _symbolic(meta) and name in _FILLS:
        return _fill(b, op, args, kwargs, meta)
    if not operands or name in _SHAPE_FACTORIES:
        result = _run(op, args, kwargs)
        hint = b.name_hint(name, primary=False)
        return tree_map(lambda t: b.constant(t, hint) if isinstance(t, torch.Tensor) else t,
                        result)
    if meta is None:
        meta = _run(op, args, kwargs)
    fn = RULES.get(name)
    if fn is not None:
        mark = b.mark()
        try:
            out = fn(b, bind(op, args, kwargs), Call(op, meta, used))
            _check(out, meta, op)
            return out
        except Unmapped as e:
            b.rollback(mark)
            logger.debug("%s stays opaque: %s", op, e)
    return b.opaque(op, args, kwargs, meta)


def _symbolic(meta: Any) -> bool:
    return isinstance(meta, torch.Tensor) and not TensorType.of(meta).is_static


#: Factories of a constant fill; with a symbolic size they become an expanded scalar.
_FILLS = {"zeros", "ones", "full", "empty", "new_zeros", "new_ones", "new_full", "new_empty",
          "zeros_like", "ones_like", "full_like", "empty_like"}


def _fill(b: GraphBuilder, op: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
          meta: Any) -> Value:
    """``zeros(B, S)``, ``ones_like(x)``...: a one-element constant expanded to the size."""
    name = packet_name(op)
    a = bind(op, args, kwargs)
    value = a.get("fill_value", 1 if "ones" in name else 0)
    t = TensorType.of(meta)
    c = b.constant(torch.full([1] * t.rank, value, dtype=t.torch_dtype), b.name_hint(name))
    return b.add("expand", [c], {"shape": list(t.shape)}) if t.rank else c


#: An ``arange`` over an unbounded symbol caps it here (the symbol's range is narrowed).
ARANGE_CAP = 8192


def _arange(b: GraphBuilder, op: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
            meta: Any) -> Value:
    """``torch.arange`` with a symbolic bound (``arange(S)``): a slice of a constant.

    The constant runs to the largest end the symbols' ranges allow. A symbol without
    an upper bound (``Dim.AUTO``) gets one, :data:`ARANGE_CAP`, logged: inputs beyond
    it are then a RuntimeInputError naming the symbol, never wrong numbers; declare
    ``Dim("S", max=...)`` for more.
    """
    a = bind(op, args, kwargs)
    start, end, step = a.get("start") or 0, a["end"], a.get("step") or 1
    if type(start) is not int or type(step) is not int or step < 1:
        raise TraceError(
            f"aten.arange at {b.source}: arange(start={start}, end={end}, step={step}) has a "
            "symbolic size; slimfx builds it as a slice of a constant arange, which needs "
            "an integer start and step >= 1; keep that dim static")
    top = _upper_bound(b, end)
    if top is None and type(end) is not int and end.is_Symbol:
        rng = b.graph.symbols.get(end.name)
        if rng is not None and rng.min <= ARANGE_CAP:
            b.graph.add_symbol(end.name, rng.min, ARANGE_CAP)
            logger.info("trace: arange(%s) at %s: symbol %s gets the upper bound %d (was "
                        "unbounded); declare Dim(%r, max=...) in dynamic_shapes for more",
                        end, b.source, end.name, ARANGE_CAP, end.name)
            top = ARANGE_CAP
    if top is None:
        raise TraceError(
            f"aten.arange at {b.source}: arange(start={start}, end={end}, step={step}) has a "
            "symbolic size; slimfx builds it as a slice of a constant arange, which needs "
            "an upper bound on the symbols: declare it in dynamic_shapes, e.g. "
            "Dim(\"S\", max=512), or keep that dim static")
    dtype = TensorType.of(meta).torch_dtype
    c = b.constant(torch.arange(0, max(top, start), 1, dtype=dtype), b.name_hint("arange"))
    return b.add("slice", [c], {"axis": 0, "start": start, "end": end, "step": step})


def _upper_bound(b: GraphBuilder, d: Any) -> int | None:
    """The largest value of dim ``d`` over the graph's symbol ranges (None: unbounded)."""
    if type(d) is int:
        return d
    env = {}
    for s in d.free_symbols:
        rng = b.graph.symbols.get(s.name)
        if rng is None or rng.max is None:
            return None
        env[s.name] = rng.max
    if not d.is_Symbol and not (d.is_polynomial() and all(c >= 0 for c in
                                                          d.as_poly().coeffs())):
        return None  # only monotone (non-negative polynomial) dims are bounded so
    return int(eval_dim(d, env))


def data_dependent_message(what: str, where: str) -> str:
    """The TraceError text for a data-dependent shape at ``what`` (op) ``where`` (source)."""
    return (f"{what} at {where} has a data-dependent output shape (its size depends on "
            "tensor values, e.g. boolean indexing x[x > 0] or nonzero): slimfx graphs have "
            "static shapes, so data-dependent shapes are unsupported (by method='export' "
            "and method='fx' alike). Keep the shape fixed and use a mask instead: "
            "torch.where(mask, x, 0) or x * mask, and reduce over the masked tensor.")


def _check_static(b: GraphBuilder, name: str, meta: Any) -> None:
    """Raises TraceError if torch's example result has a size only known at run time."""
    for t in tree_leaves(meta):
        if isinstance(t, torch.Tensor) and free_unbacked_symbols(t.shape):
            raise TraceError(data_dependent_message(f"aten.{name}", str(b.source)))


def _run(op: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    a, k = tree_map(_materialize, (args, kwargs))
    with torch.no_grad():
        return op(*a, **k)


def _placeholder_result(b: GraphBuilder, op: Any, args: Any, kwargs: Any, meta: Any) -> Any:
    try:
        return b.opaque(op, args, kwargs, meta if meta is not None else _run(op, args, kwargs))
    except (Unmapped, RuntimeError):
        return None


def _check(out: Any, meta: Any, op: Any) -> None:
    """Raises Unmapped if the lowered result types differ from torch's example result."""
    got, _ = tree_flatten(out)
    want, _ = tree_flatten(meta)
    if len(got) != len(want):
        raise Unmapped(f"{len(got)} results but torch gives {len(want)}")
    for g, w in zip(got, want, strict=True):
        if g is None:
            continue
        if not isinstance(g, Value) or not isinstance(w, torch.Tensor):
            raise Unmapped("result is not a tensor")
        if g.type != TensorType.of(w):
            raise Unmapped(f"lowered to {g.type} but torch gives {TensorType.of(w)}")
