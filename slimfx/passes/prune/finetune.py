"""Fine-tuning a (pruned) graph through the torch backend.

``finetune`` builds a trainable ``torch.fx.GraphModule`` with
:func:`slimfx.to_torch`, trains it, re-applies the pruning masks after every
optimizer step (a pruned weight stays exactly zero), optionally raises the
sparsity along a :class:`~slimfx.passes.prune.schedule.PolynomialSchedule`, and
writes the trained constants and masks back into the graph
(:func:`~slimfx.backends.torch.module.sync_constants`).

Batch norm in the IR is inference batch norm (running statistics), so training
adapts the weights around fixed statistics; fold or re-estimate them as needed.

Batches: ``(inputs, targets)`` (inputs a tensor, a tuple of tensors or a dict keyed by
input name), or a dict holding the inputs by name and the targets under ``"labels"``
(or ``"label"``), as Hugging Face data collators give them; ``input_fn`` maps any
other layout to ``(inputs, targets)``. A graph traced with a dynamic batch
(``dynamic_shapes=``) trains on a ``DataLoader`` as it is, partial last batch included.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from slimfx.backends.torch.module import sync_constants, to_torch
from slimfx.errors import PruningError
from slimfx.ir.core import Graph
from slimfx.passes.prune.magnitude import eligible_weights, magnitude_masks
from slimfx.passes.prune.schedule import PolynomialSchedule

__all__ = ["finetune", "FinetuneResult"]

log = logging.getLogger(__name__)

OptimizerSpec = Literal["sgd", "adam", "adamw"] | Callable[[Iterable[torch.nn.Parameter]],
                                                          torch.optim.Optimizer]


@dataclass
class FinetuneResult:
    """What a fine-tuning run did.

    Attributes:
        losses: mean training loss per epoch.
        metrics: ``eval_fn(graph)`` per epoch (empty without ``eval_fn``).
        steps: optimizer steps taken.
        sparsity: scheduled sparsity after the last step (None without a schedule).
    """

    losses: list[float] = field(default_factory=list)
    metrics: list[Any] = field(default_factory=list)
    steps: int = 0
    sparsity: float | None = None


def _optimizer(spec: OptimizerSpec, params: list[torch.nn.Parameter],
               lr: float) -> torch.optim.Optimizer:
    if callable(spec):
        return spec(params)
    if spec == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if spec == "adam":
        return torch.optim.Adam(params, lr=lr)
    if spec == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    raise PruningError(f"finetune: unknown optimizer {spec!r}; use sgd, adam, adamw or a "
                       "callable params -> torch.optim.Optimizer")


def finetune(graph: Graph, train_data: Iterable[tuple[torch.Tensor, torch.Tensor]],
             epochs: int = 1, *, optimizer: OptimizerSpec = "sgd", lr: float = 0.01,
             loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
             eval_fn: Callable[[Graph], Any] | None = None,
             schedule: PolynomialSchedule | None = None,
             scope: Literal["global", "layer"] = "global", progress: bool = True,
             input_fn: Callable[[Any], tuple[Any, Any]] | None = None) -> FinetuneResult:
    """Trains ``graph``'s constants in place, keeping pruning masks applied.

    Args:
        graph: the graph to train (its constants and masks are updated).
        train_data: re-iterable batches ``(inputs, targets)`` or dicts with ``"labels"``
            (see the module docstring); inputs may be a tuple or a dict by input name.
        epochs: passes over ``train_data``.
        optimizer: ``sgd`` (momentum 0.9), ``adam``, ``adamw`` or a factory.
        lr: learning rate of the built-in optimizers.
        loss_fn: ``loss(output, target)``; cross-entropy by default.
        eval_fn: called with the synced graph after each epoch; results are kept.
        schedule: gradual magnitude pruning of the eligible weights per step.
        scope: ranking scope of the scheduled magnitude pruning.
        progress: show a tqdm progress bar.
        input_fn: ``batch -> (inputs, targets)`` for other batch layouts.

    Raises:
        PruningError: ``epochs < 1``, an unknown optimizer, or a batch that is not
            ``(inputs, targets)`` (nor a dict with labels).
    """
    from tqdm.auto import tqdm

    if epochs < 1:
        raise PruningError(f"finetune: epochs={epochs} must be >= 1")
    loss_fn = loss_fn or torch.nn.functional.cross_entropy
    module = to_torch(graph, trainable=True)
    module.train()
    params = dict(module.named_parameters())
    path_of = module.value_names
    for node in graph.nodes:  # batch-norm statistics are not trained (aten refuses grads)
        if node.op.name == "batch_norm":
            for stat in node.inputs[1:3]:
                p = params.pop(path_of.get(stat.name, ""), None)
                if p is not None:
                    p.requires_grad_(False)
    masks = {path_of[v.name]: v.mask.to(torch.bool) for v in graph.constants.values()
             if v.mask is not None and path_of.get(v.name) in params}
    scheduled = [path_of[w.name] for w in eligible_weights(graph)] if schedule else []
    opt = _optimizer(optimizer, list(params.values()), lr)
    result = FinetuneResult()

    def apply_masks() -> None:
        with torch.no_grad():
            for path, m in masks.items():
                params[path].mul_(m.to(params[path].dtype))

    for epoch in range(epochs):
        total, count = 0.0, 0
        bar = tqdm(train_data, desc=f"finetune {epoch + 1}/{epochs}", disable=not progress,
                   leave=False)
        for i, batch in enumerate(bar):
            inputs, target = _split_batch(batch if input_fn is None else input_fn(batch), i,
                                          [v.name for v in graph.inputs])
            if schedule is not None and schedule.updates_at(result.steps):
                s = schedule.sparsity(result.steps)
                new = magnitude_masks({p: params[p] * masks[p] if p in masks else params[p]
                                       for p in scheduled}, s, scope=scope)
                masks.update({p: m & masks[p] if p in masks else m for p, m in new.items()})
                result.sparsity = s
                apply_masks()
            opt.zero_grad(set_to_none=True)
            out = module(**inputs) if isinstance(inputs, dict) else module(
                *(inputs if isinstance(inputs, tuple | list) else (inputs,)))
            loss = loss_fn(out, target)
            loss.backward()
            opt.step()
            apply_masks()
            result.steps += 1
            total, count = total + float(loss.detach()), count + 1
            bar.set_postfix(loss=f"{total / count:.4f}")
        result.losses.append(total / max(count, 1))
        _write_back(graph, module, masks)
        if eval_fn is not None:
            result.metrics.append(eval_fn(graph))
            log.info("finetune epoch %d: loss %.4f, eval %s", epoch + 1, result.losses[-1],
                     result.metrics[-1])
    module.eval()
    return result


def _split_batch(batch: Any, index: int, names: list[str]) -> tuple[Any, Any]:
    """``(inputs, targets)`` of one training batch (see the module docstring)."""
    if isinstance(batch, dict):
        key = "labels" if "labels" in batch else "label" if "label" in batch else None
        if key is not None:
            return {k: v for k, v in batch.items() if k in names}, batch[key]
        raise PruningError(f"finetune: batch {index} is a dict without 'labels' (keys "
                           f"{', '.join(map(repr, batch))}); pass input_fn=lambda b: "
                           "(inputs, targets)")
    if isinstance(batch, tuple | list) and len(batch) == 2:
        return batch[0], batch[1]
    raise PruningError(f"finetune: batch {index} is a {type(batch).__name__}"
                       + (f" of {len(batch)} items" if isinstance(batch, tuple | list) else "")
                       + "; a training batch is (inputs, targets) or a dict with 'labels'; "
                       "pass input_fn=lambda b: (inputs, targets) for other layouts")


def _write_back(graph: Graph, module: Any, masks: dict[str, torch.Tensor]) -> None:
    sync_constants(graph, module)
    by_path = {p: n for n, p in module.value_names.items()}
    for path, m in masks.items():
        graph.constants[by_path[path]].mask = m.clone()
