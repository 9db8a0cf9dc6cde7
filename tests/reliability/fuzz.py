"""The fuzz campaign: ``python -m tests.reliability.fuzz --cases 10000 --seed 0``.

Op level: ``--cases`` cases drawn over every op with a strategy (``--ops`` to restrict),
with NaN/Inf/denormal/extreme inputs unless ``--finite``; run on x86 (compared), on ARM
under qemu for the integer ops (``--arm N`` cases; skipped with a note when ``make
arm-env`` has not been run) and compiled for CUDA (``--cuda N`` cases, compile only).
Graph level: ``--graphs N`` random models through every pipeline and through compile
(``--graph-pipelines`` to restrict).

Every batch runs in a worker process (``--no-isolate``: in this process): a segfault or
abort in the torch reference or in TVM is pinned to its case and counted as ``crashed``
with the signal and the side that crashed, and the campaign goes on.

Prints a table of counts per op (cases, passed, mismatched, of those matching a known
defect, rejected with a SlimfxError, crashed) and one repro line per mismatch and crash;
exits 1 when any case crashed or any mismatch is not a known defect, else 0; ``--strict`` (used by ``make fuzz``): any mismatch
at all fails, since the known defects 1-3 are fixed (the tags only help reading old runs).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tests.reliability.fuzz_ops import FINITE, INTEGER_OPS, FuzzConfig, draw_cases
from tests.reliability.fuzz_run import KNOWN_DEFECTS, Report, run_cases, summarize_mismatch

__all__ = ["main"]


def _arm_available() -> str | None:
    from slimfx.backends.tvm import arm_env

    return None if arm_env.find_env() is not None else arm_env.missing_reason()


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the campaign; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m tests.reliability.fuzz", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=10000, help="op-level cases on x86")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ops", default="", help="comma-separated op names (default: all)")
    p.add_argument("--finite", action="store_true", help="finite, normal inputs only")
    p.add_argument("--batch", type=int, default=128, help="cases per compiled graph")
    p.add_argument("--arm", type=int, default=200, help="integer-op cases on ARM (qemu)")
    p.add_argument("--cuda", type=int, default=100, help="cases compiled for CUDA")
    p.add_argument("--graphs", type=int, default=1000, help="random models (graph level)")
    p.add_argument("--graph-bundle", type=int, default=10, help="models per compiled graph")
    p.add_argument("--graph-pipelines", default="", help="comma-separated (default: all)")
    p.add_argument("--strict", action="store_true", help="known defects fail the run too")
    p.add_argument("--out", default="", help="rewrite this file with the table after each "
                   "batch (a checkpoint of a long campaign)")
    p.add_argument("--no-x86", action="store_true", help="skip the x86 op-level cases")
    p.add_argument("--no-isolate", action="store_true", help="run batches in this process "
                   "(a crash in torch or TVM then ends the campaign)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds a batch may take "
                   "in its worker before it counts as crashed (hung)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(message)s")
    start = time.perf_counter()
    cfg = FINITE if args.finite else FuzzConfig()
    ops = [o for o in args.ops.split(",") if o] or None
    report = Report()

    def checkpoint(r: Report) -> None:
        if args.out:
            lines = [r.table(), *_problems(r)]
            Path(args.out).write_text("\n".join(lines) + "\n")

    kw = {"batch_size": args.batch, "report": report, "log_every": args.verbose,
          "on_batch": checkpoint, "isolate": not args.no_isolate, "timeout_s": args.timeout}
    if args.cases and not args.no_x86:
        run_cases(draw_cases(args.cases, args.seed, ops, cfg), "x86", **kw)
    if args.arm:
        reason = _arm_available()
        if reason is None:
            int_ops = [o for o in INTEGER_OPS if ops is None or o in ops]
            if int_ops:
                run_cases(draw_cases(args.arm, args.seed + 1, int_ops, cfg, "arm"), "arm",
                          **kw)
        else:
            print(f"ARM skipped: {reason}; run `make arm-env`")
    if args.cuda:
        run_cases(draw_cases(args.cuda, args.seed + 2, ops, cfg, "cu"), "cuda", **kw)
    print(report.table())
    for line in _problems(report):
        print(line)
    unknown = report.mismatches(known=False)
    bad = len(report.mismatches()) if args.strict else len(unknown)
    bad += len(report.crashes())
    if args.graphs:
        bad += _graphs(args)
    print("known defects: " + "; ".join(f"{k}: {v}" for k, v in KNOWN_DEFECTS.items()))
    print(f"total {time.perf_counter() - start:.0f} s; {bad} failing mismatch(es) or "
          "crash(es)")
    return 1 if bad else 0


def _problems(r: Report) -> list[str]:
    """One repro line per mismatch, crash and crash that no case reproduced alone."""
    return [*("MISMATCH " + summarize_mismatch(t, o) for t, o in r.mismatches()),
            *(f"CRASH {t}: {o.case.describe()} :: {o.detail}" for t, o in r.crashes()),
            *("UNPINNED CRASH " + u for u in r.unpinned)]


def _graphs(args: argparse.Namespace) -> int:
    from tests.reliability.fuzz_graphs import (
        PIPELINES,
        GraphReport,
        draw_specs,
        run_bundle,
        run_bundle_isolated,
    )
    from tests.reliability.fuzz_worker import Worker

    pipelines = [p for p in args.graph_pipelines.split(",") if p] or list(PIPELINES)
    specs = draw_specs(args.graphs, args.seed + 3)
    report = GraphReport()
    worker = None if args.no_isolate else Worker(timeout_s=args.timeout)
    for i in range(0, len(specs), args.graph_bundle):
        bundle = specs[i:i + args.graph_bundle]
        if worker is None:
            run_bundle(bundle, pipelines, report)
        else:
            run_bundle_isolated(bundle, pipelines, report, worker)
        if args.out:
            Path(args.out + ".graphs").write_text(
                "\n".join([report.table(), *("GRAPH " + d for d in report.details)]) + "\n")
        if args.verbose:
            logging.info("graphs %d/%d: %d mismatches, %d crashed",
                         min(i + args.graph_bundle, len(specs)), len(specs), report.mismatches,
                         report.crashes)
    if worker is not None:
        worker.close()
    print(report.table())
    for d in report.details:
        print("GRAPH", d)
    return report.mismatches + report.crashes


if __name__ == "__main__":
    sys.exit(main())
