"""BatchNorm in quantization-aware training (``prepare_qat(..., fold_bn="batch-stats")``):
the fold_bn / conv2d_bn ops, the train / eval / frozen kernel, convert, the freeze
helpers, deep copies of to_torch modules and the bad inputs."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimfx
from slimfx.backends.torch import KERNELS
from slimfx.backends.torch.kernels_qat import ConvBn2dKernel
from slimfx.errors import LoweringError, QuantizationError
from slimfx.passes import Pipeline
from slimfx.passes.quant import qat

BATCH = 60


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    from slimfx.models.digits import pretrained_digits_cnn

    model, data = pretrained_digits_cnn()
    g = slimfx.trace(model, (data.x_test[:BATCH],))
    train = list(data.x_train[:480].split(BATCH))
    test = list(data.x_test.split(BATCH))
    return model, g, data, train, test


def _accuracy(fn, batches, labels) -> float:
    with torch.no_grad():
        pred = torch.cat([torch.as_tensor(fn(b)).argmax(1) for b in batches])
    return float((pred == labels).float().mean()) * 100


def _train(m: nn.Module, data, steps: int, lr: float, freeze_at: int | None = None) -> None:
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    m.train()
    for step in range(steps):
        if step == freeze_at:
            assert qat.freeze_bn_stats(m) == 3
        idx = torch.randint(0, len(data.y_train), (BATCH,), generator=gen)
        loss = F.cross_entropy(m(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()


# --------------------------------------------------------------------------- the kernel
def _kernel_operands(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 3, 5, 5, generator=g)
    w = torch.randn(4, 3, 3, 3, generator=g) * 0.3
    conv_bias = torch.randn(4, generator=g)
    mean, var = torch.randn(4, generator=g), torch.rand(4, generator=g) + 0.5
    gamma, beta = torch.randn(4, generator=g), torch.randn(4, generator=g)
    return x, w, conv_bias, mean, var, gamma, beta


ATTRS = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, act_min=None,
             act_max=None, eps=1e-5, momentum=0.1)


def test_train_mode_uses_batch_statistics():
    x, w, cb, mean, var, gamma, beta = _kernel_operands()
    w_f, b_f = KERNELS["fold_bn"](w, cb, mean, var, gamma, beta, eps=1e-5)
    k = ConvBn2dKernel().train()
    rm, rv = mean.clone(), var.clone()
    y = k(x, w_f, b_f, cb, rm, rv, gamma, beta, **ATTRS)
    # by hand, in float64: the BN of the unfolded conv, with the statistics of the batch
    f64 = torch.float64
    z = F.conv2d(x.to(f64), w.to(f64), cb.to(f64), padding=1)
    mu, var_b = z.mean((0, 2, 3)), z.var((0, 2, 3), unbiased=False)
    want = ((z - mu.view(1, -1, 1, 1)) / torch.sqrt(var_b + 1e-5).view(1, -1, 1, 1)
            * gamma.to(f64).view(1, -1, 1, 1) + beta.to(f64).view(1, -1, 1, 1))
    torch.testing.assert_close(y.to(f64), want, rtol=1e-4, atol=1e-4)
    # the rearranged form of the module docstring: c * sigma / sigma_B + ...
    s = gamma.to(f64) / torch.sqrt(var.to(f64) + 1e-5)
    c = F.conv2d(x.to(f64), w_f.to(f64), padding=1)
    sig_b = torch.sqrt(var_b + 1e-5)
    alt = (c * (torch.sqrt(var.to(f64) + 1e-5) / sig_b).view(1, -1, 1, 1)
           + (beta.to(f64) - gamma.to(f64) * (mu - cb.to(f64)) / sig_b).view(1, -1, 1, 1))
    torch.testing.assert_close(y.to(f64), alt, rtol=1e-4, atol=1e-4)
    assert s.abs().min() > 0
    # the running statistics move towards the batch ones (unbiased variance, momentum 0.1)
    n = z.numel() / z.shape[1]
    torch.testing.assert_close(rm.to(f64), 0.9 * mean.to(f64) + 0.1 * mu)
    torch.testing.assert_close(rv.to(f64), 0.9 * var.to(f64) + 0.1 * var_b * n / (n - 1))


def test_eval_and_frozen_modes_are_the_folded_conv():
    x, w, cb, mean, var, gamma, beta = _kernel_operands(1)
    w_f, b_f = KERNELS["fold_bn"](w, cb, mean, var, gamma, beta, eps=1e-5)
    attrs = dict(ATTRS, act_min=0.0)
    want = torch.relu(F.conv2d(x, w_f, b_f, padding=1))
    k = ConvBn2dKernel()
    for mode in ("eval", "frozen"):
        k.train(mode == "frozen")
        k.freeze_bn = mode == "frozen"
        rm, rv = mean.clone(), var.clone()
        assert torch.equal(k(x, w_f, b_f, cb, rm, rv, gamma, beta, **attrs), want)
        assert torch.equal(rm, mean) and torch.equal(rv, var)  # statistics untouched


def test_train_mode_backpropagates_through_the_batch_statistics():
    x, w, cb, mean, var, gamma, beta = _kernel_operands(2)
    w, gamma, beta = (t.clone().requires_grad_() for t in (w, gamma, beta))
    w_f, b_f = KERNELS["fold_bn"](w, cb, mean, var, gamma, beta, eps=1e-5)
    y = ConvBn2dKernel().train()(x, w_f, b_f, cb, mean.clone(), var.clone(), gamma, beta,
                                 **ATTRS)
    (y * torch.arange(y.numel()).reshape(y.shape).sin()).sum().backward()
    ref = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)).train()
    with torch.no_grad():
        ref[0].weight.copy_(w)
        ref[0].bias.copy_(cb)
        ref[1].weight.copy_(gamma)
        ref[1].bias.copy_(beta)
        ref[1].running_mean.copy_(mean)
        ref[1].running_var.copy_(var)
    yr = ref(x)
    (yr * torch.arange(yr.numel()).reshape(yr.shape).sin()).sum().backward()
    torch.testing.assert_close(y, yr, rtol=1e-4, atol=1e-4)
    for got, want in ((w.grad, ref[0].weight.grad), (gamma.grad, ref[1].weight.grad),
                      (beta.grad, ref[1].bias.grad)):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


# --------------------------------------------------------------------------- prepare / convert
def test_prepare_batch_stats_graph(digits):
    _, g, _, train, test = digits
    gq = slimfx.prepare_qat(g, train[:4], fold_bn="batch-stats")
    assert len(gq.find("fold_bn")) == len(gq.find("conv2d_bn")) == 3
    assert not gq.find("conv2d") and not gq.find("batch_norm")
    for node in gq.find("conv2d_bn"):
        fq = node.inputs[1].producer
        assert fq.op.name == "fake_quantize" and fq.inputs[0].producer.op.name == "fold_bn"
        assert node.inputs[2].producer is fq.inputs[0].producer
    gq.verify()
    running = slimfx.prepare_qat(g, train[:4], fold_bn="running")
    assert not running.find("conv2d_bn")
    assert str(running) == str(slimfx.prepare_qat(g, train[:4]))  # the default
    # same fake quantization, at the same points: convert before training is PTQ exactly
    for form in ("int8", "qdq"):
        got, want = slimfx.convert(gq, form=form), slimfx.quantize(g, train[:4], form=form)
        assert str(got) == str(want)
        for name, v in want.constants.items():
            assert torch.equal(got.constants[name].const, v.const), name
    m, ref = slimfx.to_torch(gq), slimfx.to_torch(running)
    assert torch.equal(m(test[0]), ref(test[0]))  # eval: the running fold, bit for bit
    buffers = dict(m.named_buffers())
    assert "block1.1.running_mean" in buffers and "block1.1.running_var" in buffers
    assert "block1.1.weight" in dict(m.named_parameters())


def test_prepared_graph_saves_and_loads(digits, tmp_path):
    from slimfx.ir.serialize import load_graph, save_graph

    _, g, _, train, test = digits
    gq = slimfx.prepare_qat(g, train[:2], fold_bn="batch-stats")
    save_graph(gq, tmp_path / "qat_bn.slimg")
    back = load_graph(tmp_path / "qat_bn.slimg")
    assert str(back) == str(gq)
    assert torch.equal(slimfx.to_torch(back)(test[0]), slimfx.to_torch(gq)(test[0]))


def test_convert_after_training_is_what_the_module_computes(digits):
    _, g, data, train, test = digits
    m = slimfx.to_torch(slimfx.prepare_qat(g, train[:4], fold_bn="batch-stats"))
    stats0 = {n: b.clone() for n, b in m.named_buffers() if "running" in n}
    _train(m, data, steps=12, lr=1e-3)
    moved = [n for n, b in m.named_buffers() if "running" in n and not torch.equal(b, stats0[n])]
    assert len(moved) == 6  # mean and var of the three BNs
    with torch.no_grad():
        trained = [m(b) for b in test]
        probe = copy.deepcopy(m).train()  # a training forward moves the statistics
        assert not torch.equal(probe(test[0]), trained[0])  # training mode: batch statistics
    stats1 = {n: b.clone() for n, b in m.named_buffers() if "running" in n}
    gqdq = slimfx.convert(m, form="qdq")
    assert not gqdq.find("conv2d_bn") and not gqdq.find("fold_bn") and gqdq.find("conv2d")
    mq = slimfx.to_torch(gqdq)
    assert all(torch.equal(mq(b), y) for b, y in zip(test, trained, strict=True))
    # the integer program is convert-int8 of that QDQ form
    g8 = slimfx.convert(m)
    assert str(g8) == str(Pipeline("convert-int8,dce")(gqdq))
    assert g8.find("qconv2d") and not g8.find("fake_quantize")
    out8 = slimfx.to_torch(g8)
    agree = torch.cat([out8(b).argmax(1) == y.argmax(1) for b, y in zip(test, trained,
                                                                        strict=True)])
    assert agree.float().mean() > 0.97
    # converting reads the module, never writes it
    assert all(torch.equal(b, stats1[n]) for n, b in m.named_buffers() if "running" in n)


def test_frozen_statistics_train_the_converted_program(digits):
    _, g, data, train, test = digits
    m = slimfx.to_torch(slimfx.prepare_qat(g, train[:4], fold_bn="batch-stats"))
    assert qat.freeze_bn_stats(torch.nn.ModuleList([m])) == 3  # a parent works too
    stats = {n: b.clone() for n, b in m.named_buffers() if "running" in n}
    m.train()
    with torch.no_grad():
        y = m(test[0])
    m.eval()
    assert torch.equal(y, m(test[0]))
    assert all(torch.equal(b, stats[n]) for n, b in m.named_buffers() if "running" in n)
    m.apply(qat.update_bn_stats)  # torch.ao style
    m.train()
    with torch.no_grad():
        assert not torch.equal(m(test[0]), y)
    m.eval()


def test_freeze_observers(digits):
    _, g, data, train, _ = digits
    m = slimfx.to_torch(slimfx.prepare_qat(g, train[:2], fold_bn="batch-stats",
                                           learn_scales=True))
    n_fq = len(m.source_graph.find("fake_quantize"))
    assert qat.freeze_observers(m) == n_fq
    assert qat.freeze_observers(m) == 0
    scales = {n: p.detach().clone() for n, p in m.named_parameters() if "fq_" in n}
    _train(m, data, steps=3, lr=1e-3)
    assert all(torch.equal(p, scales[n]) for n, p in m.named_parameters() if "fq_" in n)


def test_digits_bn_qat_accuracy(digits):
    model, g, data, train, test = digits
    fp32 = _accuracy(model, test, data.y_test)
    ptq = _accuracy(slimfx.to_torch(slimfx.quantize(g, train[:8])), test, data.y_test)
    got = {}
    for mode in ("running", "batch-stats"):
        m = slimfx.to_torch(slimfx.prepare_qat(g, train[:8], fold_bn=mode))
        _train(m, data, steps=100, lr=1e-4, freeze_at=70 if mode == "batch-stats" else None)
        got[mode] = _accuracy(slimfx.to_torch(slimfx.convert(m)), test, data.y_test)
    print(f"digits: fp32 {fp32:.2f}%, PTQ int8 {ptq:.2f}%, QAT running-fold "
          f"{got['running']:.2f}%, QAT batch-stats {got['batch-stats']:.2f}% (100 Adam steps, "
          "BN frozen after 70)")
    assert got["batch-stats"] >= ptq - 0.5
    assert got["running"] >= ptq - 1.0


# --------------------------------------------------------------------------- deep copies
@pytest.mark.parametrize("kind", ["float", "qat-bn"])
def test_deepcopy_of_a_to_torch_module(digits, kind):
    _, g, data, train, test = digits
    graph = g if kind == "float" else slimfx.prepare_qat(g, train[:2], fold_bn="batch-stats")
    m = slimfx.to_torch(graph)
    if kind == "qat-bn":
        qat.freeze_bn_stats(m)
    c = copy.deepcopy(m)
    assert torch.equal(c(test[0]), m(test[0]))  # used to recurse forever
    assert copy.deepcopy(c)(test[0]).shape == m(test[0]).shape  # and a copy of a copy
    assert c.value_names == m.value_names and c.source_graph is not m.source_graph
    with torch.no_grad():
        next(c.parameters()).add_(1.0)
    assert not torch.equal(next(c.parameters()), next(m.parameters()))  # independent
    if kind == "qat-bn":
        assert all(k.freeze_bn for k in c.modules() if isinstance(k, ConvBn2dKernel))
        assert str(slimfx.convert(copy.deepcopy(m))) == str(slimfx.convert(m))


# --------------------------------------------------------------------------- bad input
def test_bad_input(digits):
    _, g, data, train, test = digits
    with pytest.raises(QuantizationError, match="fold_bn='folded' is not a mode"):
        slimfx.prepare_qat(g, train[:2], fold_bn="folded")
    m = slimfx.to_torch(slimfx.prepare_qat(g, train[:2], fold_bn="batch-stats"))
    g8 = slimfx.convert(m)
    with pytest.raises(QuantizationError, match="already quantized"):
        slimfx.convert(g8)  # converting twice
    with pytest.raises(QuantizationError, match="already quantized"):
        slimfx.prepare_qat(g8, train[:2])
    m8 = slimfx.to_torch(g8)
    with pytest.raises(QuantizationError, match="cannot be trained.*slimfx.prepare_qat"):
        m8.train()  # training the converted program
    with pytest.raises(QuantizationError, match="cannot be trained"):
        slimfx.to_torch(slimfx.convert(m, form="qdq")).train()
    m8.eval()  # eval / train(False) stay fine
    m8.train(False)
    with pytest.raises(QuantizationError, match="already quantized"):
        slimfx.convert(m8)


@pytest.mark.tvm
@pytest.mark.skipif(importlib.util.find_spec("tvm") is None, reason="needs apache-tvm")
def test_compiling_an_unconverted_qat_graph_is_refused(digits):
    _, g, _, train, _ = digits
    for mode in ("running", "batch-stats"):
        gq = slimfx.prepare_qat(g, train[:2], fold_bn=mode)
        with pytest.raises(LoweringError, match=r"call slimfx\.convert\(\.\.\.\) first"):
            slimfx.compile(gq, "x86")
