"""``slimfx.ir.to_dot`` (golden DOT text) and ``Graph.draw`` (SVG/PNG through Graphviz)."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from slimfx.errors import SlimfxError
from slimfx.ir import Graph, QParams, TensorType, dot, to_dot

HAS_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAS_DOT, reason="Graphviz 'dot' is not installed "
                               "(make test installs it)")


def tiny() -> Graph:
    """linear (a masked weight) -> relu -> quantize -> dequantize -> softmax."""
    g = Graph("tiny")
    x = g.add_input("x", TensorType((1, 4)))
    w = g.add_constant(torch.arange(12, dtype=torch.float32).reshape(3, 4), "fc.weight")
    w.mask = (w.const > 3).float()
    b = g.add_constant(torch.zeros(3), "fc.bias")
    y = g.add("linear", [x, w, b], name="fc")
    r = g.add("relu", [y], name="act")
    q = g.add("quantize", [r], {"scale": (0.05,), "zero_point": (-128,)}, name="act.q")
    q.qparams = QParams("i8", (0.05,), (-128,))
    d = g.add("dequantize", [q], {"scale": (0.05,), "zero_point": (-128,)}, name="act.dq")
    s = g.add("softmax", [d], {"axis": -1}, name="probs")
    g.set_outputs([s])
    g.output_names = ['probs "p"']
    g.verify()
    return g


GOLDEN = r'''digraph "tiny" {
  graph [rankdir=TB, fontname="Helvetica", fontsize=11, labelloc=t, label="graph @tiny: 5 nodes"];
  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=9, fillcolor="#ffffff", color="#555555"];
  edge [fontname="Helvetica", fontsize=8, color="#555555"];
  i0 [shape=ellipse, style=filled, fillcolor="#eeeeee", label="%x\nf32[1,4]"];
  n0 [label="linear\n%fc\nf32[1,3]\nweight: f32[3,4]\nbias: f32[3]\npruned: 33% of weight masked", fillcolor="#f8d7da", color="#2ca02c", penwidth=2.5];
  n1 [label="relu\n%act\nf32[1,3]", fillcolor="#f8d7da"];
  n2 [label="quantize\n%act.q\ni8[1,3]  q: i8 scale=0.05 zp=-128\nscale=[0.05], zero_point=[-128]", fillcolor="#fff2cc"];
  n3 [label="dequantize\n%act.dq\nf32[1,3]\nscale=[0.05], zero_point=[-128]", fillcolor="#fff2cc"];
  n4 [label="softmax\n%probs\nf32[1,3]\naxis=-1", fillcolor="#f8d7da"];
  i0 -> n0;
  n0 -> n1;
  n1 -> n2;
  n2 -> n3 [color="#1f77b4", penwidth=2];
  n3 -> n4;
  o0 [shape=ellipse, style=filled, fillcolor="#eeeeee", label="output probs \"p\"\nf32[1,3]"];
  n4 -> o0;
  subgraph cluster_legend {
    label="legend"; fontsize=9; color="#aaaaaa";
    legend_boundary [label="quantize / dequantize / requantize", fillcolor="#fff2cc"];
    legend_island [label="float island in a quantized graph", fillcolor="#f8d7da"];
    legend_pruned [label="pruned layer", color="#2ca02c", penwidth=2.5];
    legend_edges [label="blue edge: int8 tensor", shape=plaintext, style=solid];
  }
}
'''


def test_golden_dot_of_a_small_graph() -> None:
    assert to_dot(tiny()) == GOLDEN


def test_dot_is_deterministic_and_survives_clone() -> None:
    g = tiny()
    assert to_dot(g) == to_dot(g) == to_dot(g.clone())


def test_a_float_graph_has_plain_nodes_and_no_legend() -> None:
    g = Graph("f")
    x = g.add_input("x", TensorType((2, 3)))
    g.set_outputs([g.add("relu", [x])])
    text = to_dot(g)
    assert "fillcolor=\"#f8d7da\"" not in text and "cluster_legend" not in text
    assert 'n0 [label="relu\\n%relu\\nf32[2,3]"];' in text


def test_channel_pruning_is_marked_against_the_graph_before() -> None:
    from slimfx.passes.prune import prune_channels

    g = Graph("p")
    x = g.add_input("x", TensorType((1, 4)))
    w1 = g.add_constant(torch.randn(8, 4, generator=torch.Generator().manual_seed(0)), "a.weight")
    w2 = g.add_constant(torch.randn(2, 8, generator=torch.Generator().manual_seed(1)), "b.weight")
    h = g.add("relu", [g.add("linear", [x, w1], name="a")])
    g.set_outputs([g.add("linear", [h, w2], name="b")])
    pruned = prune_channels(g, 0.5)
    text = to_dot(pruned, before=g)
    assert "pruned: weight 8x4 -> 4x4" in text and "pruned: weight 2x8 -> 2x4" in text
    assert "pruned:" not in to_dot(pruned)  # without `before`, sliced weights are just smaller


@needs_dot
def test_draw_writes_valid_svg_and_png(tmp_path: Path) -> None:
    g = tiny()
    svg = g.draw(tmp_path / "g.svg")
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    titles = {e.text for e in root.iter() if e.tag.endswith("title")}
    assert {"i0", "n0", "n4", "o0"} <= titles
    png = g.draw(tmp_path / "g.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_draw_dot_text_needs_no_graphviz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dot.shutil, "which", lambda name: None)
    assert tiny().draw(tmp_path / "g.dot").read_text() == GOLDEN


def test_missing_graphviz_names_what_to_install(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dot.shutil, "which", lambda name: None)
    with pytest.raises(SlimfxError, match="Graphviz 'dot' program.*apt-get install graphviz"):
        tiny().draw(tmp_path / "g.svg")
    assert not (tmp_path / "g.svg").exists()


def test_unknown_picture_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SlimfxError, match=r"unknown picture format 'jpg'.*\.svg"):
        tiny().draw(tmp_path / "g.jpg")


def test_unwritable_path_is_a_slimfx_error(tmp_path: Path) -> None:
    with pytest.raises(SlimfxError, match="cannot write"):
        tiny().draw(tmp_path / "missing" / "g.dot")
