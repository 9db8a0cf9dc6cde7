"""Size and cost accounting over the IR: parameters, MACs, sparsity tables.

MACs (multiply-accumulates) per node, for one forward pass of the graph's static
shapes:

- ``conv1d/conv2d``: ``numel(out) * (C_in / groups) * prod(kernel)``;
- ``conv_transpose2d``: ``numel(x) * (C_out / groups) * prod(kernel)``;
- ``linear``: ``numel(out) * in_features``; ``matmul``: ``numel(out) * K``;
- ``sdpa``: ``B*H*T*S*D`` for the scores plus ``B*H*T*S*Dv`` for the weighted sum;
- everything else: 0 (elementwise work is not counted).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from slimfx.ir.core import Graph, Node
from slimfx.ir.symbolic import Dim, eval_dim, normalize_dim

__all__ = ["node_macs", "count_macs", "count_params", "count_nonzero", "sparsity_table",
           "format_table"]


def node_macs(node: Node) -> Dim:
    """Multiply-accumulates of one node (0 for ops that are not counted).

    An expression of the graph's symbols where its shapes are symbolic (``N*9216``).
    """
    op = node.op.name
    if op in ("conv1d", "conv2d"):
        w = node.inputs[1].type.shape
        return node.outputs[0].type.numel * w[1] * math.prod(w[2:])
    if op == "conv_transpose2d":
        w = node.inputs[1].type.shape
        return node.inputs[0].type.numel * w[1] * math.prod(w[2:])
    if op == "linear":
        return node.outputs[0].type.numel * node.inputs[1].type.shape[1]
    if op == "matmul":
        a = node.inputs[0].type.shape
        return node.outputs[0].type.numel * (a[-1] if a else 1)
    if op == "sdpa":
        q, k, v = (t.type.shape for t in node.inputs[:3])
        return math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])
    return 0


def count_macs(graph: Graph, sizes: Mapping[str, int] | None = None) -> int:
    """Total multiply-accumulates of one run of ``graph``.

    Args:
        graph: the graph.
        sizes: values of the graph's symbols (``{"N": 32}``); a symbol not given takes
            the smallest value of its range (batch 1 for ``N in [1, ...]``), so MACs of
            graphs traced with a dynamic batch compare like for like.
    """
    total = sum(node_macs(n) for n in graph.nodes)
    if type(total) is int:
        return total
    env = {s: max(r.min, 1) for s, r in graph.symbols.items()} | dict(sizes or {})
    return eval_dim(normalize_dim(total), env)


def count_params(graph: Graph) -> int:
    """Elements of the floating-point constants (weights, biases, norm statistics)."""
    return sum(v.type.numel for v in graph.constants.values() if v.type.is_float)


def count_nonzero(graph: Graph) -> int:
    """Non-zero elements of the floating-point constants."""
    return sum(int((v.const != 0).sum()) for v in graph.constants.values()
               if v.type.is_float and v.const is not None)


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns with a rule under the header row."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def sparsity_table(graph: Graph, *, only_masked: bool = False) -> str:
    """Per-weight sparsity (zeros / elements) as a string table, with a total row."""
    rows: list[tuple[str, ...]] = [("weight", "shape", "params", "zeros", "sparsity")]
    tot = zeros = 0
    for v in graph.constants.values():
        if v.const is None or not v.type.is_float or v.type.rank < 2:
            continue
        if only_masked and v.mask is None:
            continue
        n, z = v.type.numel, int((v.const == 0).sum())
        tot, zeros = tot + n, zeros + z
        rows.append((v.name, "x".join(map(str, v.type.shape)), str(n), str(z), f"{z / n:.1%}"))
    rows.append(("total", "", str(tot), str(zeros), f"{zeros / max(tot, 1):.1%}"))
    return format_table(rows)
