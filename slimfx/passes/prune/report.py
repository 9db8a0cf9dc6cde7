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
import os
from collections.abc import Mapping, Sequence

from slimfx.errors import SlimfxError
from slimfx.ir.core import Graph, Node
from slimfx.ir.symbolic import Dim, eval_dim, normalize_dim

__all__ = ["node_macs", "count_macs", "count_params", "count_nonzero", "sparsity_table",
           "format_table", "layer_sparsity", "layer_channels", "plot_sparsity",
           "plot_channels"]


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


_LAYERS = ("conv1d", "conv2d", "conv_transpose2d", "linear")


def layer_sparsity(graph: Graph) -> dict[str, float]:
    """Per conv/linear node (by name, in graph order): the share of zeros in its weight."""
    out = {}
    for n in graph.nodes:
        if n.op.name in _LAYERS and len(n.inputs) > 1 and n.inputs[1].const is not None:
            w = n.inputs[1].const
            out[n.name] = float((w == 0).sum()) / max(w.numel(), 1)
    return out


def layer_channels(graph: Graph) -> dict[str, int]:
    """Per conv/linear node (by name, in graph order): its output channels (features)."""
    out = {}
    for n in graph.nodes:
        if n.op.name in _LAYERS and len(n.inputs) > 1:
            w = n.inputs[1].type.shape
            groups = n.attrs.get("groups", 1) if n.op.name == "conv_transpose2d" else 1
            out[n.name] = int(w[1] * groups if n.op.name == "conv_transpose2d" else w[0])
    return out


def _figure(what: str):  # noqa: ANN202 - matplotlib is optional
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise SlimfxError(f"{what} needs matplotlib: pip install matplotlib (or the slimfx "
                          "dev extra: pip install -e '.[dev]')") from e
    return Figure


def plot_sparsity(graph: Graph, path: str | os.PathLike[str]) -> dict[str, float]:
    """Writes a bar chart of :func:`layer_sparsity` (PNG, SVG, PDF: by the suffix) and
    returns the numbers it shows.

    Raises:
        SlimfxError: matplotlib is not installed, or the graph has no conv/linear layer.
    """
    data = layer_sparsity(graph)
    if not data:
        raise SlimfxError(f"plot_sparsity: graph {graph.name!r} has no conv/linear layer")
    fig = _figure("plot_sparsity")(figsize=(8, 1.5 + 0.3 * len(data)))
    ax = fig.subplots()
    names = list(data)[::-1]
    ax.barh(range(len(names)), [100 * data[k] for k in names], color="tab:purple")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlim(0, 100)
    ax.set_xlabel("zero weights (%)")
    ax.set_title(f"weight sparsity per layer ({count_nonzero(graph):,} of "
                 f"{count_params(graph):,} parameters non-zero)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.fspath(path))
    return data


def plot_channels(before: Graph, after: Graph,
                  path: str | os.PathLike[str]) -> dict[str, tuple[int, int]]:
    """Writes a bar chart of each layer's output channels before and after structured
    pruning (layers matched by node name) and returns ``{layer: (before, after)}``.

    Raises:
        SlimfxError: matplotlib is not installed, or the graphs share no conv/linear layer.
    """
    a, b = layer_channels(before), layer_channels(after)
    data = {k: (a[k], b[k]) for k in a if k in b}
    if not data:
        raise SlimfxError(f"plot_channels: graphs {before.name!r} and {after.name!r} share no "
                          "conv/linear layer name; pass the graph before pruning and the "
                          "pruned one")
    fig = _figure("plot_channels")(figsize=(8, 1.5 + 0.35 * len(data)))
    ax = fig.subplots()
    names = list(data)[::-1]
    ys = range(len(names))
    ax.barh([y + 0.2 for y in ys], [data[k][0] for k in names], height=0.4, color="tab:gray",
            label="before")
    ax.barh([y - 0.2 for y in ys], [data[k][1] for k in names], height=0.4, color="tab:green",
            label="after")
    ax.set_yticks(list(ys), names)
    ax.set_xlabel("output channels")
    ax.set_title(f"channels per layer: MACs {count_macs(before):,} -> {count_macs(after):,}")
    ax.legend()
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.fspath(path))
    return data
