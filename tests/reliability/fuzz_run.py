"""Runs fuzz cases: many cases per graph, torch reference vs a compiled TVM target.

A TVM build costs ~0.1 s per kernel plus a fixed overhead per compile, so the cases of a
batch go into ONE graph (one node per case, its own inputs and constants) that is
compiled once. A batch that fails to build is bisected until the failing case is alone;
that case is ``rejected`` (a :class:`SlimfxError`, e.g. a ``LoweringError`` naming the
node). Cases whose graph the IR itself refuses (type inference) or whose torch reference
raises are ``rejected`` as well, with the reason.

Crash isolation (``run_cases(..., isolate=True)``, what the campaign uses): each batch runs
in a :class:`~tests.reliability.fuzz_worker.Worker` process. When the worker dies (a
segfault or abort in torch or TVM, or a hang past the timeout), the batch's cases are run
one by one (a fresh worker after each crash) to pin the crashing case; it becomes a
``crashed`` outcome naming the signal and the side (the torch reference, the TVM compile
or the TVM run), confirmed by running it alone in a fresh worker. A batch crash that no
case reproduces alone is listed in :attr:`Report.unpinned`.

Targets: ``x86`` (run and compare), ``arm`` (cross-compiled, run under qemu through
``Compiled.__call__``; needs ``make arm-env``), ``cuda`` (compile only: the emitted CUDA is
compiled to a cubin with nvcc/NVRTC when one is installed, no GPU needed).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from slimfx.errors import SlimfxError
from slimfx.ir import Graph, TensorType
from tests.reliability.fuzz_cases import FuzzCase, Outcome, compare, materialize
from tests.reliability.fuzz_ops import CLAMPING
from tests.reliability.fuzz_worker import Crash, Worker, phase

__all__ = ["Report", "run_cases", "known_defect", "KNOWN_DEFECTS"]

logger = logging.getLogger(__name__)

KNOWN_DEFECTS = {
    1: "fp32/fp16 conv/linear with reduction length 1 adds the bias twice in compiled code",
    2: "int8 avg pool with a 1x1 window and input zero point -128 is off by 128",
    3: "relu / max(., 0) (and the other max/min/clamp-based ops) map NaN to a number",
}


def known_defect(outcome: Outcome) -> int | None:
    """The number of the known defect (:data:`KNOWN_DEFECTS`) a mismatch matches, if any."""
    c = outcome.case
    if outcome.status != "mismatch":
        return None
    clamps = c.op in CLAMPING or c.attrs.get("act_min") is not None \
        or c.attrs.get("act_max") is not None
    if outcome.nan_lost and clamps:
        return 3
    if c.op in ("conv1d", "conv2d", "linear") and len(c.operands) == 3 \
            and c.tol.reduction == 2 and "NaN positions" not in outcome.detail:
        return 1
    if c.op == "qavg_pool2d" and list(c.attrs["kernel"]) == [1, 1] \
            and c.attrs["in_zero_point"] == -128:
        return 2
    return None


@dataclass
class Report:
    """Outcomes of a run, counted per op and target."""

    outcomes: list[tuple[str, Outcome]] = field(default_factory=list)
    seconds: float = 0.0
    unpinned: list[str] = field(default_factory=list)  # batch crashes no case reproduced

    def add(self, target: str, outcomes: Iterable[Outcome]) -> None:
        self.outcomes.extend((target, o) for o in outcomes)

    def counts(self) -> dict[tuple[str, str], Counter[str]]:
        """``{(target, op): Counter(status)}``."""
        table: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        for target, o in self.outcomes:
            table[(target, o.case.op)][o.status] += 1
        return dict(table)

    def mismatches(self, *, known: bool | None = None) -> list[tuple[str, Outcome]]:
        """Mismatches; ``known=False`` only those matching no known defect."""
        out = [(t, o) for t, o in self.outcomes if o.status == "mismatch"]
        if known is None:
            return out
        return [(t, o) for t, o in out if (known_defect(o) is not None) == known]

    def crashes(self) -> list[tuple[str, Outcome]]:
        """Cases whose torch reference or TVM build/run killed the process."""
        return [(t, o) for t, o in self.outcomes if o.status == "crashed"]

    def table(self) -> str:
        """A text table: target, op, cases, passed, mismatched (+known defects), rejected,
        crashed."""
        rows = [("target", "op", "cases", "passed", "mismatched", "known-defect", "rejected",
                 "crashed")]
        totals: Counter[str] = Counter()
        known_by: Counter[tuple[str, str]] = Counter()
        for t, o in self.mismatches(known=True):
            known_by[(t, o.case.op)] += 1
        for (target, op), c in sorted(self.counts().items()):
            n = sum(c.values())
            rows.append((target, op, str(n), str(c["passed"]), str(c["mismatch"]),
                         str(known_by[(target, op)]), str(c["rejected"]), str(c["crashed"])))
            totals.update(c)
            totals["known"] += known_by[(target, op)]
        rows.append(("all", "", str(sum(v for k, v in totals.items() if k != "known")),
                     str(totals["passed"]), str(totals["mismatch"]), str(totals["known"]),
                     str(totals["rejected"]), str(totals["crashed"])))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(v.ljust(w) if i < 2 else v.rjust(w)
                                   for i, (v, w) in enumerate(zip(r, widths, strict=True)))
                         for r in rows)


# ----------------------------------------------------------------------- graphs
def _add_case(g: Graph, case: FuzzCase, feeds: list[torch.Tensor],
              tensors: Sequence[torch.Tensor]) -> list[Any]:
    vals = []
    for i, (op, t) in enumerate(zip(case.operands, tensors, strict=True)):
        if op.kind == "in":
            vals.append(g.add_input(f"{case.id}_{i}", TensorType.of(t)))
            feeds.append(t)
        else:
            vals.append(g.add_constant(t, f"{case.id}_c{i}"))
    node = g.create(case.op, vals, case.attrs, name=case.id)
    return list(node.outputs)


@dataclass
class _Batch:
    graph: Graph
    feeds: list[torch.Tensor]
    index: dict[str, tuple[int, int]]
    cases: list[FuzzCase]


def _build(cases: Sequence[FuzzCase], tensors: dict[str, list[torch.Tensor]],
           name: str = "fuzz") -> _Batch:
    g = Graph(name)
    feeds: list[torch.Tensor] = []
    outputs: list[Any] = []
    index: dict[str, tuple[int, int]] = {}
    for case in cases:
        outs = _add_case(g, case, feeds, tensors[case.id])
        index[case.id] = (len(outputs), len(outs))
        outputs.extend(outs)
    g.set_outputs(outputs)
    return _Batch(g, feeds, index, list(cases))


def _as_list(out: Any) -> list[Any]:
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _reference(batch: _Batch) -> list[torch.Tensor]:
    import slimfx

    phase("torch reference", (c.id for c in batch.cases))
    with torch.no_grad():
        return [t.detach() for t in _as_list(slimfx.to_torch(batch.graph)(*batch.feeds))]


def _magnitude_tensors(case: FuzzCase, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [t.abs() if t.is_floating_point() else t for t in tensors]


def _prepare(cases: Sequence[FuzzCase]) -> tuple[list[FuzzCase], dict[str, list[torch.Tensor]],
                                                 list[Outcome]]:
    """Materializes the operands; cases the IR refuses are rejected here."""
    ok, rejected = [], []
    tensors: dict[str, list[torch.Tensor]] = {}
    phase("IR checks", (c.id for c in cases))
    for case in cases:
        ts = [materialize(o) for o in case.operands]
        try:
            g = Graph("check")
            g.set_outputs(_add_case(g, case, [], ts))
            g.verify()
        except (SlimfxError, TypeError, ValueError, KeyError, IndexError) as e:
            rejected.append(Outcome(case, "rejected", f"IR: {type(e).__name__}: {e}"))
            continue
        tensors[case.id] = ts
        ok.append(case)
    return ok, tensors, rejected


def _references(cases: list[FuzzCase], tensors: dict[str, list[torch.Tensor]]
                ) -> tuple[list[FuzzCase], dict[str, list[torch.Tensor]], list[Outcome]]:
    """The torch results of every case (batched; per case when the batch fails)."""
    try:
        batch = _build(cases, tensors)
        out = _reference(batch)
        return cases, {c.id: out[i:i + n] for c, (i, n) in
                       ((c, batch.index[c.id]) for c in cases)}, []
    except Exception:  # noqa: BLE001 - isolate the failing case below
        pass
    good, refs, rejected = [], {}, []
    for case in cases:
        try:
            refs[case.id] = _reference(_build([case], tensors))
            good.append(case)
        except Exception as e:  # noqa: BLE001 - any reference failure rejects the case
            rejected.append(Outcome(case, "rejected", f"torch: {type(e).__name__}: "
                                    f"{str(e).splitlines()[0][:300]}"))
    return good, refs, rejected


def _magnitudes(cases: list[FuzzCase], tensors: dict[str, list[torch.Tensor]]
                ) -> dict[str, list[torch.Tensor]]:
    """For ``reduce`` cases: the op on |operands| (without the fused clamp)."""
    red = [replace(c, attrs={k: v for k, v in c.attrs.items()
                             if k not in ("act_min", "act_max")})
           for c in cases if c.tol.family == "reduce"]
    if not red:
        return {}
    mags = {c.id: _magnitude_tensors(c, tensors[c.id]) for c in red}
    _, refs, _ = _references(red, mags)
    return refs


def _contract(case: FuzzCase, tensors: Sequence[torch.Tensor], result: torch.Tensor,
              who: str) -> Outcome | None:
    """DESIGN.md §4 checks the torch reference itself must pass: quantize(NaN) = zp."""
    if case.op != "quantize":
        return None
    x = tensors[0]
    nan = torch.isnan(x)
    if not nan.any():
        return None
    a = {"axis": None, "qmin": -128, "qmax": 127, **case.attrs}
    zp = torch.tensor(a["zero_point"], dtype=torch.int64)
    if a["axis"] is not None:
        shape = [1] * x.dim()
        shape[a["axis"]] = -1
        zp = zp.reshape(shape)
    want = torch.clamp(zp, a["qmin"], a["qmax"]).expand(x.shape)
    bad = nan & (result.to(torch.int64) != want)
    if bad.any():
        idx = tuple(int(i) for i in torch.nonzero(bad)[0])
        return Outcome(case, "mismatch",
                       f"{who}: quantize(NaN) must be the zero point (DESIGN.md §4): "
                       f"{int(bad.sum())} NaN inputs give {result[idx].item()}, "
                       f"expected {want[idx].item()}", nan_lost=False)
    return None


# Ops whose torch float kernels can miss the exact value by more than the fuzzer's bound:
# the norms (cancellation, below) and functions built on torch's vectorised erf/exp.
_EXACT_CHECKED = ("group_norm", "instance_norm", "layer_norm", "gelu")


def _float64_reference(case: FuzzCase, tensors: Sequence[torch.Tensor]
                       ) -> list[torch.Tensor] | None:
    """The case computed by the same torch kernel in float64, rounded once to the result
    dtype; ``None`` for other ops and non-float operands.

    torch's fp32 norms form ``x * s + (b - mean * s)`` with ``s = g * rsqrt(var + eps)``:
    over a group whose variance is ~0 the two terms cancel and leave an error of about
    ``eps32 * |x g| / sqrt(var + eps)``, far beyond any fixed bound (fp16: torch's kernel
    gave -0.6235 and +0.6357 for a group of two that is exactly -0.6297 and +0.6297); its
    AVX-512 gelu is off by 2.3e-4 relative at x = -2.99 (an Intel host). A build that
    disagrees with the torch reference is then checked against this exact value.
    """
    from slimfx.backends.torch.kernels import KERNELS

    if case.op not in _EXACT_CHECKED or not tensors[0].is_floating_point():
        return None
    g = Graph("exact")
    node = g.create(case.op, [g.add_input(f"x{i}", TensorType.of(t))
                              for i, t in enumerate(tensors)], case.attrs)
    wide = [t.double() if t.is_floating_point() else t for t in tensors]
    with torch.no_grad():
        out = KERNELS[case.op](*wide, **node.attrs)
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    return [o.to(tensors[0].dtype) for o in outs]


# ----------------------------------------------------------------------- targets
def _compile_and_run(cases: list[FuzzCase], tensors: dict[str, list[torch.Tensor]],
                     target: str) -> dict[str, list[Any] | str]:
    """Per case id: the target's results, or the error text when it was rejected."""
    import slimfx

    batch = _build(cases, tensors, name=f"fuzz_{target}")
    ids = [c.id for c in cases]
    try:
        phase("TVM compile", ids)
        compiled = slimfx.compile(batch.graph, target)
        if target == "cuda":
            _check_cuda_source(compiled)
            return {c.id: [] for c in cases}
        feeds: list[Any] = batch.feeds if target != "arm" else [f.numpy() for f in batch.feeds]
        phase("TVM run", ids)
        out = _as_list(compiled(*feeds))
    except SlimfxError as e:
        if len(cases) == 1:
            return {cases[0].id: f"{type(e).__name__}: {str(e)[:600]}"}
        half = len(cases) // 2
        return {**_compile_and_run(cases[:half], tensors, target),
                **_compile_and_run(cases[half:], tensors, target)}
    return {c.id: out[i:i + n] for c, (i, n) in ((c, batch.index[c.id]) for c in cases)}


def _check_cuda_source(compiled: Any) -> None:
    from slimfx.backends.tvm import cuda_check
    from slimfx.errors import DeviceError

    if cuda_check.find_nvcc() is None and not cuda_check._has_nvrtc():
        return
    try:
        cuda_check.compile_cubin(cuda_check.cuda_source(compiled), "sm_80")
    except DeviceError as e:
        raise SlimfxError(f"emitted CUDA does not compile: {e}") from e


def run_cases(cases: Sequence[FuzzCase], target: str = "x86", *, batch_size: int = 96,
              report: Report | None = None, log_every: bool = False,
              on_batch: Callable[[Report], None] | None = None, isolate: bool = False,
              timeout_s: float = 3600.0,
              inject: Mapping[str, tuple[str, str]] | None = None) -> Report:
    """Runs ``cases`` on ``target`` in batches of ``batch_size`` and compares with torch.

    Args:
        cases: fuzz cases with unique ids.
        target: ``x86``, ``arm`` or ``cuda`` (compile only).
        batch_size: cases per compiled graph.
        report: a report to add to (a new one by default).
        log_every: log each batch's progress at INFO.
        on_batch: called with the report after each batch (checkpoints).
        isolate: run each batch in a worker process; a crash becomes ``crashed`` outcomes.
        timeout_s: with ``isolate``: a batch (or a case re-run alone) taking longer is a
            crash ("timeout").
        inject: test-only, with ``isolate``: ``{case id: (phase, "abort" | "segv")}``
            makes the worker crash in that phase (see :func:`fuzz_worker.phase`).
    """
    report = report if report is not None else Report()
    start = time.perf_counter()
    worker = Worker(inject, timeout_s) if isolate else None
    try:
        for b in range(0, len(cases), batch_size):
            chunk = list(cases[b:b + batch_size])
            t0 = time.perf_counter()
            if worker is None:
                outcomes = _run_batch(chunk, target)
            else:
                outcomes = _run_isolated(worker, chunk, target, report)
            _log_batch(report, target, outcomes, b, t0, log_every, on_batch)
    finally:
        if worker is not None:
            worker.close()
    report.seconds += time.perf_counter() - start
    return report


def _log_batch(report: Report, target: str, outcomes: list[Outcome], b: int, t0: float,
               log_every: bool, on_batch: Callable[[Report], None] | None) -> None:
    report.add(target, outcomes)
    if log_every:
        bad = sum(o.status == "mismatch" for o in outcomes)
        crashed = sum(o.status == "crashed" for o in outcomes)
        logger.info("%s batch %d-%d: %d mismatches, %d crashed, %.1f s", target, b,
                    b + len(outcomes), bad, crashed, time.perf_counter() - t0)
    if on_batch is not None:
        on_batch(report)


def _run_isolated(worker: Worker, chunk: list[FuzzCase], target: str,
                  report: Report) -> list[Outcome]:
    """The batch in the worker; after a crash, its cases one by one to pin the crash."""
    got = worker.call(_run_batch, chunk, target)
    if not isinstance(got, Crash):
        return got
    logger.warning("%s batch of %d cases %s; re-running them one by one", target,
                   len(chunk), got.describe())
    outcomes: list[Outcome] = []
    for case in chunk:
        one = worker.call(_run_batch, [case], target)
        if isinstance(one, Crash):  # confirm alone, in a fresh worker
            again = worker.call(_run_batch, [case], target)
            if isinstance(again, Crash):
                one = [Outcome(case, "crashed", again.describe())]
            else:
                report.unpinned.append(f"{target}: {case.describe()}: {one.describe()} "
                                       "after other cases in the same worker, not alone")
                one = again
        outcomes += one
    if not any(o.status == "crashed" for o in outcomes):
        report.unpinned.append(f"{target}: a batch of {len(chunk)} cases ({chunk[0].id} ..) "
                               f"{got.describe()}; no case crashes alone")
    return outcomes


def _run_batch(chunk: list[FuzzCase], target: str) -> list[Outcome]:
    cases, tensors, outcomes = _prepare(chunk)
    cases, refs, rejected = _references(cases, tensors)
    outcomes += rejected
    if not cases:
        return outcomes
    mags = _magnitudes(cases, tensors) if target != "cuda" else {}
    results = _compile_and_run(cases, tensors, target)
    for case in cases:
        got = results[case.id]
        if isinstance(got, str):
            outcomes.append(Outcome(case, "rejected", got))
            continue
        contract = _contract(case, tensors[case.id], refs[case.id][0], "torch reference")
        if target == "cuda":
            outcomes.append(Outcome(case, "passed", "compiled"))
            continue
        outcome = compare(case, refs[case.id], got, mags.get(case.id))
        exact = _float64_reference(case, tensors[case.id]) if outcome.status != "passed" \
            else None
        if exact is not None and compare(case, exact, got).status == "passed":
            outcome = Outcome(case, "passed", "matches the float64 result; the torch "
                              "reference is off (see _float64_reference)")
        if outcome.status == "passed" and contract is None:
            contract = _contract(case, tensors[case.id], torch.as_tensor(got[0]), target)
        outcomes.append(contract or outcome)
    return outcomes


def summarize_mismatch(target: str, o: Outcome) -> str:
    """A repro line: target, case, bound, what differed, and the known defect if any."""
    k = known_defect(o)
    tag = f" [known defect {k}]" if k else ""
    return f"{target}: {o.case.describe()} :: {o.detail}{tag}"

