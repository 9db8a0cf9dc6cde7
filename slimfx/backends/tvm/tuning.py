"""Meta-schedule tuning with an in-process builder/runner and a database on disk.

TVM's default CPU pipeline applies no schedule; fast code needs meta-schedule. The stock
``LocalBuilder`` spawns a process per candidate that imports ``tvm.s_tir.tensor_intrin``
(tens of seconds each on small machines), so candidates are built and timed here, in this
process. Results go to a JSON database under ``tuning_db`` (default
``~/.cache/slimfx/tuning``); a task whose workload already has a record is not tuned again,
so a second compile of the same model does no tuning. A time budget (``seconds``) stops the
search once that many seconds have passed, the records found so far kept; :class:`TuneReport`
says what a call spent (trials measured, seconds).

The VNNI intrinsic ``dot_16x4_vnni`` that meta-schedule picks for AVX-512 VNNI CPUs is
broken with TVM 0.27's LLVM 22 (``llvm.x86.avx512.vpdpbusd.512`` now takes ``<64 x i8>``
operands): :func:`register_vnni_fix` re-registers it with operands reinterpreted as
``uint8x64`` / ``int8x64``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimfx.errors import ArtifactError

__all__ = ["TuneReport", "default_db_dir", "has_db", "check_db_path", "prepare", "tune",
           "apply_db", "register_vnni_fix", "load_tensor_intrinsics"]

logger = logging.getLogger(__name__)

_WORKLOADS = "database_workload.json"
_RECORDS = "database_tuning_record.json"


@dataclass(frozen=True)
class TuneReport:
    """What a :func:`tune` call did."""

    tasks: int  # tuning tasks extracted from the model
    tuned: int  # tasks that had no record in the database and were tuned
    trials: int  # trial budget spent (0 when every task was already in the database)
    measured: int = 0  # candidates built and timed
    seconds: float = 0.0  # wall time of the search (0 when nothing was tuned)
    out_of_time: bool = False  # the time budget stopped the search before the trials


def default_db_dir() -> Path:
    """``$SLIMFX_TUNING_DB`` or ``~/.cache/slimfx/tuning``."""
    env = os.environ.get("SLIMFX_TUNING_DB")
    return Path(env) if env else Path.home() / ".cache" / "slimfx" / "tuning"


def check_db_path(db_dir: Path) -> None:
    """Raises :class:`ArtifactError` when ``db_dir`` exists and is not a directory."""
    if db_dir.exists() and not db_dir.is_dir():
        raise ArtifactError(f"the tuning database {db_dir} is a file; tuning_db names a "
                            "directory (created if missing): pass another path")


def has_db(db_dir: Path) -> bool:
    """Whether ``db_dir`` holds a tuning database with at least one record."""
    rec = Path(db_dir) / _RECORDS
    return rec.is_file() and rec.stat().st_size > 0


def _bad_db(db_dir: Path, e: BaseException) -> ArtifactError:
    detail = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    return ArtifactError(
        f"the tuning database {db_dir} cannot be read ({detail}); it is corrupt or from "
        f"another TVM version: delete the directory {db_dir} (its records are rebuilt by the "
        "next compile with tune=N) or pass another tuning_db=")


def _database(db_dir: Path) -> Any:
    """The JSON database in ``db_dir`` (created if missing).

    Raises:
        ArtifactError: the directory cannot be created or its files cannot be parsed; the
            message names the database and says to delete it or pass another.
    """
    from tvm.s_tir import meta_schedule as ms

    check_db_path(db_dir)
    try:
        db_dir.mkdir(parents=True, exist_ok=True)
        return ms.database.JSONDatabase(str(db_dir / _WORKLOADS), str(db_dir / _RECORDS),
                                        module_equality="structural")
    except Exception as e:  # TVM raises TVMError/InternalError while parsing the files
        raise _bad_db(db_dir, e) from e


def prepare(mod: Any, target: Any) -> Any:
    """Legalizes, folds and fuses a Relax module: the form that is tuned and built."""
    import tvm
    from tvm import relax

    from slimfx.backends.tvm.unit_reduction import remove_unit_reductions

    with target:
        return tvm.transform.Sequential([
            relax.transform.DecomposeOpsForInference(),
            relax.transform.CanonicalizeBindings(),
            relax.transform.DeadCodeElimination(),  # layout permutes nobody reads any more
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
            remove_unit_reductions(),  # TVM mis-schedules reductions of length 1
        ])(mod)


def apply_db(mod: Any, target: Any, db_dir: Path) -> Any:
    """Replaces the PrimFuncs that have a record in the database by their tuned schedules."""
    from tvm import relax

    db = _database(db_dir)
    try:
        with target, db:
            return relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
    except Exception as e:  # a record that parses but cannot be applied
        raise _bad_db(db_dir, e) from e


# --------------------------------------------------------------------------- builder / runner
def _builder_runner() -> tuple[Any, Any, Path]:
    import tvm
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.runner import PyRunner, RunnerResult
    from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture
    from tvm.s_tir.meta_schedule.runner.utils import (
        alloc_argument_common,
        run_evaluator_common,
    )

    work = Path(tempfile.mkdtemp(prefix="slimfx-tune-"))

    @derived_object
    class InProcessBuilder(PyBuilder):
        """Builds candidates in this process (no process spawn, no intrinsic re-import)."""

        def build(self, build_inputs: list) -> list:
            from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

            results = []
            for i, inp in enumerate(build_inputs):
                try:
                    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(inp.mod)
                    rt = tvm.compile(mod, target=inp.target)
                    # one directory per candidate: RemoveBuildArtifact deletes the directory
                    path = str(Path(tempfile.mkdtemp(prefix=f"cand{i}_", dir=work)) / "c.so")
                    rt.export_library(path)
                    results.append(BuilderResult(path, None))
                except Exception as e:  # noqa: BLE001 - a bad candidate is reported, not raised
                    results.append(BuilderResult(None, f"{type(e).__name__}: {e}"))
            return results

    rng_fill = tvm.get_global_func("tvm.contrib.random.random_fill", allow_missing=True)

    def fill(arr: Any) -> None:
        import numpy as np

        if rng_fill is not None:
            rng_fill(arr)
            return
        shape, dtype = tuple(arr.shape), str(arr.dtype)
        data = np.random.default_rng(0).integers(-8, 8, shape).astype(dtype)
        arr.copyfrom(data)

    config = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=20,
                                       enable_cpu_cache_flush=False)

    @derived_object
    class InProcessRunner(PyRunner):
        """Times built candidates in this process with ``time_evaluator``."""

        def run(self, runner_inputs: list) -> list:
            futures = []
            for inp in runner_inputs:
                try:
                    rt = tvm.runtime.load_module(inp.artifact_path)
                    dev = tvm.runtime.device(inp.device_type, 0)
                    info = [a.as_json() for a in inp.args_info]
                    args = alloc_argument_common(fill, dev, info, 1)
                    costs = run_evaluator_common(rt, dev, config, args)
                    futures.append(LocalRunnerFuture(res=costs))
                except Exception as e:  # noqa: BLE001 - a failing candidate is reported
                    futures.append(LocalRunnerFuture(error_message=f"{type(e).__name__}: {e}"))
            return futures

    del RunnerResult
    return InProcessBuilder(), InProcessRunner(), work


class _Budget:
    """Counts measured candidates and ends the search once ``seconds`` have passed."""

    def __init__(self, seconds: float | None) -> None:
        self.start = time.monotonic()
        self.seconds = seconds
        self.measured = 0
        self.out_of_time = False

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def after_batch(self, task_scheduler: Any, count: int) -> None:
        """Called with each batch of measured candidates: terminates every task left when
        the time is up (the scheduler then stops; the records so far are in the database)."""
        self.measured += count
        if self.seconds is None or self.out_of_time or self.elapsed() < self.seconds:
            return
        self.out_of_time = True
        for i, record in enumerate(task_scheduler.tasks_):
            if not record.is_terminated:
                task_scheduler.terminate_task(i)


def _progress_callback(total: int, enabled: bool, budget: _Budget) -> Any:
    from tqdm.auto import tqdm
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    bar = tqdm(total=total, desc="tuning", unit="trial", disable=not enabled, leave=False)

    @derived_object
    class Progress(PyMeasureCallback):
        def apply(self, task_scheduler: Any, task_id: int, measure_candidates: list,
                  builder_results: list, runner_results: list) -> None:
            bar.update(len(measure_candidates))
            budget.after_batch(task_scheduler, len(measure_candidates))

    return Progress(), bar


def _has_record(db: Any, task: Any, target: Any) -> bool:
    mod = task.dispatched[0]
    return db.has_workload(mod) and bool(db.get_top_k(db.commit_workload(mod), 1))


def _is_scheduled(task: Any) -> bool:
    func = task.dispatched[0]["main"]
    return bool(func.attrs is not None and func.attrs.get("tirx.is_scheduled", False))


def _prepare_logging() -> None:
    """Keeps meta-schedule's per-round INFO tables off the console (tqdm shows progress).

    meta-schedule rebuilds its logging config from the names of its logger's handlers on
    every run; a handler without a name (added by a test harness or a user) breaks that
    rebuild, so such handlers are dropped from its logger.
    """
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    for handler in list(ms_logger.handlers):
        if handler.get_name() is None:
            ms_logger.removeHandler(handler)
    if ms_logger.level == logging.NOTSET:
        ms_logger.setLevel(logging.WARNING)


def tune(mod: Any, target: Any, db_dir: Path, *, trials: int, seconds: float | None = None,
         progress: bool = True, seed: int | None = 0) -> TuneReport:
    """Tunes the tasks of ``mod`` (a :func:`prepare`-d module) that the database lacks.

    Args:
        mod: the legalized, fused Relax module.
        target: a ``tvm.target.Target``.
        db_dir: directory of the JSON database (created if missing).
        trials: the global trial budget, split over the tasks to tune.
        seconds: a time budget for the search, or ``None``. It is checked after each batch
            of measured candidates (batches of at most 16 with a time budget, 64 without),
            so the search may overrun it by one batch.
        progress: show a tqdm progress bar.
        seed: seed of the search (``None`` for a random one).
    """
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.relax_integration import (
        extract_tasks,
        extracted_tasks_to_tune_contexts,
    )

    from slimfx.backends.tvm.targets import target_kind

    kind = target_kind({"kind": target.kind.name, "mtriple": str(target.attrs.get("mtriple", ""))})
    load_tensor_intrinsics(kind)
    if kind == "x86":
        register_vnni_fix()
    db = _database(Path(db_dir))
    tasks = extract_tasks(mod, target)
    # functions scheduled by hand (e.g. the VNNI int8 conv dense) keep their schedule
    tasks = [t for t in tasks if not _is_scheduled(t)]
    pending = [t for t in tasks if not _has_record(db, t, target)]
    if not pending:
        logger.info("tuning: all %d task(s) found in %s, nothing to tune", len(tasks), db_dir)
        return TuneReport(len(tasks), 0, 0)
    logger.info("tuning %d of %d task(s) with %d trials%s", len(pending), len(tasks), trials,
                "" if seconds is None else f" or {seconds:g} s")
    budget = _Budget(seconds)
    work_dir = tempfile.mkdtemp(prefix="slimfx-ms-")
    _prepare_logging()
    contexts, weights = extracted_tasks_to_tune_contexts(pending, work_dir, seed=seed)
    builder, runner, build_dir = _builder_runner()
    per_task = max(1, trials // len(pending))
    callback, bar = _progress_callback(min(trials, per_task * len(pending)), progress, budget)
    try:
        import importlib.util

        cost_model = "xgb" if importlib.util.find_spec("xgboost") else "random"
        ms.tune.tune_tasks(
            tasks=contexts, task_weights=weights, work_dir=work_dir,
            max_trials_global=trials, max_trials_per_task=per_task,
            num_trials_per_iter=min(64 if seconds is None else 16, per_task),
            builder=builder, runner=runner,
            database=db, cost_model=cost_model,
            measure_callbacks=[*ms.MeasureCallback.create("default"), callback],
            task_scheduler="round-robin")
    finally:
        bar.close()
        shutil.rmtree(work_dir, ignore_errors=True)
        shutil.rmtree(build_dir, ignore_errors=True)
    if budget.out_of_time:
        logger.info("tuning stopped by its time budget (%g s) after %d trials", seconds,
                    budget.measured)
    return TuneReport(len(tasks), len(pending), trials, budget.measured, budget.elapsed(),
                      budget.out_of_time)


# --------------------------------------------------------------------------- intrinsics
_INTRIN_PKG = "tvm.s_tir.tensor_intrin"
_INTRIN_MODULES = {"x86": ("x86",), "arm": ("arm_cpu",), "cuda": ("cuda",)}


def load_tensor_intrinsics(kind: str) -> None:
    """Registers the tensor intrinsics of one target kind without importing all of them.

    ``TuneContext`` imports ``tvm.s_tir.tensor_intrin``, whose ``__init__`` registers the
    intrinsics of every target (CUDA's alone take minutes on a loaded 2-core machine). When
    the package is not imported yet, a package module without that ``__init__`` is put in
    ``sys.modules`` (same ``__path__``, so any submodule still imports on demand) and only
    the submodules for ``kind`` are imported.
    """
    import importlib
    import sys
    import types

    if _INTRIN_PKG not in sys.modules:
        import tvm.s_tir

        pkg_dir = Path(tvm.s_tir.__file__).parent / "tensor_intrin"
        pkg = types.ModuleType(_INTRIN_PKG, "Tensor intrinsics, loaded per target by slimfx.")
        pkg.__path__ = [str(pkg_dir)]
        pkg.__file__ = str(pkg_dir / "__init__.py")
        pkg.__package__ = _INTRIN_PKG
        sys.modules[_INTRIN_PKG] = pkg
        tvm.s_tir.tensor_intrin = pkg  # type: ignore[attr-defined]
    for name in _INTRIN_MODULES.get(kind, ()):
        importlib.import_module(f"{_INTRIN_PKG}.{name}")


# --------------------------------------------------------------------------- VNNI fix
_VNNI_FIXED = False


def register_vnni_fix() -> None:
    """Re-registers ``dot_16x4_vnni`` so that LLVM 22 accepts it (idempotent)."""
    global _VNNI_FIXED
    if _VNNI_FIXED:
        return
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    load_tensor_intrinsics("x86")  # registers the originals first
    from tvm.s_tir.tensor_intrin import x86

    @T.prim_func(s_tir=True)
    def vnni_impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),  # type: ignore[valid-type]
        B: T.Buffer((16, 4), "int8", offset_factor=1),  # type: ignore[valid-type]
        C: T.Buffer((16,), "int32", offset_factor=1),  # type: ignore[valid-type]
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            a_u8x4 = A.vload([0], "uint8x4")
            a_i32 = T.reinterpret(a_u8x4, dtype="int32")
            a_u8x64 = T.reinterpret(T.broadcast(a_i32, 16), dtype="uint8x64")
            b_i8x64 = B.vload([0, 0], dtype="int8x64")
            c_i32x16 = C.vload([0], dtype="int32x16")
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                c_i32x16, a_u8x64, b_i8x64, dtype="int32x16")

    TensorIntrin.register(x86.VNNI_DOT_16x4_INTRIN, x86.dot_product_16x4_u8i8i32_desc,
                          vnni_impl, override=True)
    _VNNI_FIXED = True
