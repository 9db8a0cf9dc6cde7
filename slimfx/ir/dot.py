"""Pictures of graphs: DOT text (:func:`to_dot`) and SVG/PNG through Graphviz (:func:`draw`).

The DOT text is deterministic (nodes are numbered in graph order, attributes and numbers
are printed the same way every time), so tests compare it with a golden file. Each node
is a box labelled with its op, the name of its first result, its result types with their
quantization parameters, the constants it reads (a weight's type and scales), and the
attributes that differ from the op's defaults. Colours:

- edges carrying int8/uint8 tensors are blue and thick; int32 (accumulators) purple;
- in a quantized graph, integer ops are light blue, ``quantize``/``dequantize``/``requantize``
  light yellow, and float ops (float islands: no integer form, or excluded) light red;
- pruned layers have a green frame: a weight with a pruning mask (the label gives its
  sparsity), or, when a ``before`` graph is given, a weight with fewer channels than the
  weight of the same name there (the label gives the shapes before and after);
- opaque nodes are grey and dashed.

Rendering needs the Graphviz ``dot`` program (``apt-get install graphviz``,
``brew install graphviz`` or ``conda install graphviz``); :func:`to_dot` does not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from slimfx.errors import SlimfxError
from slimfx.ir.core import Graph, Node, Value
from slimfx.ir.ops import Trait
from slimfx.ir.printer import format_attr
from slimfx.ir.types import QParams

__all__ = ["to_dot", "draw", "FORMATS"]

FORMATS = ("svg", "png", "pdf", "dot")
"""The file formats :func:`draw` writes (chosen by the file suffix)."""

_BOUNDARY = frozenset({"quantize", "dequantize", "requantize", "observer", "fake_quantize"})
_INT8 = frozenset({"i8", "u8"})
_ACC = frozenset({"i32"})

_FILL = {
    "float": "#ffffff",
    "int": "#dbe9f6",
    "boundary": "#fff2cc",
    "island": "#f8d7da",
    "opaque": "#e5e5e5",
}
_LEGEND = {
    "int": "integer op (int8 in, int32 accumulate)",
    "boundary": "quantize / dequantize / requantize",
    "island": "float island in a quantized graph",
    "opaque": "opaque (runs the original torch callable)",
}
_PRUNED_COLOR = "#2ca02c"
_INT8_EDGE = "#1f77b4"
_ACC_EDGE = "#9467bd"
_PLAIN_EDGE = "#555555"


def _quote(text: str) -> str:
    """A DOT double-quoted string; ``text`` lines are joined with DOT's ``\\n``."""
    lines = [ln.replace("\\", "\\\\").replace('"', '\\"') for ln in text.split("\n")]
    return '"' + "\\n".join(lines) + '"'


def _num(x: float) -> str:
    return f"{x:.4g}"


def _qparams(q: QParams) -> str:
    if q.axis is None:
        return f"q: {q.dtype} scale={_num(q.scale[0])} zp={q.zero_point[0]}"
    lo, hi = min(q.scale), max(q.scale)
    return f"q: {q.dtype} per-channel axis={q.axis} ({len(q.scale)}) scale {_num(lo)}..{_num(hi)}"


def _is_quantized(graph: Graph) -> bool:
    return any(n.op.name in _BOUNDARY or n.op.has(Trait.QUANT) or
               any(o.dtype in _INT8 for o in n.outputs) for n in graph.nodes)


def _kind(node: Node, quantized: bool) -> str:
    if node.op.has(Trait.OPAQUE):
        return "opaque"
    if node.op.name in _BOUNDARY:
        return "boundary"
    if not quantized:
        return "float"
    if node.op.has(Trait.QUANT) or any(not o.type.is_float for o in node.outputs):
        return "int"
    return "island"


def _operand_name(node: Node, index: int) -> str:
    ops = node.op.operands
    if not ops:
        return f"#{index}"
    name = ops[min(index, len(ops) - 1)].rstrip("?*")
    return name if index < len(ops) or not ops[-1].endswith("*") else f"{name}{index}"


def _pruning(node: Node, before: Graph | None) -> list[str]:
    """Lines saying how ``node``'s weights were pruned (empty when they were not)."""
    masked, sliced = [], []
    old = {} if before is None else before.constants
    for v in node.inputs:
        if not v.is_const:
            continue
        if v.mask is not None:
            kept = int(v.mask.count_nonzero())
            masked.append(f"pruned: {1 - kept / max(v.mask.numel(), 1):.0%} of "
                          f"{_short(v.name)} masked")
        prev = old.get(v.name)
        if prev is not None and prev.shape != v.shape and len(prev.shape) == len(v.shape):
            sliced.append(f"pruned: {_short(v.name)} " + "x".join(map(str, prev.shape))
                          + " -> " + "x".join(map(str, v.shape)))
    return [notes[0] + (f" (+{len(notes) - 1} more)" if len(notes) > 1 else "")
            for notes in (masked, sliced) if notes]


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _attr_text(v: object) -> str:
    if isinstance(v, float):
        return _num(v)
    if isinstance(v, tuple):
        if len(v) > 4:
            return f"[{len(v)} values]"
        return "[" + ",".join(_attr_text(x) for x in v) + "]"
    try:
        text = format_attr(v)
    except TypeError:
        text = type(v).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _changed_attrs(node: Node) -> str:
    """``k=v`` for the attributes that are required or differ from the op's default."""
    defaults = {a.name: a.default for a in node.op.attrs}
    return ", ".join(f"{k}={_attr_text(v)}" for k, v in node.attrs.items()
                     if not (k in defaults and defaults[k] is not ... and defaults[k] == v))


def _label(node: Node, before: Graph | None) -> tuple[str, list[str]]:
    lines = [node.op.name, f"%{node.name}"]
    for o in node.outputs:
        lines.append(str(o.type) if o.qparams is None else f"{o.type}  {_qparams(o.qparams)}")
    for i, v in enumerate(node.inputs):
        if v.is_const:
            line = f"{_operand_name(node, i)}: {v.type}"
            if v.qparams is not None:
                line += f"  {_qparams(v.qparams)}"
            lines.append(line)
    attrs = _changed_attrs(node)
    if attrs:
        lines.append(attrs)
    pruned = _pruning(node, before)
    return "\n".join(lines + pruned), pruned


def _edge_attrs(v: Value, label: str) -> str:
    attrs = []
    if v.dtype in _INT8:
        attrs += [f'color="{_INT8_EDGE}"', "penwidth=2"]
    elif v.dtype in _ACC:
        attrs += [f'color="{_ACC_EDGE}"', "penwidth=1.5"]
    if label:
        attrs.append(f"label={_quote(label)}")
    return f" [{', '.join(attrs)}]" if attrs else ""


def to_dot(graph: Graph, *, before: Graph | None = None, legend: bool = True) -> str:
    """The DOT text of ``graph`` (deterministic; see the module docstring for the colours).

    Args:
        graph: the graph to draw.
        before: the graph before pruning; weights that lost channels are marked.
        legend: add a legend of the colours that occur (when any does).

    Returns:
        A ``digraph`` that ``dot -Tsvg`` renders.
    """
    quantized = _is_quantized(graph)
    out = [f"digraph {_quote(graph.name)} {{",
           f"  graph [rankdir=TB, fontname=\"Helvetica\", fontsize=11, labelloc=t, "
           f"label={_quote(f'graph @{graph.name}: {len(graph)} nodes')}];",
           '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=9, '
           f'fillcolor="{_FILL["float"]}", color="#555555"];',
           f'  edge [fontname="Helvetica", fontsize=8, color="{_PLAIN_EDGE}"];']
    ids: dict[int, str] = {}
    for k, v in enumerate(graph.inputs):
        ids[id(v)] = f"i{k}"
        text = f"%{v.name}\n{v.type}" + ("" if v.qparams is None else f"\n{_qparams(v.qparams)}")
        out.append(f'  i{k} [shape=ellipse, style=filled, fillcolor="#eeeeee", '
                   f"label={_quote(text)}];")
    kinds: set[str] = set()
    any_pruned = False
    for k, node in enumerate(graph.nodes):
        for o in node.outputs:
            ids[id(o)] = f"n{k}"
        kind = _kind(node, quantized)
        kinds.add(kind)
        label, pruned = _label(node, before)
        attrs = [f"label={_quote(label)}"]
        if kind != "float":
            attrs.append(f'fillcolor="{_FILL[kind]}"')
        if kind == "opaque":
            attrs.append('style="rounded,filled,dashed"')
        if pruned:
            any_pruned = True
            attrs += [f'color="{_PRUNED_COLOR}"', "penwidth=2.5"]
        out.append(f"  n{k} [{', '.join(attrs)}];")
    consts = 0
    for v in graph.outputs:  # a constant returned as an output needs a node of its own
        if id(v) not in ids and v.is_const:
            ids[id(v)] = f"c{consts}"
            out.append(f"  c{consts} [shape=note, label={_quote(f'%{v.name}: {v.type}')}];")
            consts += 1
    for k, node in enumerate(graph.nodes):
        for v in node.inputs:
            src = ids.get(id(v))
            if src is None:  # constants are in the node label
                continue
            multi = v.producer is not None and len(v.producer.outputs) > 1
            out.append(f"  {src} -> n{k}{_edge_attrs(v, f'#{v.index}' if multi else '')};")
    names = graph.output_names or [v.name for v in graph.outputs]
    for k, v in enumerate(graph.outputs):
        text = f"output {names[k] if k < len(names) else k}\n{v.type}"
        out.append(f'  o{k} [shape=ellipse, style=filled, fillcolor="#eeeeee", '
                   f"label={_quote(text)}];")
        if id(v) in ids:
            out.append(f"  {ids[id(v)]} -> o{k}{_edge_attrs(v, '')};")
    if legend:
        dtypes = {v.dtype for n in graph.nodes for v in n.inputs if not v.is_const}
        edges = [text for text, on in (("blue edge: int8 tensor", dtypes & _INT8),
                                       ("purple edge: int32 accumulator", dtypes & _ACC)) if on]
        out += _legend([k for k in _LEGEND if k in kinds], any_pruned, edges)
    out.append("}")
    return "\n".join(out) + "\n"


def _legend(kinds: Iterable[str], pruned: bool, edges: Iterable[str]) -> list[str]:
    entries = [(f"legend_{k}", _LEGEND[k], f'fillcolor="{_FILL[k]}"') for k in kinds]
    if pruned:
        entries.append(("legend_pruned", "pruned layer",
                        f'color="{_PRUNED_COLOR}", penwidth=2.5'))
    edges = list(edges)
    if edges:
        entries.append(("legend_edges", "\n".join(edges), "shape=plaintext, style=solid"))
    if not entries:
        return []
    lines = ["  subgraph cluster_legend {", '    label="legend"; fontsize=9; color="#aaaaaa";']
    for name, text, style in entries:
        lines.append(f"    {name} [label={_quote(text)}, {style}];")
    lines.append("  }")
    return lines


def _format_of(path: Path, format: str | None) -> str:
    fmt = (format or path.suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise SlimfxError(f"cannot draw graph to {str(path)!r}: unknown picture format "
                          f"{fmt or '(no suffix)'!r}; use a path ending in "
                          f"{', '.join('.' + f for f in FORMATS)} or pass format=")
    return fmt


def draw(graph: Graph, path: str | os.PathLike[str], *, format: str | None = None,
         before: Graph | None = None, timeout: float = 120.0) -> Path:
    """Writes a picture of ``graph`` to ``path`` (SVG, PNG or PDF through Graphviz; ``.dot``: text).

    Args:
        graph: the graph.
        path: the file to write; its suffix chooses the format unless ``format`` is given.
        format: ``svg``, ``png``, ``pdf`` or ``dot``.
        before: as for :func:`to_dot`.
        timeout: seconds Graphviz may take.

    Returns:
        The path written.

    Raises:
        SlimfxError: an unknown format, the Graphviz ``dot`` program is missing (the
            message says what to install), Graphviz fails, or the file cannot be written.
    """
    p = Path(path)
    fmt = _format_of(p, format)
    text = to_dot(graph, before=before)
    if fmt == "dot":
        data = text.encode()
    else:
        dot = shutil.which("dot")
        if dot is None:
            raise SlimfxError(
                f"drawing a graph as {fmt.upper()} needs the Graphviz 'dot' program, which is "
                "not on PATH: install Graphviz (apt-get install graphviz, brew install "
                "graphviz or conda install graphviz), or write DOT text to a .dot file")
        try:
            proc = subprocess.run([dot, f"-T{fmt}"], input=text.encode(), capture_output=True,
                                  timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SlimfxError(f"Graphviz could not draw graph @{graph.name}: {e}") from e
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            raise SlimfxError(f"Graphviz failed to draw graph @{graph.name} "
                              f"(status {proc.returncode}): {err[-1] if err else 'no message'}")
        data = proc.stdout
    _write(p, data)
    return p


def _write(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as e:
        raise SlimfxError(f"cannot write {str(path)!r}: {e.strerror or e}") from e
