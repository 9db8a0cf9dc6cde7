"""The text form: golden output, print -> parse -> print fixed point, parse errors."""

from __future__ import annotations

import math

import pytest
import torch

from slimfx.errors import ParseError
from slimfx.ir import Graph, QParams, TensorType, parse

GOLDEN = """\
graph @main(%x: f32[1,3,8,8]) {
  const %conv.weight : f32[4,3,3,3]
  const %two : f32[] = dense<[2.0]>
  const %mask : bool[2] = dense<[1,0]>
  %conv = conv2d(%x, %conv.weight) {stride=[1,1], padding=[1,1], dilation=[1,1], groups=1, act_min=0.0, act_max=inf} : f32[1,4,8,8]
  %mul = mul(%conv, %two) : f32[1,4,8,8]
  %split.0, %split.1 = split(%mul) {axis=1, sizes=[1,3]} : f32[1,1,8,8], f32[1,3,8,8]
  %gelu = gelu(%split.1) {approximate="tanh"} : f32[1,3,8,8]
  return %split.0, %gelu
}
"""


def test_golden_round_trip() -> None:
    g = parse(GOLDEN)
    g.verify()
    assert str(g) == GOLDEN
    assert math.isinf(g.node("conv").attr("act_max"))
    assert g.constants["mask"].const.tolist() == [True, False]


def test_built_graph_prints_golden() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((1, 3, 8, 8)))
    w = g.add_constant(torch.zeros(4, 3, 3, 3), "conv.weight")
    two = g.add_constant(torch.tensor(2.0), "two")
    g.add_constant(torch.tensor([True, False]), "mask")
    c = g.add("conv2d", [x, w], dict(stride=[1, 1], padding=[1, 1], dilation=[1, 1],
                                     act_min=0.0, act_max=math.inf), name="conv")
    m = g.add("mul", [c, two])
    s = g.create("split", [m], dict(axis=1, sizes=[1, 3]))
    ge = g.add("gelu", [s.outputs[1]], dict(approximate="tanh"))
    g.set_outputs([s.outputs[0], ge])
    assert str(g) == GOLDEN


def test_locations_and_qparams_round_trip() -> None:
    g = parse(GOLDEN)
    from slimfx.ir import Source

    g.node("conv").source = Source("features.0", "model.py:12", "aten.conv2d.default")
    g.node("mul").outputs[0].qparams = QParams("i8", 0.05, -3)
    g.constants["conv.weight"].qparams = QParams("i8", [0.1, 0.2, 0.3, 0.4], [0] * 4, axis=0)
    text = g.format(locations=True)
    assert 'loc("features.0", "model.py:12", "aten.conv2d.default")' in text
    assert "q<i8, scale=0.05, zp=-3, range=[-128,127]>" in text
    again = parse(text)
    assert again.format(locations=True) == text
    assert again.constants["conv.weight"].qparams.axis == 0
    again.verify()


def test_large_constants_come_from_the_mapping() -> None:
    w = torch.randn(4, 3, 3, 3)
    g = parse(GOLDEN, {"conv.weight": w})
    assert torch.equal(g.constants["conv.weight"].const, w)
    with pytest.raises(ParseError, match="given tensor is f32\\[4\\]"):
        parse(GOLDEN, {"conv.weight": torch.zeros(4)})


@pytest.mark.parametrize("bad, msg", [
    (GOLDEN.replace("%two)", "%three)"), "line 6, column 21: %three is used before it is defined"),
    (GOLDEN.replace("mul(", "mull("), "line 6, column 10: unknown op 'mull'"),
    (GOLDEN.replace("f32[1,4,8,8]\n", "f33[1,4,8,8]\n", 1), "unknown dtype 'f33'"),
    (GOLDEN.replace("sizes=[1,3]", "sizes=[1,3], bogus=1"), "split: unknown attributes"),
    (GOLDEN.replace("$", "").replace("{stride", "{stride$"), "unexpected character '\\$'"),
])
def test_parse_errors_name_the_line(bad: str, msg: str) -> None:
    with pytest.raises(ParseError, match=msg):
        parse(bad)


def test_save_and_load_graph(tmp_path) -> None:
    from slimfx.ir.serialize import load_graph, save_graph

    g = parse(GOLDEN, {"conv.weight": torch.randn(4, 3, 3, 3)})
    g.constants["conv.weight"].mask = torch.rand(4, 3, 3, 3) > 0.5
    p = tmp_path / "g.safetensors"
    save_graph(g, p)
    h = load_graph(p)
    assert str(h) == str(g)
    assert torch.equal(h.constants["conv.weight"].const, g.constants["conv.weight"].const)
    assert torch.equal(h.constants["conv.weight"].mask, g.constants["conv.weight"].mask)


def test_load_rejects_foreign_and_corrupt_files(tmp_path) -> None:
    from safetensors.torch import save_file

    from slimfx.errors import ArtifactError
    from slimfx.ir.serialize import load_graph

    p = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(2)}, str(p), metadata={"format": "other"})
    with pytest.raises(ArtifactError, match="not a slimfx graph"):
        load_graph(p)
    p.write_bytes(b"\x00garbage")
    with pytest.raises(ArtifactError, match="cannot read graph file"):
        load_graph(p)
