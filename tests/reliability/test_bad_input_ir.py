"""Bad input to the IR and pipeline entry points: each is a SlimfxError that names the problem.

Graph files (``load_graph``/``save_graph``), the text form (``parse``), op
attributes and pipeline strings/specs. No raw exception (JSONDecodeError,
RecursionError, KeyError, RuntimeError, SafetensorError, ...) may escape.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from slimfx.errors import ArtifactError, AttrError, ParseError, PipelineError, VerifyError
from slimfx.ir import Graph, TensorType, load_graph, parse, save_graph
from slimfx.ir.serialize import FORMAT
from slimfx.passes import Pass, Pipeline
from slimfx.passes.fold_batchnorm import FoldBatchNorm
from slimfx.passes.registry import get_pass, register_pass, register_pipeline

TEXT = """\
graph @main(%x: f32[2,3]) {
  const %w : f32[2,3]
  %y = add(%x, %w) : f32[2,3]
  %r = relu(%y) : f32[2,3]
  return %r
}
"""
DEEP = "[" * 3000 + "]" * 3000


@dataclass(frozen=True)
class _Named(Pass):
    """A pass that is never registered (its registration is refused)."""

    name = "never-registered"


def _write(path: Path, text: str, tensors: dict[str, torch.Tensor] | None = None,
           **meta: str) -> Path:
    tensors = {"w": torch.randn(2, 3)} if tensors is None else tensors
    save_file(tensors, str(path), metadata={"format": FORMAT, "graph": text,
                                            "output_names": "null", **meta})
    return path


# ------------------------------------------------------------------ load_graph
def test_node_type_disagreeing_with_its_op_is_refused(tmp_path: Path) -> None:
    p = _write(tmp_path / "g.safetensors", TEXT.replace("relu(%y) : f32[2,3]",
                                                        "relu(%y) : f32[2,4]"))
    with pytest.raises(ArtifactError) as info:
        load_graph(p)
    msg = str(info.value)
    for part in (str(p), "%r = relu", "f32[2,4]", "inferred f32[2,3]",
                 "corrupt or from an incompatible slimfx version", "line 4, column 3"):
        assert part in msg, (part, msg)


@pytest.mark.parametrize("text, tensors, why", [
    (TEXT, {"w": torch.randn(2, 3, dtype=torch.float64)},
     "constant %w: given tensor is f64[2,3], text says f32[2,3]"),
    (TEXT, {"w": torch.randn(3, 2)}, "constant %w: given tensor is f32[3,2], text says f32[2,3]"),
    (TEXT, {"w": torch.zeros(2, 3, dtype=torch.uint16)}, "dtype torch.uint16"),
    (TEXT, {}, "constant %w (f32[2,3]) has no inline data and no tensor was given"),
    (TEXT.replace("%r = relu(%y)", "%y = relu(%y)").replace("return %r", "return %y"), None,
     "%y is defined twice"),
    (TEXT.replace("%x: f32[2,3]", "%w: f32[2,3]"), None, "%w is defined twice"),
    (TEXT.replace("relu(%y)", "relu(%y, %x)"), None, "2 operands, but relu takes"),
    (TEXT.replace("add(", "addd("), None, "unknown op 'addd' (did you mean 'add'?)"),
    (TEXT.replace("relu(%y)", "gelu(%y) {approximate=" + DEEP + "}"), None,
     "nested deeper than 32"),
    ("\x00\x01 garbage", None, "line 1, column 1: unexpected character"),
    (TEXT[:40], None, "line 2, column 13: unknown dtype ''"),
    (TEXT + "trailing", None, "after the end of the graph"),
    (TEXT.replace("const %w : f32[2,3]", "const %w : f32[2,3]\n  const %big : f32[99999999999]"),
     None, "constant %big (f32[99999999999]) has no inline data"),
])
def test_corrupt_graph_text_or_tensors_is_an_artifact_error(
        tmp_path: Path, text: str, tensors: dict[str, torch.Tensor] | None, why: str) -> None:
    p = _write(tmp_path / "g.safetensors", text, tensors)
    with pytest.raises(ArtifactError, match=re.escape(why)) as info:
        load_graph(p)
    assert str(p) in str(info.value)
    assert isinstance(info.value.__cause__, ParseError)


def _valid_file(tmp_path: Path) -> Path:
    g = parse(TEXT, {"w": torch.randn(2, 3)})
    p = tmp_path / "ok.safetensors"
    save_graph(g, p)
    return p


@pytest.mark.parametrize("cut", [0, 7, 8, 20, -1, -13])
def test_truncated_file_is_an_artifact_error(tmp_path: Path, cut: int) -> None:
    p = _valid_file(tmp_path)
    data = p.read_bytes()
    p.write_bytes(data[:cut])
    with pytest.raises(ArtifactError, match=f"cannot read graph file {re.escape(str(p))}"):
        load_graph(p)


@pytest.mark.parametrize("header", [b"{not json", b"[" * 3000 + b"]" * 3000,
                                    b'{"w": {"dtype": "F32", "shape": [2, 3]}}'])
def test_header_that_is_not_valid_json_is_an_artifact_error(tmp_path: Path,
                                                            header: bytes) -> None:
    p = tmp_path / "bad.safetensors"
    p.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 24)
    with pytest.raises(ArtifactError, match="cannot read graph file"):
        load_graph(p)


@pytest.mark.parametrize("meta, why", [
    ({"output_names": "{oops"}, "output_names in the header is not valid JSON"),
    ({"output_names": DEEP}, "output_names in the header is not valid JSON"),
    ({"output_names": '["a", "b"]'}, "must be a list of 1 strings"),
    ({"output_names": "[1]"}, "must be a list of 1 strings"),
    ({"graph": "graph @main("}, "does not parse"),
    ({"graph": "graph @main(%x: f32[2]) {\n  %r = gelu(%x) {approximate=\"\\q\"} : f32[2]\n"
               "  return %r\n}"}, "bad string"),
])
def test_bad_header_values_are_artifact_errors(tmp_path: Path, meta: dict[str, str],
                                               why: str) -> None:
    p = _write(tmp_path / "g.safetensors", TEXT, {} if "graph" in meta else None, **meta)
    with pytest.raises(ArtifactError, match=re.escape(why)):
        load_graph(p)


def test_header_without_graph_text_is_an_artifact_error(tmp_path: Path) -> None:
    p = tmp_path / "g.safetensors"
    save_file({"w": torch.zeros(1)}, str(p), metadata={"format": FORMAT})
    with pytest.raises(ArtifactError, match="the header has no graph text"):
        load_graph(p)


@pytest.mark.parametrize("tensors, why", [
    ({"w": torch.randn(2, 3), "stray": torch.zeros(1)}, "tensors ['stray'] belong to no constant"),
    ({"w": torch.randn(2, 3), "mask:nope": torch.ones(2, 3, dtype=torch.bool)},
     "mask 'mask:nope' belongs to no constant"),
    ({"w": torch.randn(2, 3), "mask:w": torch.ones(2, 3)}, "mask 'mask:w' is torch.float32"),
    ({"w": torch.randn(2, 3), "mask:w": torch.ones(3, dtype=torch.bool)}, "needs bool[2, 3]"),
])
def test_stray_or_mismatched_tensors_are_artifact_errors(
        tmp_path: Path, tensors: dict[str, torch.Tensor], why: str) -> None:
    p = _write(tmp_path / "g.safetensors", TEXT, tensors)
    with pytest.raises(ArtifactError, match=re.escape(why)):
        load_graph(p)


def test_missing_file_and_directory_are_artifact_errors(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="cannot read graph file .*nope.safetensors"):
        load_graph(tmp_path / "nope.safetensors")
    with pytest.raises(ArtifactError, match="cannot read graph file"):
        load_graph(tmp_path)
    with pytest.raises(ArtifactError, match="expected a str or path-like, got int"):
        load_graph(3)  # type: ignore[arg-type]


# ------------------------------------------------------------------ save_graph
def _unwritable(tmp_path: Path) -> list[tuple[Path, str]]:
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    return [(tmp_path / "afile" / "g.safetensors", "Not a directory"),
            (tmp_path / "adir", "it is a directory"),
            (tmp_path / "missing" / "g.safetensors", "No such file or directory")]


def test_save_to_an_unwritable_path_is_an_artifact_error(tmp_path: Path) -> None:
    g = parse(TEXT)
    for path, reason in _unwritable(tmp_path):
        with pytest.raises(ArtifactError, match=re.escape(reason)) as info:
            save_graph(g, path)
        assert f"cannot write graph file {path}" in str(info.value)
        if reason != "it is a directory":
            assert isinstance(info.value.__cause__, OSError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]  # no temp files
    with pytest.raises(ArtifactError, match="expected a str or path-like, got NoneType"):
        save_graph(g, None)  # type: ignore[arg-type]


def test_save_replaces_an_existing_file(tmp_path: Path) -> None:
    p = _valid_file(tmp_path)
    g = parse(TEXT, {"w": torch.full((2, 3), 5.0)})
    save_graph(g, p)
    assert torch.equal(load_graph(p).constants["w"].const, torch.full((2, 3), 5.0))


# ------------------------------------------------------------------ parse
G1 = "graph @main(%x: f32[2,3]) {\n  %r = {body}\n  return %r\n}\n"


def _node(body: str) -> str:
    return G1.replace("{body}", body)


@pytest.mark.parametrize("text, why", [
    (_node("relu(%x) : f32[2,4]"),
     "line 2, column 3: %r = relu (<unknown source>): result types f32[2,4] differ from "
     "inferred f32[2,3]"),
    (_node("rleu(%x) : f32[2,3]"), "line 2, column 8: unknown op 'rleu' (did you mean 'relu'?)"),
    (_node("relu(%q) : f32[2,3]"), "line 2, column 13: %q is used before it is defined"),
    (_node("gelu(%x) {approximate=3} : f32[2,3]"),
     "line 2, column 17: gelu: attribute 'approximate' expects str, got 3"),
    (_node("gelu(%x) {approximate=\"\\q\"} : f32[2,3]"), "line 2, column 30: bad string"),
    (_node("gelu(%x) {approximate=\"tanh\", approximate=\"none\"} : f32[2,3]"),
     "line 2, column 38: attribute 'approximate' given twice"),
    (_node("gelu(%x) {approximate=" + DEEP + "} : f32[2,3]"),
     "attribute lists nested deeper than 32 levels"),
    (_node("softmax(%x) {axis=" + "9" * 5000 + "} : f32[2,3]"), "integer too long"),
    (_node("relu(%x) : f32[2,x]"), "line 2, column 25: expected an integer dimension, got 'x'"),
    (_node("relu(%x) : f32[2,-3]"), "line 2, column 25: dimension -3 is negative"),
    (_node("relu(%x) : f32[2,3] q<i8, scale=0.1>"),
     "line 2, column 28: quantization parameters miss zp"),
    (_node("relu(%x) : f32[2,3] q<i8, scale=-1.0, zp=0>"), "scales must be finite and positive"),
    (_node("relu(%x) : f32[2,3] q<i8, scale=\"a\", zp=0>"), "quantization parameters need"),
    (_node("relu(%x) : f32[2,3] q<i8, scale=0.1, zp=0, axis=0>"),
     "line 2, column 3: %r = relu (<unknown source>): %r: 1 per-channel scales for 2 "
     "channels"),
    (_node("relu(%x) : f32[2,3] loc(1, 2)"), "loc(...) takes up to three strings"),
    (_node("relu(%x) : f32[2,3], f32[2,3]"), "relu: 1 results but 2 types"),
    (G1.replace("{body}", "relu(%x) : f32[2,3]").replace("%r = ", "%r, %r = "),
     "a node defines the same name twice"),
    (G1.replace("  %r", "  const %c : i8[2] = dense<[1,300]>\n  %r").replace("{body}",
                                                                           "relu(%x) : f32[2,3]"),
     "constant %c: data does not fit i8[2]"),
    (G1.replace("  %r", "  const %c : f32[3] = dense<[1.0]>\n  %r").replace(
        "{body}", "relu(%x) : f32[2,3]"), "constant %c: 1 values for f32[3] (3 elements)"),
    (G1.replace("  %r", "  const %c : bool[1] = dense<[2]>\n  %r").replace(
        "{body}", "relu(%x) : f32[2,3]"), "bool data must be 0 or 1"),
    (G1.replace("  %r", "  const %c : i64[1] = dense<[1.5]>\n  %r").replace(
        "{body}", "relu(%x) : f32[2,3]"), "i64 data must be integers"),
    (G1.replace("  %r", "  const %c : f32[1] = dense<[[1.0]]>\n  %r").replace(
        "{body}", "relu(%x) : f32[2,3]"), "dense data must be a flat list of numbers"),
    (G1.replace("  %r", "  const %c : f32[99999999999]\n  %r").replace(
        "{body}", "relu(%x) : f32[2,3]"), "give its tensor in constants"),
    (G1.replace("return %r", "return %r names [1]").replace("{body}", "relu(%x) : f32[2,3]"),
     "output names must be a list of strings"),
    (G1.replace("return %r", "return %r names [\"a\", \"b\"]").replace(
        "{body}", "relu(%x) : f32[2,3]"), "line 3, column 3: the graph is invalid: output_names and outputs differ in length"),
    ("graph @main(%x: f32[2,3]) {\n  return %x\n}\nextra", "line 4, column 1: unexpected 'extra'"),
    ("%%%", "line 1, column 1: unexpected character '%'"),
    ("grph @main() {\n  return\n}", "line 1, column 1: expected 'graph', got 'grph'"),
    ("graph @main(%x: f32[2,3] {", "line 1, column 26: expected ')', got '{'"),
    ("graph @main(%x: f32[2,3]) {\n  %r = relu(%x : f32[2,3]\n  return %r\n}",
     "line 2, column 16: expected ')', got ':'"),
    ("graph @main(%x: f32[2,3]) {\n  %r = relu(%x) : f32[2,3] {\n  return %r\n}",
     "line 2, column 28: expected a node, 'const' or 'return', got '{'"),
    ("", "line 1, column 1: expected 'graph', got the end of the text"),
])
def test_parse_errors_give_line_and_column(text: str, why: str) -> None:
    with pytest.raises(ParseError, match=re.escape(why)) as info:
        parse(text)
    assert re.match(r"line \d+, column \d+: ", str(info.value)), str(info.value)
    assert "^" in str(info.value)  # the line is shown with a caret


def test_parse_rejects_non_text() -> None:
    with pytest.raises(ParseError, match="parse expects the text form as a str, got bytes"):
        parse(TEXT.encode())  # type: ignore[arg-type]


def test_parse_can_read_an_invalid_graph_on_purpose() -> None:
    bad = _node("relu(%x) : f32[2,4]")
    g = parse(bad, verify=False)
    assert str(g.node("r").output.type) == "f32[2,4]"


def _nest(depth: int, leaf: Any, as_dict: bool = False) -> Any:
    for _ in range(depth):
        leaf = {"a": leaf} if as_dict else [leaf]
    return leaf


@pytest.mark.parametrize("make", [
    lambda g, x, deep: g.create("gelu", [x], {"approximate": deep}),
    lambda g, x, deep: g.create("reshape", [x], {"shape": deep}),
    lambda g, x, deep: g.create("gelu", [x]).set_attrs(approximate=deep),
], ids=["create-str", "create-dims", "set_attrs"])
@pytest.mark.parametrize("as_dict", [False, True], ids=["list", "dict"])
def test_deeply_nested_attribute_through_the_api_is_an_attr_error(make: Any,
                                                                  as_dict: bool) -> None:
    """3,000 levels (a RecursionError's depth) stop at 32, named; still a TypeError too."""
    g = Graph()
    x = g.add_input("x", TensorType((2, 3)))
    with pytest.raises(AttrError, match=r"(gelu: attribute 'approximate'|reshape: attribute "
                                        r"'shape'): attribute value nested deeper than 32 "
                                        r"levels; give a flat list") as info:
        make(g, x, _nest(3000, 1, as_dict))
    assert isinstance(info.value, VerifyError) and isinstance(info.value, TypeError)


@pytest.mark.parametrize("op, attrs, why", [
    ("gelu", {"approximate": 5}, "gelu: attribute 'approximate' expects str, got 5"),
    ("gelu", {"bogus": 1}, "gelu: unknown attributes ['bogus']; known: ['approximate']"),
    ("softmax", {}, "softmax: missing required attribute 'axis'"),
    ("permute", {"dims": ["a", 1]}, "permute: attribute 'dims' expects a list of ints, got "
                                    "('a', 1)"),
    ("permute", {"dims": [[1], 2]}, "expects a list of ints, got ((1,), 2)"),
])
def test_bad_attribute_through_the_api_is_an_attr_error(op: str, attrs: dict[str, Any],
                                                        why: str) -> None:
    g = Graph()
    x = g.add_input("x", TensorType((2, 3)))
    with pytest.raises(AttrError, match=re.escape(why)):
        g.create(op, [x], attrs)


# ------------------------------------------------------------------ pipelines
@pytest.mark.parametrize("spec, why", [
    (123, "Pipeline() takes a pipeline string, a pass, a pipeline, or a list of those, "
          "not int (123)"),
    (None, "not NoneType (None)"),
    (object(), "not object (<object object"),
    ({"fold-bn": 1}, "not dict"),
    ([1, 2], "a pipeline holds passes, pipelines and pipeline strings, not int (1)"),
    ([FoldBatchNorm], "not the pass class FoldBatchNorm (instantiate it: FoldBatchNorm())"),
    ([b"fold-bn"], "not bytes"),
])
def test_pipeline_of_a_non_pass_is_a_pipeline_error(spec: Any, why: str) -> None:
    with pytest.raises(PipelineError, match=re.escape(why)):
        Pipeline(spec)


def test_pipeline_of_a_deeply_nested_list_is_a_pipeline_error() -> None:
    with pytest.raises(PipelineError, match=re.escape("a pipeline holds passes, pipelines and "
                                                      "pipeline strings, not list ([[[[[...]]]]])")):
        Pipeline(_nest(3000, "dce"))


def test_bad_string_escape_is_a_caret_error() -> None:
    text = 'prune-channels{importance="\\q"}'
    with pytest.raises(PipelineError) as info:
        Pipeline(text)
    msg = str(info.value)
    assert "position 27: bad string" in msg and "Invalid \\escape" in msg, msg
    line, caret = msg.splitlines()[1:3]
    assert line[caret.index("^")] == "\\"


@pytest.mark.parametrize("text, why", [
    ("prune-channels{ratio=" + DEEP + "}", "option values nested deeper than 32 levels"),
    ("prune-channels{ratio=" + "9" * 5000 + "}", "number too long"),
    ('prune-channels{importance="\\ud83"}', "bad string"),
])
def test_pathological_option_values_are_pipeline_errors(text: str, why: str) -> None:
    with pytest.raises(PipelineError, match=re.escape(why)) as info:
        Pipeline(text)
    assert len(str(info.value).splitlines()[0]) < 300  # long input is shown abbreviated


@pytest.mark.parametrize("call, why", [
    (lambda: get_pass(None), "a pass name is a str, not NoneType (None)"),
    (lambda: register_pipeline(123, "dce"), "register_pipeline: 123 is not a kebab-case name"),
    (lambda: register_pipeline("my-pipe", 123),
     "register_pipeline: the text of 'my-pipe' must be a pipeline string, not int"),
    (lambda: register_pass(_Named, aliases="my-alias"),
     "register_pass: aliases of _Named must be a tuple of kebab-case names, got 'my-alias'"),
    (lambda: register_pass(_Named, aliases=(1,)), "must be a tuple of kebab-case names"),
])
def test_registry_rejects_non_names(call: Any, why: str) -> None:
    with pytest.raises(PipelineError, match=re.escape(why)):
        call()
