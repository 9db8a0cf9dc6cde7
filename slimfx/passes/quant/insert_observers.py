"""``insert-observers``: put an ``observer`` node on every tensor the int8 program quantizes.

For each node the :class:`~slimfx.passes.quant.qconfig.QConfig` selects (ops with
an integer form, ``qconfig.INTEGER_OPS``):

- each activation operand is observed with the activation scheme; an operand
  produced through ops in ``PASSTHROUGH_OPS`` (reshape, max-pool, ...) is observed
  at the root of that chain instead, since those ops run on int8 and share the
  quantization parameters of their input;
- the weight of conv/linear is observed with the weight scheme (per output
  channel: ``axis=0``);
- the result is observed with the activation scheme.

Nodes are left float (logged at INFO) when quantizing them makes no sense:

- a conv/linear whose weight is computed at run time (e.g. the weight norm of
  wav2vec2's positional conv, an opaque op on constants): static int8 needs a
  constant weight. A weight shared by several nodes (ALBERT) is observed once and
  is fine;
- index arithmetic: a node whose result only feeds ops with non-float results
  (casts to integers, comparisons), e.g. T5's relative-position buckets
  (``log`` of distances, ``-inf`` on the diagonal, then ``cast`` to int64).

A value is observed once; every use of it (graph outputs included) is rewired
to the observer's result. Nodes the QConfig leaves out get no observers and
stay float. Observers are the identity in float, so the graph computes exactly
what it did before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from slimfx.errors import PipelineError, QuantizationError
from slimfx.ir.core import Graph, Node, Value
from slimfx.passes.base import Pass, PassResult
from slimfx.passes.context import PassContext
from slimfx.passes.quant.qconfig import PASSTHROUGH_OPS, QConfig, QScheme
from slimfx.passes.registry import register_pass

__all__ = ["InsertObservers", "insert_observers"]

logger = logging.getLogger(__name__)

_WEIGHTED = frozenset({"conv1d", "conv2d", "linear"})


def insert_observers(graph: Graph, qconfig: QConfig | None = None) -> int:
    """Inserts observers in place as the module docstring says; returns how many.

    Raises:
        QuantizationError: the graph already has observers or quantize nodes, or
            the QConfig names nodes the graph does not have.
    """
    if graph.find("observer") or graph.find("quantize"):
        raise QuantizationError(f"graph @{graph.name} already has observers or quantize nodes; "
                                "insert observers once, on a float graph")
    qconfig = qconfig if qconfig is not None else QConfig.preset("x86")
    plan = qconfig.resolve(graph)
    observed: dict[int, Value] = {}
    count = 0

    def root(v: Value) -> Value:
        while v.producer is not None and v.producer.op.name in PASSTHROUGH_OPS:
            v = v.producer.inputs[0]
        return v

    def observe(v: Value, scheme: QScheme, axis: int | None) -> None:
        nonlocal count
        if id(v) in observed or (v.producer is not None and v.producer.op.name == "observer"):
            return
        if not v.type.is_float:
            return
        uses = v.uses()
        was_output = [i for i, o in enumerate(graph.outputs) if o is v]
        if v.producer is not None:
            ctx = graph.inserting_after(v.producer)
        elif uses:
            ctx = graph.inserting_before(_first(graph, [u.node for u in uses]))
        else:
            ctx = graph.inserting_after(None)
        with ctx:
            obs = graph.add("observer", [v], dict(
                kind=scheme.observer, method=scheme.method, axis=axis, dtype=scheme.dtype,
                qmin=scheme.qmin, qmax=scheme.qmax, symmetric=scheme.symmetric,
                averaging_constant=scheme.averaging_constant, percentile=scheme.percentile,
                bins=scheme.bins), name=f"{v.name}.obs",
                source=v.producer.source if v.producer is not None else None)
        for u in uses:
            u.node.replace_input(u.index, obs)
        for i in was_output:
            graph.outputs[i] = obs
        observed[id(v)] = obs
        count += 1

    for node, cfg in plan.items():
        ops = list(node.inputs)
        if _index_math(node):
            logger.info("insert-observers: %s stays float: its result only feeds integer or "
                        "boolean ops (index arithmetic)", node.describe())
            continue
        if node.op.name in _WEIGHTED:
            w = ops[1]
            if not _constant_weight(w):
                logger.info("insert-observers: %s stays float: its weight %%%s is computed at "
                            "run time, not a constant", node.describe(), w.name)
                continue
            observe(root(ops[0]), cfg.activation, None)
            observe(w, cfg.weight, 0 if cfg.weight.per_channel else None)
        else:
            for v in ops:
                observe(root(v), cfg.activation, None)
        observe(node.output, cfg.activation, None)
    return count


def _constant_weight(w: Value) -> bool:
    """A constant, or a constant already observed (a weight shared by several nodes)."""
    if w.is_const:
        return True
    p = w.producer
    return p is not None and p.op.name == "observer" and p.inputs[0].is_const


def _index_math(node: Node) -> bool:
    """The node's result is only used by ops whose results are not float."""
    uses = node.output.uses()
    return bool(uses) and all(all(not o.type.is_float for o in u.node.outputs) and u.node.outputs
                              for u in uses)


def _first(graph: Graph, nodes: list[Node]) -> Node:
    ids = {id(n) for n in nodes}
    for n in graph.nodes:
        if id(n) in ids:
            return n
    return nodes[0]


@register_pass
@dataclass(frozen=True)
class InsertObservers(Pass):
    """Inserts observer nodes for static int8 quantization (x86/arm preset options;
    ``weight_bits=4``: W4A8). A QConfig in ``ctx.qconfig`` takes the options' place."""

    name = "insert-observers"
    preset: Literal["x86", "arm"] = "x86"
    weights: Literal["per-channel", "per-tensor"] = "per-channel"
    symmetric_activations: bool = False
    observer: Literal["minmax", "moving_average", "histogram"] = "minmax"
    method: Literal["minmax", "percentile", "entropy", "mse"] = "minmax"
    weight_bits: int = 8
    exclude: tuple[str, ...] = ()
    exclude_ops: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        try:  # bad options (weight_bits outside 2..8) fail when the pass is made
            self.qconfig()
        except QuantizationError as e:
            raise PipelineError(f"pass {self.name!r}: {e}") from e

    def qconfig(self) -> QConfig:
        """The QConfig these options describe."""
        return QConfig.preset(self.preset, symmetric_activations=self.symmetric_activations,
                              activation_observer=self.observer, method=self.method,
                              per_channel_weights=self.weights == "per-channel",
                              weight_bits=self.weight_bits,
                              exclude=self.exclude, exclude_ops=self.exclude_ops)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        # slimfx.quantize / prepare_qat put the user's QConfig object (which no pipeline
        # string spells) in ctx.qconfig; otherwise the options say it
        qconfig = getattr(ctx, "qconfig", None) or self.qconfig()
        n = insert_observers(graph, qconfig)
        return PassResult(graph, n > 0)
