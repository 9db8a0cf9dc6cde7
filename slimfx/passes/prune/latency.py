"""Latency-aware channel pruning: per-group widths chosen by measured compiled latency.

``prune-channels{latency_target=0.5}`` replaces the channel-share request (``ratio``)
with a latency request: the pruned graph, compiled for ``target``, should run in at most
``latency_target`` times the latency of the unpruned graph.

1. **Latency model.** For every prunable dependency group ``g`` the graph is compiled
   (``slimfx.compile``, untuned) and timed with only ``g`` pruned to a few candidate
   widths, the others full: a lookup table ``T_g(k)``, latency as a function of the kept
   units ``k``. Candidate widths are multiples of the vector width (``round_to`` when it is
   above 1, else the target's: 16 fp32 lanes with AVX-512, 8 with AVX2, 4 otherwise),
   at most ``points`` of them, evenly spread between the smallest allowed width and full.
   The latency of a plan is predicted additively::

       L(k_1 .. k_G) = L_0 + sum_g (T_g(k_g) - L_0)

   (``L_0`` the unpruned latency), i.e. groups are assumed to act on different kernels.
2. **Selection (greedy).** From all groups full, repeatedly take the move (a group, a
   smaller candidate width) with the least importance lost per latency saved, where the
   importance lost is the sum of the removed units' scores divided by the group's mean
   score (the normalization of ``scope=global``), until the predicted latency is at most
   ``latency_target * L_0``. A move that saves no latency is never taken; when no move is
   left the target is out of reach and a warning says so.
3. **Check.** The graph is pruned with the chosen widths (the most important units kept,
   as in :func:`~slimfx.passes.prune.prune_channels.prune_channels`) and its latency is
   measured. The additive model is optimistic where two pruned groups meet in one layer
   (a convolution's cost goes as ``c_in * c_out``, both shrink), so when the measurement
   misses the target by more than 2% the greedy walks on along its path with the goal
   scaled to ``predicted / measured * target`` (at most two more rounds, one measurement each).
   :class:`LatencyReport` holds the predicted and measured figures.

Options and how they combine with the channel-share options:

- ``ratio`` becomes a *cap*: no group loses more than ``ratio`` of its units (default
  0.5), which keeps any one layer from being gutted; ``ratio=0`` with a latency target
  below 1 is contradictory and refused; raise ``ratio`` to let the model cut deeper.
- ``scope=uniform`` fixes every group's width from ``ratio`` and is refused together
  with ``latency_target``.
- Measurements are cached (``latency_cache``: a dict, or the path of a JSON file) under
  a key made of the structural fingerprint of the graph (ops, attributes, types; not
  weight values), the target and the kept widths, so a re-run measures nothing.
- ``latency_fn(graph) -> seconds`` replaces compiling and timing (a cost model, or a
  measurement of one's own); it is cached too, keyed by its qualified name.

Timing noise: each measurement is the minimum over ``repeat`` timings of ``number``
calls (the minimum is the figure least disturbed by other processes on the host).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimfx.errors import PruningError, SlimfxError
from slimfx.ir.core import Graph
from slimfx.passes.prune.dependency import ChannelDeps, ChannelGroup
from slimfx.passes.prune.importance import Scorer
from slimfx.passes.prune.prune_channels import (
    DEFAULT_ROUND_TO,
    ChannelPlan,
    apply_channel_plan,
    check_request,
    plan_kept_counts,
    ranked_units,
    score_units,
)

__all__ = ["GroupLatency", "LatencyReport", "LatencyFn", "check_latency_request",
           "graph_fingerprint", "vector_width", "measure_latency", "plan_for_latency",
           "prune_for_latency", "DEFAULT_POINTS"]

log = logging.getLogger(__name__)

LatencyFn = Callable[[Graph], float]
"""A latency measurement or model: graph -> seconds."""

DEFAULT_POINTS = 4
"""Candidate widths measured per group (besides the full width)."""

_CACHE_VERSION = 1
_TOLERANCE = 0.02  # measured latency this much above the target still meets it (timing noise)
_REFINE = 2  # extra rounds when the measured latency misses the target


@dataclass(frozen=True)
class GroupLatency:
    """The lookup table of one group: latency with only this group pruned.

    Attributes:
        group: the group id (:attr:`ChannelGroup.id`).
        full: the group's units when unpruned.
        kept: candidate kept-unit counts, ascending, the last one ``full``.
        seconds: the latency at each of ``kept``.
    """

    group: int
    full: int
    kept: tuple[int, ...]
    seconds: tuple[float, ...]

    def at(self, kept: int) -> float:
        return self.seconds[self.kept.index(kept)]


@dataclass(frozen=True)
class LatencyReport:
    """What :func:`plan_for_latency` chose and measured (latencies in seconds).

    Attributes:
        latency_target: the requested share of the unpruned latency.
        base: the measured latency of the unpruned graph.
        predicted: the additive model's latency of the chosen widths.
        measured: the measured latency of the pruned graph.
        kept: group id -> (kept units, full units) for every group that loses units.
        tables: the per-group lookup tables.
        rounds: greedy selections run (more than one when a measurement missed the target).
        measurements: latencies measured in this run (cache misses).
        cached: latencies read from the cache.
    """

    latency_target: float
    base: float
    predicted: float
    measured: float
    kept: dict[int, tuple[int, int]]
    tables: tuple[GroupLatency, ...]
    rounds: int
    measurements: int
    cached: int

    @property
    def predicted_ratio(self) -> float:
        return self.predicted / self.base

    @property
    def measured_ratio(self) -> float:
        return self.measured / self.base

    def summary(self) -> str:
        """One line: the widths, and the predicted and measured latency ratios."""
        widths = ", ".join(f"group {g}: {k}/{n}" for g, (k, n) in sorted(self.kept.items()))
        return (f"latency-aware pruning: base {1e3 * self.base:.3f} ms, target "
                f"{self.latency_target:g}x, predicted {1e3 * self.predicted:.3f} ms "
                f"({self.predicted_ratio:.3f}x), measured {1e3 * self.measured:.3f} ms "
                f"({self.measured_ratio:.3f}x); {widths or 'nothing pruned'} ("
                f"{self.rounds} round(s), {self.measurements} measured, {self.cached} cached)")


def check_latency_request(latency_target: object, ratio: object, scope: object,
                          target: object, points: object = DEFAULT_POINTS) -> None:
    """Refuses a ``latency_target`` outside (0, 1], an unknown ``target``, ``points`` < 1,
    and the combinations with ``ratio`` / ``scope`` that contradict a latency target.

    Raises:
        PruningError: naming the argument and what to do.
    """
    from slimfx.backends.tvm.targets import KNOWN_TARGETS

    if isinstance(latency_target, bool) or not isinstance(latency_target, int | float) \
            or not 0.0 < float(latency_target) <= 1.0:
        raise PruningError(f"prune-channels: latency_target={latency_target!r} must lie in "
                           "(0, 1]: the share of the unpruned latency to reach (0.5 halves it)")
    if scope == "uniform":
        raise PruningError("prune-channels: latency_target and scope=uniform contradict each "
                           "other (uniform removes ratio of every group); leave scope=global")
    if isinstance(ratio, int | float) and not isinstance(ratio, bool) and ratio <= 0 \
            and latency_target < 1:
        raise PruningError(f"prune-channels: ratio={ratio!r} with latency_target="
                           f"{latency_target!r}: with a latency target, ratio is the largest "
                           "share of any group that may go, and 0 forbids all pruning; give "
                           "ratio in (0, 1) (0.5 by default)")
    if isinstance(target, str):
        if target not in KNOWN_TARGETS:
            raise PruningError(f"prune-channels: unknown target {target!r} for latency "
                               f"measurement; known targets: {', '.join(KNOWN_TARGETS)}")
    elif not isinstance(target, Mapping):
        raise PruningError(f"prune-channels: target must be a target name "
                           f"({', '.join(KNOWN_TARGETS)}) or a TVM target dict, got "
                           f"{type(target).__name__}")
    if isinstance(points, bool) or not isinstance(points, int) or points < 1:
        raise PruningError(f"prune-channels: points={points!r} must be an int >= 1 (candidate "
                           "widths measured per group)")


def graph_fingerprint(graph: Graph) -> str:
    """A hash of what latency depends on: ops, attributes and types, not weight values."""
    h = hashlib.sha256()
    for v in graph.inputs:
        h.update(f"in {v.type}\n".encode())
    for n in graph.nodes:
        attrs = sorted((k, repr(v)) for k, v in n.attrs.items()) if n.attrs else []
        ins = ",".join(str(v.type) for v in n.inputs)
        outs = ",".join(str(v.type) for v in n.outputs)
        h.update(f"{n.op.name} {attrs} ({ins}) -> ({outs})\n".encode())
    for v in graph.outputs:
        h.update(f"out {v.type}\n".encode())
    return h.hexdigest()[:24]


def vector_width(spec: Mapping[str, Any]) -> int:
    """fp32 lanes of the target's widest vector unit (16 AVX-512, 8 AVX2, 4 otherwise)."""
    from slimfx.backends.tvm.targets import target_cpu_features

    feats = set(target_cpu_features(spec))
    return 16 if "avx512f" in feats else 8 if "avx2" in feats else 4


def measure_latency(graph: Graph, target: str | Mapping[str, Any] = "x86", *,
                    repeat: int = 10, number: int = 5) -> float:
    """Seconds per call of ``graph`` compiled (untuned) for ``target`` on this host.

    Raises:
        PruningError: the target's code cannot run here, or the graph does not compile.
    """
    import slimfx
    from slimfx.backends.tvm.targets import can_run_here, resolve_target

    spec = resolve_target(target)
    why = can_run_here(spec)
    if why is not None:
        raise PruningError(f"prune-channels: cannot measure latency for target {target!r} on "
                           f"this host ({why}); prune on the target machine, or pass "
                           "latency_fn= with a cost model")
    try:
        compiled = slimfx.compile(graph, spec, progress=False)
    except SlimfxError as e:
        raise PruningError(f"prune-channels: measuring latency, the graph did not compile for "
                           f"{target!r}: {e}") from e
    return compiled.benchmark(repeat=repeat, number=number).min_ms / 1e3


class _Cache:
    """Latency measurements by key, in a caller's dict or a JSON file (written as it grows)."""

    def __init__(self, store: MutableMapping[str, float] | str | os.PathLike[str] | None) -> None:
        self.path: Path | None = None
        self.hits = self.misses = 0
        if store is None:
            self.data: MutableMapping[str, float] = {}
        elif isinstance(store, MutableMapping):
            self.data = store
        elif isinstance(store, str | os.PathLike):
            self.path = Path(store)
            self.data = self._read(self.path)
        else:
            raise PruningError(f"prune-channels: latency_cache must be a dict or the path of a "
                               f"JSON file, got {type(store).__name__}")

    @staticmethod
    def _read(path: Path) -> dict[str, float]:
        if not path.exists():
            return {}
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if doc.get("version") != _CACHE_VERSION:
                raise ValueError(f"version {doc.get('version')!r}, expected {_CACHE_VERSION}")
            return {str(k): float(v) for k, v in doc["latency_s"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise PruningError(f"prune-channels: latency_cache {str(path)!r} is not a latency "
                               f"cache ({e}); delete it or give another path") from e

    def get(self, key: str, measure: Callable[[], float]) -> float:
        if key in self.data:
            self.hits += 1
            return float(self.data[key])
        value = measure()
        self.misses += 1
        self.data[key] = value
        if self.path is not None:
            tmp = self.path.with_suffix(self.path.suffix + ".tmp")
            tmp.write_text(json.dumps({"version": _CACHE_VERSION, "latency_s": dict(self.data)},
                                      indent=1, sort_keys=True), encoding="utf-8")
            tmp.replace(self.path)
        return value


def _candidates(g: ChannelGroup, scores: dict[int, float], step_channels: int, ratio: float,
                points: int) -> tuple[int, ...]:
    """Kept-unit counts to measure: multiples of the vector width, ascending, ending full."""
    n = len(g.atoms)
    step = step_channels // math.gcd(step_channels, g.width)  # in units (heads: head_dim each)
    floor_kept = max(n - len(ranked_units(g, scores)),  # blocked / unscored units stay
                     math.ceil((1.0 - ratio) * n - 1e-9), step)
    widths = [k for k in range(step, n, step) if k >= floor_kept]
    if len(widths) > points:
        idx = sorted({round(i * (len(widths) - 1) / max(points - 1, 1)) for i in range(points)})
        widths = [widths[i] for i in idx]
    return (*widths, n)


def _timer(latency_fn: LatencyFn | None, target: str | Mapping[str, Any], repeat: int,
           number: int) -> tuple[LatencyFn, str]:
    """The measuring function and the part of the cache key that names it and the target."""
    tkey = target if isinstance(target, str) else json.dumps(dict(target), sort_keys=True)
    if latency_fn is None:
        def fn(graph: Graph) -> float:
            return measure_latency(graph, target, repeat=repeat, number=number)
        return fn, tkey
    if not callable(latency_fn):
        raise PruningError(f"prune-channels: latency_fn must be a callable graph -> seconds, "
                           f"got {type(latency_fn).__name__}")
    name = getattr(latency_fn, "__qualname__", type(latency_fn).__qualname__)

    def checked(graph: Graph) -> float:
        t = latency_fn(graph)
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) \
                or t <= 0:
            raise PruningError(f"prune-channels: latency_fn {name} returned {t!r}; it must "
                               "return the latency in seconds, a finite number > 0")
        return float(t)
    return checked, f"{tkey}|fn:{getattr(latency_fn, '__module__', '')}.{name}"


def plan_for_latency(graph: Graph, latency_target: float = 0.5,
                     **options: Any) -> tuple[ChannelPlan, LatencyReport]:
    """Chooses per-group widths by latency; see the module docstring.

    Args:
        graph: the float graph (not modified).
        latency_target: the share of the unpruned latency to reach, in (0, 1].
        **options: ``ratio`` (the cap per group, default 0.5), ``importance``, ``round_to``,
            ``target`` (``"x86"``), ``protect``, ``hidden``, ``deps``, ``latency_fn``,
            ``latency_cache``, ``points``, ``repeat``, ``number``, ``progress``.

    Returns:
        The plan and its report (the chosen widths are measured pruned).

    Raises:
        PruningError: a bad option (:func:`check_latency_request`,
            :func:`~slimfx.passes.prune.prune_channels.check_request`), nothing prunable,
            a latency that cannot be measured here, or a bad cache file.
    """
    return _search(graph, latency_target, **options)


def _search(graph: Graph, latency_target: float = 0.5, *, ratio: float = 0.5,
            importance: str | Scorer = "l1", round_to: int = DEFAULT_ROUND_TO,
            target: str | Mapping[str, Any] = "x86", protect: Sequence[str] | str = (),
            hidden: bool = False, deps: ChannelDeps | None = None,
            latency_fn: LatencyFn | None = None,
            latency_cache: MutableMapping[str, float] | str | os.PathLike[str] | None = None,
            points: int = DEFAULT_POINTS, repeat: int = 10, number: int = 5,
            progress: bool = False
            ) -> tuple[ChannelPlan, LatencyReport]:
    from tqdm.auto import tqdm

    check_request(ratio, round_to, "global")
    check_latency_request(latency_target, ratio, "global", target, points)
    deps, scores = score_units(graph, importance, protect, deps, hidden)
    groups = deps.prunable_groups
    cache = _Cache(latency_cache)
    measure, tkey = _timer(latency_fn, target, repeat, number)
    if round_to > 1:
        step = round_to
    else:
        from slimfx.backends.tvm.targets import resolve_target

        try:
            step = vector_width(resolve_target(target))
        except SlimfxError as e:
            raise PruningError(f"prune-channels: target {target!r}: {e}") from e
    cands = {g.id: _candidates(g, scores, step, float(ratio), points) for g in groups}
    fp = graph_fingerprint(graph)

    def latency(keep: dict[int, int]) -> float:
        key = "|".join([fp, tkey, ",".join(f"{k}:{v}" for k, v in sorted(keep.items()))
                        or "full"])
        return cache.get(key, lambda: measure(apply_channel_plan(
            graph, plan_kept_counts(deps, scores, keep))))

    todo = sum(len(c) - 1 for c in cands.values()) + 1
    with tqdm(total=todo, desc="latency model", disable=not progress, leave=False) as bar:
        base = latency({})
        bar.update()
        tables = []
        for g in groups:
            secs = []
            for k in cands[g.id][:-1]:
                secs.append(latency({g.id: k}))
                bar.update()
            tables.append(GroupLatency(g.id, len(g.atoms), cands[g.id], (*secs, base)))
    goal, chosen, rounds = float(latency_target), None, 0
    while True:  # the greedy path is the same for every goal: a lower goal walks on along it
        rounds += 1
        kept = _greedy(groups, tables, scores, base, goal)
        predicted = max(base + sum(t.at(kept[t.group]) - base for t in tables), 0.0)
        new = {gid: k for gid, k in kept.items() if k < len(deps.groups[gid].atoms)}
        if new == chosen:
            break
        chosen = new
        measured = latency(chosen)
        if (measured <= latency_target * base * (1 + _TOLERANCE) or rounds > _REFINE
                or predicted > goal * base * (1 + 1e-9)):
            break
        goal = predicted / measured * latency_target  # the model was optimistic: ask more
    if measured > latency_target * base * (1 + _TOLERANCE):
        log.warning("prune-channels: latency_target=%g not reached (measured %.3fx, predicted "
                    "%.3fx): the smallest widths allowed (ratio=%g caps each group, vector "
                    "width %d) are not enough; raise ratio to let groups shrink further",
                    latency_target, measured / base, predicted / base, ratio, step)
    report = LatencyReport(float(latency_target), base, predicted, measured,
                           {gid: (k, len(deps.groups[gid].atoms)) for gid, k in chosen.items()},
                           tuple(tables), rounds, cache.misses, cache.hits)
    return plan_kept_counts(deps, scores, chosen), report


def _greedy(groups: Sequence[ChannelGroup], tables: Sequence[GroupLatency],
            scores: dict[int, float], base: float, latency_target: float) -> dict[int, int]:
    """Kept units per group id: least importance lost per latency saved, to the target."""
    kept = {g.id: len(g.atoms) for g in groups}
    by_id = {g.id: g for g in groups}
    table = {t.group: t for t in tables}
    order = {g.id: [scores[a] for a in ranked_units(g, scores)] for g in groups}
    mean = {gid: (sum(v) / len(v) if v and sum(v) > 0 else 1.0) for gid, v in order.items()}
    predicted = base
    while predicted > latency_target * base * (1 + 1e-9):  # not a rounding error away
        best: tuple[float, float, int, int] | None = None  # (cost, -saved, group, kept)
        for gid, k in kept.items():
            t, n = table[gid], len(by_id[gid].atoms)
            for c in t.kept:
                if c >= k:
                    break
                saved = t.at(k) - t.at(c)
                if saved <= 0:
                    continue
                lost = sum(order[gid][n - k:n - c]) / mean[gid]
                move = (lost / saved, -saved, gid, c)
                if best is None or move < best:
                    best = move
        if best is None:
            break
        _, neg_saved, gid, c = best
        kept[gid] = c
        predicted += neg_saved
    return kept


def prune_for_latency(graph: Graph, latency_target: float = 0.5,
                      **options: Any) -> tuple[Graph, LatencyReport]:
    """Prunes ``graph`` to ``latency_target`` of its latency; returns it and the report.

    Takes the options of :func:`plan_for_latency`; the pruned graph is verified and its
    latency measured (or read from the cache), so the report holds predicted and measured
    figures. The report's summary is logged at INFO.

    Raises:
        PruningError: see :func:`plan_for_latency`.
    """
    plan, report = plan_for_latency(graph, latency_target, **options)
    out = apply_channel_plan(graph, plan)
    out.verify()
    log.info("%s", report.summary())
    return out, report
