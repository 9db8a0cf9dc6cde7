"""Symbolic graphs in the TVM backend: binding symbols, and the batch-independence analysis.

A graph with symbolic dimensions (``f32[N,3,224,224] where N in [1, 64]``) compiles in one
of three ways (:func:`slimfx.compile`):

- ``shapes={"x": (1, 3, 224, 224)}``: :func:`bind_symbols` substitutes the sizes the shapes
  determine into every type and ``dims`` attribute; the static graph then takes the static
  path, whose kernels (hand-scheduled int8 GEMMs, im2col) need static shapes.
- **per-sample**: a symbol that is a *batch* symbol (:func:`batch_symbols`: it appears only as
  dim 0, and every op that sees it treats the samples independently) is bound to 1, the
  per-sample program is compiled on the static path, and :class:`~.compiled.Compiled` runs it
  once per sample and stacks the results. Each sample's numbers are those of the graph at
  batch 1, which are those of the graph at batch ``N`` row by row *because* the ops are
  batch-independent: int8 stays bit-exact at every size, and batch 1 is exactly as fast as
  a static compile.
- otherwise the symbols stay symbolic in Relax (generic kernels; see :mod:`.lower`).

The analysis is conservative: an op is batch-independent only when listed below with its
condition (an axis attribute other than 0, ``per_token`` dynamic quantization, ...);
anything else (RNNs, opaque nodes, user ops, a per-tensor dynamic scale, which is one
amax over the whole batch) gives a reason and the symbol is not a batch symbol.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from slimfx.errors import SlimfxError
from slimfx.ir.core import Graph, Node, Value
from slimfx.ir.ops import Trait
from slimfx.ir.symbolic import dim_symbols, eval_dim, format_symbol, normalize_dim, symbol
from slimfx.ir.types import TensorType

__all__ = ["batch_symbols", "bind_symbols", "is_symbolic", "substitute_type"]


def is_symbolic(graph: Graph) -> bool:
    """Whether any type of ``graph`` has a symbolic dimension (or it declares symbols)."""
    if graph.symbols:
        return True
    return any(type(d) is not int for v in graph.values() for d in v.shape)


def _subst_dim(d: Any, bindings: Mapping[str, int]) -> Any:
    if type(d) is int:
        return d
    names = dim_symbols(d)
    if names <= set(bindings):
        return eval_dim(d, bindings)
    sub = {symbol(k): int(bindings[k]) for k in names if k in bindings}
    return normalize_dim(d.subs(sub)) if sub else d


def substitute_type(t: TensorType, bindings: Mapping[str, int]) -> TensorType:
    """``t`` with the symbols of ``bindings`` replaced by their values."""
    if all(type(d) is int for d in t.shape):
        return t
    return TensorType(tuple(_subst_dim(d, bindings) for d in t.shape), t.dtype)


def _subst_attr(value: Any, bindings: Mapping[str, int]) -> Any:
    if isinstance(value, tuple):
        return tuple(_subst_attr(v, bindings) for v in value)
    if type(value) is int or isinstance(value, bool | float | str) or value is None:
        return value
    if hasattr(value, "free_symbols"):
        return _subst_dim(value, bindings)
    return value


def bind_symbols(graph: Graph, bindings: Mapping[str, int]) -> Graph:
    """A copy of ``graph`` with some symbols replaced by sizes (types and ``dims`` attributes).

    The bound symbols leave ``graph.symbols``; the copy is verified (type inference agrees
    with the substituted types).

    Raises:
        SlimfxError: a binding for an undeclared symbol, or a size outside its range.
    """
    for name, value in bindings.items():
        rng = graph.symbols.get(name)
        if rng is None:
            raise SlimfxError(f"cannot bind symbol {name!r}: graph {graph.name!r} declares "
                              f"{', '.join(sorted(graph.symbols)) or 'no symbols'}")
        if not rng.contains(int(value)):
            raise SlimfxError(f"cannot bind symbol {name}={value}: outside its range "
                              f"({format_symbol(name, rng)})")
    g = graph.clone()
    for v in g.values():
        v.type = substitute_type(v.type, bindings)
    for node in g.nodes:
        dims = [a.name for a in node.op.attrs if a.kind == "dims"]
        updates = {k: _subst_attr(node.attrs[k], bindings) for k in dims
                   if node.attrs[k] is not None}
        if any(updates[k] != node.attrs[k] for k in updates):
            node.set_attrs(**updates)
    for name in bindings:
        g.symbols.pop(name, None)
    g.verify()
    return g


# ----------------------------------------------------------- batch independence
def _axis_not_0(attr: str) -> Callable[[Node], str | None]:
    def check(node: Node) -> str | None:
        axis = node.attrs[attr]
        if axis is None:
            return None
        rank = max(node.inputs[0].type.rank, 1)
        return f"{attr}={axis} is the batch dim" if axis % rank == 0 else None
    return check


def _axes_not_0(node: Node) -> str | None:
    axes = node.attrs["axes"]
    rank = max(node.inputs[0].type.rank, 1)
    if not axes:
        return "it reduces over every dim, the batch dim included"
    return "it reduces over the batch dim" if any(a % rank == 0 for a in axes) else None


def _permute(node: Node) -> str | None:
    dims = node.attrs["dims"]
    return None if dims and dims[0] % len(dims) == 0 else f"dims={list(dims)} move the batch dim"


def _pad(node: Node) -> str | None:
    rank = node.inputs[0].type.rank
    return "it pads the batch dim" if len(node.attrs["pads"]) >= 2 * rank else None


def _per_token(node: Node) -> str | None:
    if node.attrs["per_token"]:
        return None
    return ("its activation scale is one amax over the whole tensor (per_token=false), so "
            "each sample's numbers depend on the others")


def _always(node: Node) -> str | None:
    return None


_RULES: dict[str, Callable[[Node], str | None]] = {
    **{op: _always for op in (
        "identity", "dropout", "conv1d", "conv2d", "conv_transpose2d", "linear", "matmul",
        "batch_norm", "layer_norm", "rms_norm", "group_norm", "instance_norm", "sdpa",
        "embedding", "reshape", "expand", "interpolate", "max_pool1d", "max_pool2d",
        "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
        "adaptive_max_pool1d", "adaptive_max_pool2d", "qconv1d", "qconv2d", "qlinear",
        "qmatmul", "qadd", "qmul", "qavg_pool2d")},
    **{op: _axis_not_0("axis") for op in (
        "cat", "split", "slice", "select", "softmax", "log_softmax", "qcat", "quantize",
        "dequantize", "requantize")},
    **{op: _axes_not_0 for op in ("mean", "sum", "amax", "amin")},
    "permute": _permute,
    "pad": _pad,
    "dynamic_linear": _per_token,
}


def _batch_problem(v: Value, name: str) -> str | None:
    """Why value ``v`` breaks symbol ``name`` as a batch dim (it must be exactly dim 0)."""
    uses = [i for i, d in enumerate(v.shape) if type(d) is not int and name in dim_symbols(d)]
    if not uses:
        return None
    d0 = v.shape[0]
    if uses != [0] or not (getattr(d0, "is_Symbol", False) and d0.name == name):
        return f"%{v.name} has type {v.type}: {name} is not (only) its dim 0"
    return None


def _mentions(v: Value, name: str) -> bool:
    return any(type(d) is not int and name in dim_symbols(d) for d in v.shape)


def batch_symbols(graph: Graph, names: Iterable[str] | None = None) -> dict[str, str | None]:
    """For each symbol, why it is not a batch symbol (``None``: it is one).

    A batch symbol ``N`` appears in every type that mentions it as exactly dim 0; every graph
    output has it as dim 0; and every node that sees it is listed as batch-independent for
    its attributes (see the module docstring). Such a graph computes each sample alone, so
    running the program bound to ``N = 1`` once per sample gives the same numbers.
    """
    out: dict[str, str | None] = {}
    for name in sorted(graph.symbols if names is None else names):
        out[name] = _batch_reason(graph, name)
    return out


def _batch_reason(graph: Graph, name: str) -> str | None:
    if not any(_mentions(v, name) for v in graph.inputs):
        return f"no graph input has {name} as its dim 0"
    for v in graph.inputs:
        problem = _batch_problem(v, name)
        if problem:
            return problem
    for node in graph.nodes:
        seen_in = any(_mentions(v, name) for v in node.inputs)
        seen_out = any(_mentions(v, name) for v in node.outputs)
        if not seen_in and not seen_out:
            continue
        for v in [*node.inputs, *node.outputs]:
            problem = _batch_problem(v, name)
            if problem:
                return f"{node.describe()}: {problem}"
        if not seen_in or not all(_mentions(v, name) for v in node.outputs):
            return (f"{node.describe()}: {name} appears in its "
                    f"{'results but not its operands' if not seen_in else 'operands but not all results'}")
        rule = _RULES.get(node.op.name)
        if rule is None and node.op.has(Trait.ELEMENTWISE):
            rule = _always  # broadcasting: an operand without N has dim 0 of size 1 or less rank
        if rule is None:
            return (f"{node.describe()}: op {node.op.name!r} is not known to treat the batch "
                    "dim independently")
        problem = rule(node)
        if problem:
            return f"{node.describe()}: {problem}"
    for v in graph.outputs:
        if not _mentions(v, name):
            return f"output %{v.name} ({v.type}) has no batch dim {name}"
    return None
