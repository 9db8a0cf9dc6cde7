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

The analysis follows the batch dim through the graph (a ``permute`` moves it; attention's
``permute(2, 0, 3, 1, 4)`` + ``select`` keeps it a batch symbol) and is conservative: an op
is batch-independent only when listed below with its condition on where the batch dim is
(not contracted, reduced or normalized over, not mixed into other dims by a reshape,
``per_token`` dynamic quantization, ...); anything else (RNNs, opaque nodes, user ops, a
per-tensor dynamic scale, which is one amax over the whole batch) gives a reason and the
symbol is not a batch symbol.

Trade-off (measured in ``notes/dynamic_shapes_tvm.md``): batch 1 is the static program, and
int8 stays exact at every size; a batch of ``n`` costs ``n`` calls of the batch-1 program,
so it gains nothing from batching (weights are re-read per sample, and each call pays the
VM's fixed cost). Where throughput at large batches matters more than one artifact,
``shapes=`` compiles the batched program.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

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
        dims = [a.name for a in node.op.attrs if a.kind in ("dims", "dim")]
        updates = {k: _subst_attr(node.attrs[k], bindings) for k in dims
                   if node.attrs[k] is not None}
        if any(updates[k] != node.attrs[k] for k in updates):
            node.set_attrs(**updates)
    for name in bindings:
        g.symbols.pop(name, None)
    g.verify()
    return g


# ----------------------------------------------------------- batch independence
class _NotBatch(Exception):
    """Why a symbol is not a batch symbol (raised inside the analysis only)."""


Axes = list[int | None]  # per operand / result: the position of the batch dim, or None


def _axis(v: Value, name: str) -> int | None:
    """Where ``v`` has the batch dim ``name`` (one whole dim), or None when it has none."""
    uses = [i for i, d in enumerate(v.shape) if type(d) is not int and name in dim_symbols(d)]
    if not uses:
        return None
    d = v.shape[uses[0]]
    if len(uses) != 1 or not (d.is_Symbol and d.name == name):
        raise _NotBatch(f"%{v.name} has type {v.type}: {name} is not one whole dim of it")
    return uses[0]


def _same(node: Node, ins: Axes, outs: Axes, expect: int) -> None:
    if any(o != expect for o in outs):
        raise _NotBatch(f"its result has the batch dim at {_out(outs)}, expected {expect}")


def _out(outs: Axes) -> int:
    """The batch dim of the (first) result; raises when a result has none."""
    if any(o is None for o in outs):
        raise _NotBatch("the batch dim is in its operands but not in all its results")
    return outs[0]  # type: ignore[return-value]


def _leading(node: Node, ins: Axes, outs: Axes) -> None:
    """Batch-first ops (conv, pool, norms over channels): the batch dim is dim 0."""
    if ins[0] != 0 or any(a is not None for a in ins[1:]):
        raise _NotBatch(f"op {node.op.name!r} treats samples independently only along dim 0 "
                        "of its first operand")
    _same(node, ins, outs, 0)


def _rowwise(node: Node, ins: Axes, outs: Axes) -> None:
    """``linear``-like: any dim but the last (the contracted one) of the first operand."""
    rank = node.inputs[0].type.rank
    if ins[0] is None or ins[0] == rank - 1 or any(a is not None for a in ins[1:]):
        raise _NotBatch("the batch dim is contracted (or in a weight)")
    _same(node, ins, outs, ins[0])


def _per_token(node: Node, ins: Axes, outs: Axes) -> None:
    if not node.attrs["per_token"]:
        raise _NotBatch("its activation scale is one amax over the whole tensor "
                        "(per_token=false), so each sample's numbers depend on the others")
    _rowwise(node, ins, outs)


def _normalized(node: Node, ins: Axes, outs: Axes) -> None:
    rank = node.inputs[0].type.rank
    if ins[0] is None or ins[0] >= rank - len(node.attrs["normalized_shape"]) or \
            any(a is not None for a in ins[1:]):
        raise _NotBatch("it normalizes over the batch dim")
    _same(node, ins, outs, ins[0])


def _aligned(node: Node, ins: Axes, outs: Axes, *, below: int = 0) -> None:
    """Broadcasting ops: each operand's batch dim at the result's, counted from the right.

    ``below``: that many trailing dims of every operand (matrix dims) may not hold it.
    """
    out_rank = node.outputs[0].type.rank
    for v, a in zip(node.inputs, ins, strict=True):
        if a is None:
            continue
        if a >= v.type.rank - below or a - v.type.rank != _out(outs) - out_rank:
            raise _NotBatch(f"the batch dim of %{v.name} ({v.type}) does not line up with "
                            f"the result's ({node.outputs[0].type})")
    _same(node, ins, outs, outs[0])


def _elementwise(node: Node, ins: Axes, outs: Axes) -> None:
    _aligned(node, ins, outs)


def _matmul(node: Node, ins: Axes, outs: Axes) -> None:
    (a, b), (ra, rb) = ins, (node.inputs[0].type.rank, node.inputs[1].type.rank)
    ro = node.outputs[0].type.rank
    want = []
    if a is not None:
        if a == ra - 1 or ra == 1:
            raise _NotBatch("the batch dim of its first operand is contracted")
        want.append(ro - 2 if a == ra - 2 else a + ro - ra)
    if b is not None:
        if b == rb - 2 or rb == 1:
            raise _NotBatch("the batch dim of its second operand is contracted")
        if a is not None and (a >= ra - 2 or b >= rb - 2):
            raise _NotBatch("both operands hold the batch dim outside their batch dims")
        want.append(ro - 1 if b == rb - 1 else b + ro - rb)
    if len(set(want)) != 1:
        raise _NotBatch("its operands' batch dims do not line up")
    _same(node, ins, outs, want[0])


def _sdpa(node: Node, ins: Axes, outs: Axes) -> None:
    if ins[0] is None:
        raise _NotBatch("its query has no batch dim")
    _aligned(node, ins, outs, below=2)


def _axis_attr(node: Node, ins: Axes, outs: Axes) -> None:
    """Ops along one ``axis`` attribute (softmax, cat, slice, select, per-channel quantize)."""
    axis, k = node.attrs["axis"], ins[0]
    rank = max(node.inputs[0].type.rank, 1)
    if any(a is not None and a != k for a in ins):
        raise _NotBatch("its operands hold the batch dim at different dims")
    if k is None:
        raise _NotBatch("its first operand has no batch dim")
    if axis is not None and axis % rank == k:
        raise _NotBatch(f"axis={axis} is the batch dim")
    removed = node.op.name == "select" and axis % rank < k
    _same(node, ins, outs, k - 1 if removed else k)


def _reduce(node: Node, ins: Axes, outs: Axes) -> None:
    axes, k = node.attrs["axes"], ins[0]
    rank = max(node.inputs[0].type.rank, 1)
    if not axes:
        raise _NotBatch("it reduces over every dim, the batch dim included")
    norm = {a % rank for a in axes}
    if k in norm:
        raise _NotBatch("it reduces over the batch dim")
    keep = node.attrs.get("keepdim", False)
    _same(node, ins, outs, k if keep else k - sum(a < k for a in norm))


def _permute(node: Node, ins: Axes, outs: Axes) -> None:
    dims = [d % len(node.attrs["dims"]) for d in node.attrs["dims"]]
    _same(node, ins, outs, dims.index(ins[0]))


def _reshape(node: Node, ins: Axes, outs: Axes) -> None:
    """Each sample's block stays in place when the dims before the batch dim keep their
    (static) product: row-major order then maps sample ``i`` onto sample ``i``."""
    x, y = node.inputs[0].type.shape, node.outputs[0].type.shape
    before_in, before_out = x[:ins[0]], y[:_out(outs)]
    if not all(type(d) is int for d in (*before_in, *before_out)) or \
            math.prod(before_in) != math.prod(before_out):
        raise _NotBatch(f"it reshapes {node.inputs[0].type} to {node.outputs[0].type}, which "
                        "moves samples")


def _expand(node: Node, ins: Axes, outs: Axes) -> None:
    _same(node, ins, outs, ins[0] + node.outputs[0].type.rank - node.inputs[0].type.rank)


def _recurrent(node: Node, ins: Axes, outs: Axes) -> None:
    """lstm / gru (and their dynamic-int8 forms): the batch dim of the sequence is dim 0
    (``batch_first``) or 1; the states' is dim 1; the weights hold none. Each sample's
    recurrence is its own (dynamic-int8: only with one activation scale per row)."""
    if node.op.name.startswith("dynamic_") and not node.attrs.get("per_token"):
        raise _NotBatch("its activation scale is one amax over the whole batch "
                        "(per_token=false), so each sample's numbers depend on the others")
    seq = 0 if node.attrs["batch_first"] else 1
    states = 2 if node.op.name.endswith("lstm") else 1
    if ins[0] != seq:
        raise _NotBatch(f"the batch dim of its sequence is not dim {seq}")
    if any(a not in (None, 1) for a in ins[1:1 + states]):
        raise _NotBatch("the batch dim of its initial states is not dim 1")
    if any(a is not None for a in ins[1 + states:]):
        raise _NotBatch("its weights hold the batch dim")
    want = [seq] + [1] * (len(outs) - 1)
    if any(o is not None and o != w for o, w in zip(outs, want, strict=True)):
        raise _NotBatch("its results hold the batch dim elsewhere than its operands")


def _opaque(node: Node, ins: Axes, outs: Axes) -> None:
    """Opaque torch calls known to keep samples apart: ``aten.cumsum`` and ``aten.gather``
    along another dim than the batch dim (RoBERTa's position ids from the padding mask)."""
    import json

    target = node.attrs["target"]
    args = json.loads(node.attrs["spec"]).get("args", [])
    if target == "aten.cumsum.default" and len(args) >= 2 and args[0] == {"$in": 0} and \
            type(args[1]) is int and ins[0] is not None and len(node.inputs) == 1:
        if args[1] % max(node.inputs[0].type.rank, 1) == ins[0]:
            raise _NotBatch(f"it sums cumulatively along the batch dim (dim={args[1]})")
        _same(node, ins, outs, ins[0])
        return
    if target == "aten.gather.default" and len(args) == 3 and args[0] == {"$in": 0} and \
            type(args[1]) is int and args[2] == {"$in": 1} and len(node.inputs) == 2:
        if ins[0] is None or ins[0] != ins[1]:
            raise _NotBatch("its input and index hold the batch dim at different dims")
        if args[1] % max(node.inputs[0].type.rank, 1) == ins[0]:
            raise _NotBatch(f"it gathers along the batch dim (dim={args[1]})")
        _same(node, ins, outs, ins[0])
        return
    raise _NotBatch(f"the opaque torch call {target!r} is not known to treat the batch dim "
                    "independently")


def _pad(node: Node, ins: Axes, outs: Axes) -> None:
    rank = node.inputs[0].type.rank
    if ins[0] >= rank - len(node.attrs["pads"]) // 2:
        raise _NotBatch("it pads the batch dim")
    _same(node, ins, outs, ins[0])


def _keep(node: Node, ins: Axes, outs: Axes) -> None:
    _same(node, ins, outs, ins[0])


def _embedding(node: Node, ins: Axes, outs: Axes) -> None:
    if ins[0] is None or ins[1] is not None:
        raise _NotBatch("the batch dim is not in its indices")
    _same(node, ins, outs, ins[0])


Rule = Callable[[Node, Axes, Axes], None]

_RULES: dict[str, Rule] = {
    **{op: _leading for op in (
        "conv1d", "conv2d", "conv_transpose2d", "batch_norm", "group_norm", "instance_norm",
        "interpolate", "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d",
        "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool1d",
        "adaptive_max_pool2d", "qconv1d", "qconv2d", "qavg_pool2d")},
    **{op: _rowwise for op in ("linear", "qlinear")},
    **{op: _normalized for op in ("layer_norm", "rms_norm")},
    **{op: _axis_attr for op in (
        "cat", "split", "slice", "select", "softmax", "log_softmax", "qcat", "quantize",
        "dequantize", "requantize")},
    **{op: _reduce for op in ("mean", "sum", "amax", "amin")},
    **{op: _matmul for op in ("matmul", "qmatmul")},
    **{op: _elementwise for op in ("qadd", "qmul")},
    **{op: _keep for op in ("identity", "dropout")},
    "sdpa": _sdpa,
    "embedding": _embedding,
    "reshape": _reshape,
    "expand": _expand,
    "permute": _permute,
    "pad": _pad,
    "dynamic_linear": _per_token,
    **{op: _recurrent for op in ("lstm", "gru", "dynamic_lstm", "dynamic_gru")},
    "opaque": _opaque,
}


def batch_symbols(graph: Graph, names: Iterable[str] | None = None) -> dict[str, str | None]:
    """For each symbol, why it is not a batch symbol (``None``: it is one).

    A batch symbol ``N`` is dim 0 of every graph input and output that has it; inside the
    graph it is one whole dim of every value that mentions it (any position: ``permute``
    moves it), and every node that sees it treats the samples along that dim independently
    (the rules above: not contracted, reduced, normalized over or mixed by a reshape). Such
    a graph computes each sample alone, so running the program bound to ``N = 1`` once
    per sample gives the same numbers.
    """
    out: dict[str, str | None] = {}
    for name in sorted(graph.symbols if names is None else names):
        try:
            _check_batch(graph, name)
            out[name] = None
        except _NotBatch as e:
            out[name] = str(e)
    return out


def _live_nodes(graph: Graph) -> set[int]:
    """The ids of the nodes whose results reach a graph output."""
    needed = {id(v) for v in graph.outputs}
    live: set[int] = set()
    for node in reversed(list(graph.nodes)):
        if any(id(v) in needed for v in node.outputs):
            live.add(id(node))
            needed.update(id(v) for v in node.inputs)
    return live


def _is_sample_index(node: Node, name: str) -> bool:
    """``slice(arange(K), axis=0, start=0, end=N, step=1)``: sample ``i``'s own index ``i``
    (transformers' mask code: ``batch_idx = arange(batch_size)``); ``0`` at ``N = 1``."""
    if node.op.name != "slice" or node.attrs["axis"] not in (0, -1) or \
            node.attrs["start"] not in (0, None) or node.attrs["step"] != 1:
        return False
    end, c = node.attrs["end"], node.inputs[0].const
    if type(end) is int or not getattr(end, "is_Symbol", False) or end.name != name:
        return False
    return c is not None and c.dim() == 1 and not c.is_floating_point() and \
        torch.equal(c, torch.arange(c.numel(), dtype=c.dtype))


def _takes_sample_index(node: Node, name: str, ins: Axes, outs: Axes,
                        sample_index: set[int]) -> bool:
    """Whether ``node`` keeps the sample index a sample index (a reshape that keeps the
    batch dim in front), or uses it only to pick each sample's own row (``x[batch_idx,
    ...]`` of an ``x`` whose dim 0 is the batch: at ``N = 1`` it picks row 0, the sample's
    own); records the reshape's result. Raises when the index is used otherwise."""
    if not any(id(v) in sample_index for v in node.inputs):
        return False
    if node.op.name == "reshape" and ins[0] == 0:
        _reshape(node, ins, outs)
        sample_index.add(id(node.outputs[0]))
        return True
    if node.op.name == "opaque" and node.attrs["target"] == "aten.index.Tensor":
        import json

        args = json.loads(node.attrs["spec"]).get("args", [])
        if len(args) == 2 and args[0] == {"$in": 0} and isinstance(args[1], list) and \
                args[1] and all(isinstance(a, dict) and "$in" in a for a in args[1]):
            first, *rest = (node.inputs[a["$in"]] for a in args[1])
            if ins[0] == 0 and outs == [0] and id(first) in sample_index and \
                    _axis(first, name) == 0 and \
                    all(id(v) not in sample_index and _axis(v, name) is None for v in rest):
                return True
    raise _NotBatch(f"{node.describe()}: it computes with the sample index (each sample's "
                    "position in the batch) other than to pick the sample's own row")


def _merged(v: Value, name: str) -> int | None:
    """``k`` when ``v``'s dim 0 is ``name * k`` (``k`` > 1 static: the batch merged with the
    next dims, as ``x.view(-1, d)`` before a GPT-2 ``Conv1D`` does) and no other dim holds
    ``name``; else ``None``."""
    if not v.shape:
        return None
    d = v.shape[0]
    if type(d) is int or not getattr(d, "is_Mul", False):
        return None
    k = [a for a in d.args if a.is_Integer]
    sym = [a for a in d.args if not a.is_Integer]
    if len(k) != 1 or len(sym) != 1 or not (sym[0].is_Symbol and sym[0].name == name) or \
            any(type(e) is not int for e in v.shape[1:]):
        return None
    return int(k[0])


def _per_sample_size(v: Value, name: str) -> int | None:
    """Elements per sample of a value whose dim 0 is ``name`` or ``name * k`` and whose
    other dims are static, else ``None``."""
    if not v.shape or any(type(e) is not int for e in v.shape[1:]):
        return None
    d = v.shape[0]
    k = 1 if getattr(d, "is_Symbol", False) and d.name == name else _merged(v, name)
    return None if k is None else k * math.prod(v.shape[1:])


def _merged_rows(node: Node, name: str) -> None:
    """A node that sees a batch merged into dim 0 (:func:`_merged`): each sample is a
    contiguous block of rows; allowed are reshapes that keep every sample's block (batch
    dim first on both sides, the same elements per sample), products of those rows with a
    batch-free matrix (``matmul``/``linear``), and elementwise ops whose other operands are
    batch-free and do not broadcast along dim 0."""
    x, y = node.inputs[0], node.outputs[0]
    op = node.op.name
    if op == "reshape":
        a, b = _per_sample_size(x, name), _per_sample_size(y, name)
        if a is None or a != b:
            raise _NotBatch(f"it reshapes {x.type} to {y.type}, which moves samples")
        return
    k = _merged(x, name)
    if k is None or any(_merged(v, name) != k for v in node.outputs):
        raise _NotBatch(f"op {op!r} on a batch merged into dim 0 ({x.type}) is not known to "
                        "keep samples apart")
    for v in node.inputs[1:]:  # the others: the same merged rows, or batch-free and not
        if _merged(v, name) == k:  # spread over the rows (dim 0 of size 1, or lower rank)
            continue
        if _axis(v, name) is not None or _merged(v, name) is not None or \
                (v.type.rank == x.type.rank and v.shape and v.shape[0] != 1 and
                 op not in ("linear", "matmul", "layer_norm", "rms_norm")):
            raise _NotBatch(f"operand %{v.name} ({v.type}) spreads over the rows of the "
                            "merged batch")
    rank = x.type.rank
    merged_in = [v for v in node.inputs if _merged(v, name) == k]
    if node.op.has(Trait.ELEMENTWISE) or op in ("identity", "dropout"):
        return
    if op == "linear" or (op == "matmul" and len(merged_in) == 1 and
                          node.inputs[1].type.rank == 2 and rank >= 2):
        return  # rows times a batch-free matrix (the last dim contracted)
    if op in ("matmul", "sdpa") and len({v.type.rank for v in merged_in}) == 1 and \
            rank >= 3 and node.inputs[1] in merged_in:
        return  # a batched product over dim 0 (window attention)
    if op == "permute" and node.attrs["dims"][0] % rank == 0:
        return
    if op in ("layer_norm", "rms_norm") and len(node.attrs["normalized_shape"]) < rank:
        return
    if op in ("softmax", "log_softmax", "slice", "select", "cat", "split") and \
            node.attrs["axis"] is not None and node.attrs["axis"] % rank != 0:
        return
    if op in ("mean", "sum", "amax", "amin") and node.attrs["axes"] and \
            0 not in {a % rank for a in node.attrs["axes"]} and node.attrs.get("keepdim"):
        return
    raise _NotBatch(f"op {op!r} on a batch merged into dim 0 ({x.type}) is not known to keep "
                    "samples apart")


def _check_batch(graph: Graph, name: str) -> None:
    if not any(_axis(v, name) == 0 for v in graph.inputs):
        raise _NotBatch(f"no graph input has {name} as its dim 0")
    for v in graph.inputs:
        if _axis(v, name) not in (None, 0):
            raise _NotBatch(f"input %{v.name} ({v.type}) has {name} other than at dim 0")
    live = _live_nodes(graph)
    sample_index: set[int] = set()  # values holding each sample's own index (module doc)
    for node in graph.nodes:
        if id(node) not in live:  # dead code (a mask helper nobody reads) cannot mix samples
            continue
        if any(_merged(v, name) is not None for v in [*node.inputs, *node.outputs]):
            try:
                _merged_rows(node, name)
            except _NotBatch as e:
                raise _NotBatch(f"{node.describe()}: {e}") from None
            continue
        try:
            ins = [_axis(v, name) for v in node.inputs]
            outs = [_axis(v, name) for v in node.outputs]
        except _NotBatch as e:
            raise _NotBatch(f"{node.describe()}: {e}") from None
        if all(a is None for a in ins + outs):
            continue
        if _takes_sample_index(node, name, ins, outs, sample_index):
            continue
        if any(id(v) in sample_index for v in node.inputs):
            raise _NotBatch(f"{node.describe()}: it computes with the sample index (each "
                            "sample's position in the batch), which is 0 for every sample "
                            "of a per-sample run")
        if all(a is None for a in ins):
            if node.op.name == "expand":  # a batch-free value (an RNN's zero state) copied
                continue  # to every sample: each gets the same numbers
            if _is_sample_index(node, name):
                sample_index.add(id(node.outputs[0]))
                continue
            raise _NotBatch(f"{node.describe()}: {name} appears in its results but not its "
                            "operands")
        rule = _RULES.get(node.op.name)
        if rule is None and node.op.has(Trait.ELEMENTWISE):
            rule = _elementwise  # broadcasting: an operand without N has size 1 there
        if rule is None:
            raise _NotBatch(f"{node.describe()}: op {node.op.name!r} is not known to treat "
                            "the batch dim independently")
        try:
            rule(node, ins, outs)  # the reason why it mixes samples, if it does
            _out(outs)
        except _NotBatch as e:
            raise _NotBatch(f"{node.describe()}: {e}") from None
    for v in graph.outputs:
        try:
            axis = _axis(v, name)
        except _NotBatch:  # e.g. f32[N*3,4]: a merged batch is fine inside, not as a result
            axis = None
        if axis != 0:
            raise _NotBatch(f"output %{v.name} ({v.type}) does not have the batch dim {name} "
                            "as its dim 0")
