"""Channel dependency analysis: which channels of which layers must be pruned together.

The analysis walks the graph once in order and gives every channel position of
every tracked value an *atom* id; coupled positions are merged with union-find:

- ``conv2d``/``conv1d`` (groups=1), ``linear`` and ``embedding`` start fresh atoms
  for their output channels (these are the *sources* a group is named after);
  their weights/biases are sliced along the output axis, the next layer's weight
  along its input axis;
- elementwise ops (add, mul, sub, where, ...) merge the atoms of their operands
  position by position (residual connections); a broadcast constant operand
  (layer scale, bias) is sliced with them;
- ``cat`` concatenates atom lists (offsets come for free), ``split``/``slice`` cut
  them, ``permute`` moves the axis, pooling and activations pass atoms through;
- depthwise convolutions keep their input atoms (in = out channel), grouped ones
  are excluded; ``batch_norm`` passes atoms (its statistics are sliced),
  ``group_norm`` merges each group's channels so only whole groups go;
- a reshape that flattens a channel axis with the axes after it (flatten into
  a linear) repeats each atom ``H*W`` times: pruning channel ``c`` removes input
  features ``c*HW .. (c+1)*HW-1``; a reshape that splits a channel axis into
  ``(heads, head_dim)`` merges each head's positions into one atom, so attention
  prunes whole heads through q/k/v, ``sdpa`` and the output projection;
- anything else that sees tracked channels (opaque ops, graph outputs, layer
  norm over the channels, reductions or softmax over them, unknown reshapes,
  shared weights) *blocks* their atoms, and the reason is kept for the table.

With ``hidden=True`` the hidden (residual-stream) dimension of transformers
becomes one prunable group: a ``layer_norm`` / ``rms_norm`` over the channels
(one normalized axis) slices its weight and bias instead of blocking, and a graph
output on the last axis of a *stream* (its channels pass through such a norm, or
are merged from two or more layers by residual adds) is kept at its full width:
the pruned graph scatters the kept channels back and outputs zeros at the pruned
positions (:attr:`ChannelDeps.filled`). This is **approximate** where a norm sees
pruned channels: the mean and variance are then taken over the kept channels only,
so even channels that are exactly zero change the statistics (``(x - mean) / std``
over ``H'`` instead of ``H`` positions); fine-tune afterwards. Streams without a
norm stay exact.

A :class:`ChannelDeps` holds the result: per-value atom lists, the constant
slices to apply, the groups (components of atoms linked through their source
layers) and the exclusion reasons. It is recomputed whenever the graph changes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

from slimfx.ir.core import Graph
from slimfx.passes.prune.channel_rules import Builder, ChannelDim, ParamSlice, node_rule

__all__ = ["ChannelDim", "ParamSlice", "ChannelGroup", "ChannelDeps", "ChannelDependencyAnalysis",
           "analyze_channels"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChannelGroup:
    """Channels of several layers that can only be removed together.

    Attributes:
        id: index of the group in :attr:`ChannelDeps.groups`.
        atoms: root atom ids, one per prunable unit (a channel, or a whole head).
        width: positions of the source layer per unit (1 for channels, head_dim for heads).
        members: ``node:role`` descriptions of the layers touched.
        excluded: reason the group (or some of its units) cannot be pruned; empty if none.
        blocked: atoms of ``atoms`` that must be kept.
    """

    id: int
    atoms: tuple[int, ...]
    width: int
    members: tuple[str, ...]
    excluded: str = ""
    blocked: frozenset[int] = frozenset()

    @property
    def prunable(self) -> tuple[int, ...]:
        return tuple(a for a in self.atoms if a not in self.blocked)


@dataclass
class ChannelDeps:
    """The result of the analysis; see the module docstring."""

    dims: dict[str, ChannelDim]
    slices: list[ParamSlice]
    parent: list[int]
    groups: list[ChannelGroup]
    blocked: dict[int, str]
    group_of: dict[int, int] = field(default_factory=dict)
    filled: tuple[str, ...] = ()
    """Graph outputs (value names) kept at full width with zeros at pruned positions."""

    def find(self, atom: int) -> int:
        p = self.parent
        while p[atom] != atom:
            p[atom] = p[p[atom]]
            atom = p[atom]
        return atom

    def roots(self, value: str) -> list[int] | None:
        """Root atom per position of ``value``'s channel axis, or None if untracked."""
        dim = self.dims.get(value)
        return None if dim is None else [self.find(a) for a in dim.atoms]

    def kept_positions(self, value: str, pruned: frozenset[int]) -> list[int] | None:
        """Positions of ``value`` that survive when the root atoms ``pruned`` go (None: all)."""
        roots = self.roots(value)
        if roots is None:
            return None
        keep = [i for i, r in enumerate(roots) if r not in pruned]
        return None if len(keep) == len(roots) else keep

    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def table(self, max_members: int = 4) -> str:
        """The groups as a readable text table."""
        from slimfx.passes.prune.report import format_table

        rows = [("group", "units", "prunable", "width", "members", "excluded")]
        for g in self.groups:
            mem = ", ".join(g.members[:max_members])
            if len(g.members) > max_members:
                mem += f", ... (+{len(g.members) - max_members})"
            rows.append((str(g.id), str(len(g.atoms)), str(len(g.prunable)), str(g.width), mem,
                         g.excluded or "-"))
        return format_table(rows)

    def __str__(self) -> str:
        return self.table()


def analyze_channels(graph: Graph, *, protect: Iterable[str] = (),
                     hidden: bool = False) -> ChannelDeps:
    """Computes the channel dependency groups of ``graph``.

    Args:
        graph: the graph to analyze (not modified).
        protect: names of nodes (their result names) whose input and output
            channels must be kept.
        hidden: also prune the hidden (residual-stream) dimension: channels that
            layer / RMS norms normalize over (approximate, see the module docstring),
            and graph outputs of streams kept at full width with zeros.

    Returns:
        The :class:`ChannelDeps`; ``str()`` of it is a table of the groups.
    """
    b = Builder(graph, norms=hidden)
    protect = set(protect)
    for node in graph.nodes:
        rule = node_rule(node)
        if rule is None:
            b.block_all(node, f"op {node.op.name!r} has no channel rule (opaque or unknown "
                              "consumer); its inputs keep all channels")
            continue
        rule(b, node)
    for node in graph.nodes:
        if node.name in protect:
            for v in (*node.inputs, *node.outputs):
                b.block(node, v, "protected by the user")
    streams = _stream_roots(b) if hidden else set()
    filled: list[str] = []
    for v in graph.outputs:
        d = b.dim(v)
        if (d is not None and d.axis == v.type.rank - 1 and v.name not in filled
                and v.type.is_float and any(b.find(a) in streams for a in d.atoms)):
            filled.append(v.name)
        else:
            b.block(None, v, "graph output")
    return _finish(b, tuple(filled))


def _stream_roots(b: Builder) -> set[int]:
    """Roots of residual streams: normalized by a norm, or merged from two or more sources."""
    seen: dict[int, int] = {}
    streams = {b.find(a) for a in b.norm_atoms}
    for i, (_, atoms) in enumerate(b.sources):
        for a in atoms:
            r = b.find(a)
            if seen.setdefault(r, i) != i:
                streams.add(r)
    return streams


def _finish(b: Builder, filled: tuple[str, ...] = ()) -> ChannelDeps:
    blocked: dict[int, str] = {}
    for a, why in b.blocked.items():
        blocked.setdefault(b.find(a), why)
    # groups: roots linked through the source layer they came from
    gparent: dict[int, int] = {}

    def gfind(r: int) -> int:
        while gparent.setdefault(r, r) != r:
            r = gparent[r]
        return r

    order: list[int] = []
    width: dict[int, int] = {}
    for _, atoms in b.sources:
        roots = [b.find(a) for a in atoms]
        counts: dict[int, int] = {}
        for r in roots:
            counts[r] = counts.get(r, 0) + 1
        for r, n in counts.items():
            width[r] = max(width.get(r, 0), n)
            if r not in gparent:
                order.append(r)
            gparent[gfind(r)] = gfind(roots[0])
    comps: dict[int, list[int]] = {}
    for r in order:
        comps.setdefault(gfind(r), []).append(r)
    members: dict[int, list[str]] = {}
    for a, ms in b.touch.items():
        r = b.find(a)
        if r in gparent:
            members.setdefault(gfind(r), []).extend(ms)
    groups: list[ChannelGroup] = []
    group_of: dict[int, int] = {}
    for key, roots in comps.items():
        gid = len(groups)
        blk = frozenset(r for r in roots if r in blocked)
        reasons = sorted({blocked[r] for r in blk})
        excluded = "; ".join(reasons[:2]) + (f" (+{len(reasons) - 2} more)" if len(reasons) > 2
                                             else "")
        ms = _merge_members(members.get(key, []))
        groups.append(ChannelGroup(gid, tuple(roots), max(width[r] for r in roots), tuple(ms),
                                   excluded, blk))
        for r in roots:
            group_of[r] = gid
    deps = ChannelDeps(b.dims, b.slices, b.parent, groups, blocked, group_of, filled)
    log.debug("channel dependency groups:\n%s", deps.table())
    return deps


def _merge_members(items: list[str]) -> list[str]:
    """``["conv1:conv2d", "conv1:out", "bn2:mean"]`` -> ``["conv1[out]", "bn2"]``."""
    roles: dict[str, list[str]] = {}
    for item in items:
        node, _, role = item.partition(":")
        rs = roles.setdefault(node, [])
        if role in ("out", "in", "depthwise", "heads", "flatten", "split", "slice", "operand",
                    "embed") and role not in rs:
            rs.append(role)
    return [f"{n}[{','.join(r)}]" if r else n for n, r in roles.items()]


class ChannelDependencyAnalysis:
    """The analysis as the pass infrastructure's analysis manager expects it.

    ``ctx.analysis(graph, ChannelDependencyAnalysis)`` returns the cached
    :class:`ChannelDeps` of ``graph`` (no user protection applied).
    """

    name: ClassVar[str] = "channel-deps"

    @classmethod
    def compute(cls, graph: Graph, ctx: object = None) -> ChannelDeps:
        return analyze_channels(graph)
