"""The one-file HTML report of ``slimfx.report(..., html=path)`` and ``slimfx report --html``.

The file is self-contained: styles are inline, pictures are inline SVG, nothing is loaded
from elsewhere (no scripts, fonts or images by URL), so it can be mailed or attached to a
CI run. Sections, each with an ``id`` so tools and tests can find them:

- ``summary``: sizes (float and int8 constant bytes), the output SQNR of the exact integer
  program, how many nodes run in which precision;
- ``steps``: every pass and step of the static int8 flow, with its time and node count;
- ``layers``: per quantized layer, its SQNR and max abs error (see
  :mod:`slimfx.passes.quant.report`), with a bar plot of the SQNR (matplotlib, SVG);
- ``precision``: per node of the prepared float graph, the precision it runs in in the int8
  program (``int8``, or ``float`` for ops without an integer form) and its weight bytes;
- ``graph``: the picture of the int8 program (Graphviz SVG, :func:`slimfx.ir.to_dot`); when
  Graphviz's ``dot`` is not installed, the DOT text instead, and a note saying so;
- ``nodes``: every node of the int8 program: op, result type, precision, quantization
  parameters and the bytes of the constants it reads.
"""

from __future__ import annotations

import html
import io
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from slimfx.errors import SlimfxError
from slimfx.ir.core import Graph, Node, Value
from slimfx.ir.dot import draw, to_dot
from slimfx.ir.types import QParams
from slimfx.passes.quant.report import QuantReport

__all__ = ["render_html", "write_html", "precision_of"]

logger = logging.getLogger(__name__)

_CSS = """
body { font-family: Helvetica, Arial, sans-serif; margin: 2em; color: #222; max-width: 80em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }
th { background: #f0f0f0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.int8 td.prec { background: #dbe9f6; } tr.float td.prec { background: #fde2e1; }
tr.int32 td.prec { background: #e8def8; }
code, pre { font-family: Menlo, Consolas, monospace; font-size: 0.85em; }
.picture { overflow: auto; border: 1px solid #ddd; padding: 0.5em; max-height: 60em; }
.note { color: #8a6d3b; background: #fcf8e3; padding: 0.4em; }
"""


def precision_of(v: Value) -> str:
    """``int8`` (int8/uint8 data), ``int32`` (accumulators), ``float``, ``fp16``, ``bf16``..."""
    dtype = v.type.dtype
    if dtype in ("i8", "u8"):
        return "int8"
    if dtype == "i32":
        return "int32"
    return {"f32": "float", "f64": "float64", "f16": "fp16", "bf16": "bf16"}.get(dtype, dtype)


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _num(x: float, fmt: str = ".2f") -> str:
    if math.isinf(x):
        return "inf"
    return format(x, fmt)


def _table(table_id: str, header: Sequence[str], rows: Iterable[Sequence[str]],
           numeric: Sequence[int] = (), row_class: Sequence[str] | None = None) -> str:
    """An HTML table; cells are escaped here; ``numeric`` columns are right-aligned."""
    out = [f'<table id="{table_id}">', "<thead><tr>"
           + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr></thead>", "<tbody>"]
    for i, row in enumerate(rows):
        cls = f' class="{_e(row_class[i])}"' if row_class else ""
        cells = []
        for j, c in enumerate(row):
            kind = ["num"] if j in numeric else []
            if header[j] == "precision":
                kind.append("prec")
            attr = f' class="{" ".join(kind)}"' if kind else ""
            cells.append(f"<td{attr}>{_e(c)}</td>")
        out.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _const_bytes(node: Node) -> int:
    return sum(v.const.numel() * v.const.element_size() for v in dict.fromkeys(node.inputs)
               if v.is_const and v.const is not None)


def _qparams_text(q: QParams | None) -> str:
    if q is None:
        return ""
    if q.axis is not None:
        return (f"{q.dtype} per channel (axis {q.axis}, {len(q.scale)} scales "
                f"{min(q.scale):.3g}..{max(q.scale):.3g})")
    return f"{q.dtype} scale={q.scale[0]:.4g} zp={q.zero_point[0]}"


def _svg_only(svg: str) -> str:
    """The ``<svg>`` element of an SVG document (no XML prolog or doctype)."""
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else svg


def graph_svg(graph: Graph) -> str | None:
    """The graph's picture as inline SVG, or None when Graphviz's ``dot`` is missing."""
    if shutil.which("dot") is None:
        return None
    with tempfile.TemporaryDirectory(prefix="slimfx-report-") as tmp:
        path = draw(graph, Path(tmp) / "graph.svg")
        return _svg_only(path.read_text(encoding="utf-8"))


def sqnr_plot_svg(rep: QuantReport) -> str | None:
    """A horizontal bar plot of the per-layer SQNR (inline SVG).

    None without layers, or when matplotlib (an optional dependency) is not installed.
    """
    if not rep.layers:
        return None
    try:
        from matplotlib.figure import Figure  # drawn without pyplot: no global backend state
    except ImportError:
        logger.info("report: matplotlib is not installed, the HTML report has no SQNR plot")
        return None

    names = [f"{r.name} ({r.op})" for r in rep.layers]
    finite = [r.sqnr for r in rep.layers if not math.isinf(r.sqnr)]
    cap = (max(finite) if finite else 0.0) + 10.0  # inf (no error) drawn past the largest
    values = [cap if math.isinf(r.sqnr) else r.sqnr for r in rep.layers]
    fig = Figure(figsize=(7.0, 0.8 + 0.28 * len(names)))
    ax = fig.add_subplot()
    ax.barh(range(len(names)), values, color="#1f77b4")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("SQNR of int8 vs float (dB), higher is better")
    ax.axvline(rep.output_sqnr if not math.isinf(rep.output_sqnr) else cap, color="#d62728",
               linestyle="--", linewidth=1, label="graph outputs")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    return _svg_only(buf.getvalue())


def render_html(rep: QuantReport, *, title: str | None = None) -> str:
    """The HTML text of the report (see the module docstring)."""
    g8, gf = rep.int8_graph, rep.float_graph
    title = title or f"slimfx int8 report: graph @{gf.name}"
    counts: dict[str, int] = {}
    for n in g8.nodes:
        p = precision_of(n.outputs[0]) if n.outputs else "none"
        counts[p] = counts.get(p, 0) + 1
    fb, ib = rep.float_bytes, rep.int8_bytes
    summary = _table("summary-table", ["what", "value"], [
        ("constant bytes, float", f"{fb:,}"),
        ("constant bytes, int8", f"{ib:,}"),
        ("size ratio", f"{fb / max(ib, 1):.2f}x smaller"),
        ("output SQNR of the int8 program (dB)", _num(rep.output_sqnr)),
        ("output max abs error", _num(rep.output_max_abs_error, ".5g")),
        ("quantized layers", str(len(rep.layers))),
        ("nodes of the int8 program by precision",
         ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))),
        ("batches (calibration and measurement)", str(rep.batches)),
    ], numeric=())
    total = sum(s.seconds for s in rep.steps) or 1e-12
    steps = _table("steps-table", ["#", "step", "ms", "share", "nodes after"], [
        (str(i), s.name, f"{s.seconds * 1e3:.2f}", f"{s.seconds / total:.1%}", str(s.nodes))
        for i, s in enumerate(rep.steps)], numeric=(0, 2, 3, 4))
    layers = _table("layers-table", ["layer", "op", "SQNR dB", "max abs err"], [
        (r.name, r.op, _num(r.sqnr), _num(r.max_abs_error, ".5g")) for r in rep.layers],
        numeric=(2, 3))
    int8_names = {v.name: v for n in g8.nodes for v in n.outputs}
    prec_rows, prec_cls = [], []
    for n in gf.nodes:
        v = int8_names.get(n.outputs[0].name) if n.outputs else None
        p = precision_of(v) if v is not None else "(folded away)"
        prec_rows.append((n.name, n.op.name, str(n.outputs[0].type) if n.outputs else "",
                          p, f"{_const_bytes(n):,}"))
        prec_cls.append(p)
    precision = _table("precision-table", ["layer", "op", "float type", "precision",
                                           "float weight bytes"], prec_rows, numeric=(4,),
                       row_class=prec_cls)
    node_rows, node_cls = [], []
    for n in g8.nodes:
        out = n.outputs[0] if n.outputs else None
        p = precision_of(out) if out is not None else ""
        node_rows.append((n.name, n.op.name, str(out.type) if out is not None else "", p,
                          _qparams_text(out.qparams if out is not None else None),
                          f"{_const_bytes(n):,}"))
        node_cls.append(p)
    nodes = _table("nodes-table", ["node", "op", "type", "precision", "qparams",
                                   "constant bytes"], node_rows, numeric=(5,),
                   row_class=node_cls)
    plot = sqnr_plot_svg(rep)
    picture = graph_svg(g8)
    if picture is None:
        logger.info("report: Graphviz 'dot' not found, the HTML report has DOT text instead "
                    "of a picture")
        graph_part = ('<p class="note" id="no-graphviz">Graphviz (the <code>dot</code> program) '
                      "is not installed, so there is no picture: install it (apt-get install "
                      "graphviz) and rerun, or paste the DOT text below into a viewer.</p>"
                      f"<pre>{_e(to_dot(g8))}</pre>")
    else:
        graph_part = f'<div class="picture" id="graph-picture">{picture}</div>'
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{_e(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
        f"<h1>{_e(title)}</h1>",
        '<section id="summary"><h2>Summary</h2>', summary, "</section>",
        '<section id="steps"><h2>Steps of the static int8 flow</h2>',
        "<p>The passes of <code>ptq-int8</code> (what <code>slimfx.quantize</code> runs), "
        "with calibration on the report's data after <code>insert-observers</code>.</p>",
        steps, "</section>",
        '<section id="layers"><h2>Error per quantized layer</h2>',
        "<p>SQNR = 10 log10(sum(float&#178;) / sum((float - int8)&#178;)) at each layer's "
        "output, every layer before it quantized too.</p>", layers,
        (f'<div class="picture" id="sqnr-plot">{plot}</div>' if plot is not None else
         '<p class="note" id="no-plot">No plot: install matplotlib (pip install matplotlib) '
         "for a bar chart of the SQNR per layer.</p>"),
        "</section>",
        '<section id="precision"><h2>Precision per layer</h2>', precision, "</section>",
        '<section id="graph"><h2>The int8 program</h2>', graph_part, "</section>",
        '<section id="nodes"><h2>Nodes of the int8 program</h2>', nodes, "</section>",
        "</body>", "</html>",
    ]
    return "\n".join(parts) + "\n"


def write_html(rep: QuantReport, path: str | os.PathLike[str]) -> Path:
    """Writes :func:`render_html` to ``path``; returns the path.

    Raises:
        SlimfxError: the file cannot be written (the message names it).
    """
    p = Path(path)
    text = render_html(rep)
    try:
        p.write_text(text, encoding="utf-8")
    except OSError as e:
        raise SlimfxError(f"cannot write the HTML report to {str(p)!r}: "
                          f"{e.strerror or e}") from e
    return p
