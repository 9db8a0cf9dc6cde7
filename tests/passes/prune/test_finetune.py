"""Fine-tuning through the torch backend; prune -> finetune -> int8 -> compile composition."""

from __future__ import annotations

import importlib

import pytest
import torch

import slimfx
from slimfx.errors import PruningError
from slimfx.passes.prune import (
    PolynomialSchedule,
    finetune,
    magnitude_prune,
    prune_channels,
)
from slimfx.passes.prune.magnitude import eligible_weights
from tests.passes.prune.prune_nets import flatten_cnn, run


def _teacher_data(n_batches: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Inputs labelled by a fixed random teacher network: a learnable task."""
    teacher = slimfx.to_torch(flatten_cnn(seed=42))
    gen = torch.Generator().manual_seed(seed)
    data = []
    for _ in range(n_batches):
        x = torch.randn(2, 1, 12, 12, generator=gen)
        with torch.no_grad():
            data.append((x, teacher(x).argmax(1)))
    return data


def _loss(graph, data) -> float:
    module = slimfx.to_torch(graph)
    with torch.no_grad():
        return sum(float(torch.nn.functional.cross_entropy(module(x), y)) for x, y in data)


def test_finetune_lowers_the_loss_and_keeps_masks() -> None:
    data = _teacher_data()
    g = flatten_cnn()
    magnitude_prune(g, 0.5)
    before = _loss(g, data)
    seen = []
    res = finetune(g, data, epochs=3, optimizer="adam", lr=3e-3,
                   eval_fn=lambda gr: seen.append(_loss(gr, data)) or seen[-1], progress=False)
    assert res.steps == 3 * len(data) and len(res.losses) == 3 and len(res.metrics) == 3
    assert _loss(g, data) < before
    assert res.metrics[-1] == pytest.approx(_loss(g, data))
    for w in eligible_weights(g):
        assert w.mask is not None
        assert not w.const[~w.mask].any()  # pruned weights stayed exactly zero
    g.verify()


def test_gradual_schedule_reaches_final_sparsity() -> None:
    data = _teacher_data()
    g = flatten_cnn()
    sched = PolynomialSchedule(final=0.8, end_step=12, begin_step=0, frequency=4)
    res = finetune(g, data, epochs=2, lr=0.01, schedule=sched, progress=False)
    assert res.sparsity == pytest.approx(0.8)
    ws = eligible_weights(g)
    zeros = sum(int((w.const == 0).sum()) for w in ws)
    total = sum(w.const.numel() for w in ws)
    assert zeros / total == pytest.approx(0.8, abs=0.01)


def test_bad_epochs() -> None:
    with pytest.raises(PruningError, match="epochs=0"):
        finetune(flatten_cnn(), [], epochs=0, progress=False)


def _available(module: str, name: str) -> bool:
    try:
        return hasattr(importlib.import_module(module), name)
    except ImportError:
        return False


def _prune_finetune_quantize():
    data = _teacher_data()
    g = prune_channels(flatten_cnn(), 0.5, round_to=4)
    finetune(g, data, epochs=1, lr=0.01, progress=False)
    g.verify()
    x = data[0][0]
    ref = run(g, x)
    if not _available("slimfx.passes.quant", "quantize"):
        pytest.skip("slimfx.quantize (ptq-int8) is not available yet")
    q = slimfx.quantize(g, [x for x, _ in data])
    q.verify()
    out = run(q, x)
    assert (out - ref).abs().max() < 0.1 * ref.abs().max() + 0.1
    return q, x, out


def test_prune_finetune_quantize() -> None:
    """prune-channels -> finetune -> ptq-int8: the int8 program tracks the pruned float one."""
    _prune_finetune_quantize()


@pytest.mark.tvm
@pytest.mark.slow
def test_prune_finetune_quantize_compile() -> None:
    """... -> slimfx.compile: TVM runs the pruned int8 graph bit-exactly like the torch backend."""
    q, x, out = _prune_finetune_quantize()
    if not _available("slimfx.backends.tvm", "compile"):
        pytest.skip("slimfx.compile (TVM backend) is not available yet")
    compiled = slimfx.compile(q, target="x86")
    torch.testing.assert_close(torch.as_tensor(compiled(x)), out, rtol=0, atol=0)
