"""Default CPU schedules for the kernels nothing else scheduled: parallel and vectorized loops.

TVM's CPU pipeline applies no schedule: a kernel that is neither tuned (``tune=N``) nor
scheduled by hand (the VNNI int8 dense) runs as plain loops on one thread. This module's
rule, applied by :func:`default_cpu_schedule` to every PrimFunc not yet scheduled, gives each
one a cheap schedule that is always valid:

- producers and consumers that can be inlined are inlined (``compute_inline`` /
  ``reverse_compute_inline``), so an elementwise chain is one loop nest; never into or from
  a block with an ``init`` (a reduction), and a large expression is never copied to several
  places (the code and compile time stay linear in the number of ops), see :func:`_inline`;
- each remaining block has its spatial loops fused into one; the fused loop is split into an
  outer part run in parallel on the target's cores and, for blocks without a reduction, an
  inner part of 8 or 16 iterations that is vectorized when the innermost dimension allows it
  (its extent divides the vector length);
- a block with a reduction keeps its reduction loops inside the parallel loop; when its
  innermost spatial dimension allows, a vector of 4-16 outputs is innermost, below the
  reduction loops (``out[.., j:j+8] += a[.., k] * b[.., k, j:j+8]``), else the reduction
  is innermost.

Schedules never change results: the order of every reduction stays the same (only the
spatial iterations are distributed), so float results are identical to the unscheduled code
and integer results stay exact. A kernel the rule cannot handle is left as it is.
"""

from __future__ import annotations

import logging
from typing import Any

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import SBlockInfo, normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule

__all__ = ["CpuDefault", "default_cpu_schedule"]

logger = logging.getLogger(__name__)

# Below this many iterations a parallel loop costs more (thread wake-up) than it saves.
_MIN_PARALLEL = 2048


def _extent(sch: s_tir.Schedule, loop: Any) -> int | None:
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm | int) else None


def _vector_width(sch: s_tir.Schedule, loops: list[Any]) -> int:
    """Largest of 16/8/4 dividing the innermost spatial loop (0: do not vectorize)."""
    if not loops:
        return 0
    inner = _extent(sch, loops[-1])
    for v in (16, 8, 4):
        if inner is not None and inner % v == 0:
            return v
    return 0


def _has_init(sch: s_tir.Schedule, block: Any) -> bool:
    return sch.get(block).init is not None


# An expression inlined at several places is copied to each; only one this small is copied.
_MAX_COPIED = 24

_CHILDREN = ("a", "b", "value", "condition", "true_value", "false_value", "args", "indices")


def _expr_stats(root: Any, source: Any) -> tuple[int, int]:
    """``(nodes, loads of source)`` of a block body: its expression size and reads of a buffer.

    A node kind this walk does not know counts as one node without children: at worst a
    size or a read is undercounted, which costs compile time, never correctness.
    """
    from tvm.ir import expr as ir_expr

    nodes = loads = 0
    stack = [root]
    while stack:
        e = stack.pop()
        nodes += 1
        if isinstance(e, ir_expr.TensorLoad) and e.source.same_as(source):
            loads += 1
        for name in _CHILDREN:
            child = getattr(e, name, None)
            if isinstance(child, ir_expr.Expr):
                stack.append(child)
            elif child is not None and not isinstance(child, int | float | str):
                try:
                    stack.extend(c for c in child if isinstance(c, ir_expr.Expr))
                except TypeError:  # not a container
                    pass
    return nodes, loads


def _size(sch: s_tir.Schedule, block: Any) -> int:
    body = sch.get(block).body
    return _expr_stats(getattr(body, "value", body), None)[0]


def _reads_of(sch: s_tir.Schedule, consumer: Any, producer: Any) -> int:
    """How many times ``consumer``'s body (and init) loads what ``producer`` writes."""
    written = sch.get(producer).writes
    if len(written) != 1:
        return _MAX_COPIED  # several outputs: count as many reads (inlined only if small)
    source = written[0].source
    blk = sch.get(consumer)
    n = _expr_stats(blk.body, source)[1]
    return n + (_expr_stats(blk.init, source)[1] if blk.init is not None else 0)


def _copies_stay_small(sch: s_tir.Schedule, producer: Any, consumers: list[Any]) -> bool:
    """Whether inlining ``producer`` into ``consumers`` keeps the code linear in size.

    Inlining substitutes the producer's expression at every load of its buffer. A producer
    read once moves; one read several times is copied, and a chain of such producers
    (``round_half_even`` reads ``floor(x)`` five times, ``quantize`` reads ``x`` twice, and
    a fused quantize -> dequantize -> add -> quantize chain repeats them) grows by that
    factor per stage: compile time exponential in the chain's length. Only producers of
    at most ``_MAX_COPIED`` nodes are copied; the others stay a loop nest of their own.
    """
    reads = sum(_reads_of(sch, c, producer) for c in consumers)
    return reads <= 1 or _size(sch, producer) <= _MAX_COPIED


def _inline(sch: s_tir.Schedule, infos: list[SBlockInfo]) -> list[SBlockInfo]:
    """Inlines what it can (dlight's ``try_inline``), except into or from reductions, and
    never copying a large expression (see :func:`_copies_stay_small`).

    ``normalize_prim_func`` drops loops of extent 1, so a reduction of length 1 (``linear``
    with one input feature, a 1x1 convolution of one channel) becomes a block with an
    ``init`` but no reduction axis. TVM's ``reverse_compute_inline`` then accepts its
    epilogue and applies it to both the init and the update: ``y = 0 + b``, then
    ``y = y + x * w + b``, i.e. the bias added twice. :mod:`.unit_reduction` rewrites those
    blocks before any schedule runs; as a second guard, a block with an ``init`` never takes
    an inlined consumer here (nor is it inlined itself): the reduction and its epilogue stay
    two loop nests, which always computes the right numbers.

    A consumer is reverse-inlined only into a single producer that it alone reads. TVM
    0.27's ``reverse_compute_inline`` checks neither: the producer's block is rewritten to
    store the consumer's result instead of its own, so any other reader of the producer's
    buffer is left reading a buffer nothing writes any more ("Buffer ... is used before its
    definition" at build time), and a consumer with a second producer would be computed
    before that producer.
    """
    def inline(block: Any) -> bool:
        consumers = sch.get_consumers(block)
        if not consumers or not _copies_stay_small(sch, block, consumers):
            return False
        sch.compute_inline(block)
        return True

    def reverse_inline(block: Any) -> bool:
        producers = sch.get_producers(block)
        if len(producers) != 1 or _has_init(sch, producers[0]) \
                or len(sch.get_consumers(producers[0])) != 1 \
                or not _copies_stay_small(sch, producers[0], [block]):
            return False
        sch.reverse_compute_inline(block)
        return True

    def trial(step: Any) -> int | None:
        for i, info in enumerate(infos):
            block = info.block_rv
            if _has_init(sch, block):
                continue
            try:
                if step(block):
                    return i
            except Exception:  # noqa: BLE001 - not inlinable: try the next block
                continue
        return None

    while True:
        i = trial(inline)
        if i is None:
            i = trial(reverse_inline)
        if i is None:
            return infos
        infos.pop(i)


class CpuDefault(ScheduleRule):
    """Inline, then parallel outer spatial loops and vectorized inner ones (see module doc)."""

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target,
              _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        for vector_reductions in (True, False):
            try:
                return self._schedule(func, vector_reductions)
            except Exception as e:  # noqa: BLE001 - try the simpler form, else leave it plain
                logger.debug("cpu schedule (vector reductions %s) failed on %s: %s",
                             vector_reductions,
                             func.attrs.get("global_symbol", "?") if func.attrs else "?", e)
        return None

    def _schedule(self, func: tirx.PrimFunc, vector_reductions: bool) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        infos = _inline(sch, infos)
        reductions = []
        for info in infos:
            block = info.block_rv
            kinds = info.dom_kind()
            loops = sch.get_loops(block)
            if len(loops) != len(kinds):
                continue
            s_loops = [lp for lp, k in zip(loops, kinds, strict=True) if k == "S"]
            r_loops = [lp for lp, k in zip(loops, kinds, strict=True) if k == "R"]
            o_loops = [lp for lp, k in zip(loops, kinds, strict=True) if k == "O"]
            if not s_loops:
                continue
            vec = 0 if o_loops else _vector_width(sch, s_loops)
            if r_loops and vec and vector_reductions:
                # reduction outside an innermost vector of outputs: out[.., j:j+vec] += ...
                # (each output still sums its terms in the same order)
                s_out, s_vec = sch.split(s_loops[-1], [None, vec])
                sch.reorder(*s_loops[:-1], s_out, *r_loops, s_vec)
                sch.parallel(sch.fuse(*s_loops[:-1], s_out))
                sch.vectorize(s_vec)  # before decompose_reduction, which would refuse it
                reductions.append((block, r_loops[0]))
                continue
            sch.reorder(*s_loops, *r_loops, *o_loops)
            if r_loops:
                vec = 0
            fused = sch.fuse(*s_loops)
            total = _extent(sch, fused) or 0
            if vec:
                outer, inner = sch.split(fused, [None, vec])
                sch.vectorize(inner)
            else:
                outer = fused
            if total >= _MIN_PARALLEL or r_loops:
                sch.parallel(outer)
            if r_loops:
                reductions.append((block, r_loops[0]))
        for block, r_loop in reductions:
            sch.decompose_reduction(block, r_loop)
        return sch


def default_cpu_schedule() -> Any:
    """The module pass scheduling every unscheduled PrimFunc with :class:`CpuDefault`."""
    from tvm.s_tir.dlight import ApplyDefaultSchedule

    return ApplyDefaultSchedule(CpuDefault())
