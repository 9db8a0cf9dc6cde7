"""``smooth-quant``: migrate activation outliers into the weights (Xiao et al., 2023).

The inputs of a transformer's linears have a few channels whose values are far larger than
the rest (after LayerNorm, after GELU): one int8 scale per tensor or per token must cover
them and the other channels lose their bits. The weights have no such outliers. For every
linear ``y = X W^T + b`` (``W`` of shape ``[out, in]``) a per-input-channel factor
``s_j > 0`` moves the difficulty from ``X`` to ``W`` without changing the function::

    y = (X diag(1/s)) (W diag(s))^T + b        i.e.   X'[..., j] = X[..., j] / s_j
                                                      W'[:, j]   = W[:, j] * s_j

with, from calibration data, ``a_j = max |X[..., j]|`` (over every batch and token) and
``w_j = max_o |W[o, j]|`` taken over all the linears that read the same ``X`` (the query,
key and value projections share one ``s``)::

    s_j = a_j ** alpha / w_j ** (1 - alpha)

``alpha`` (default 0.5, the paper's choice for BERT-size models) sets how much of the range
moves into the weights: ``alpha = 1`` makes every channel of ``X`` span ``[-1, 1]``,
``alpha = 0`` every column of ``W``. After smoothing, channel ``j`` of ``X`` spans
``a_j / s_j = a_j**(1-alpha) w_j**(1-alpha)`` and column ``j`` of ``W`` spans
``w_j s_j = a_j**alpha w_j**alpha``. A channel with ``a_j = 0`` or ``w_j = 0`` keeps
``s_j = 1``; ``s`` is computed in float64 and clamped to ``[1e-5, 1e5]``.

With ``search=[a1, a2, ...]``, each input gets the ``alpha`` of that list whose smoothed
linears lose least to int8 on the calibration data: for each candidate, the sampled rows
``X'`` (up to ``search_rows`` of them) and ``W'`` are quantized the way the int8 flows
will (weights symmetric per output row in ``[-127, 127]``; activations symmetric with
``s_x = max|x| / 127`` per row for ``activations=per-token``, as ``dynamic-int8`` does,
or per tensor for ``activations=per-tensor``), and the candidate with the least
``sum ||X' W'^T - Q(X') Q(W')^T||^2`` over the group's linears wins (the float product
``X' W'^T`` equals ``X W^T``). Only calibration data is used to choose.

Where ``X / s`` goes:

- ``X`` is produced by a ``layer_norm`` with constant ``gamma``, ``beta`` of its own:
  ``gamma' = gamma / s``, ``beta' = beta / s`` (folded, no new node); users of ``X`` other
  than the smoothed linears (the residual ``add`` of a post-LN block) and graph outputs
  read ``mul(X', s)`` instead, so they see exactly what they saw before;
- otherwise (GELU, a reshape, a graph input): a ``mul(X, 1 / s)`` node is inserted, named
  ``<X>.smooth``, and only the smoothed linears read it.

The float graph computes the same function up to one rounding of each scaled weight and of
the scaled activation (relative change ~1e-7). Run it on the float graph, before
``insert-observers`` or ``quantize-dynamic-int8``: e.g.
``slimfx.quantize(g, batches, "smooth-quant{alpha=0.5},dynamic-int8")``.

A linear is refused, with a reason (logged at DEBUG and appended to ``ctx.refusals``), when
its weight is not a 2-D floating-point constant or is shared with another node, when it
matches ``exclude``, or when its input is not floating point or is already quantized. The
registered pass reads the calibration batches from ``ctx.data`` (which
:func:`slimfx.quantize` provides); :func:`smooth_quant` takes them as an argument. The old
weight and LayerNorm constants stay for ``dce`` to remove.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from slimfx.backends.torch import to_torch
from slimfx.errors import CalibrationError, PipelineError
from slimfx.ir.core import Graph, Node, Value
from slimfx.passes.base import Pass, PassResult
from slimfx.passes.context import PassContext
from slimfx.passes.quant.arguments import batch_args, check_data, check_num_batches, no_data_error
from slimfx.passes.registry import register_pass
from slimfx.passes.rewriter import Refusal

__all__ = ["SmoothQuant", "SmoothQuantResult", "smooth_quant", "smoothing_scales"]

logger = logging.getLogger(__name__)

_NAME = "smooth-quant"
_QUANT_OPS = frozenset({"quantize", "dequantize", "observer", "fake_quantize"})
_SCALE_RANGE = (1e-5, 1e5)


def smoothing_scales(act_max: torch.Tensor, weight_max: torch.Tensor,
                     alpha: float) -> torch.Tensor:
    """``s = a**alpha / w**(1 - alpha)`` per input channel, 1 where ``a`` or ``w`` is 0."""
    a, w = act_max.to(torch.float64), weight_max.to(torch.float64)
    ok = (a > 0) & (w > 0)
    s = a.clamp(min=1e-30) ** alpha / w.clamp(min=1e-30) ** (1.0 - alpha)
    return torch.where(ok, s, torch.ones_like(s)).clamp(*_SCALE_RANGE)


@dataclass
class SmoothQuantResult:
    """What :func:`smooth_quant` did.

    Attributes:
        smoothed: input value name -> the linears smoothed together on it, in graph order.
        scales: input value name -> its ``s`` (float64, one per input channel).
        alphas: input value name -> the ``alpha`` used (chosen, with ``search``).
        folded: input value names whose ``1 / s`` went into a LayerNorm (the others got a
            ``mul`` node).
        refusals: linears that were left alone, with the reason.
    """

    smoothed: dict[str, list[str]] = field(default_factory=dict)
    scales: dict[str, torch.Tensor] = field(default_factory=dict)
    alphas: dict[str, float] = field(default_factory=dict)
    folded: list[str] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.smoothed)

    def reasons(self, node: str | None = None) -> list[str]:
        """The refusal reasons (of linear ``node``, if given)."""
        return [r.reason for r in self.refusals if node is None or r.node == node]


def _excluded(node: Node, exclude: tuple[str, ...]) -> bool:
    names = [o.name for o in node.outputs] + ([node.source.module] if node.source.module else [])
    return any(re.fullmatch(p, n) for p in exclude for n in names)


def _refusal(node: Node, exclude: tuple[str, ...]) -> str | None:
    """Why linear ``node`` cannot be smoothed, or None when it can."""
    x, w = node.inputs[0], node.inputs[1]
    if _excluded(node, exclude):
        return f"%{node.name} matches exclude={list(exclude)}"
    if any(v.qparams is not None or (v.producer is not None and v.producer.op.name in _QUANT_OPS)
           for v in (x, w)):
        return (f"the input or weight of %{node.name} is already quantized; run smooth-quant on "
                "the float graph, before insert-observers / quantize-dynamic-int8")
    if not w.is_const:
        return f"the weight %{w.name} of %{node.name} is not a constant"
    if not w.type.is_float or w.type.rank != 2:
        return f"the weight %{w.name} of %{node.name} is not a 2-D floating-point tensor"
    sharers = [u.node for u in w.uses() if u.node is not node]
    if sharers:
        return (f"the weight %{w.name} of %{node.name} is shared with %{sharers[0].name}; "
                "scaling its columns would change that node too")
    if not x.type.is_float or x.type.rank < 1:
        return f"the input %{x.name} of %{node.name} is not a floating-point tensor"
    return None


def _groups(graph: Graph, exclude: tuple[str, ...],
            refusals: list[Refusal]) -> list[tuple[Value, list[Node]]]:
    """The smoothable linears, grouped by the input value they share, in graph order."""
    groups: dict[int, tuple[Value, list[Node]]] = {}
    for node in graph.nodes:
        if node.op.name != "linear" or len(node.inputs) < 2:
            continue
        reason = _refusal(node, exclude)
        if reason is not None:
            refusals.append(Refusal(_NAME, node.name, reason))
            continue
        x = node.inputs[0]
        groups.setdefault(id(x), (x, []))[1].append(node)
    return list(groups.values())


def _activation_stats(graph: Graph, values: list[Value], data: Iterable[Any],
                      num_batches: int | None,
                      rows: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``max |v[..., j]|`` of each value over ``data`` (float64, one entry per channel), and
    the first ``rows`` rows of each value (flattened to ``[rows, channels]``)."""
    g = graph.clone()
    g.set_outputs([g.value(v.name) for v in values])
    module = to_torch(g, trainable=False)
    maxima: list[torch.Tensor] | None = None
    samples: list[list[torch.Tensor]] = [[] for _ in values]
    seen = 0
    with torch.no_grad():
        for batch in data:
            if num_batches is not None and seen >= num_batches:
                break
            outs = module(*batch_args(graph, batch, seen))
            outs = [outs] if isinstance(outs, torch.Tensor) else list(outs)
            flat = [o.detach().to(torch.float32).reshape(-1, o.shape[-1]) for o in outs]
            cur = [f.abs().to(torch.float64).amax(0) for f in flat]
            for kept, f in zip(samples, flat, strict=True):
                have = sum(len(k) for k in kept)
                if have < rows:
                    kept.append(f[:rows - have])
            maxima = cur if maxima is None else [torch.maximum(m, c)
                                                 for m, c in zip(maxima, cur, strict=True)]
            seen += 1
    if maxima is None:
        raise no_data_error(graph, data, "smooth-quant")
    return maxima, [torch.cat(k) if k else torch.zeros(0) for k in samples]


def _int8_sym(t: torch.Tensor, per_row: bool) -> torch.Tensor:
    """``dequantize(quantize(t))``, symmetric int8 in ``[-127, 127]`` per row or per tensor."""
    peak = t.abs().amax(dim=1, keepdim=True) if per_row else t.abs().amax()
    scale = torch.clamp(peak / 127.0, min=1e-12)
    return torch.clamp(torch.round(t / scale), -127, 127) * scale


def _int8_error(rows: torch.Tensor, weights: list[torch.Tensor], s: torch.Tensor,
                per_token: bool) -> float:
    """``sum ||X' W'^T - Q(X') Q(W')^T||^2`` of one smoothing ``s`` (see the docstring)."""
    x = (rows.to(torch.float64) / s).to(torch.float32)
    xq = _int8_sym(x, per_token)
    err = 0.0
    for w in weights:
        ws = (w.to(torch.float64) * s).to(torch.float32)
        err += float(((x @ ws.T - xq @ _int8_sym(ws, True).T) ** 2).sum())
    return err


def _choose_alpha(rows: torch.Tensor, weights: list[torch.Tensor], act_max: torch.Tensor,
                  w_max: torch.Tensor, search: tuple[float, ...],
                  per_token: bool) -> tuple[float, torch.Tensor]:
    best: tuple[float, float, torch.Tensor] | None = None
    for alpha in search:
        s = smoothing_scales(act_max, w_max, alpha)
        err = _int8_error(rows, weights, s, per_token)
        if best is None or err < best[0]:
            best = (err, alpha, s)
    assert best is not None
    return best[1], best[2]


def _replace_const(graph: Graph, node: Node, index: int, tensor: torch.Tensor) -> None:
    old = node.inputs[index]
    node.replace_input(index, graph.add_constant(tensor.to(old.type.torch_dtype),
                                                 f"{old.name}.smoothed"))
    if not old.uses() and old not in graph.outputs:
        graph.remove_constant(old)


def _foldable_norm(x: Value) -> Node | None:
    """The LayerNorm producing ``x`` if ``1 / s`` can go into its affine parameters."""
    norm = x.producer
    if norm is None or norm.op.name != "layer_norm" or len(norm.inputs) < 3:
        return None
    if norm.attrs["normalized_shape"] and len(norm.attrs["normalized_shape"]) != 1:
        return None
    for v in norm.inputs[1:3]:
        if not v.is_const or any(u.node is not norm for u in v.uses()):
            return None
    return norm


def _apply(graph: Graph, x: Value, linears: list[Node], s: torch.Tensor) -> bool:
    """Scales the weights' columns by ``s`` and ``x`` by ``1 / s``; True if folded."""
    for node in linears:
        w = node.inputs[1].const
        assert w is not None
        _replace_const(graph, node, 1, w.to(torch.float64) * s[None, :])
    inv = (1.0 / s).to(x.type.torch_dtype)
    norm = _foldable_norm(x)
    mine = {id(n) for n in linears}
    if norm is not None:
        for i in (1, 2):
            c = norm.inputs[i].const
            assert c is not None
            _replace_const(graph, norm, i, c.to(torch.float64) / s)
        others = [u for u in x.uses() if id(u.node) not in mine]
        if others or any(o is x for o in graph.outputs):
            back = graph.add_constant(s.to(x.type.torch_dtype), f"{x.name}.unsmooth.scale")
            with graph.inserting_after(norm):
                restored = graph.add("mul", [x, back], name=f"{x.name}.unsmooth",
                                     source=norm.source)
            for u in others:
                u.node.replace_input(u.index, restored)
            graph.set_outputs([restored if o is x else o for o in graph.outputs])
        return True
    scale = graph.add_constant(inv, f"{x.name}.smooth.scale")
    with graph.inserting_before(linears[0]):
        smoothed = graph.add("mul", [x, scale], name=f"{x.name}.smooth",
                             source=linears[0].source)
    for node in linears:
        node.replace_input(0, smoothed)
    return False


def smooth_quant(graph: Graph, data: Iterable[Any], alpha: float = 0.5, *,
                 search: tuple[float, ...] = (), activations: str = "per-token",
                 search_rows: int = 1024, exclude: tuple[str, ...] = (),
                 num_batches: int | None = None) -> SmoothQuantResult:
    """Smooths the linears of ``graph`` in place (see the module docstring).

    Args:
        graph: a float graph.
        data: calibration batches, as for :func:`slimfx.calibrate`.
        alpha: migration strength in ``[0, 1]`` (when ``search`` is empty).
        search: candidate alphas; each input gets the one with the least int8 error.
        activations: how the search quantizes activations: ``per-token`` or ``per-tensor``.
        search_rows: calibration rows per input kept for the search.
        exclude: regexes of linears (node names / module paths) left alone.
        num_batches: use at most this many batches.

    Raises:
        PipelineError: an ``alpha`` outside ``[0, 1]``, an unknown ``activations``.
        CalibrationError: no data, or batches that do not fit the graph inputs.
    """
    for a in (alpha, *search):
        _check_alpha(a)
    _check_activations(activations)
    data = check_data(data, "smooth-quant")
    check_num_batches(num_batches, "smooth-quant")
    result = SmoothQuantResult()
    groups = _groups(graph, tuple(exclude), result.refusals)
    for r in result.refusals:
        logger.debug("%s", r)
    if not groups:
        return result
    ranges, samples = _activation_stats(graph, [x for x, _ in groups], data, num_batches,
                                        search_rows if search else 0)
    for (x, linears), act_max, rows in zip(groups, ranges, samples, strict=True):
        weights = [_const(n.inputs[1]) for n in linears]
        w_max = torch.stack([w.abs().to(torch.float64).amax(0) for w in weights]).amax(0)
        chosen = alpha
        if search:
            chosen, s = _choose_alpha(rows, weights, act_max, w_max, tuple(search),
                                      activations == "per-token")
        else:
            s = smoothing_scales(act_max, w_max, alpha)
        name = x.name
        result.alphas[name] = chosen
        if _apply(graph, x, linears, s):
            result.folded.append(name)
        result.smoothed[name] = [n.name for n in linears]
        result.scales[name] = s
        logger.debug("smooth-quant: %%%s (%d linears) activation range %.3g -> %.3g", name,
                     len(linears), float(act_max.max()), float((act_max / s).max()))
    logger.info("smooth-quant: smoothed %d linears on %d inputs of @%s (%d folded into "
                "LayerNorm)", sum(map(len, result.smoothed.values())), len(result.smoothed),
                graph.name, len(result.folded))
    return result


def _const(v: Value) -> torch.Tensor:
    assert v.const is not None  # checked by _refusal
    return v.const


def _check_activations(activations: str) -> None:
    if activations not in ("per-token", "per-tensor"):
        raise PipelineError(f"smooth-quant: activations={activations!r} is not a choice; use "
                            "per-token (dynamic-int8) or per-tensor (static int8)")


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise PipelineError(f"smooth-quant: alpha={alpha} must lie in [0, 1] (0.5 is the usual "
                            "choice; larger moves more of the activation range into the weights)")


@register_pass
@dataclass(frozen=True)
class SmoothQuant(Pass):
    """SmoothQuant (Xiao et al. 2023): per-channel activation outliers moved into the weights.

    Needs calibration batches in ``ctx.data``; :func:`slimfx.quantize` provides them.

    Options:
        alpha: migration strength in ``[0, 1]`` (when ``search`` is empty).
        search: candidate alphas, chosen per input by the least int8 error on the data.
        activations: how the search quantizes activations (``per-token``, ``per-tensor``).
        exclude: regexes of linears left alone.
    """

    name = _NAME
    alpha: float = 0.5
    search: tuple[float, ...] = ()
    activations: Literal["per-token", "per-tensor"] = "per-token"
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        for a in (self.alpha, *self.search):
            _check_alpha(a)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        data = getattr(ctx, "data", None)
        if data is None:
            raise CalibrationError("pass 'smooth-quant' needs calibration data; use "
                                   "slimfx.quantize(graph, data, 'smooth-quant,...') or "
                                   "slimfx.passes.quant.smooth_quant(graph, data)")
        result = smooth_quant(graph, data, self.alpha, search=self.search,
                              activations=self.activations, exclude=self.exclude)
        ctx.refusals.extend(result.refusals)
        return PassResult(graph, result.changed)
