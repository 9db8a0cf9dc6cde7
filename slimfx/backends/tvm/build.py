"""``slimfx.compile``: IR graph -> Relax -> native code for a named target.

Without tuning, TVM's default pipeline runs (legalize, fold constants, fuse, build); on CPUs
it applies no schedule, so slimfx gives every kernel not otherwise scheduled a default
parallel, vectorized schedule (:mod:`slimfx.backends.tvm.cpu_schedule`). With ``tune=N`` the
legalized, fused module is tuned with meta-schedule (see :mod:`slimfx.backends.tvm.tuning`), the best
schedules are stored in a database on disk and applied before the build; a later compile
of the same model finds them there and does not tune again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from slimfx.backends.tvm.compiled import Compiled, TensorSpec
from slimfx.backends.tvm.lower import lower_graph
from slimfx.backends.tvm.native_log import native_log_to_logging
from slimfx.backends.tvm.targets import resolve_target
from slimfx.errors import SlimfxError
from slimfx.ir.core import Graph

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
    tuning_db: str | os.PathLike[str] | None = None,
    opt_level: int = 3,
    progress: bool = True,
    schedule: bool = True,
) -> Compiled:
    """Compiles an IR graph with TVM.

    Args:
        graph: the graph (float, fp16 or integer ops).
        target: ``"x86"`` (this host's CPU), ``"arm"``, ``"cuda"``, ``"cuda:sm_90"`` or a TVM
            target dict.
        tune: meta-schedule trial budget; ``None`` or 0 compiles without tuning (but still
            applies schedules already in ``tuning_db``).
        tuning_db: directory of the tuning database (default ``~/.cache/slimfx/tuning``).
        opt_level: TVM's pass context optimisation level.
        progress: show a progress bar while tuning.
        schedule: on CPUs, give every kernel that is neither tuned nor scheduled by hand a
            default parallel/vectorized schedule (:mod:`.cpu_schedule`); ``False`` keeps
            TVM's plain single-threaded loops.

    Returns:
        A :class:`Compiled` model; ``.save(path)`` writes it, ``slimfx.load`` reads it.

    Raises:
        LoweringError: nodes without a TVM lowering (all listed at once).
        ArtifactError: the tuning database cannot be read (the message names it).
        SlimfxError: an unknown target, or a TVM build failure.
    """
    if not isinstance(graph, Graph):
        raise SlimfxError(f"compile expects a slimfx Graph, got {type(graph).__name__}; trace "
                          "the model first with slimfx.trace(model, example_inputs)")
    if tune is not None and (not isinstance(tune, int) or tune < 0):
        raise SlimfxError(f"tune must be a non-negative trial count, got {tune!r}")
    spec = resolve_target(target)
    graph.verify()

    import tvm

    from slimfx.backends.tvm import tuning
    from slimfx.backends.tvm.targets import use_cpu_threads

    use_cpu_threads(spec)  # before any kernel runs (tuning measures in this process)
    tvm_target = tvm.target.Target(spec)
    with tvm_target:  # lowerings may specialise for the target (int8 conv: VNNI on x86)
        mod = lower_graph(graph)
    db_dir = Path(tuning_db) if tuning_db is not None else tuning.default_db_dir()
    try:
        with tvm.transform.PassContext(opt_level=opt_level):
            mod = tuning.prepare(mod, tvm_target)
            if tune:
                tuning.tune(mod, tvm_target, db_dir, trials=tune, progress=progress)
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
            ex = tvm.compile(mod, target=tvm_target, relax_pipeline=pipeline)
    except SlimfxError:  # LoweringError, or a tuning database error that names the database
        raise
    except Exception as e:  # TVM raises TVMError/InternalError/ValueError from deep inside
        raise SlimfxError(f"TVM failed to build graph {graph.name!r} for {spec}: {e}") from e
    inputs, outputs = _signature(graph)
    return Compiled(None, inputs, outputs, spec, executable=ex)
