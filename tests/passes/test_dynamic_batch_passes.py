"""Passes, calibration and fine-tuning on a graph with a symbolic batch (``f32[N,...]``).

One trace with a dynamic batch must give, at every batch size, exactly what a static
trace at that size gives through the same flow: the same integers for int8 graphs
(calibrated on the same samples, batched differently: min/max ranges do not depend on
the batching), the same floats for fp16 / pruned graphs.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.export import Dim
from torch.utils.data import DataLoader, TensorDataset

import slimfx
from slimfx.errors import CalibrationError, PruningError
from slimfx.ir.core import Graph
from slimfx.passes.prune.finetune import finetune

SIZES = (1, 3, 7)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        y = nn.functional.max_pool2d(torch.relu(y + self.conv2(y)), 2)
        return self.fc(torch.flatten(y, 1))


@pytest.fixture(scope="module")
def net() -> tuple[nn.Module, Graph, torch.Tensor]:
    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.3, 0.3)
        model.bn.running_var.uniform_(0.5, 2.0)
    g = slimfx.trace(model, torch.randn(500, 3, 8, 8), dynamic_shapes=({0: Dim.AUTO},))
    samples = torch.randn(63, 3, 8, 8)  # 63 = 9 * 7 = 21 * 3 = 3 * 16 + 15
    return model, g, samples


def _static(model: nn.Module, batch: int) -> Graph:
    return slimfx.trace(model, torch.randn(batch, 3, 8, 8), dynamic_shapes={})


def test_ptq_int8_equals_static_traces_bit_for_bit(net) -> None:
    model, g, samples = net
    assert str(g.inputs[0].type) == "f32[N,3,8,8]"  # traced at batch 500
    for b in SIZES:
        data = list(samples[:21].split(b))  # the same float batches calibrate both graphs
        dyn = slimfx.quantize(g, data)
        assert dyn.symbols == g.symbols and dyn.find("qconv2d")
        ref = slimfx.to_torch(slimfx.quantize(_static(model, b), data))
        x = torch.randn(b, 3, 8, 8)
        assert torch.equal(slimfx.to_torch(dyn)(x), ref(x)), b


def test_ptq_int8_calibrates_with_a_dataloader_as_it_is(net) -> None:
    _, g, samples = net
    loader = DataLoader(TensorDataset(samples, torch.zeros(63, dtype=torch.long)),
                        batch_size=16)  # (inputs, labels) batches of 16, 16, 16, 15
    q = slimfx.quantize(g, loader)
    one = slimfx.quantize(g, [samples])  # one batch of the same samples: the same ranges
    scales = [(v.qparams.scale, w.qparams.scale) for v, w in
              zip(q.values(), one.values(), strict=True) if v.qparams is not None]
    assert scales and all(torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-5)
                          for a, b in scales)
    m = slimfx.to_torch(q)
    rows = torch.randn(7, 3, 8, 8)
    full = m(rows)
    for b in SIZES:  # every row's integers are the same whatever the batch size
        assert torch.equal(m(rows[:b]), full[:b]), b


def test_input_fn_and_dict_batches(net) -> None:
    _, g, samples = net
    batches = [{"image": s, "id": i} for i, s in enumerate(samples.split(10))]
    with pytest.raises(CalibrationError, match="input_fn"):
        slimfx.quantize(g, [(samples[:2], samples[:2], samples[:2])])
    a = slimfx.quantize(g, batches, input_fn=lambda batch: batch["image"])
    b = slimfx.quantize(g, [samples])
    x = torch.randn(3, 3, 8, 8)
    assert torch.equal(slimfx.to_torch(a)(x), slimfx.to_torch(b)(x))
    with pytest.raises(CalibrationError, match="input_fn failed on batch 0: KeyError"):
        slimfx.quantize(g, batches, input_fn=lambda batch: batch["pixels"])


def test_static_graph_refuses_other_batch_sizes_with_a_hint(net) -> None:
    model, _, samples = net
    with pytest.raises(CalibrationError, match=r"has shape \(5, 3, 8, 8\) but the graph was "
                       r"traced with f32\[2,3,8,8\]; the graph has static shapes: trace it "
                       r"with a dynamic batch.*dynamic_shapes="):
        slimfx.quantize(_static(model, 2), [samples[:5]])


@pytest.mark.parametrize("pipeline", ["dynamic-int8", "fp16",
                                      "fold-bn,fuse-conv-relu,prune-magnitude{sparsity=0.5}",
                                      "fold-bn,prune-channels{ratio=0.5}"])
def test_float_pipelines_match_static_traces(net, pipeline: str) -> None:
    model, g, _ = net

    def run(graph: Graph) -> Graph:
        if pipeline in ("dynamic-int8", "fp16"):
            return slimfx.quantize(graph, pipeline=pipeline)
        return slimfx.Pipeline(pipeline)(graph)

    dyn = run(g)
    assert dyn.symbols == g.symbols and str(dyn.inputs[0].type) == "f32[N,3,8,8]"
    dyn.verify()
    m = slimfx.to_torch(dyn)
    for b in SIZES:
        x = torch.randn(b, 3, 8, 8)
        with torch.no_grad():
            want = slimfx.to_torch(run(_static(model, b)))(x)
            got = m(x)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_finetune_and_qat_train_at_one_size_and_run_at_others(net) -> None:
    model, g, samples = net
    labels = torch.randint(0, 10, (63,))
    loader = DataLoader(TensorDataset(samples, labels), batch_size=20)  # 20, 20, 20, 3
    tuned = g.clone()
    result = finetune(tuned, loader, epochs=1, progress=False, lr=1e-3)
    assert result.steps == 4
    dicts = [{"x": x, "labels": y} for x, y in loader]  # Hugging Face collator layout
    again = g.clone()
    finetune(again, dicts, epochs=1, progress=False, lr=1e-3)
    for name, v in again.constants.items():  # the same steps from the same start
        torch.testing.assert_close(v.const, tuned.constants[name].const)
    with pytest.raises(PruningError, match="batch 0 is a dict without 'labels'.*input_fn"):
        finetune(g.clone(), [{"x": samples[:2]}], progress=False)
    flipped = [(y, x) for x, y in loader]
    finetune(g.clone(), flipped, progress=False, input_fn=lambda b: (b[1], b[0]))
    qat = slimfx.prepare_qat(g, loader)
    m = slimfx.to_torch(qat)
    m.train()
    for x, _ in loader:
        m(x).sum().backward()
    int8 = slimfx.convert(m)
    assert int8.symbols == g.symbols
    run = slimfx.to_torch(int8)
    for b in SIZES:
        x = torch.randn(b, 3, 8, 8)
        full = run(torch.cat([x, samples[:2]]))
        assert torch.equal(run(x), full[:b])  # each row's integers do not depend on the batch


def test_macs_of_a_symbolic_graph_are_counted_at_a_batch_size(net) -> None:
    from slimfx.passes.prune import count_macs

    model, g, _ = net
    assert count_macs(g) == count_macs(_static(model, 1))  # N at its minimum, 1
    assert count_macs(g, {"N": 3}) == count_macs(_static(model, 3)) == 3 * count_macs(g)
