"""How each op moves, couples or blocks tracked channels (used by ``dependency.py``).

A rule ``rule(builder, node)`` reads the :class:`ChannelDim` of the node's
operands, merges atoms that must be pruned together, records the constant
slices the node needs and sets the channel dims of its results. Ops without a
rule block the channels of their operands. See the docstring of
:mod:`slimfx.passes.prune.dependency` for the catalogue.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from slimfx.ir.core import Graph, Node, Value
from slimfx.ir.ops import Trait
from slimfx.ir.shapes import norm_axis

__all__ = ["ChannelDim", "ParamSlice", "Builder", "node_rule"]


@dataclass(frozen=True, slots=True)
class ChannelDim:
    """The tracked channel axis of one value: the atom id of every position along it."""

    axis: int
    atoms: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ParamSlice:
    """Constant ``const`` is cut along ``axis`` wherever the positions of ``value`` go."""

    const: str
    axis: int
    value: str
    node: str
    role: str


class Builder:
    """Mutable state of one analysis run."""

    def __init__(self, graph: Graph, *, norms: bool = False) -> None:
        self.graph = graph
        self.norms = norms  # prune channels that a layer / RMS norm normalizes over
        self.norm_atoms: list[int] = []  # atoms normalized by such a norm (hidden streams)
        self.parent: list[int] = []
        self.dims: dict[str, ChannelDim] = {}
        self.slices: list[ParamSlice] = []
        self.blocked: dict[int, str] = {}
        self.sources: list[tuple[str, tuple[int, ...]]] = []
        self.touch: dict[int, list[str]] = {}  # atom -> member descriptions

    # ------------------------------------------------------------ union-find
    def find(self, a: int) -> int:
        p = self.parent
        while p[a] != a:
            p[a] = p[p[a]]
            a = p[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def new_atoms(self, n: int) -> tuple[int, ...]:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return tuple(range(start, start + n))

    # ------------------------------------------------------------ values
    def dim(self, v: Value) -> ChannelDim | None:
        return self.dims.get(v.name)

    def set_dim(self, v: Value, axis: int, atoms: Iterable[int], member: str = "") -> None:
        atoms = tuple(atoms)
        self.dims[v.name] = ChannelDim(norm_axis(axis, v.type.rank), atoms)
        if member and atoms:
            self.touch.setdefault(atoms[0], []).append(member)

    def fresh(self, node: Node, v: Value, axis: int, *, reason: str = "") -> tuple[int, ...]:
        """New atoms for ``v``'s axis; a source of a group unless ``reason`` blocks them."""
        atoms = self.new_atoms(v.type.shape[axis])
        self.set_dim(v, axis, atoms, f"{node.name}:{node.op.name}")
        if reason:
            for a in atoms:
                self.blocked[a] = f"{node.name} ({node.op.name}): {reason}"
        else:
            self.sources.append((v.name, atoms))
        return atoms

    def block(self, node: Node | None, v: Value, reason: str) -> None:
        d = self.dims.get(v.name)
        if d is None:
            return
        where = f"{node.name} ({node.op.name})" if node is not None else f"%{v.name}"
        for a in d.atoms:
            self.blocked.setdefault(a, f"{where}: {reason}")

    def block_all(self, node: Node, reason: str) -> None:
        for v in node.inputs:
            self.block(node, v, reason)

    def slice(self, node: Node, const: Value | None, axis: int, v: Value, role: str) -> None:
        if const is None:
            return
        self.slices.append(ParamSlice(const.name, norm_axis(axis, const.type.rank), v.name,
                                      node.name, role))
        d = self.dims.get(v.name)
        if d is not None and d.atoms:
            self.touch.setdefault(d.atoms[0], []).append(f"{node.name}:{role}")

    def owned(self, node: Node, consts: Iterable[Value | None]) -> str:
        """'' if every given operand is a constant used only by ``node``, else a reason."""
        for c in consts:
            if c is None:
                continue
            if not c.is_const:
                return f"%{c.name} is not a constant"
            if len(c.uses()) != 1 or c in self.graph.outputs:
                return f"weight %{c.name} is shared with other nodes"
        return ""

    def passthrough(self, node: Node, src: Value, dst: Value, axis: int | None = None) -> None:
        d = self.dim(src)
        if d is not None:
            self.set_dim(dst, d.axis if axis is None else axis, d.atoms)


Rule = Callable[[Builder, Node], None]
_RULES: dict[str, Rule] = {}


def _rule(*ops: str) -> Callable[[Rule], Rule]:
    def deco(fn: Rule) -> Rule:
        for op in ops:
            _RULES[op] = fn
        return fn
    return deco


def _opt(node: Node, i: int) -> Value | None:
    return node.inputs[i] if len(node.inputs) > i else None


@_rule("conv1d", "conv2d")
def _conv(b: Builder, node: Node) -> None:
    x, w, bias, out = node.inputs[0], node.inputs[1], _opt(node, 2), node.outputs[0]
    xd = b.dim(x)
    if xd is not None and xd.axis != 1:
        b.block(node, x, "tracked channels reach a convolution on a non-channel axis")
        xd = None
    groups, cin, cout = node.attrs["groups"], x.type.shape[1], w.type.shape[0]
    why = b.owned(node, (w, bias))
    if why:
        b.block(node, x, why)
        b.fresh(node, out, 1, reason=why)
        return
    if groups == 1:
        b.fresh(node, out, 1)
        b.slice(node, w, 0, out, "out")
        b.slice(node, bias, 0, out, "bias")
        if xd is not None:
            b.slice(node, w, 1, x, "in")
    elif groups == cin == cout and xd is not None:
        b.set_dim(out, 1, xd.atoms, f"{node.name}:depthwise")
        b.slice(node, w, 0, out, "depthwise")
        b.slice(node, bias, 0, out, "bias")
    else:
        why = (f"grouped convolution (groups={groups}, {cin}->{cout} channels) is excluded: "
               "its channels could only be pruned evenly per group")
        b.block(node, x, why)
        b.fresh(node, out, 1, reason=why)


@_rule("linear")
def _linear(b: Builder, node: Node) -> None:
    x, w, bias, out = node.inputs[0], node.inputs[1], _opt(node, 2), node.outputs[0]
    xd = b.dim(x)
    if xd is not None and xd.axis != x.type.rank - 1:
        b.block(node, x, "tracked channels reach a linear layer on a non-feature axis")
        xd = None
    why = b.owned(node, (w, bias))
    if why:
        b.block(node, x, why)
        b.fresh(node, out, -1, reason=why)
        return
    b.fresh(node, out, -1)
    b.slice(node, w, 0, out, "out")
    b.slice(node, bias, 0, out, "bias")
    if xd is not None:
        b.slice(node, w, 1, x, "in")


@_rule("embedding")
def _embedding(b: Builder, node: Node) -> None:
    w, out = node.inputs[1], node.outputs[0]
    why = b.owned(node, (w,))
    b.fresh(node, out, -1, reason=why)
    if not why:
        b.slice(node, w, 1, out, "embed")


@_rule("batch_norm")
def _batch_norm(b: Builder, node: Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    xd = b.dim(x)
    if xd is None:
        return
    if xd.axis != 1:
        b.block(node, x, "tracked channels reach batch_norm on a non-channel axis")
        return
    why = b.owned(node, node.inputs[1:])
    if why:
        b.block(node, x, why)
        return
    b.set_dim(out, 1, xd.atoms)
    for i, role in ((1, "mean"), (2, "var"), (3, "bn.weight"), (4, "bn.bias")):
        b.slice(node, _opt(node, i), 0, out, role)


@_rule("group_norm")
def _group_norm(b: Builder, node: Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    xd = b.dim(x)
    if xd is None:
        return
    why = "" if xd.axis == 1 else "tracked channels reach group_norm on a non-channel axis"
    why = why or b.owned(node, node.inputs[1:])
    if why:
        b.block(node, x, why)
        return
    per = x.type.shape[1] // node.attrs["num_groups"]
    for g in range(node.attrs["num_groups"]):
        for a in xd.atoms[g * per + 1:(g + 1) * per]:
            b.union(xd.atoms[g * per], a)
    b.set_dim(out, 1, xd.atoms)
    b.slice(node, _opt(node, 1), 0, out, "gn.weight")
    b.slice(node, _opt(node, 2), 0, out, "gn.bias")


@_rule("layer_norm", "rms_norm")
def _layer_norm(b: Builder, node: Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    xd = b.dim(x)
    if xd is None:
        return
    ndims = len(node.attrs["normalized_shape"])
    if xd.axis >= x.type.rank - ndims:
        if not b.norms:
            why = (f"{node.op.name} normalizes over the channels; pruning would change its "
                   "statistics (hidden=True prunes them anyway, approximately)")
        elif ndims != 1:
            why = f"{node.op.name} normalizes over {ndims} axes; only one can be pruned"
        else:
            why = b.owned(node, node.inputs[1:])
        if why:
            b.block(node, x, why)
        else:  # hidden=True: weight and bias follow; mean / variance change (approximate)
            b.slice(node, _opt(node, 1), 0, x, "ln.weight")
            b.slice(node, _opt(node, 2), 0, x, "ln.bias")
            b.norm_atoms.extend(xd.atoms)
    b.passthrough(node, x, out)  # blocked or not, the residual stream stays one group


def _elementwise(b: Builder, node: Node) -> None:
    out = node.outputs[0]
    rank = out.type.rank
    tracked = [(v, b.dim(v)) for v in node.inputs if b.dim(v) is not None]
    if not tracked:
        return
    axes = {d.axis + rank - v.type.rank for v, d in tracked if d is not None}
    if len(axes) != 1 or out.type.dtype == "bool":
        b.block_all(node, "operands carry channels on different axes")
        return
    axis = axes.pop()
    first = tracked[0][1]
    assert first is not None
    for v in node.inputs:
        d = b.dim(v)
        vax = axis - (rank - v.type.rank)
        if d is not None:
            for a, c in zip(first.atoms, d.atoms, strict=True):
                b.union(a, c)
        elif vax >= 0 and v.type.shape[vax] != 1:
            if v.is_const and len(v.uses()) == 1:
                b.slice(node, v, vax, out, "operand")
            else:
                b.block_all(node, f"operand %{v.name} is not tracked but spans the channels")
    b.set_dim(out, axis, first.atoms, f"{node.name}:{node.op.name}")


@_rule("cat")
def _cat(b: Builder, node: Node) -> None:
    out = node.outputs[0]
    ax = norm_axis(node.attrs["axis"], out.type.rank)
    dims = [b.dim(v) for v in node.inputs]
    if all(d is None for d in dims):
        return
    if all(d is None or d.axis == ax for d in dims):
        atoms: list[int] = []
        for v, d in zip(node.inputs, dims, strict=True):
            if d is None:
                d = ChannelDim(ax, b.new_atoms(v.type.shape[ax]))
                for a in d.atoms:
                    b.blocked[a] = f"{node.name} (cat): operand %{v.name} is not prunable"
            atoms.extend(d.atoms)
        b.set_dim(out, ax, atoms, f"{node.name}:cat")
    else:  # concatenating along another axis (tokens): channels of all operands tie
        _elementwise(b, node)


@_rule("split")
def _split(b: Builder, node: Node) -> None:
    x = node.inputs[0]
    d = b.dim(x)
    if d is None:
        return
    ax = norm_axis(node.attrs["axis"], x.type.rank)
    if d.axis != ax:
        for o in node.outputs:
            b.passthrough(node, x, o)
        return
    off = 0
    for o, size in zip(node.outputs, node.attrs["sizes"], strict=True):
        b.set_dim(o, ax, d.atoms[off:off + size], f"{node.name}:split")
        off += size


@_rule("slice")
def _slice(b: Builder, node: Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    d = b.dim(x)
    if d is None:
        return
    ax = norm_axis(node.attrs["axis"], x.type.rank)
    if d.axis != ax:
        b.passthrough(node, x, out)
    elif node.attrs["step"] != 1:
        b.block(node, x, "strided slice of the channel axis")
    elif type(node.attrs["start"]) is not int or type(node.attrs["end"]) is not int:
        b.block(node, x, "slice of the channel axis with symbolic bounds")
    else:
        r = range(*slice(node.attrs["start"], node.attrs["end"]).indices(x.type.shape[ax]))
        b.set_dim(out, ax, [d.atoms[i] for i in r], f"{node.name}:slice")


@_rule("select")
def _select(b: Builder, node: Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    d = b.dim(x)
    if d is None:
        return
    ax = norm_axis(node.attrs["axis"], x.type.rank)
    if d.axis == ax:
        b.block(node, x, "select on the channel axis")
    else:
        b.set_dim(out, d.axis - (1 if ax < d.axis else 0), d.atoms)


@_rule("permute")
def _permute(b: Builder, node: Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    d = b.dim(x)
    if d is not None:
        dims = [norm_axis(i, x.type.rank) for i in node.attrs["dims"]]
        b.set_dim(out, dims.index(d.axis), d.atoms)


@_rule("expand")
def _expand(b: Builder, node: Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    d = b.dim(x)
    if d is not None:
        b.set_dim(out, d.axis + out.type.rank - x.type.rank, d.atoms)


@_rule("reshape")
def _reshape(b: Builder, node: Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    d = b.dim(x)
    if d is None:
        return
    ins, outs = x.type.shape, out.type.shape
    before, c = math.prod(ins[:d.axis]), ins[d.axis]
    j = next((j for j in range(len(outs) + 1) if math.prod(outs[:j]) == before), None)
    # skip size-1 axes so that unsqueeze before the channel axis is followed
    while j is not None and j < len(outs) and outs[j] == 1 and c != 1:
        j += 1
    if j is None or j >= len(outs):
        b.block(node, x, f"unknown reshape {ins} -> {outs} of the channel axis")
        return
    if outs[j] == c:
        b.set_dim(out, j, d.atoms)
    elif outs[j] % c == 0:  # flatten: channel x spatial
        k = outs[j] // c
        b.set_dim(out, j, [a for a in d.atoms for _ in range(k)], f"{node.name}:flatten")
    elif c % outs[j] == 0 and j + 1 < len(outs) and outs[j] * outs[j + 1] == c:  # heads
        heads, hd = outs[j], outs[j + 1]
        for h in range(heads):
            for a in d.atoms[h * hd + 1:(h + 1) * hd]:
                b.union(d.atoms[h * hd], a)
        b.set_dim(out, j, d.atoms[::hd], f"{node.name}:heads")
    else:
        b.block(node, x, f"unknown reshape {ins} -> {outs} of the channel axis")


@_rule("mean", "sum", "amax", "amin")
def _reduce(b: Builder, node: Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    d = b.dim(x)
    if d is None:
        return
    axes = {norm_axis(a, x.type.rank) for a in node.attrs["axes"]} or set(range(x.type.rank))
    if d.axis in axes:
        b.block(node, x, f"{node.op.name} reduces over the channel axis")
        return
    shift = 0 if node.attrs["keepdim"] else sum(1 for a in axes if a < d.axis)
    b.set_dim(out, d.axis - shift, d.atoms)


@_rule("softmax", "log_softmax")
def _softmax(b: Builder, node: Node) -> None:
    x = node.inputs[0]
    d = b.dim(x)
    if d is not None and norm_axis(node.attrs["axis"], x.type.rank) == d.axis:
        b.block(node, x, f"{node.op.name} normalizes over the channel axis")
    else:
        b.passthrough(node, x, node.outputs[0])


def _spatial(nd_of: Callable[[Node], int]) -> Rule:
    def rule(b: Builder, node: Node) -> None:
        x = node.inputs[0]
        d = b.dim(x)
        if d is not None and d.axis >= x.type.rank - nd_of(node):
            b.block(node, x, f"{node.op.name} acts along the channel axis")
        else:
            b.passthrough(node, x, node.outputs[0])
    return rule


def _fixed_dims(nd: int) -> Callable[[Node], int]:
    def dims(n: Node) -> int:
        return nd
    return dims


for _nd in (1, 2):
    for _name in ("max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool"):
        _RULES[f"{_name}{_nd}d"] = _spatial(_fixed_dims(_nd))


def _interp_dims(n: Node) -> int:
    return len(n.attrs["size"])


def _pad_dims(n: Node) -> int:
    return len(n.attrs["pads"]) // 2


_RULES["interpolate"] = _spatial(_interp_dims)
_RULES["pad"] = _spatial(_pad_dims)


@_rule("sdpa")
def _sdpa(b: Builder, node: Node) -> None:
    q, k, v = node.inputs[:3]
    dims = [b.dim(t) for t in (q, k, v)]
    mask = _opt(node, 3)
    ok = (all(d is not None and d.axis == t.type.rank - 3 for d, t in zip(dims, (q, k, v),
                                                                        strict=True))
          and not node.attrs["enable_gqa"] and (mask is None or b.dim(mask) is None))
    if not ok:
        b.block_all(node, "attention heads of q, k and v are not all tracked on the head axis")
        return
    for d in dims[1:]:
        for a, c in zip(dims[0].atoms, d.atoms, strict=True):  # type: ignore[union-attr]
            b.union(a, c)
    b.set_dim(node.outputs[0], q.type.rank - 3, dims[0].atoms, f"{node.name}:sdpa")  # type: ignore[union-attr]


@_rule("matmul")
def _matmul(b: Builder, node: Node) -> None:
    a, c = node.inputs
    da, dc = b.dim(a), b.dim(c)
    out = node.outputs[0]
    if da is None and dc is None:
        return
    ra, rc, ro = a.type.rank, c.type.rank, out.type.rank
    if (da is not None and dc is not None and ra >= 3 and rc >= 3 and da.axis < ra - 2
            and da.axis - ra == dc.axis - rc):  # a shared batch axis (attention heads)
        for x, y in zip(da.atoms, dc.atoms, strict=True):
            b.union(x, y)
        b.set_dim(out, ro + da.axis - ra, da.atoms)
        return
    b.block_all(node, "matmul contracts or mixes the channel axis")


def node_rule(node: Node) -> Rule | None:
    rule = _RULES.get(node.op.name)
    if rule is not None:
        return rule
    if node.has(Trait.IDENTITY) or node.has(Trait.UNARY_ACTIVATION) or (
            node.has(Trait.ELEMENTWISE) and len(node.outputs) == 1):
        return _elementwise
    return None
