"""Pipelines: parsing, printing, equality, named pipelines, option types, bad input."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

import pytest
import torch

import slimfx
from slimfx.errors import PipelineError
from slimfx.ir import Graph, TensorType
from slimfx.passes import (
    Pass,
    PassContext,
    PassResult,
    Pipeline,
    get_pass,
    known_passes,
    known_pipelines,
    register_pass,
    register_pipeline,
)


class Importance(enum.Enum):
    L1 = "l1"
    L2 = "l2"


@register_pass
@dataclass(frozen=True)
class Opts(Pass):
    """A pass with one option of each kind (does nothing)."""

    name = "test-opts"
    ratio: float = 0.5
    steps: int = 1
    enabled: bool = True
    label: str = "x"
    mode: Literal["fast", "exact"] = "fast"
    importance: Importance = Importance.L1
    dims: tuple[int, ...] = ()
    names: tuple[str, ...] = ()
    limit: int | None = None

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult(graph, False)


@register_pass
@dataclass(frozen=True)
class AppendRelu(Pass):
    """Appends a relu to the first output (to observe order and effects)."""

    name = "test-append-relu"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        graph.set_outputs([graph.add("relu", [graph.outputs[0]]), *graph.outputs[1:]])
        return PassResult(graph, True)


register_pipeline("test-two-relus", "test-append-relu,test-append-relu", "two relus")


def tiny() -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType((2, 3)))
    g.set_outputs([g.add("neg", [x], name="y")])
    return g


# ---------------------------------------------------------------- parse / print
@pytest.mark.parametrize("text", [
    "test-opts",
    "test-opts{ratio=0.25}",
    "test-opts{steps=3,enabled=false,label=\"a b\",mode=exact}",
    "test-opts{importance=l2,dims=[1,2,3],names=[a,b],limit=7}",
    "test-opts{label=\"with,comma{}\"}",
    "fold-bn,fuse-activation,cleanup",
    "test-two-relus,test-opts{dims=[]}",
])
def test_round_trip(text: str) -> None:
    p = Pipeline(text)
    assert Pipeline(str(p)) == p
    assert str(Pipeline(str(p))) == str(p)


def test_options_print_only_when_not_default() -> None:
    assert str(Pipeline("test-opts{ratio=0.5,steps=1}")) == "test-opts"
    assert str(Opts(steps=2, ratio=1)) == "test-opts{ratio=1.0,steps=2}"
    assert str(Pipeline("test-opts{ratio=1}")) == "test-opts{ratio=1.0}"


def test_option_values_are_typed() -> None:
    (p,) = Pipeline("test-opts{ratio=1,mode=exact,importance=l2,dims=[4,5],names=a,limit=none}")
    assert isinstance(p, Opts)
    assert p.ratio == 1.0 and isinstance(p.ratio, float)
    assert p.mode == "exact" and p.importance is Importance.L2
    assert p.dims == (4, 5) and p.names == ("a",) and p.limit is None
    assert Opts(dims=[1, 2]).dims == (1, 2)  # lists from Python become tuples


def test_string_option_written_as_number() -> None:
    (p,) = Pipeline("test-opts{label=1e3}")
    assert p.label == "1e3"


def test_whitespace_is_ignored() -> None:
    assert Pipeline(" test-opts { steps = 2 } , dce ") == Pipeline("test-opts{steps=2},dce")


def test_nesting_and_equality() -> None:
    inner = Pipeline([Opts(steps=2), "dce"])
    outer = Pipeline([inner, get_pass("fold-bn")(), Pipeline("cleanup")])
    assert [p.name for p in outer] == ["test-opts", "dce", "fold-bn", "remove-identity",
                                       "fold-constants", "dce"]
    assert str(outer) == "test-opts{steps=2},dce,fold-bn,cleanup"
    assert Pipeline(str(outer)) == outer
    assert outer == "test-opts{steps=2},dce,fold-bn,remove-identity,fold-constants,dce"
    assert Pipeline("dce") != Pipeline("dce{constants=false}")
    assert len(Pipeline("")) == 0 and str(Pipeline("")) == ""
    assert (Pipeline("dce") + "fold-bn") == Pipeline("dce,fold-bn")


def test_named_pipeline_expands_and_describes() -> None:
    p = Pipeline("cleanup")
    assert [q.name for q in p] == ["remove-identity", "fold-constants", "dce"]
    assert str(p) == "cleanup"
    text = p.describe()
    assert "fold-constants{max_numel=4194304,fold_quant=false}  [from cleanup]" in text
    assert "cleanup" in known_pipelines()
    assert {"dce", "fold-constants", "remove-identity", "fold-bn", "fuse-activation",
            "fuse-conv-relu", "eliminate-dead-code"} <= set(known_passes())


def test_alias_names_the_same_class() -> None:
    assert get_pass("fuse-conv-relu") is get_pass("fuse-activation")
    assert str(Pipeline("fuse-conv-relu")) == "fuse-activation"


def test_public_api() -> None:
    assert slimfx.Pipeline is Pipeline
    assert slimfx.register_pass is register_pass


# ---------------------------------------------------------------- running
def test_call_clones_unless_inplace() -> None:
    g = tiny()
    before = str(g)
    out = Pipeline("test-two-relus")(g)
    assert str(g) == before
    assert [n.op.name for n in out.nodes] == ["neg", "relu", "relu"]
    same = Pipeline("test-append-relu")(g, inplace=True)
    assert same is g and len(g) == 2
    x = torch.randn(2, 3)
    torch.testing.assert_close(slimfx.to_torch(out)(x), torch.relu(-x))


def test_single_pass_is_callable() -> None:
    out = AppendRelu()(tiny())
    assert [n.op.name for n in out.nodes] == ["neg", "relu"]


def test_run_reports_changed() -> None:
    g = tiny()
    assert Pipeline("test-opts,dce").run(g).changed is False
    assert Pipeline("test-opts,test-append-relu").run(g).changed is True


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(("text", "message", "position"), [
    ("dce,,fold-bn", "expected a pass name, got ','", 4),
    ("dce fold-bn", "expected ',' between passes, got 'fold-bn'", 4),
    ("dce,", "expected a pass name, got the end", 4),
    ("test-opts{steps=2", "expected ',' or '}' in the options opened at position 9", 17),
    ("test-opts{steps}", "expected '=' after option 'steps', got '}'", 15),
    ("test-opts{=2}", "expected an option name, got '='", 10),
    ("test-opts{steps=}", "expected an option value, got '}'", 16),
    ("dce;fold-bn", "unexpected character ';'", 3),
    ("test-opts{dims=[1 2]}", "expected ',' or ']' in a list, got '2'", 18),
])
def test_malformed_string_names_token_and_position(text: str, message: str, position: int) -> None:
    with pytest.raises(PipelineError) as info:
        Pipeline(text)
    msg = str(info.value)
    assert message in msg
    assert f"position {position}:" in msg
    assert "\n  " + " " * position + "^" in msg


def test_unknown_pass_lists_known_and_suggests() -> None:
    with pytest.raises(PipelineError) as info:
        Pipeline("dce,fold-bnn")
    msg = str(info.value)
    assert "unknown pass 'fold-bnn'; did you mean 'fold-bn'?" in msg
    assert "position 4" in msg
    for name in ("dce", "fold-constants", "fuse-activation", "remove-identity"):
        assert name in msg.split("known passes:")[1]
    with pytest.raises(PipelineError, match="unknown pass 'nothing-like-it'"):
        get_pass("nothing-like-it")


@pytest.mark.parametrize(("text", "message"), [
    ("test-opts{steps=1.5}", "option 'steps' expects int, got 1.5"),
    ("test-opts{steps=true}", "option 'steps' expects int, got True"),
    ("test-opts{enabled=1}", "option 'enabled' expects bool"),
    ("test-opts{ratio=abc}", "option 'ratio' expects float, got 'abc'"),
    ("test-opts{mode=slow}", "choose one of fast, exact"),
    ("test-opts{importance=l3}", "choose one of l1, l2"),
    ("test-opts{dims=[1,x]}", "option 'dims' expects tuple[int, ...]"),
    ("test-opts{speed=2}", "unknown option(s) speed; its options are: ratio, steps"),
    ("test-opts{steps=1,steps=2}", "option 'steps' given twice"),
    ("cleanup{x=1}", "pipeline 'cleanup' takes no options"),
])
def test_bad_options(text: str, message: str) -> None:
    with pytest.raises(PipelineError) as info:
        Pipeline(text)
    assert message in str(info.value)


def test_bad_option_from_python() -> None:
    with pytest.raises(PipelineError, match="option 'steps' expects int"):
        Opts(steps="3")  # type: ignore[arg-type]
    with pytest.raises(PipelineError, match="holds passes, pipelines and pipeline strings"):
        Pipeline([Opts(), 3])  # type: ignore[list-item]


def test_registration_errors() -> None:
    with pytest.raises(PipelineError, match="must be decorated with @dataclass"):
        @register_pass
        class NotDataclass(Pass):
            name = "test-not-dataclass"
            x: int = 1

    with pytest.raises(TypeError, match="cannot inherit non-frozen dataclass"):
        @register_pass
        @dataclass
        class NotFrozen(Pass):
            name = "test-not-frozen"

    with pytest.raises(PipelineError, match="not a kebab-case name"):
        @register_pass
        @dataclass(frozen=True)
        class BadName(Pass):
            name = "Bad_Name"

    with pytest.raises(PipelineError, match="already registered"):
        @register_pass
        @dataclass(frozen=True)
        class Clash(Pass):
            name = "dce"

    with pytest.raises(PipelineError, match="already the name of a pass"):
        register_pipeline("dce", "fold-bn")

    with pytest.raises(PipelineError, match="includes itself"):
        register_pipeline("test-loop", "dce,test-loop")
        Pipeline("test-loop")
