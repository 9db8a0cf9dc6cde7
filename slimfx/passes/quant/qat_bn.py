"""Conv + batch norm in quantization-aware training, with batch statistics.

Post-training quantization folds each BatchNorm into its conv once, with the running
statistics (``fold-bn``). Training through that fold never normalizes by the
statistics of the batch, so the running statistics go stale as the weights move and
the network loses BatchNorm's conditioning. ``prepare_qat(..., fold_bn="batch-stats")``
keeps the BatchNorm as trainable state instead, following the "correction" scheme of
Krishnamoorthi (2018, "Quantizing deep convolutional networks for efficient
inference", section 3.2) as ``torch.ao.nn.intrinsic.qat._ConvBnNd`` implements it.

With ``sigma = sqrt(running_var + eps)``, ``s = gamma / sigma`` per output channel,
``b`` the conv's bias (0 when it has none) and ``fq`` the weight's fake quantization::

    W' = W * s                         b' = (b - running_mean) * s + beta   (fold_bn)
    c  = conv2d(x, fq(W'))
    training:   y = batch_norm_train(c / s + b)            (batch mean mu_B, var sigma_B^2)
                  = c * sigma / sigma_B + beta - gamma * (mu_B - b) / sigma_B
                running_mean/var <- (1 - momentum) * running + momentum * batch
    eval, or frozen statistics:
                y = conv2d(x, fq(W'), b')                  (exactly the converted program)

followed by the fused activation (``act_min``/``act_max``). The weight is always
quantized at the *running* scale ``s``, so its quantization grid does not jitter with
the batch; the factor ``sigma / sigma_B`` is applied to the conv output (in float)
instead, and gradients flow through ``mu_B`` and ``sigma_B`` as in ``nn.BatchNorm2d``.
After :func:`freeze_bn_stats` (Krishnamoorthi: after about 2/3 of the steps, the
statistics have settled) training uses the eval form, so the last steps train exactly
the program :func:`slimfx.convert` emits.

In the IR this is two ops (``slimfx/ir/opset_quant.py``), kept only between
``prepare_qat`` and ``convert``:

- ``fold_bn(W, b, mean, var, gamma, beta) -> (W', b')``: the formula above, computed
  by :func:`slimfx.passes.fold_batchnorm.fold_bn_weights` in every backend and in
  ``convert``; its ``W'`` feeds the weight's ``fake_quantize`` (whose scale was
  calibrated on exactly that tensor);
- ``conv2d_bn(x, fq(W'), b', b, mean, var, gamma, beta)``: inference semantics are
  those of ``conv2d(x, fq(W'), b')``; the torch backend's kernel (a module, as it
  depends on ``training``) uses the batch statistics in training.

:func:`fold_conv_bn` (run by ``convert``) folds ``fold_bn`` with the final running
statistics into constants and turns each ``conv2d_bn`` back into ``conv2d``: the
graph ``prepare_qat(..., fold_bn="running")`` would have had, with the trained values.

Only ``conv2d`` followed by ``batch_norm`` trains this way (the pairs ``fold-bn``
folds: weight, bias and statistics constant, the conv's result used by the BN only);
other foldable producers (``conv1d``, ``linear``, ``conv_transpose2d``) are folded with
the running statistics, as with ``fold_bn="running"``.

As passes (pipeline ``qat-int8-bn``): ``record-conv-bn`` runs first, on the float graph,
and keeps the pairs (with their tensors) in the context (``ctx.bn_pairs``), changing
nothing; ``insert-conv-bn`` runs last, after ``insert-fake-quant``, and requires them.
``fold-conv-bn`` (:func:`fold_conv_bn`) is the first pass of ``convert-qat``.

Under DistributedDataParallel each replica normalizes by the statistics of its own
shard (as ``nn.BatchNorm2d`` does without ``SyncBatchNorm``); DDP broadcasts the
running statistics of rank 0 before each forward.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from slimfx.backends.torch.kernels import KERNELS
from slimfx.backends.torch.kernels_qat import ConvBn2dKernel
from slimfx.errors import QuantizationError
from slimfx.ir.core import Graph, Node, Value
from slimfx.passes.base import Pass, PassResult
from slimfx.passes.context import PassContext
from slimfx.passes.fold_batchnorm import FoldBatchNormRule
from slimfx.passes.patterns import match
from slimfx.passes.registry import register_pass

__all__ = ["BnPair", "bn_pairs", "insert_conv_bn", "fold_conv_bn", "freeze_bn_stats",
           "update_bn_stats", "freeze_observers", "RecordConvBn", "InsertConvBn", "FoldConvBn"]

logger = logging.getLogger(__name__)

_CONV_ATTRS = ("stride", "padding", "dilation", "groups", "act_min", "act_max")


@dataclass(frozen=True)
class BnPair:
    """A ``conv2d -> batch_norm`` pair of the float graph, by name, with its tensors."""

    conv: str
    bn: str
    weight: str
    bias: str
    tensors: tuple[torch.Tensor, ...]  # weight, bias, mean, var, gamma, beta (float32 clones)
    names: tuple[str, ...]  # the constant names of mean, var, gamma, beta
    eps: float


def bn_pairs(graph: Graph) -> list[BnPair]:
    """The ``conv2d -> batch_norm`` pairs of ``graph`` that ``fold-bn`` would fold.

    Missing parts are made explicit: a conv without bias gets ``b = 0``, a batch norm
    without affine parameters ``gamma = 1``, ``beta = 0``.
    """
    rule = FoldBatchNormRule()
    pattern = rule.pattern()
    pairs = []
    for bn in graph.find("batch_norm"):
        m, reason = match(pattern, bn)
        if m is None or rule.check(m) is not None or m.node("conv").op.name != "conv2d":
            continue
        conv = m.node("conv")
        w = _const(conv.inputs[1])
        cout = w.shape[0]
        bias = conv.inputs[2] if len(conv.inputs) > 2 else None
        b = _const(bias) if bias is not None else torch.zeros(cout, dtype=w.dtype)
        stats = [_const(v) for v in bn.inputs[1:]]
        gamma = stats[2] if len(stats) > 2 else torch.ones(cout, dtype=w.dtype)
        beta = stats[3] if len(stats) > 3 else torch.zeros(cout, dtype=w.dtype)
        names = [v.name for v in bn.inputs[1:]]
        names += [f"{bn.name}.weight", f"{bn.name}.bias"][len(names) - 2:]
        pairs.append(BnPair(conv.name, bn.name, conv.inputs[1].name,
                            bias.name if bias is not None else f"{conv.name}.bias",
                            (w, b, stats[0], stats[1], gamma, beta), tuple(names),
                            bn.attrs["eps"]))
    return pairs


def insert_conv_bn(graph: Graph, pairs: list[BnPair]) -> int:
    """Turns the running-folded convs of ``pairs`` in a fake-quantized graph into
    ``fold_bn`` + ``conv2d_bn`` (see the module docstring); returns how many.

    ``graph`` is the ``qat-int8`` preparation of the graph ``pairs`` came from: each conv
    reads ``fake_quantize(W_folded)`` and ``b_folded``, constants of ``fold-bn``. A conv
    whose weight is not fake-quantized (excluded by the qconfig) keeps the running fold.
    """
    convs = {n.name: n for n in graph.find("conv2d")}
    count = 0
    for p in pairs:
        conv = convs.get(p.conv)
        fq = conv.inputs[1].producer if conv is not None else None
        if conv is None or fq is None or fq.op.name != "fake_quantize" or len(conv.inputs) < 3 \
                or not fq.inputs[0].is_const or not conv.inputs[2].is_const:
            logger.info("conv %s keeps BN %s folded with running statistics (its weight is "
                        "not fake-quantized)", p.conv, p.bn)
            continue
        _insert_one(graph, conv, fq, p)
        count += 1
    return count


def _insert_one(graph: Graph, conv: Node, fq: Node, p: BnPair) -> None:
    old_w, old_b = fq.inputs[0], conv.inputs[2]
    w, b, mean, var, gamma, beta = (
        graph.add_constant(t.clone(), n)
        for t, n in zip(p.tensors, (p.weight, p.bias, *p.names), strict=True))
    with graph.inserting_before(fq):
        fold = graph.create("fold_bn", [w, b, mean, var, gamma, beta], dict(eps=p.eps),
                            names=[old_w.name, old_b.name], source=conv.source)
    attrs = {k: conv.attrs[k] for k in _CONV_ATTRS}
    with graph.inserting_before(conv):
        y = graph.add("conv2d_bn", [conv.inputs[0], fq.output, fold.outputs[1], b, mean, var,
                                    gamma, beta], dict(attrs, eps=p.eps),
                      name=conv.name, source=conv.source)
    fq.replace_input(0, fold.outputs[0])
    graph.replace_all_uses_with(conv.output, y)
    name = conv.name
    graph.erase(conv)
    for old, new in ((old_w, fold.outputs[0]), (old_b, fold.outputs[1])):
        if not old.uses():
            graph.remove_constant(old)
            graph.rename(new, old.name)
    graph.rename(y, name)


def fold_conv_bn(graph: Graph) -> int:
    """Folds every ``fold_bn`` into constants and each ``conv2d_bn`` back into ``conv2d``
    (in place, with the graph's current statistics); returns how many.

    Raises:
        QuantizationError: a ``conv2d_bn`` whose bias is not a ``fold_bn`` result with
            constant operands (a graph edited by hand).
    """
    count = 0
    for node in graph.find("conv2d_bn"):
        fold = node.inputs[2].producer
        if fold is None or fold.op.name != "fold_bn" or not all(v.is_const for v in fold.inputs):
            raise QuantizationError(
                f"{node.describe()}: its bias must be the result of a fold_bn node with "
                "constant operands (as slimfx.prepare_qat(..., fold_bn='batch-stats') builds)")
        consts = [v.const for v in fold.inputs]
        with torch.no_grad():
            w_f, b_f = KERNELS["fold_bn"](*consts, **fold.attrs)
        names = [o.name for o in fold.outputs]
        w_c = graph.add_constant(w_f.detach().clone(), f"{names[0]}.tmp")
        b_c = graph.add_constant(b_f.detach().clone(), f"{names[1]}.tmp")
        attrs = {k: node.attrs[k] for k in _CONV_ATTRS}
        with graph.inserting_before(node):
            y = graph.add("conv2d", [node.inputs[0], node.inputs[1], b_c], attrs,
                          name=f"{node.name}.tmp", source=node.source)
        graph.replace_all_uses_with(node.output, y)
        graph.replace_all_uses_with(fold.outputs[0], w_c)
        graph.replace_all_uses_with(fold.outputs[1], b_c)
        name = node.name
        graph.erase(node)
        graph.erase(fold)
        graph.rename(y, name)
        for c, n in ((w_c, names[0]), (b_c, names[1])):
            graph.rename(c, n)
        count += 1
    for node in graph.find("fold_bn"):
        raise QuantizationError(f"{node.describe()}: a fold_bn without its conv2d_bn")
    return count


def _const(v: Value) -> torch.Tensor:
    assert v.const is not None
    return v.const.detach().clone()


# --------------------------------------------------------------------------- training helpers
def freeze_bn_stats(module: torch.nn.Module) -> int:
    """Stops using and updating batch statistics in the ``conv2d_bn`` layers of ``module``.

    From then on training runs the folded form ``conv2d(x, fq(W'), b')`` with the
    running statistics, which no longer change: the program :func:`slimfx.convert`
    emits. Call it after most of the training (Krishnamoorthi 2018 freezes after ~2/3 of
    the steps), on the module from ``to_torch``, a wrapper (DDP) or any parent; it also
    works as ``module.apply(freeze_bn_stats)``. Returns how many layers it froze.
    """
    return _set_frozen(module, True)


def update_bn_stats(module: torch.nn.Module) -> int:
    """Undoes :func:`freeze_bn_stats`: training uses batch statistics again."""
    return _set_frozen(module, False)


def _set_frozen(module: torch.nn.Module, frozen: bool) -> int:
    layers = [m for m in module.modules() if isinstance(m, ConvBn2dKernel)]
    for m in layers:
        m.freeze_bn = frozen
    return len(layers)


def freeze_observers(module: torch.nn.Module) -> int:
    """Stops training the quantization parameters (LSQ scales and zero points).

    slimfx's fake quantization has no observers that track ranges during training
    (ranges come from calibration, then move only by their LSQ gradients), so this is
    the counterpart of ``torch.ao.quantization.disable_observer``: it makes the learned
    scales and zero points of ``module`` (from ``to_torch``, or a parent or wrapper of
    it) stop requiring gradients. Under DistributedDataParallel, freeze before wrapping
    the module (DDP expects a gradient for every parameter it was built with), or build
    the wrapper with ``find_unused_parameters=True``. Returns how many it froze.
    """
    from slimfx.backends.torch.module import SlimfxModule

    count = 0
    for m in module.modules():
        if not isinstance(m, SlimfxModule) or not isinstance(m.__dict__.get("source_graph"),
                                                             Graph):
            continue
        params = dict(m.named_parameters())
        for node in m.source_graph.find("fake_quantize"):
            for v in node.inputs[1:3]:
                p = params.get(m.value_names.get(v.name, ""))
                if p is not None and p.requires_grad:
                    p.requires_grad_(False)
                    count += 1
    return count


@register_pass
@dataclass(frozen=True)
class RecordConvBn(Pass):
    """Records the graph's ``conv2d -> batch_norm`` pairs in ``ctx.bn_pairs`` (no edit), for
    ``insert-conv-bn`` after the QAT preparation; run it before ``fold-bn``."""

    name = "record-conv-bn"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        setattr(ctx, "bn_pairs", bn_pairs(graph))  # noqa: B010  (read by insert-conv-bn)
        return PassResult(graph, False)


@register_pass
@dataclass(frozen=True)
class InsertConvBn(Pass):
    """Trains the recorded conv + BN pairs on batch statistics (``conv2d_bn``; module
    docstring); needs ``record-conv-bn`` first and ``insert-fake-quant`` before it."""

    name = "insert-conv-bn"

    def requires(self, graph: Graph) -> None:
        if not graph.find("fake_quantize"):
            raise QuantizationError("pass 'insert-conv-bn' needs fake-quantized weights: run "
                                    "'insert-fake-quant' before it (pipeline 'qat-int8-bn')")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        pairs = getattr(ctx, "bn_pairs", None)
        if pairs is None:
            raise QuantizationError("pass 'insert-conv-bn' needs the conv + BN pairs of the "
                                    "float graph: run 'record-conv-bn' first, before 'fold-bn' "
                                    "(pipeline 'qat-int8-bn')")
        return PassResult(graph, insert_conv_bn(graph, pairs) > 0)


@register_pass
@dataclass(frozen=True)
class FoldConvBn(Pass):
    """Folds trained ``fold_bn`` / ``conv2d_bn`` pairs into constants and ``conv2d`` (with
    the current running statistics): the first pass of ``convert-qat``."""

    name = "fold-conv-bn"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult(graph, fold_conv_bn(graph) > 0)
