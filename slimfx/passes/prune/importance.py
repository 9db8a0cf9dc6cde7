"""Channel importance: a score per prunable unit, summed over the members of its group.

Every :class:`~slimfx.passes.prune.dependency.ParamSlice` of a group contributes:
the constant is viewed as a matrix ``[positions, rest]`` along its sliced axis
and a *scorer* turns that into one score per position; positions are summed
into their unit (a channel, or a whole attention head).

Built-in scorers:

- ``l1``: ``sum |w|`` over the slice (weights only: statistics and biases skipped);
- ``l2``: ``||w||_2`` of each slice, summed over members;
- ``bn-scale``: ``|gamma|`` of batch/group norms (network slimming); groups with
  no norm layer get no score and are left alone.

A user scorer is any ``fn(role, const_name, matrix) -> Tensor[positions] | None``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from slimfx.errors import PruningError
from slimfx.ir.core import Graph
from slimfx.passes.prune.dependency import ChannelDeps

__all__ = ["Scorer", "get_scorer", "unit_importance", "SCORERS"]

Scorer = Callable[[str, str, torch.Tensor], "torch.Tensor | None"]

_WEIGHT_ROLES = frozenset({"out", "in", "depthwise", "bn.weight", "gn.weight", "ln.weight", "embed",
                           "operand"})


def _l1(role: str, name: str, m: torch.Tensor) -> torch.Tensor | None:
    return m.abs().sum(1) if role in _WEIGHT_ROLES else None


def _l2(role: str, name: str, m: torch.Tensor) -> torch.Tensor | None:
    return m.norm(dim=1) if role in _WEIGHT_ROLES else None


def _bn_scale(role: str, name: str, m: torch.Tensor) -> torch.Tensor | None:
    return m.abs().sum(1) if role in ("bn.weight", "gn.weight") else None


SCORERS: dict[str, Scorer] = {"l1": _l1, "l2": _l2, "bn-scale": _bn_scale}


def get_scorer(importance: str | Scorer) -> Scorer:
    """The scorer for a name (``l1``, ``l2``, ``bn-scale``) or a user callable."""
    if callable(importance):
        return importance
    try:
        return SCORERS[importance]
    except KeyError:
        raise PruningError(f"unknown importance {importance!r}; choose one of "
                           f"{', '.join(SCORERS)} or pass a callable") from None


def unit_importance(graph: Graph, deps: ChannelDeps, scorer: Scorer) -> dict[int, float]:
    """Score of every root atom that some member scored (roots nobody scored are absent)."""
    scores: dict[int, float] = {}
    for s in deps.slices:
        const = graph.constants.get(s.const)
        roots = deps.roots(s.value)
        if const is None or const.const is None or roots is None:
            continue
        t = const.const.detach().float()
        m = t.movedim(s.axis, 0).reshape(t.shape[s.axis], -1)
        if m.shape[0] != len(roots):
            raise PruningError(f"constant %{s.const} of {s.node} has {m.shape[0]} positions on "
                               f"axis {s.axis} but %{s.value} tracks {len(roots)}")
        per = scorer(s.role, s.const, m)
        if per is None:
            continue
        for r, x in zip(roots, per.tolist(), strict=True):
            scores[r] = scores.get(r, 0.0) + float(x)
    return scores
