"""PassContext: instruments, error wrapping, preconditions and the analysis manager."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from slimfx.errors import PassError
from slimfx.ir import Graph, TensorType, parse
from slimfx.passes import (
    DumpToDir,
    Pass,
    PassContext,
    PassResult,
    Pipeline,
    PrintIRAfter,
    ShapeInfo,
    Timing,
    UseCount,
    VerifyAfterEach,
    register_pass,
)

TEXT = """\
graph @main(%x: f32[2,3]) {
  %a = identity(%x) : f32[2,3]
  %b = neg(%a) : f32[2,3]
  %c = relu(%b) : f32[2,3]
  return %c
}
"""


def graph() -> Graph:
    return parse(TEXT)


@register_pass
@dataclass(frozen=True)
class Boom(Pass):
    """Raises inside run."""

    name = "test-boom"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        raise ZeroDivisionError("division by zero in the pass")


@register_pass
@dataclass(frozen=True)
class Breaker(Pass):
    """Leaves a dangling operand: a node using a value that is defined later."""

    name = "test-breaker"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        first, last = graph.nodes[0], graph.nodes[-1]
        first.replace_input(0, last.outputs[0])
        return PassResult(graph, True)


@register_pass
@dataclass(frozen=True)
class NeedsFolded(Pass):
    """Requires that no identity node is left."""

    name = "test-needs-no-identity"

    def requires(self, graph: Graph) -> None:
        if graph.find("identity"):
            raise PassError("test-needs-no-identity: the graph still has identity nodes; "
                            "run 'remove-identity' first")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult(graph, False)


@register_pass
@dataclass(frozen=True)
class UsesAnalyses(Pass):
    """Reads UseCount and ShapeInfo; optionally changes the graph, preserving ShapeInfo."""

    name = "test-uses-analyses"
    change: bool = False
    seen: ClassVar[list[int]] = []

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        self.seen.append(ctx.analysis(graph, UseCount)["b"])
        ctx.analysis(graph, ShapeInfo)
        return PassResult(graph, self.change, frozenset({ShapeInfo.name}))


def test_pass_error_names_pass_and_history() -> None:
    with pytest.raises(PassError) as info:
        Pipeline("remove-identity,dce,test-boom,fold-bn")(graph())
    msg = str(info.value)
    assert "pass 'test-boom' (#2 in the pipeline) failed on graph @main" in msg
    assert "ZeroDivisionError: division by zero in the pass" in msg
    assert "passes run before it: remove-identity, dce" in msg
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_requires_failure_is_reported_with_the_establishing_pass() -> None:
    with pytest.raises(PassError, match="run 'remove-identity' first"):
        Pipeline("test-needs-no-identity")(graph())
    Pipeline("remove-identity,test-needs-no-identity")(graph())  # established: fine


def test_verify_after_each_names_the_breaking_pass() -> None:
    with pytest.raises(PassError) as info:
        Pipeline("dce,test-breaker,dce")(graph(), PassContext(verify=True))
    assert "pass 'test-breaker' (#1) left an invalid graph" in str(info.value)
    assert "not defined before use" in str(info.value)


def test_verify_follows_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert PassContext().instrument(VerifyAfterEach) is not None  # conftest sets SLIMFX_VERIFY
    monkeypatch.setenv("SLIMFX_VERIFY", "0")
    assert PassContext().instrument(VerifyAfterEach) is None
    Pipeline("test-breaker")(graph())  # unverified: no error
    assert PassContext(verify=True).instrument(VerifyAfterEach) is not None


def test_timing_table() -> None:
    timing = Timing()
    Pipeline("remove-identity,dce,fuse-activation")(graph(), PassContext([timing]))
    assert [str(r.pass_) for r in timing.records] == ["remove-identity", "dce",
                                                      "fuse-activation"]
    assert [r.result.changed for r in timing.records] == [True, False, False]
    assert timing.records[0].nodes_before == 3 and timing.records[0].nodes_after == 2
    assert all(r.seconds >= 0 for r in timing.records)
    table = timing.table()
    assert "remove-identity" in table and "3 -> 2" in table and "total" in table


def test_print_ir_after_selected_passes_to_stream() -> None:
    out = io.StringIO()
    ctx = PassContext([PrintIRAfter(["dce"], stream=out)])
    Pipeline("remove-identity,dce")(graph(), ctx)
    text = out.getvalue()
    assert text.startswith("// IR after #1 dce\n")
    assert "identity" not in text and "%b = neg(%x)" in text


def test_print_ir_after_all_to_logger(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="slimfx.passes.instruments"):
        Pipeline("remove-identity,dce")(graph(), PassContext([PrintIRAfter()]))
    assert [r.message.splitlines()[0] for r in caplog.records] == [
        "// IR after #0 remove-identity", "// IR after #1 dce"]


def test_dump_to_dir(tmp_path: Path) -> None:
    dump = DumpToDir(tmp_path / "ir")
    Pipeline("remove-identity,dce{constants=false}")(graph(), PassContext([dump]))
    names = sorted(p.name for p in (tmp_path / "ir").iterdir())
    assert names == ["000-input.slimfx", "001-remove-identity.slimfx",
                     "002-dce_constants_false_.slimfx"]
    assert (tmp_path / "ir" / "000-input.slimfx").read_text() == TEXT
    assert "identity" not in (tmp_path / "ir" / "001-remove-identity.slimfx").read_text()


def test_analyses_cached_and_invalidated() -> None:
    UsesAnalyses.seen.clear()
    ctx = PassContext()
    g = graph()
    Pipeline("test-uses-analyses,test-uses-analyses")(g, ctx, inplace=True)
    assert ctx.analyses.computed == {"use-count": 1, "shape-info": 1}  # cached between passes
    # A changing pass drops what it does not preserve; ShapeInfo is preserved.
    Pipeline("test-uses-analyses{change=true},test-uses-analyses")(g, ctx, inplace=True)
    assert ctx.analyses.computed == {"use-count": 2, "shape-info": 1}
    # A pass that does not preserve anything drops all.
    Pipeline("remove-identity,test-uses-analyses")(g, ctx, inplace=True)
    assert ctx.analyses.computed == {"use-count": 3, "shape-info": 2}
    assert UsesAnalyses.seen == [1, 1, 1, 1, 1]


def test_use_count_values() -> None:
    g = graph()
    counts = PassContext().analysis(g, UseCount)
    assert counts["x"] == 1 and counts["c"] == 1  # %c: the graph output
    assert PassContext().analysis(g, ShapeInfo)["b"] == TensorType((2, 3))


def test_context_history_accumulates() -> None:
    ctx = PassContext()
    Pipeline("remove-identity")(graph(), ctx)
    Pipeline("dce{constants=false}")(graph(), ctx)
    assert ctx.history == ["remove-identity", "dce{constants=false}"]
