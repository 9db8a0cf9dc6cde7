"""Passes over the slimfx IR and the infrastructure that runs them (DESIGN.md §3).

- :class:`Pass` / :class:`PassResult`: the contract (frozen dataclass, ``run(graph, ctx)``);
- :func:`register_pass` / :func:`register_pipeline`: the registry by name;
- :class:`Pipeline`: nested pass sequences, parsed from and printed to strings;
- :class:`PassContext`: instruments (timing, print-IR-after, verify, dump, per-pass report) and
  analyses;
- ``slimfx.passes.rewriter``: declarative patterns, rewrite rules and a worklist driver.

Built-in passes (``dce``, ``fold-constants``, ``remove-identity``, ``fold-bn``,
``fuse-activation``) register on the first lookup by name.
"""

from __future__ import annotations

from slimfx.passes.analysis import Analysis, AnalysisManager, ShapeInfo, UseCount
from slimfx.passes.base import Pass, PassResult
from slimfx.passes.context import PassContext
from slimfx.passes.instruments import (
    DumpToDir,
    Instrument,
    PassRecord,
    PassReport,
    PassReportRow,
    PrintIRAfter,
    Timing,
    VerifyAfterEach,
)
from slimfx.passes.pipeline import Pipeline
from slimfx.passes.registry import (
    get_pass,
    known_passes,
    known_pipelines,
    register_pass,
    register_pipeline,
)
from slimfx.passes.rewriter import RewritePass, RewriteRule, explain

__all__ = [
    "Analysis",
    "AnalysisManager",
    "DumpToDir",
    "Instrument",
    "Pass",
    "PassContext",
    "PassRecord",
    "PassReport",
    "PassReportRow",
    "PassResult",
    "Pipeline",
    "PrintIRAfter",
    "RewritePass",
    "RewriteRule",
    "ShapeInfo",
    "Timing",
    "UseCount",
    "VerifyAfterEach",
    "explain",
    "get_pass",
    "known_passes",
    "known_pipelines",
    "register_pass",
    "register_pipeline",
]
