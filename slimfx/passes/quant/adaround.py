"""``adaround``: learn whether each weight rounds up or down (Nagel et al., 2020).

Rounding every weight to the nearest integer is not what minimises a layer's output error:
the errors of a row add up through the dot product. AdaRound learns, per weight, whether
to round down or up, on calibration data, layer by layer. With the weight's fixed
quantization step ``s`` (per output channel, from its observer), ``[qmin, qmax]`` its
integer range and ``V`` a free tensor the shape of ``W``::

    h(V)   = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)       zeta = 1.1, gamma = -0.1
    W~(V)  = s * clamp(floor(W / s) + h(V), qmin, qmax)
    loss   = mean((f(op(X, W~)) - f(op(X, W)))**2)
             + lam * sum(1 - |2 h(V) - 1| ** beta)

where ``X`` is the layer's float input on the calibration data, ``op`` the conv / linear
(its bias included) and ``f`` the activation fused into it (``act_min``/``act_max``). ``V``
starts where ``h(V)`` is the fractional part of ``W / s`` (so ``W~ = W`` before
clamping); Adam runs ``iterations`` steps; the regulariser is off for the first 20% of them
and ``beta`` then decays from 20 to 2, pushing every ``h`` to 0 or 1 (Nagel et al.,
"Up or Down? Adaptive Rounding for Post-Training Quantization", ICML 2020, §3-4). The
weight is then replaced by the rounded grid values ``s * clamp(floor(W / s) + [h(V) >= 0.5],
qmin, qmax)``: ``quantize-dequantize`` recovers exactly those integers, since the largest
``|W|`` of each channel sits on the grid (its observer is switched to plain min/max, which
reproduces the step ``s`` that the rounding used).

It runs on a *calibrated* graph, after ``insert-observers`` and before
``quantize-dequantize`` (as ``bias-correction`` does); the registered pass reads the
calibration batches from ``ctx.data`` (:func:`slimfx.quantize` provides them):
``slimfx.quantize(g, batches, "remove-identity,fold-bn,fuse-activation,dce,insert-observers,
adaround")``. Layers are rounded independently, each from the float inputs. A layer is
refused, with a reason, when its weight is not an observed constant, its weight scheme is
not symmetric, or its weight is shared.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from tqdm.auto import tqdm

from slimfx.backends.torch import to_torch
from slimfx.errors import CalibrationError, PipelineError
from slimfx.ir.core import Graph, Node
from slimfx.passes.base import Pass, PassResult
from slimfx.passes.context import PassContext
from slimfx.passes.quant.arguments import batch_args, check_data, check_num_batches, no_data_error
from slimfx.passes.quant.quantize_dequantize import observer_qparams
from slimfx.passes.registry import register_pass
from slimfx.passes.rewriter import Refusal

__all__ = ["AdaRound", "AdaRoundResult", "adaround", "rectified_sigmoid"]

logger = logging.getLogger(__name__)

_NAME = "adaround"
_WEIGHTED = ("conv1d", "conv2d", "linear")
ZETA, GAMMA = 1.1, -0.1


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """``h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)``."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _inverse_h(frac: torch.Tensor) -> torch.Tensor:
    """``V`` with ``h(V) = frac`` (``frac`` in ``[0, 1)``, kept off the clamp edges)."""
    p = ((frac - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)
    return torch.log(p / (1 - p))


@dataclass
class AdaRoundResult:
    """What :func:`adaround` did.

    Attributes:
        rounded: layer name -> ``(nearest-rounding loss, AdaRound loss)`` of the output
            reconstruction on the calibration data (mean squared error).
        flipped: layer name -> fraction of weights rounded away from the nearest integer.
        refusals: layers left alone, with the reason.
    """

    rounded: dict[str, tuple[float, float]] = field(default_factory=dict)
    flipped: dict[str, float] = field(default_factory=dict)
    refusals: list[Refusal] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.rounded)


def _refusal(node: Node) -> str | None:
    obs = node.inputs[1].producer
    if obs is None or obs.op.name != "observer" or not obs.inputs[0].is_const:
        return (f"the weight of %{node.name} is not a constant watched by an observer; run "
                "insert-observers first (or the layer is excluded by the QConfig)")
    if not obs.attrs["symmetric"]:
        return f"the weight scheme of %{node.name} is not symmetric"
    w = obs.inputs[0]
    if any(u.node is not obs for u in w.uses()):
        return f"the weight %{w.name} of %{node.name} is shared with another node"
    if len(node.inputs) > 2 and not node.inputs[2].is_const:
        return f"the bias of %{node.name} is not a constant"
    return None


def _apply(node: Node, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    a = node.attrs
    b = node.inputs[2].const if len(node.inputs) > 2 else None
    if node.op.name == "linear":
        y = F.linear(x, w, b)
    else:
        conv = F.conv1d if node.op.name == "conv1d" else F.conv2d
        y = conv(x, w, b, a["stride"], a["padding"], a["dilation"], a["groups"])
    lo, hi = a.get("act_min"), a.get("act_max")
    if lo is not None or hi is not None:
        y = torch.clamp(y, lo, hi)
    return y


def _inputs(graph: Graph, nodes: list[Node], data: Iterable[Any],
            num_batches: int | None) -> list[torch.Tensor]:
    g = graph.clone()
    g.set_outputs([g.node(n.name).inputs[0] for n in nodes])
    module = to_torch(g, trainable=False)
    outs: list[list[torch.Tensor]] = [[] for _ in nodes]
    seen = 0
    with torch.no_grad():
        for batch in data:
            if num_batches is not None and seen >= num_batches:
                break
            res = module(*batch_args(graph, batch, seen))
            res = [res] if isinstance(res, torch.Tensor) else list(res)
            for keep, r in zip(outs, res, strict=True):
                keep.append(r.detach().to(torch.float32))
            seen += 1
    if not seen:
        raise no_data_error(graph, data, "adaround")
    return [torch.cat(o) for o in outs]


def _round_layer(node: Node, x: torch.Tensor, *, iterations: int, lam: float, lr: float,
                 batch: int, gen: torch.Generator) -> tuple[torch.Tensor, float, float, float]:
    obs = node.inputs[1].producer
    assert obs is not None and obs.inputs[0].const is not None
    w = obs.inputs[0].const.detach().to(torch.float32)
    qp = observer_qparams(obs)
    shape = [1] * w.dim()
    if qp.axis is not None:
        shape[qp.axis] = -1
    s = torch.tensor(qp.scale, dtype=torch.float32).reshape(shape)
    qmin, qmax = qp.qmin, qp.qmax
    base = torch.floor(w / s)
    nearest = s * torch.clamp(torch.round(w / s), qmin, qmax)
    with torch.no_grad():
        target = _apply(node, x, w)
        near_loss = float(((_apply(node, x, nearest) - target) ** 2).mean())
    v = _inverse_h(w / s - base).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=lr)
    warmup = int(0.2 * iterations)
    for it in range(iterations):
        idx = torch.randint(0, x.shape[0], (min(batch, x.shape[0]),), generator=gen)
        soft = s * torch.clamp(base + rectified_sigmoid(v), qmin, qmax)
        rec = ((_apply(node, x[idx], soft) - target[idx]) ** 2).mean()
        loss = rec
        if it >= warmup:
            t = (it - warmup) / max(1, iterations - warmup)
            beta = 2 + 0.5 * (20 - 2) * (1 + math.cos(math.pi * t))
            h = rectified_sigmoid(v)
            loss = rec + lam * (1 - (2 * h - 1).abs() ** beta).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        up = (rectified_sigmoid(v) >= 0.5).to(torch.float32)
        hard = s * torch.clamp(base + up, qmin, qmax)
        ada_loss = float(((_apply(node, x, hard) - target) ** 2).mean())
        flipped = float((hard != nearest).to(torch.float64).mean())
    return hard, near_loss, ada_loss, flipped


def adaround(graph: Graph, data: Iterable[Any], *, iterations: int = 500, lam: float = 0.01,
             lr: float = 1e-2, batch: int = 256, num_batches: int | None = None,
             seed: int = 0, progress: bool = False) -> AdaRoundResult:
    """Rounds the observed conv/linear weights of ``graph`` in place (module docstring).

    Args:
        graph: a calibrated graph with weight observers (before ``quantize-dequantize``).
        data: calibration batches, as for :func:`slimfx.calibrate`.
        iterations: Adam steps per layer.
        lam: weight of the rounding regulariser.
        lr: Adam learning rate.
        batch: samples (rows of the layer input's first axis) per step.
        num_batches: use at most this many batches.
        seed: seed of the sampling.
        progress: show a tqdm bar over the layers.

    Raises:
        PipelineError: non-positive ``iterations`` / ``batch`` or a negative ``lam``.
        CalibrationError: no data, batches that do not fit, or uncalibrated observers.
    """
    _check(iterations, lam, batch)
    data = check_data(data, "adaround")
    check_num_batches(num_batches, "adaround")
    result = AdaRoundResult()
    targets = []
    for n in graph.nodes:
        if n.op.name not in _WEIGHTED:
            continue
        reason = _refusal(n)
        if reason is None:
            targets.append(n)
        else:
            result.refusals.append(Refusal(_NAME, n.name, reason))
            logger.debug("adaround: %s", reason)
    if not targets:
        return result
    xs = _inputs(graph, targets, data, num_batches)
    gen = torch.Generator().manual_seed(seed)
    for node, x in tqdm(list(zip(targets, xs, strict=True)), desc="adaround",
                        disable=not progress):
        hard, near, ada, flipped = _round_layer(node, x, iterations=iterations, lam=lam, lr=lr,
                                                batch=batch, gen=gen)
        obs = node.inputs[1].producer
        assert obs is not None
        old = obs.inputs[0]
        obs.replace_input(0, graph.add_constant(hard.to(old.type.torch_dtype),
                                                f"{old.name}.adarounded"))
        obs.set_attrs(method="minmax")
        if not old.uses() and old not in graph.outputs:
            graph.remove_constant(old)
        result.rounded[node.name] = (near, ada)
        result.flipped[node.name] = flipped
        logger.debug("adaround: %%%s loss %.4g -> %.4g (%.1f%% flipped)", node.name, near, ada,
                     100 * flipped)
    logger.info("adaround: rounded %d layers of @%s", len(result.rounded), graph.name)
    return result


def _check(iterations: int, lam: float, batch: int) -> None:
    if iterations < 1 or batch < 1 or lam < 0:
        raise PipelineError(f"adaround: iterations ({iterations}) and batch ({batch}) must be "
                            f">= 1 and lam ({lam}) >= 0")


@register_pass
@dataclass(frozen=True)
class AdaRound(Pass):
    """AdaRound (Nagel et al. 2020): learned up/down rounding of conv/linear weights.

    Needs calibration batches in ``ctx.data``; :func:`slimfx.quantize` provides them.

    Options:
        iterations: Adam steps per layer.
        lam: weight of the rounding regulariser.
        lr: Adam learning rate.
        batch: samples per step.
    """

    name = _NAME
    iterations: int = 500
    lam: float = 0.01
    lr: float = 1e-2
    batch: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.iterations, self.lam, self.batch)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        data = getattr(ctx, "data", None)
        if data is None:
            raise CalibrationError("pass 'adaround' needs calibration data; use "
                                   "slimfx.quantize(graph, data, '...,insert-observers,adaround')")
        result = adaround(graph, data, iterations=self.iterations, lam=self.lam, lr=self.lr,
                          batch=self.batch)
        ctx.refusals.extend(result.refusals)
        return PassResult(graph, result.changed)
