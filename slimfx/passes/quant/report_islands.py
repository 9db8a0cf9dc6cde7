"""Float islands: every op that stays float in a quantized graph, and why.

In an int8 program, ops with no integer form run in float between a ``dequantize`` and a
``quantize``. :func:`float_islands` lists them as *islands*: connected groups of float ops
(float results, no quantization bookkeeping), each with

- for every op, a reason, the first that applies:

  ``budget``        kept float by the mixed-precision search (:func:`mixed_precision`
                    passes its reasons, with the sensitivity figures);
  ``excluded``      the op has an integer form but the QConfig keeps it float (the
                    ``exclude`` / ``exclude_ops`` / ``by_name`` / ``by_op`` / ``default``
                    entry that decides is named);
  ``no-int8-form``  slimfx has no integer form of the op (``INTEGER_OPS``) and it is not a
                    pass-through op;
  ``float-input``   a pass-through op (reshape, max-pool, ...) that runs on int8 only where
                    its input is int8, and here its input is float;
  ``not-converted`` selected by the QConfig, with an integer form, but ``convert-int8`` left
                    it float (its inputs were not quantized, or it was not observed);

- the quantized neighbours it sits between (the int8 ops whose results are dequantized into
  it, the ops reading its quantized results; ``input``/``output`` for the graph's own), and
- its cost: the ``dequantize`` ops entering it and the ``quantize`` ops leaving it.

Ops whose results are not floating point (index and mask arithmetic) are not listed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from slimfx.ir.core import Graph, Node
from slimfx.ir.ops import Trait
from slimfx.passes.quant.qconfig import INTEGER_OPS, PASSTHROUGH_OPS, QConfig, _matches

__all__ = ["FloatOp", "FloatIsland", "float_islands", "format_islands", "REASONS"]

REASONS = ("budget", "excluded", "no-int8-form", "float-input", "not-converted")
"""The reason kinds, in the order they are tried."""


@dataclass(frozen=True)
class FloatOp:
    """One op that stays float.

    Attributes:
        name: the node name.
        op: its op.
        kind: one of :data:`REASONS`.
        reason: the explanation, in words.
    """

    name: str
    op: str
    kind: str
    reason: str


@dataclass(frozen=True)
class FloatIsland:
    """A connected group of float ops in a quantized graph.

    Attributes:
        ops: its ops, in graph order.
        after: the quantized ops (or ``input``) it reads from.
        before: the quantized ops (or ``output``) that read it.
        dequantize: ``dequantize`` ops entering it.
        quantize: ``quantize`` ops leaving it.
    """

    ops: tuple[FloatOp, ...]
    after: tuple[str, ...]
    before: tuple[str, ...]
    dequantize: int
    quantize: int


def _is_float_op(node: Node) -> bool:
    return not node.has(Trait.QUANT) and any(o.type.is_float for o in node.outputs)


def _excluded_by(qconfig: QConfig, node: Node) -> str | None:
    """Which QConfig entry keeps ``node`` float, or None when it is selected."""
    if node.op.name in qconfig.exclude_ops:
        return f"the QConfig's exclude_ops lists {node.op.name!r}"
    for p in qconfig.exclude:
        if _matches(p, node):
            return f"the QConfig's exclude pattern {p!r} matches it"
    for p, cfg in qconfig.by_name:
        if _matches(p, node):
            return None if cfg is not None else f"the QConfig's by_name {p!r} maps it to None"
    for op, cfg in qconfig.by_op:
        if op == node.op.name:
            return None if cfg is not None else f"the QConfig's by_op maps {op!r} to None"
    return None if qconfig.default is not None else "the QConfig's default is None"


def _explain(node: Node, qconfig: QConfig, reasons: Mapping[str, str]) -> FloatOp:
    name, op = node.name, node.op.name
    if name in reasons:
        return FloatOp(name, op, "budget", reasons[name])
    if op in INTEGER_OPS:
        why = _excluded_by(qconfig, node)
        if why is not None:
            return FloatOp(name, op, "excluded", f"user choice: {why}")
        return FloatOp(name, op, "not-converted",
                       "selected by the QConfig, but convert-int8 left it float (its inputs "
                       "were not quantized); check that calibration reached it")
    if op in PASSTHROUGH_OPS:
        return FloatOp(name, op, "float-input",
                       f"{op} runs on int8 where its input is int8; its input is float here")
    return FloatOp(name, op, "no-int8-form",
                   f"no int8 kernel: slimfx has no integer form of {op} (integer ops: "
                   f"{', '.join(sorted(INTEGER_OPS))})")


def float_islands(graph: Graph, qconfig: QConfig | None = None,
                  reasons: Mapping[str, str] | None = None) -> list[FloatIsland]:
    """The float islands of a quantized ``graph`` (see the module docstring).

    Args:
        graph: a quantized graph (``slimfx.quantize``'s result).
        qconfig: the QConfig it was quantized with (default: the x86 preset).
        reasons: node name -> why it is float, for choices made outside the QConfig
            (``MixedPrecisionResult.float_layers``); they take precedence.
    """
    qconfig = qconfig if qconfig is not None else QConfig.preset("x86")
    reasons = dict(reasons or {})
    floats = [n for n in graph.nodes if _is_float_op(n)]
    ids = {id(n) for n in floats}
    parent = {id(n): id(n) for n in floats}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for n in floats:
        for v in n.inputs:
            if v.producer is not None and id(v.producer) in ids:
                parent[root(id(v.producer))] = root(id(n))
    groups: dict[int, list[Node]] = {}
    for n in floats:
        groups.setdefault(root(id(n)), []).append(n)
    out = []
    for members in groups.values():
        after: list[str] = []
        before: list[str] = []
        deq = qua = 0
        for n in members:
            for v in n.inputs:
                p = v.producer
                if p is None:
                    if not v.is_const:
                        after.append("input")
                elif p.op.name == "dequantize":
                    deq += 1
                    src = p.inputs[0].producer
                    after.append(src.name if src is not None else "input")
            for o in n.outputs:
                if any(o is g for g in graph.outputs):
                    before.append("output")
                for u in o.uses():
                    if u.node.op.name == "quantize":
                        qua += 1
                        before += [w.node.name for q in u.node.outputs for w in q.uses()]
        out.append(FloatIsland(tuple(_explain(n, qconfig, reasons) for n in members),
                               tuple(dict.fromkeys(after)), tuple(dict.fromkeys(before)),
                               deq, qua))
    return out


def format_islands(islands: list[FloatIsland]) -> str:
    """The islands as text: one block per island, one line per op."""
    n_ops = sum(len(i.ops) for i in islands)
    lines = [f"float islands: {len(islands)} ({n_ops} ops stay float)"]
    for k, isl in enumerate(islands):
        lines.append(f"  island {k}: after {', '.join(isl.after) or '-'}; before "
                     f"{', '.join(isl.before) or '-'}; cost {isl.dequantize} dequantize + "
                     f"{isl.quantize} quantize")
        for op in isl.ops:
            lines.append(f"    %{op.name} ({op.op}) [{op.kind}]: {op.reason}")
    return "\n".join(lines)
