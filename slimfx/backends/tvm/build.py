"""``slimfx.compile``: IR graph -> Relax -> native code for a named target.

Without tuning, TVM's default pipeline runs (legalize, fold constants, fuse, build); on CPUs
it applies no schedule, so slimfx gives every kernel not otherwise scheduled a default
parallel, vectorized schedule (:mod:`slimfx.backends.tvm.cpu_schedule`). With ``tune=N`` the
legalized, fused module is tuned with meta-schedule (see :mod:`slimfx.backends.tvm.tuning`), the best
schedules are stored in a database on disk and applied before the build; a later compile
of the same model finds them there and does not tune again.

Symbolic graphs (``f32[N,3,224,224] where N in [1, 64]``, see :mod:`.specialize`): with
``shapes=`` the symbols are bound and the static path runs (the same code, and speed, as a
graph traced at that size). Without it, a batch symbol (dim 0 of the inputs and outputs,
every op independent along it) is bound to 1 and the per-sample program runs once per
sample (bit-exact, batch 1 the static program); the other symbols stay symbolic in Relax
(generic kernels; a lowering that needs static shapes is a LoweringError naming the node).
One artifact then serves every size in the declared ranges. The measured trade-offs are in
``notes/dynamic_shapes_tvm.md``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from slimfx.backends.tvm.compiled import Compiled, TensorSpec
from slimfx.backends.tvm.kernels import kernels_of
from slimfx.backends.tvm.lower import LOAD_FN, lower_graph
from slimfx.backends.tvm.native_log import native_log_to_logging
from slimfx.backends.tvm.targets import resolve_target
from slimfx.errors import SlimfxError
from slimfx.ir.core import Graph
from slimfx.ir.symbolic import SymbolRange, bind_shapes, symbols_of

__all__ = ["compile"]

logger = logging.getLogger(__name__)


def _signature(graph: Graph) -> tuple[list[TensorSpec], list[TensorSpec]]:
    inputs = [TensorSpec(v.name, v.type, v.qparams) for v in graph.inputs]
    names = graph.output_names or [v.name for v in graph.outputs]
    outputs = [TensorSpec(n, v.type, v.qparams)
               for n, v in zip(names, graph.outputs, strict=True)]
    return inputs, outputs


@native_log_to_logging()  # TVM's C++ warnings go to logging at DEBUG, not to stderr
def compile(  # noqa: A001 - the public name is slimfx.compile
    graph: Graph,
    target: str | Mapping[str, Any] = "x86",
    *,
    tune: int | None = None,
    tune_seconds: float | None = None,
    tuning_db: str | os.PathLike[str] | None = None,
    opt_level: int = 3,
    progress: bool = True,
    schedule: bool = True,
    shapes: Mapping[str, Sequence[int]] | None = None,
    dynamic: str = "auto",
    batch_buckets: Sequence[int] = (),
) -> Compiled:
    """Compiles an IR graph with TVM.

    Args:
        graph: the graph (float, fp16 or integer ops).
        target: ``"x86"`` (this host's CPU), ``"arm"``, ``"cuda"``, ``"cuda:sm_90"`` or a TVM
            target dict.
        tune: meta-schedule trial budget; ``None`` or 0 compiles without tuning (but still
            applies schedules already in ``tuning_db``).
        tune_seconds: a time budget for tuning as well (with ``tune``): the search stops
            after about this many seconds (it may overrun by one batch of candidates) and
            the schedules found so far are used and kept in the database. What tuning spent
            is in the result's ``tuning`` report (:class:`.tuning.TuneReport`).
        tuning_db: directory of the tuning database (default ``~/.cache/slimfx/tuning``).
        opt_level: TVM's pass context optimisation level.
        progress: show a progress bar while tuning.
        schedule: on CPUs, give every kernel that is neither tuned nor scheduled by hand a
            default parallel/vectorized schedule (:mod:`.cpu_schedule`); ``False`` keeps
            TVM's plain single-threaded loops.
        shapes: input name -> concrete shape, for a graph with symbolic dimensions: binds
            the symbols these shapes determine and compiles for exactly those sizes (the
            fastest code; other sizes are then refused).
        dynamic: how symbols left unbound are compiled: ``"auto"`` runs a batch symbol
            (see :func:`.specialize.batch_symbols`) as a loop over the program compiled for
            one sample, the other symbols as symbolic Relax shapes; ``"symbolic"`` keeps
            every symbol symbolic (generic kernels, one call per batch).
        batch_buckets: with a batch symbol, also compile the program for these batch sizes
            (e.g. ``(8,)``) into the same library: a batch of ``n`` then runs as chunks of
            the largest bucket that fits, the rest one sample at a time (same numbers,
            fewer calls; one more build per bucket).

    Returns:
        A :class:`Compiled` model; ``.save(path)`` writes it, ``slimfx.load`` reads it.

    Raises:
        LoweringError: nodes without a TVM lowering (all listed at once), or a node whose
            lowering needs static shapes where a symbol stays symbolic (use ``shapes=``).
        ArtifactError: the tuning database cannot be read (the message names it).
        SlimfxError: an unknown target, or a TVM build failure.
        RuntimeInputError: ``shapes`` that do not fit the graph's inputs or ranges.
    """
    if not isinstance(graph, Graph):
        raise SlimfxError(f"compile expects a slimfx Graph, got {type(graph).__name__}; trace "
                          "the model first with slimfx.trace(model, example_inputs)")
    if tune is not None and (not isinstance(tune, int) or tune < 0):
        raise SlimfxError(f"tune must be a non-negative trial count, got {tune!r}")
    if tune_seconds is not None and (isinstance(tune_seconds, bool)
                                     or not isinstance(tune_seconds, int | float)
                                     or not tune_seconds > 0):
        raise SlimfxError(f"tune_seconds must be a positive number of seconds, got "
                          f"{tune_seconds!r}")
    if tune_seconds is not None and not tune:
        raise SlimfxError("tune_seconds is a time budget for tuning: give a trial budget too "
                          "(tune=N), e.g. compile(graph, tune=2000, tune_seconds=600)")
    if dynamic not in ("auto", "symbolic"):
        raise SlimfxError(f"dynamic must be 'auto' or 'symbolic', got {dynamic!r}")
    spec = resolve_target(target)
    graph.verify()
    inputs, outputs = _signature(graph)
    graph, symbols, batch, unbatched = _specialize(graph, shapes, dynamic)
    if shapes is not None:
        inputs, outputs = _signature(unbatched)
    more, buckets = _buckets(unbatched, batch, symbols, batch_buckets)

    import tvm

    from slimfx.backends.tvm import tuning
    from slimfx.backends.tvm.targets import use_cpu_threads

    use_cpu_threads(spec)  # before any kernel runs (tuning measures in this process)
    tvm_target = tvm.target.Target(spec)
    # lowerings specialise for the target (int8 conv: VNNI or AVX2 kernels on x86)
    mod = lower_graph(graph, more=more, target=tvm_target)
    load_fn = LOAD_FN if any(gv.name_hint == LOAD_FN for gv in mod.get_global_vars()) else None
    db_dir = Path(tuning_db) if tuning_db is not None else tuning.default_db_dir()
    tuning.check_db_path(db_dir)
    try:
        with tvm.transform.PassContext(opt_level=opt_level):
            mod = tuning.prepare(mod, tvm_target)
            report = None
            if tune:
                report = tuning.tune(mod, tvm_target, db_dir, trials=tune, seconds=tune_seconds,
                                     progress=progress)
            if tune or tuning.has_db(db_dir):
                mod = tuning.apply_db(mod, tvm_target, db_dir)
            if tvm_target.kind.name == "llvm" and schedule:
                from slimfx.backends.tvm.cpu_schedule import default_cpu_schedule

                with tvm_target:  # kernels neither tuned nor hand-scheduled: parallel, vector
                    mod = default_cpu_schedule()(mod)
            pipeline: Any = "default"
            if tvm_target.kind.name == "cuda":  # int8 GEMMs on dp4a: dlight's int8 MMA rule fails
                from slimfx.backends.tvm.cuda_check import cuda_pipeline

                pipeline = cuda_pipeline(tvm_target)
            kernels = kernels_of(mod)
            ex = tvm.compile(mod, target=tvm_target, relax_pipeline=pipeline)
    except SlimfxError:  # LoweringError, or a tuning database error that names the database
        raise
    except Exception as e:  # TVM raises TVMError/InternalError/ValueError from deep inside
        raise SlimfxError(f"TVM failed to build graph {graph.name!r} for {spec}: {e}") from e
    compiled = Compiled(None, inputs, outputs, spec, executable=ex, symbols=symbols,
                        batch=batch, buckets=buckets, kernels=kernels, load_fn=load_fn)
    compiled.tuning = report
    return compiled


def _buckets(graph: Graph, batch: str | None, symbols: Mapping[str, SymbolRange],
             sizes: Sequence[int]) -> tuple[list[tuple[Graph, str]], dict[int, str]]:
    """The graphs bound to each bucket size, with their function names."""
    from slimfx.backends.tvm.specialize import batch_symbols, bind_symbols

    if not sizes:
        return [], {}
    if batch is None:
        why = "; ".join(f"{k}: {r}" for k, r in batch_symbols(graph).items() if r)
        raise SlimfxError(f"batch_buckets needs a batch symbol, and graph {graph.name!r} has "
                          f"none ({why or 'no symbols'}); compile with shapes= instead")
    more, names = [], {}
    for b in sorted(set(sizes)):
        if type(b) is not int or b < 2 or not symbols[batch].contains(b):
            raise SlimfxError(f"batch_buckets: {b!r} is not a batch size in the range of "
                              f"{batch} ({symbols[batch]}) above 1")
        names[b] = f"main_b{b}"
        more.append((bind_symbols(graph, {batch: b}), names[b]))
    return more, names


def _specialize(graph: Graph, shapes: Mapping[str, Sequence[int]] | None, dynamic: str
                ) -> tuple[Graph, dict[str, SymbolRange], str | None, Graph]:
    """The graph to lower, the symbols the artifact keeps, its batch symbol (if any) and the
    graph before the batch symbol was bound to 1."""
    from slimfx.backends.tvm.specialize import batch_symbols, bind_symbols

    if shapes is not None:
        if not isinstance(shapes, Mapping):
            raise SlimfxError(f"shapes must map input names to shapes, got "
                              f"{type(shapes).__name__}")
        bound = bind_shapes(graph, shapes)
        if bound:
            graph = bind_symbols(graph, bound)
            logger.info("graph %r specialised for %s", graph.name,
                        ", ".join(f"{k}={v}" for k, v in sorted(bound.items())))
    used = symbols_of(v.type for v in graph.values())
    if not used:
        return graph, {}, None, graph
    undeclared = sorted(used - set(graph.symbols))
    if undeclared:
        raise SlimfxError(f"graph {graph.name!r} uses undeclared symbol(s) "
                          f"{', '.join(undeclared)}; declare them (graph.add_symbol)")
    symbols = {k: graph.symbols[k] for k in sorted(used)}
    reasons = batch_symbols(graph, used) if dynamic == "auto" else {}
    batch = next((k for k, r in reasons.items() if r is None), None)
    for k, r in reasons.items():
        if r is not None:
            logger.info("symbol %s stays symbolic (generic kernels): %s", k, r)
    if batch is not None:
        logger.info("symbol %s is a batch dim: compiling the per-sample program, run once "
                    "per sample", batch)
        return bind_symbols(graph, {batch: 1}), symbols, batch, graph
    return graph, symbols, batch, graph
