"""``prune-channels``: structured pruning over channel dependency groups.

1. :func:`~slimfx.passes.prune.dependency.analyze_channels` finds the groups;
2. each unit (channel or head) gets an importance summed over its group's
   members (:mod:`~slimfx.passes.prune.importance`);
3. the plan picks the least important units: ``scope=uniform`` removes
   ``ratio`` of every group, ``scope=global`` ranks units of all groups together
   after dividing each group's scores by the group mean; kept counts are rounded
   up so that every group keeps a multiple of ``round_to`` channels (and at least
   ``round_to``), blocked units are never removed. ``round_to`` is 1 by default
   (prune exactly what was asked, like Torch-Pruning's ``round_to=None``); a larger
   value (a kernel's vector width) can only remove less than asked, so a group where
   rounding removes less than half of the units asked for (or none) is logged as a
   warning naming the group, the requested and achieved counts and ``round_to``;
4. the graph is rewritten: every sliced constant is cut with ``index_select``,
   node attributes follow (depthwise ``groups``, ``group_norm`` groups, reshape
   and expand shapes, split sizes, slice bounds) and result types are inferred
   again.

Semantics: the pruned graph computes exactly what the original computes when
the removed channels are zeroed where they are consumed, i.e. when the input
columns of the next convolution / linear layer for those channels are zero
(:func:`mask_channel_plan` builds that graph). Outputs are never pruned.

``hidden=True`` also prunes the hidden (residual-stream) dimension of transformer
encoders as one group: embeddings, every q/k/v/output projection, LayerNorm
weights and biases, FFN in/out and the pooler's input. A graph output on such a
stream keeps its shape: the pruned graph ends it with a 0/1 ``linear`` (``H x H'``
weights, exact) that puts the kept channels back at their positions and zeros at
the pruned ones; the masked graph zeroes those positions too. Where a layer / RMS
norm normalizes over pruned channels the result is **not** exact: the norm's mean
and variance are taken over the ``H'`` kept channels instead of all ``H`` (even
channels that are exactly zero shift them), so fine-tune the pruned model
(:func:`~slimfx.passes.prune.finetune.finetune`); a stream without norms stays exact.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from slimfx.errors import PipelineError, PruningError
from slimfx.ir.core import Graph, Node
from slimfx.ir.shapes import norm_axis
from slimfx.passes.base import Pass, PassResult
from slimfx.passes.context import PassContext
from slimfx.passes.prune.dependency import ChannelDeps, ChannelGroup, analyze_channels
from slimfx.passes.prune.importance import Scorer, get_scorer, unit_importance
from slimfx.passes.registry import register_pass

__all__ = ["ChannelPlan", "plan_channel_pruning", "apply_channel_plan", "mask_channel_plan",
           "prune_channels", "PruneChannels", "DEFAULT_ROUND_TO", "check_request",
           "plan_kept_counts", "ranked_units", "score_units"]

log = logging.getLogger(__name__)

DEFAULT_ROUND_TO = 1
"""The default ``round_to`` of ``prune-channels`` and :func:`prune_channels` alike."""

_SCOPES = ("global", "uniform")


@dataclass(frozen=True)
class ChannelPlan:
    """Which root atoms of ``deps`` go; apply it with :func:`apply_channel_plan`."""

    deps: ChannelDeps
    pruned: frozenset[int]

    def summary(self) -> str:
        """One line per group that loses channels."""
        lines = []
        for g in self.deps.groups:
            n = sum(1 for a in g.atoms if a in self.pruned)
            if n:
                lines.append(f"group {g.id}: {len(g.atoms) - n}/{len(g.atoms)} units kept "
                             f"({', '.join(g.members[:3])})")
        return "\n".join(lines)


def check_request(ratio: object, round_to: object, scope: object) -> None:
    """Refuses a ``ratio`` outside [0, 1), a ``round_to`` that is not an int >= 1, or an
    unknown ``scope``, naming the argument.

    Raises:
        PruningError: one of them is out of range or of the wrong type.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) \
            or not 0.0 <= float(ratio) < 1.0:
        raise PruningError(f"prune-channels: ratio={ratio!r} must lie in [0, 1): the share of "
                           "channels to remove (0.5 removes half)")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise PruningError(f"prune-channels: round_to={round_to!r} must be an int >= 1 (1 "
                           "prunes exactly the ratio; 8 or 16 keep multiples of a vector width)")
    if scope not in _SCOPES:
        raise PruningError(f"prune-channels: scope={scope!r}; choose global or uniform")


def _expect_graph(graph: object) -> Graph:
    if isinstance(graph, Graph):
        return graph
    if isinstance(graph, torch.nn.Module):
        raise PruningError(f"prune-channels: graph is a torch module ({type(graph).__name__}), "
                           "not a slimfx graph; trace it first with "
                           "slimfx.trace(model, example_inputs) and pass the result")
    raise PruningError(f"prune-channels: graph must be a slimfx Graph (from slimfx.trace), got "
                       f"{type(graph).__name__}")


def _check_names(graph: Graph, names: Iterable[str] | str) -> tuple[str, ...]:
    names = (names,) if isinstance(names, str) else tuple(names)  # one name, not its letters
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise PruningError(f"prune-channels: protect holds node names (str), got {bad[0]!r}")
    known = {n.name for n in graph.nodes}
    missing = [n for n in names if n not in known]
    if missing:
        raise PruningError(f"prune-channels: no node named {', '.join(map(repr, missing))} "
                           "to protect; use the result names printed by print(graph)")
    return names


def score_units(graph: Graph, importance: str | Scorer, protect: Sequence[str] | str,
                deps: ChannelDeps | None, hidden: bool) -> tuple[ChannelDeps, dict[int, float]]:
    """The dependency groups of ``graph`` (``deps`` unless names are protected) and the
    importance of every unit.

    Raises:
        PruningError: not a graph, an unknown protected name or importance, or no group
            left that may be pruned.
    """
    graph = _expect_graph(graph)
    scorer = get_scorer(importance)
    protect = _check_names(graph, protect)
    if deps is None or protect:
        deps = analyze_channels(graph, protect=protect, hidden=hidden)
    if not deps.prunable_groups:
        reasons = sorted({g.excluded for g in deps.groups if g.excluded})[:5]
        raise PruningError("prune-channels: every channel is protected or excluded, nothing "
                           "can be pruned" + (": " + "; ".join(reasons) if reasons else "")
                           + ". Unprotect layers or check the table of analyze_channels(graph)")
    return deps, unit_importance(graph, deps, scorer)


def plan_channel_pruning(graph: Graph, ratio: float = 0.5, *,
                         importance: str | Scorer = "l1",
                         scope: Literal["global", "uniform"] = "global",
                         round_to: int = DEFAULT_ROUND_TO,
                         protect: Sequence[str] | str = (),
                         deps: ChannelDeps | None = None, hidden: bool = False) -> ChannelPlan:
    """Chooses the units to remove; see the module docstring.

    Raises:
        PruningError: ``ratio`` outside [0, 1), ``round_to`` not an int >= 1, an
            unknown protected name, an unknown importance or scope, or nothing left
            that may be pruned.
    """
    check_request(ratio, round_to, scope)
    deps, scores = score_units(graph, importance, protect, deps, hidden)
    groups = deps.prunable_groups
    targets: dict[int, int] = {}  # group id -> units to prune before rounding
    if scope == "uniform":
        for g in groups:
            targets[g.id] = int(math.floor(ratio * len(g.atoms)))
    else:
        ranked: list[tuple[float, int, int]] = []
        total = 0
        for g in groups:
            vals = [scores[a] for a in g.prunable if a in scores]
            mean = sum(vals) / len(vals) if vals else 0.0
            total += len(g.atoms) * g.width
            for a in g.prunable:
                if a in scores:
                    ranked.append((scores[a] / mean if mean > 0 else 0.0, g.id, g.width))
        ranked.sort(key=lambda t: t[0])
        budget = ratio * total
        for _, gid, width in ranked:
            if budget < width:
                break
            targets[gid] = targets.get(gid, 0) + 1
            budget -= width
    pruned: set[int] = set()
    short: list[str] = []  # groups where rounding cancels most of the request
    for g in groups:
        cands = ranked_units(g, scores)
        if not cands:
            log.info("prune-channels: group %d has no importance score; kept", g.id)
            continue
        step = round_to // math.gcd(round_to, g.width)
        n = len(g.atoms)
        asked = targets.get(g.id, 0)
        keep = min(n, max(step, math.ceil((n - asked) / step) * step))
        got = min(n - keep, len(cands))
        pruned.update(cands[:got])
        asked = min(asked, len(cands))  # blocked units are never removed, rounding or not
        if asked > 0 and got < asked / 2:
            w = g.width
            heads = f" (units of {w})" if w > 1 else ""
            short.append(f"group {g.id} ({', '.join(g.members[:2])}): {asked * w} of {n * w} "
                         f"channels asked{heads}, {got * w} removed")
    if short:
        more = f"; and {len(short) - 10} more" if len(short) > 10 else ""
        log.warning("prune-channels: round_to=%d removes much less than ratio=%g asks in %d "
                    "group(s): %s%s. Every group keeps a multiple of round_to channels (at "
                    "least round_to); lower round_to (1 prunes exactly the ratio)", round_to,
                    ratio, len(short), "; ".join(short[:10]), more)
    _keep_every_value_alive(deps, pruned, scores)
    return ChannelPlan(deps, frozenset(pruned))


def ranked_units(group: ChannelGroup, scores: dict[int, float]) -> list[int]:
    """The prunable, scored units of ``group``, least important first (the order they go)."""
    return sorted((a for a in group.prunable if a in scores), key=lambda a: scores[a])


def plan_kept_counts(deps: ChannelDeps, scores: dict[int, float],
                     keep: dict[int, int]) -> ChannelPlan:
    """The plan that keeps ``keep[group id]`` units of those groups (the most important ones).

    Groups not in ``keep`` keep everything; a group never loses a blocked or unscored unit,
    so it may keep more than asked.
    """
    pruned: set[int] = set()
    for g in deps.prunable_groups:
        if g.id in keep:
            cands = ranked_units(g, scores)
            pruned.update(cands[:max(0, min(len(g.atoms) - keep[g.id], len(cands)))])
    _keep_every_value_alive(deps, pruned, scores)
    return ChannelPlan(deps, frozenset(pruned))


def _keep_every_value_alive(deps: ChannelDeps, pruned: set[int], scores: dict[int, float]) -> None:
    """Restores the best unit of any value that would lose all its channels (a split part)."""
    for name in deps.dims:
        roots = deps.roots(name)
        if roots and all(r in pruned for r in roots):
            best = max(set(roots), key=lambda r: scores.get(r, 0.0))
            pruned.discard(best)
            log.info("prune-channels: keeping one unit of %%%s so it is not emptied", name)


def apply_channel_plan(graph: Graph, plan: ChannelPlan) -> Graph:
    """Returns a new graph with the planned channels physically removed."""
    g = graph.clone()
    deps, pruned = plan.deps, plan.pruned
    if not pruned:
        return g
    done: set[tuple[str, int]] = set()
    for s in deps.slices:
        keep = deps.kept_positions(s.value, pruned)
        if keep is None or (s.const, s.axis) in done:
            continue
        done.add((s.const, s.axis))
        v = g.constants[s.const]
        assert v.const is not None
        idx = torch.tensor(keep, dtype=torch.long)
        v.const = v.const.index_select(s.axis, idx)
        if v.mask is not None:
            v.mask = v.mask.index_select(s.axis, idx)
        v.type = v.type.with_shape(tuple(v.const.shape))
    for node in g.nodes:
        _fix_attrs(node, deps, pruned)
        if node.op.infer is not None:
            types = node.op.infer([v.type for v in node.inputs], node.attrs)
            for o, t in zip(node.outputs, types, strict=True):
                o.type = t
    _fill_outputs(g, deps, pruned)
    return g


def _fill_outputs(g: Graph, deps: ChannelDeps, pruned: frozenset[int]) -> None:
    """Graph outputs of pruned streams back at full width: ``y = x @ P.T`` with 0/1 ``P``."""
    for name in deps.filled:
        keep = deps.kept_positions(name, pruned)
        if keep is None:
            continue
        full = len(deps.dims[name].atoms)
        for i, v in enumerate(g.outputs):
            if v.name != name:
                continue
            p = torch.zeros(full, len(keep), dtype=v.type.torch_dtype)
            p[torch.tensor(keep), torch.arange(len(keep))] = 1.0
            w = g.add_constant(p, f"{name}.unprune")
            g.outputs[i] = g.add("linear", [v, w], name=f"{name}.unprune")
            break


def _fix_attrs(node: Node, deps: ChannelDeps, pruned: frozenset[int]) -> None:
    def size(name: str) -> int | None:
        keep = deps.kept_positions(name, pruned)
        return None if keep is None else len(keep)

    op, out = node.op.name, node.outputs[0]
    if op in ("conv1d", "conv2d") and node.attrs["groups"] > 1:
        n = size(out.name)
        if n is not None:
            node.set_attrs(groups=n)
    elif op == "group_norm":
        n = size(out.name)
        if n is not None:
            per = out.type.shape[1] // node.attrs["num_groups"]
            node.set_attrs(num_groups=n // per)
    elif op in ("layer_norm", "rms_norm"):
        d, n = deps.dims.get(out.name), size(out.name)
        ns = list(node.attrs["normalized_shape"])
        if d is not None and n is not None and len(ns) == 1 and d.axis == out.type.rank - 1:
            node.set_attrs(normalized_shape=[n])
    elif op in ("reshape", "expand"):
        d, n = deps.dims.get(out.name), size(out.name)
        if d is not None and n is not None:
            shape = list(out.type.shape)
            shape[d.axis] = n
            node.set_attrs(shape=shape)
    elif op == "split":
        sizes = [size(o.name) for o in node.outputs]
        if any(s is not None for s in sizes):
            node.set_attrs(sizes=[o.type.shape[node.attrs["axis"]] if s is None else s
                                  for s, o in zip(sizes, node.outputs, strict=True)])
    elif op == "slice":
        x = node.inputs[0]
        d, keep = deps.dims.get(x.name), deps.kept_positions(x.name, pruned)
        ax = norm_axis(node.attrs["axis"], x.type.rank)
        static = type(node.attrs["start"]) is int and type(node.attrs["end"]) is int
        if d is not None and keep is not None and d.axis == ax and static:
            start, end, _ = slice(node.attrs["start"], node.attrs["end"]).indices(len(d.atoms))
            node.set_attrs(start=sum(1 for k in keep if k < start),
                           end=sum(1 for k in keep if k < end))


def mask_channel_plan(graph: Graph, plan: ChannelPlan) -> Graph:
    """The original graph with the planned channels zeroed at their consumers.

    The input columns of every convolution / linear layer that reads a removed
    channel are set to zero; :func:`apply_channel_plan` must compute the same.
    """
    g = graph.clone()
    for s in plan.deps.slices:
        if s.role != "in":
            continue
        keep = plan.deps.kept_positions(s.value, plan.pruned)
        if keep is None:
            continue
        v = g.constants[s.const]
        assert v.const is not None
        drop = sorted(set(range(v.const.shape[s.axis])) - set(keep))
        t = v.const.clone()
        t.index_fill_(s.axis, torch.tensor(drop, dtype=torch.long), 0.0)
        v.const = t
    for name in plan.deps.filled:  # outputs kept at full width read zeros where pruned
        keep = plan.deps.kept_positions(name, plan.pruned)
        if keep is None:
            continue
        for i, v in enumerate(g.outputs):
            if v.name == name:
                m = torch.zeros(v.type.shape[-1], dtype=v.type.torch_dtype)
                m[torch.tensor(keep)] = 1.0
                g.outputs[i] = g.add("mul", [v, g.add_constant(m, f"{name}.mask")],
                                     name=f"{name}.masked")
                break
    return g


def prune_channels(graph: Graph, ratio: float = 0.5, *, importance: str | Scorer = "l1",
                   scope: Literal["global", "uniform"] = "global",
                   round_to: int = DEFAULT_ROUND_TO, protect: Sequence[str] | str = (),
                   hidden: bool = False, latency_target: float | None = None,
                   target: str | Mapping[str, Any] = "x86",
                   latency_cache: MutableMapping[str, float] | str | os.PathLike[str]
                   | None = None, latency_fn: Callable[[Graph], float] | None = None,
                   progress: bool = False) -> Graph:
    """Removes ``ratio`` of the prunable channels; returns a new, verified graph.

    With ``latency_target`` the per-group channel counts come from the measured latency
    of the graph compiled for ``target`` instead (:mod:`~slimfx.passes.prune.latency`;
    :func:`~slimfx.passes.prune.latency.prune_for_latency` also returns the report of
    predicted and measured latency, which this function logs at INFO).

    Args:
        graph: the float graph (not modified).
        ratio: share of channels (of prunable groups) to remove, in [0, 1).
        importance: ``l1``, ``l2``, ``bn-scale`` or a callable
            ``fn(role, const_name, matrix[positions, rest]) -> Tensor[positions] | None``.
        scope: ``global`` (one ranking over all groups) or ``uniform`` (per group).
        round_to: every pruned group keeps a multiple of this many channels (and at
            least this many); 1 (the default) prunes exactly ``ratio``. A group where
            rounding removes less than half of what was asked is logged as a warning.
        protect: node names (or one name) whose input and output channels are kept.
        hidden: also prune the hidden (residual-stream) dimension of transformers,
            through layer norms (approximate: their statistics change; fine-tune
            afterwards) and keeping stream outputs at full width (module docstring).
        latency_target: prune until the compiled graph's latency is at most this share
            of the unpruned one, in (0, 1]; ``ratio`` then caps the share of any one
            group that may go, and ``scope`` must stay ``global``.
        target: where latency is measured (``"x86"``: this host; or a TVM target dict).
        latency_cache: a dict or a JSON file path keeping latency measurements.
        latency_fn: ``fn(graph) -> seconds`` used instead of compiling and timing.
        progress: show a progress bar over the latency measurements.

    Raises:
        PruningError: see :func:`plan_channel_pruning` and
            :func:`~slimfx.passes.prune.latency.plan_for_latency`; latency options
            without ``latency_target``.
    """
    if latency_target is not None:
        from slimfx.passes.prune.latency import check_latency_request, prune_for_latency

        check_latency_request(latency_target, ratio, scope, target)
        out, _ = prune_for_latency(graph, latency_target, ratio=ratio, importance=importance,
                                   round_to=round_to, target=target, protect=protect,
                                   hidden=hidden, latency_fn=latency_fn,
                                   latency_cache=latency_cache, progress=progress)
        return out
    if latency_cache is not None or latency_fn is not None:
        raise PruningError("prune-channels: latency_cache and latency_fn only apply with "
                           "latency_target (e.g. latency_target=0.5); give it, or drop them")
    plan = plan_channel_pruning(graph, ratio, importance=importance, scope=scope,
                                round_to=round_to, protect=protect, hidden=hidden)
    out = apply_channel_plan(graph, plan)
    out.verify()
    return out


@register_pass
@dataclass(frozen=True)
class PruneChannels(Pass):
    """Structured channel pruning over dependency groups (slices weights physically).

    Attributes:
        ratio: share of prunable channels to remove, in [0, 1).
        importance: l1, l2 or bn-scale.
        scope: global or uniform.
        round_to: keep a multiple of this many channels per group (default 1: exactly
            ``ratio``; the same default as :func:`prune_channels`).
        protect: node names whose channels are kept.
        hidden: also prune the transformer hidden dimension through layer norms
            (approximate; see :func:`prune_channels`).
        latency_target: choose per-group channel counts by measured latency until the
            compiled graph runs in this share of the unpruned latency, in (0, 1]
            (:mod:`~slimfx.passes.prune.latency`); ``ratio`` then caps the share of any
            group that may go. Predicted and measured latency are logged at INFO.
        target: where latency is measured: ``x86`` (this host), ``arm``, ``cuda``.
        latency_cache: path of a JSON file keeping latency measurements across runs.
    """

    name = "prune-channels"
    ratio: float = 0.5
    importance: Literal["l1", "l2", "bn-scale"] = "l1"
    scope: Literal["global", "uniform"] = "global"
    round_to: int = DEFAULT_ROUND_TO
    protect: tuple[str, ...] = ()
    hidden: bool = False
    latency_target: float | None = None
    target: str = "x86"
    latency_cache: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            check_request(self.ratio, self.round_to, self.scope)
            if self.latency_target is not None:
                from slimfx.passes.prune.latency import check_latency_request

                check_latency_request(self.latency_target, self.ratio, self.scope, self.target)
            elif self.latency_cache is not None or self.target != "x86":
                raise PruningError("prune-channels: target and latency_cache only apply with "
                                   "latency_target (e.g. latency_target=0.5)")
        except PruningError as e:  # a bad option: reported where the pipeline is parsed
            raise PipelineError(str(e)) from e

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        from slimfx.passes.prune.dependency import ChannelDependencyAnalysis

        deps: ChannelDeps | None = None
        if not self.protect and not self.hidden:
            deps = ctx.analysis(graph, ChannelDependencyAnalysis)  # type: ignore[assignment]
        if self.latency_target is not None:
            from slimfx.passes.prune.latency import prune_for_latency

            out, report = prune_for_latency(
                graph, self.latency_target, ratio=self.ratio, importance=self.importance,
                round_to=self.round_to, target=self.target, protect=self.protect, deps=deps,
                hidden=self.hidden, latency_cache=self.latency_cache)
            return PassResult(out, bool(report.kept))
        plan = plan_channel_pruning(graph, self.ratio, importance=self.importance,
                                    scope=self.scope, round_to=self.round_to,
                                    protect=self.protect, deps=deps, hidden=self.hidden)
        if not plan.pruned:
            return PassResult(graph, False)
        return PassResult(apply_channel_plan(graph, plan), True)
