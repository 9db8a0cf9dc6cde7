"""``equalize-cross-layer``: cross-layer equalization of weight ranges (Nagel et al., 2019).

Per-tensor weight quantization wastes bits when the output channels of a layer have very
different ranges (MobileNetV2's depthwise convs are the classic case). For two consecutive
layers ``y = W2 f(W1 x + b1) + b2`` whose activation ``f`` is positively homogeneous
(``f(x / s) = f(x) / s`` for ``s > 0``: none, ``relu``), scaling output channel ``i`` of
the first layer by ``1 / s_i`` and input channel ``i`` of the second by ``s_i`` leaves the
function unchanged::

    W1'[i, ...] = W1[i, ...] / s_i        b1'[i] = b1[i] / s_i
    W2'[:, i, ...] = W2[:, i, ...] * s_i  (b2 unchanged)

With ``r1_i = max |W1[i, ...]|`` (range of output channel ``i`` of ``W1``) and
``r2_i = max |W2[:, i, ...]|`` (range of input channel ``i`` of ``W2``), the choice::

    s_i = sqrt(r1_i * r2_i) / r2_i

gives both channels the same range ``r1_i / s_i = r2_i * s_i = sqrt(r1_i * r2_i)``, which
maximizes the summed per-channel precision ``sum_i (r1_i/R1)(r2_i/R2)`` of the pair
(Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias Correction",
ICCV 2019, §4.1). Ranges are ``max |w|`` since slimfx weights are symmetric. A channel with
``r1_i = 0`` or ``r2_i = 0`` keeps ``s_i = 1``.

For a grouped second layer (weight ``[Cout, Cin/g, ...]``), input channel
``c = k * Cin/g + j`` is column ``j`` of the output channels of group ``k``; a depthwise conv
(``g = Cin``) therefore has one kernel per channel, which is both the input column of the
pair before it and the output row of the pair after it. Chains such as MobileNetV2's
``conv1x1 -> dw3x3 -> conv1x1`` are equalized by sweeping over all pairs until every
``|log s_i|`` of a sweep is below ``tolerance`` (or ``max_iterations`` sweeps). Scales are
accumulated in float64 and each weight is cast back to its dtype once, so the float graph
computes the same function up to one rounding of each weight.

Pairs are ``conv1d -> conv1d``, ``conv2d -> conv2d`` and ``linear -> linear``, with the
activation fused into the first node (``act_min``/``act_max``, see ``fuse-activation``)
or a ``relu``/``relu6``/``clamp`` node between them. ``relu6`` is not positively
homogeneous (``relu6(x / s) != relu6(x) / s``): such a pair is refused, unless
``relu6=relu``, which replaces the ReLU6 of each equalized pair by ReLU, as Nagel et al. do
for MobileNetV2 (this *changes* the float function where a pre-activation exceeds 6).

A pair is refused, with a reason (logged at DEBUG and appended to ``ctx.refusals``), when
the first result has other users or is a graph output, a weight is not a constant or is
shared with another node, a bias is not a constant, the activation is not positively
homogeneous, the channel counts do not line up, values are already quantized, or a
``batch_norm`` sits between the layers (run ``fold-bn`` first).

``absorb-bias`` is the bias absorption of Nagel et al. (§4.2). Equalization with ``s_i < 1``
inflates ``b1`` and with it the range of the activation. With ``batch_norm -> relu -> W2``
and the batch norm's ``gamma``, ``beta`` (its output is assumed ~ ``N(beta, gamma^2)``)::

    c_i = max(0, beta_i - sigmas * |gamma_i|)
    beta'_i = beta_i - c_i          b2'[o] = b2[o] + sum_{j, k} W2[o, j, k] * c_j

since ``relu(x - c) = relu(x) - c`` wherever ``x >= c`` (almost always, by the choice of
``c``), and ``W2 (a - c) + b2' = W2 a + b2``. It needs the batch-norm parameters, so it runs
*before* ``fold-bn`` (and so before ``equalize-cross-layer``): that is the same as
absorbing after equalization, because CLE scales ``beta``, ``gamma`` and so ``c`` by
``1 / s_i`` and ``W2``'s columns by ``s_i``, which leaves ``W2 c`` unchanged. It is exact
where every pre-activation is ``>= c`` and the second layer has no zero padding (at the
borders of a padded conv, ``W2 c`` is also added where the input is padding); otherwise it
is the approximation Nagel et al. make. The gain is mostly for symmetric activations:
slimfx's default affine activations already spend no bits on a common offset. ``relu6`` is
refused (``relu6(x - c) != relu6(x) -
c`` above 6). Use it as ``"remove-identity,absorb-bias,fold-bn,fuse-activation,dce,
equalize-cross-layer,dce,insert-observers"``.

The old weight and bias constants stay for ``dce`` to remove.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from slimfx.ir.core import Graph, Node, Value
from slimfx.passes.base import Pass, PassResult
from slimfx.passes.context import PassContext
from slimfx.passes.fuse_activation import activation_range
from slimfx.passes.registry import register_pass
from slimfx.passes.rewriter import Refusal

__all__ = ["AbsorbBias", "EqualizeCrossLayer", "EqualizationResult", "absorb_bias",
           "candidate_pairs", "check_pair",
           "divide_output_channels", "equalization_scales", "equalize_cross_layer",
           "input_channel_ranges", "output_channel_ranges", "scale_input_channels"]

logger = logging.getLogger(__name__)

_NAME = "equalize-cross-layer"
_WEIGHTED = frozenset({"conv1d", "conv2d", "linear"})
_ACTIVATIONS = frozenset({"relu", "relu6", "clamp"})


def output_channel_ranges(weight: torch.Tensor) -> torch.Tensor:
    """``r_i = max |W[i, ...]|``: the range of each output channel (axis 0)."""
    return weight.abs().reshape(weight.shape[0], -1).amax(dim=1)


def input_channel_ranges(weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """``r_c = max |W[:, c, ...]|`` of each input channel ``c`` of a (grouped) weight."""
    w = _grouped(weight.abs(), groups)  # [g, Cout/g, Cin/g, rest]
    return w.amax(dim=(1, 3)).reshape(-1)


def equalization_scales(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """``s = sqrt(r1 * r2) / r2``, 1 where either range is 0 (see the module docstring)."""
    ok = (r1 > 0) & (r2 > 0)
    s = torch.sqrt(r1 * r2) / torch.where(ok, r2, torch.ones_like(r2))
    return torch.where(ok, s, torch.ones_like(s))


def _grouped(weight: torch.Tensor, groups: int) -> torch.Tensor:
    cout, cin_g = weight.shape[0], weight.shape[1]
    return weight.reshape(groups, cout // groups, cin_g, -1)


def scale_input_channels(weight: torch.Tensor, s: torch.Tensor, groups: int) -> torch.Tensor:
    """``W[:, c, ...] * s_c`` for every input channel ``c`` of a (grouped) weight."""
    w = _grouped(weight, groups)
    scaled = w * s.reshape(groups, 1, -1, 1)
    return scaled.reshape(weight.shape)


def divide_output_channels(weight: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``W[i, ...] / s_i`` for every output channel ``i``."""
    return weight / s.reshape(-1, *([1] * (weight.dim() - 1)))


@dataclass
class _Pair:
    first: Node
    act: Node | None
    second: Node
    relu6: bool  # the activation between them is a ReLU6 to be replaced by ReLU


@dataclass
class EqualizationResult:
    """What :func:`equalize_cross_layer` did.

    Attributes:
        pairs: ``(first, second)`` node names of every equalized pair, in graph order.
        scales: first node name -> the accumulated ``s`` of its output channels.
        refusals: pairs that were not equalized, with the reason.
        iterations: sweeps over the pairs until convergence.
        changed: whether any weight changed (not when every pair was already equalized).
    """

    pairs: list[tuple[str, str]] = field(default_factory=list)
    scales: dict[str, torch.Tensor] = field(default_factory=dict)
    refusals: list[Refusal] = field(default_factory=list)
    iterations: int = 0
    changed: bool = False

    def reasons(self, node: str | None = None) -> list[str]:
        """The refusal reasons (of pairs starting at node ``node``, if given)."""
        return [r.reason for r in self.refusals if node is None or r.node == node]


def _others(v: Value, node: Node, graph: Graph) -> str | None:
    """Who besides ``node`` sees ``v`` (None when nobody)."""
    users = [u.node for u in v.uses() if u.node is not node]
    if users:
        return ", ".join(f"%{n.name}" for n in users)
    if any(v is o for o in graph.outputs):
        return "the graph outputs"
    return None


def _weight_reason(node: Node) -> str | None:
    w = node.inputs[1]
    if not w.is_const:
        return f"the weight %{w.name} of %{node.name} is not a constant"
    sharers = [u.node for u in w.uses() if u.node is not node]
    if sharers:
        return (f"the weight %{w.name} of %{node.name} is shared with %{sharers[0].name}; "
                "scaling it would change that node too")
    if not w.type.is_float:
        return f"the weight %{w.name} is {w.type.dtype}, not floating point"
    if len(node.inputs) > 2 and not node.inputs[2].is_const:
        return f"the bias %{node.inputs[2].name} of %{node.name} is not a constant"
    return None


def _range(first: Node, act: Node | None) -> tuple[float | None, float | None]:
    lo, hi = first.attrs.get("act_min"), first.attrs.get("act_max")
    if act is not None:
        a_lo, a_hi = activation_range(act)
        lo = a_lo if lo is None else lo if a_lo is None else max(lo, a_lo)
        hi = a_hi if hi is None else hi if a_hi is None else min(hi, a_hi)
    return lo, hi


def check_pair(first: Node, act: Node | None, second: Node,
               relu6: str = "refuse") -> str | None:
    """Why ``first -> [act] -> second`` cannot be equalized, or None when it can."""
    graph = first.graph
    assert graph is not None
    mid = first.outputs[0]
    who = _others(mid, act if act is not None else second, graph)
    if who is not None:
        return (f"the result %{mid.name} of %{first.name} is also used by {who}; scaling its "
                "channels would change what they see")
    if act is not None:
        who = _others(act.outputs[0], second, graph)
        if who is not None:
            return (f"the activation %{act.name} is also used by {who}; scaling its channels "
                    "would change what they see")
    for node in (first, second):
        reason = _weight_reason(node)
        if reason is not None:
            return reason
    values = [mid, first.inputs[1], second.inputs[1]] + ([act.outputs[0]] if act else [])
    if any(v.qparams is not None for v in values):
        return "the values are already quantized"
    lo, hi = _range(first, act)
    where = f"%{act.name}" if act is not None else f"the activation fused into %{first.name}"
    if lo is not None and lo != 0.0:
        return (f"{where} clamps at {lo}, which is not positively homogeneous "
                "(f(x / s) != f(x) / s); only none and relu are")
    if hi is not None:
        if hi == 6.0 and lo == 0.0:
            if relu6 != "relu":
                return (f"{where} is a ReLU6, which is not positively homogeneous "
                        "(relu6(x / s) != relu6(x) / s); use relu6=relu to replace it by ReLU "
                        "as Nagel et al. do (this changes the float function above 6)")
        else:
            return (f"{where} clamps at {hi}, which is not positively homogeneous "
                    "(f(x / s) != f(x) / s); only none and relu are")
    w1, w2 = first.inputs[1], second.inputs[1]
    groups = second.attrs.get("groups", 1) if second.op.name != "linear" else 1
    if w1.shape[0] != w2.shape[1] * groups:
        return (f"groups mismatch: %{first.name} has {w1.shape[0]} output channels but "
                f"%{second.name} takes {w2.shape[1] * groups} input channels "
                f"({w2.shape[1]} per group x {groups} groups)")
    return None


def _first_and_act(second: Node) -> tuple[Node | None, Node | None]:
    """The producer of ``second``'s input, looking through one activation node."""
    act = second.inputs[0].producer if second.inputs else None
    if act is not None and act.op.name in _ACTIVATIONS:
        return act.inputs[0].producer, act
    return act, None


def candidate_pairs(graph: Graph) -> list[tuple[Node, Node | None, Node]]:
    """Every ``first -> [activation] -> second`` of weighted nodes of the same op, before
    :func:`check_pair`."""
    out = []
    for second in graph.nodes:
        if second.op.name in _WEIGHTED:
            first, act = _first_and_act(second)
            if first is not None and first.op.name == second.op.name:
                out.append((first, act, second))
    return out


def _find_pairs(graph: Graph, relu6: str) -> tuple[list[_Pair], list[Refusal]]:
    pairs, refusals = [], []
    for second in graph.nodes:  # a batch norm left between two layers: say so
        bn = _first_and_act(second)[0] if second.op.name in _WEIGHTED else None
        if bn is not None and bn.op.name == "batch_norm":
            refusals.append(Refusal(_NAME, bn.name, f"%{bn.name} is a batch_norm before "
                                    f"%{second.name}; run fold-bn first"))
    for first, act, second in candidate_pairs(graph):
        reason = check_pair(first, act, second, relu6)
        if reason is not None:
            refusals.append(Refusal(_NAME, first.name, reason))
            continue
        hi = _range(first, act)[1]
        pairs.append(_Pair(first, act, second, relu6=hi is not None))
    return pairs, refusals


def equalize_cross_layer(graph: Graph, *, relu6: Literal["refuse", "relu"] = "refuse",
                         max_iterations: int = 100,
                         tolerance: float = 1e-6) -> EqualizationResult:
    """Equalizes every eligible pair of ``graph`` in place (see the module docstring).

    Args:
        graph: a float graph, batch norms folded (``fold-bn``).
        relu6: ``refuse`` pairs with a ReLU6 between them, or replace it by ReLU (``relu``).
        max_iterations: at most this many sweeps over the pairs.
        tolerance: stop when every ``|log s_i|`` of a sweep is below this.

    Returns:
        The pairs equalized, their accumulated scales and the refusals.
    """
    pairs, refusals = _find_pairs(graph, relu6)
    result = EqualizationResult(refusals=refusals)
    if not pairs:
        return result
    f64 = torch.float64
    nodes = list(dict.fromkeys([p.first for p in pairs] + [p.second for p in pairs]))
    weights: dict[Node, torch.Tensor] = {}
    biases: dict[Node, torch.Tensor | None] = {}
    for n in nodes:
        w_t = n.inputs[1].const
        assert w_t is not None
        weights[n] = w_t.to(f64)
        b_t = n.inputs[2].const if len(n.inputs) > 2 else None
        biases[n] = None if b_t is None else b_t.to(f64)
    total = {p.first: torch.ones(weights[p.first].shape[0], dtype=f64) for p in pairs}
    for it in range(max_iterations):
        worst = 0.0
        for p in pairs:
            groups = p.second.attrs.get("groups", 1) if p.second.op.name != "linear" else 1
            r1 = output_channel_ranges(weights[p.first])
            r2 = input_channel_ranges(weights[p.second], groups)
            s = equalization_scales(r1, r2)
            weights[p.first] = divide_output_channels(weights[p.first], s)
            b1 = biases[p.first]
            if b1 is not None:
                biases[p.first] = b1 / s
            weights[p.second] = scale_input_channels(weights[p.second], s, groups)
            total[p.first] = total[p.first] * s
            worst = max(worst, float(s.log().abs().max()))
        result.iterations = it + 1
        if worst < tolerance:
            break
    for p in pairs:
        result.pairs.append((p.first.name, p.second.name))
        result.scales[p.first.name] = total[p.first]
    if result.iterations == 1 and worst < tolerance and not any(p.relu6 for p in pairs):
        return result  # already equalized: leave the graph as it is
    result.changed = True
    logger.debug("%s: %d pairs of @%s converged in %d sweeps", _NAME, len(pairs), graph.name,
                 result.iterations)
    for n in nodes:
        w = n.inputs[1]
        assert w.const is not None
        n.replace_input(1, graph.add_constant(weights[n].to(w.const.dtype),
                                              f"{w.name}_equalized"))
        b_new = biases[n]
        if b_new is not None and n in total:
            b = n.inputs[2]
            assert b.const is not None
            n.replace_input(2, graph.add_constant(b_new.to(b.const.dtype), f"{b.name}_equalized"))
    for p in pairs:
        if p.relu6:
            _replace_relu6(graph, p)
    return result


def _replace_relu6(graph: Graph, pair: _Pair) -> None:
    """ReLU6 -> ReLU for one pair (fused bound dropped, or the node swapped)."""
    if pair.first.attrs.get("act_max") is not None:
        pair.first.set_attrs(act_max=None)
    act = pair.act
    if act is not None and activation_range(act)[1] is not None:
        with graph.inserting_before(act):
            relu = graph.create("relu", [act.inputs[0]], name=f"{act.name}.relu",
                                source=act.source)
        graph.replace_all_uses_with(act.outputs[0], relu.outputs[0])
        graph.erase(act)


def _log_scale_spread(scales: torch.Tensor) -> float:
    return float(scales.log().max() - scales.log().min()) / math.log(10)


@register_pass
@dataclass(frozen=True)
class EqualizeCrossLayer(Pass):
    """Cross-layer equalization of conv/linear weight ranges (Nagel et al. 2019), after fold-bn.

    Options:
        relu6: ``refuse`` pairs with a ReLU6 between them, or ``relu`` to replace that
            ReLU6 by ReLU (changes the float function where pre-activations exceed 6).
        max_iterations: sweeps over chains of pairs at most.
        tolerance: convergence threshold on ``|log s|``.
    """

    name = _NAME
    relu6: Literal["refuse", "relu"] = "refuse"
    max_iterations: int = 100
    tolerance: float = 1e-6

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        result = equalize_cross_layer(graph, relu6=self.relu6,
                                      max_iterations=self.max_iterations,
                                      tolerance=self.tolerance)
        for r in result.refusals:
            logger.debug("%s: %s", self.name, r)
        ctx.refusals.extend(result.refusals)
        for name, s in result.scales.items():
            logger.debug("%s: %%%s scales span %.2f decades", self.name, name,
                         _log_scale_spread(s))
        return PassResult(graph, result.changed)


# ------------------------------------------------------------------ bias absorption
def _absorb_reason(bn: Node, act: Node, second: Node) -> str | None:
    graph = bn.graph
    assert graph is not None
    for v, user in ((bn.outputs[0], act), (act.outputs[0], second)):
        who = _others(v, user, graph)
        if who is not None:
            return (f"the result %{v.name} is also used by {who}; shifting it would change "
                    "what they see")
    if act.op.name != "relu" and activation_range(act) != (0.0, None):
        return (f"%{act.name} is not a ReLU: relu6(x - c) != relu6(x) - c above 6, and a clamp "
                "does not commute with the shift either")
    if len(bn.inputs) < 5:
        return f"%{bn.name} has no affine parameters (gamma, beta) to estimate the shift from"
    for v in bn.inputs[3:5]:
        if not v.is_const:
            return f"the batch-norm parameter %{v.name} of %{bn.name} is not a constant"
    reason = _weight_reason(second)
    if reason is not None:
        return reason
    w2 = second.inputs[1]
    groups = second.attrs.get("groups", 1) if second.op.name != "linear" else 1
    if bn.inputs[4].shape[0] != w2.shape[1] * groups:
        return (f"groups mismatch: %{bn.name} has {bn.inputs[4].shape[0]} channels but "
                f"%{second.name} takes {w2.shape[1] * groups}")
    if any(v.qparams is not None for v in (bn.outputs[0], act.outputs[0], w2)):
        return "the values are already quantized"
    return None


def absorb_bias(graph: Graph, *, sigmas: float = 3.0) -> EqualizationResult:
    """Absorbs biases in place before ``fold-bn`` (see the module docstring).

    Args:
        graph: a float graph with its ``batch_norm`` nodes.
        sigmas: ``c = max(0, beta - sigmas * |gamma|)``.

    Returns:
        ``pairs`` (batch norm, second layer) that absorbed a non-zero shift, the shifts
        ``c`` by batch-norm name (in ``scales``), and the refusals.
    """
    result = EqualizationResult()
    for second in list(graph.nodes):
        if second.op.name not in _WEIGHTED or not second.inputs:
            continue
        act = second.inputs[0].producer
        bn = act.inputs[0].producer if act is not None and act.inputs else None
        if act is None or act.op.name not in _ACTIVATIONS or bn is None or \
                bn.op.name != "batch_norm":
            continue
        reason = _absorb_reason(bn, act, second)
        if reason is not None:
            result.refusals.append(Refusal("absorb-bias", bn.name, reason))
            continue
        gamma, beta = bn.inputs[3].const, bn.inputs[4].const
        w2 = second.inputs[1].const
        assert gamma is not None and beta is not None and w2 is not None
        f64 = torch.float64
        c = (beta.to(f64) - sigmas * gamma.to(f64).abs()).clamp(min=0)
        if not bool((c > 0).any()):
            continue
        groups = second.attrs.get("groups", 1) if second.op.name != "linear" else 1
        shift = (_grouped(w2.to(f64), groups).sum(dim=3)  # [g, Cout/g, Cin/g]
                 * c.reshape(groups, 1, -1)).sum(dim=2).reshape(-1)
        b2 = second.inputs[2].const if len(second.inputs) > 2 else None
        new_b2 = shift if b2 is None else b2.to(f64) + shift
        beta_v = bn.inputs[4]
        bn.replace_input(4, graph.add_constant((beta.to(f64) - c).to(beta.dtype),
                                               f"{beta_v.name}_absorbed"))
        name = second.inputs[2].name if b2 is not None else f"{second.name}.bias"
        b2_v = graph.add_constant(new_b2.to(w2.dtype if b2 is None else b2.dtype),
                                  f"{name}_absorbed")
        if b2 is None:
            second.set_inputs(list(second.inputs) + [b2_v])
        else:
            second.replace_input(2, b2_v)
        result.pairs.append((bn.name, second.name))
        result.scales[bn.name] = c
        result.changed = True
    return result


@register_pass
@dataclass(frozen=True)
class AbsorbBias(Pass):
    """Bias absorption (Nagel et al. 2019) from batch_norm -> relu into the next layer.

    Runs before fold-bn. Options:
        sigmas: ``c = max(0, beta - sigmas * |gamma|)`` is moved into the next bias.
    """

    name = "absorb-bias"
    sigmas: float = 3.0

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        result = absorb_bias(graph, sigmas=self.sigmas)
        for r in result.refusals:
            logger.debug("%s: %s", self.name, r)
        ctx.refusals.extend(result.refusals)
        return PassResult(graph, result.changed)
