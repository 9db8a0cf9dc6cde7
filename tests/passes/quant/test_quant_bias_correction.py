"""``bias-correction`` and MSE weight clipping (``QConfig.preset(weight_method="mse")``)."""

from __future__ import annotations

import pytest
import torch

import slimfx
from slimfx.errors import CalibrationError
from slimfx.ir import Graph, TensorType
from slimfx.passes.quant import QConfig, bias_correction, calibrate, prepare_ptq
from slimfx.passes.quant.quantize_dequantize import mse_weight_range, observer_qparams


def _net(bias: bool) -> tuple[Graph, list[torch.Tensor]]:
    torch.manual_seed(0)
    g = Graph("bc")
    x = g.add_input("x", TensorType((16, 3, 8, 8)))
    ins = [x, g.add_constant(torch.randn(6, 3, 3, 3) * 0.3, "conv.weight")]
    if bias:
        ins.append(g.add_constant(torch.randn(6) * 0.1, "conv.bias"))
    y = g.add("conv2d", ins, dict(stride=[1, 1], padding=[1, 1], dilation=[1, 1]), name="conv")
    y = g.add("linear", [g.add("reshape", [y], dict(shape=[16, 384])),
                         g.add_constant(torch.randn(5, 384) * 0.05, "fc.weight"),
                         g.add_constant(torch.zeros(5), "fc.bias")], name="fc")
    g.set_outputs([y])
    # inputs with a large common mean: the weight rounding error then shifts the output mean
    data = [torch.randn(16, 3, 8, 8) + 2.0 for _ in range(4)]
    return g, data


@pytest.mark.parametrize("bias", [True, False])
def test_bias_correction_cancels_mean_shift_of_int8_weights(bias):
    g, data = _net(bias)
    p = prepare_ptq(g)
    calibrate(p, data, progress=False)
    # fake-quantize the weights only, float everywhere else: the mean shift is the weight error
    qp = {n.name: observer_qparams(n) for n in p.find("observer") if n.inputs[0].is_const}
    w = {n: p.value(n.replace(".obs", "")).const for n in qp}

    def conv_mean(graph_bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        name = "conv.weight.obs"
        scale = torch.tensor(qp[name].scale)
        zp = torch.tensor(qp[name].zero_point, dtype=torch.int32)
        wq = torch.fake_quantize_per_channel_affine(w[name], scale, zp, 0, -127, 127)
        yf = torch.nn.functional.conv2d(torch.cat(data), w[name], graph_bias, padding=1)
        return yf.mean((0, 2, 3)), wq

    conv = p.node("conv")
    old_bias = conv.inputs[2].const.clone() if bias else None
    yf_mean, wq = conv_mean(old_bias)
    assert bias_correction(p, data) == 2
    new_bias = conv.inputs[2].const
    yq = torch.nn.functional.conv2d(torch.cat(data), wq, new_bias, padding=1)
    before = torch.nn.functional.conv2d(torch.cat(data), wq, old_bias, padding=1)
    err_before = float((before.mean((0, 2, 3)) - yf_mean).abs().max())
    err_after = float((yq.mean((0, 2, 3)) - yf_mean).abs().max())
    assert err_before > 1e-3
    assert err_after < 1e-4
    assert err_after < err_before / 20


def test_quantize_with_bias_correction_runs_integer_program():
    g, data = _net(True)
    q = slimfx.quantize(g, data, bias_correction=True)
    q.verify()
    assert {"qconv2d", "qlinear"} <= {n.op.name for n in q.nodes}
    ref = slimfx.to_torch(g, trainable=False)(data[0])
    out = slimfx.to_torch(q, trainable=False)(data[0])
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.99


def test_bias_correction_without_data_is_an_error():
    g, _ = _net(True)
    p = prepare_ptq(g)
    with pytest.raises(CalibrationError, match="no data"):
        bias_correction(p, [])


def test_mse_weight_range_never_worse_than_minmax():
    torch.manual_seed(0)
    w = torch.distributions.Laplace(0.0, 1.0).sample((8, 4096))  # heavy-tailed, like weights
    lo, hi = mse_weight_range(w, 0, qmin=-127, qmax=127, symmetric=True)
    for c in range(8):
        assert max(-lo[c], hi[c]) <= float(w[c].abs().max())  # clipped, never widened

    def err(lo_hi: tuple[list[float], list[float]]) -> float:
        s = torch.tensor([max(-a, b) / 127 for a, b in zip(*lo_hi, strict=True)])[:, None]
        return float(((torch.clamp(torch.round(w / s), -127, 127) * s - w) ** 2).sum())

    minmax = (w.amin(1).tolist(), w.amax(1).tolist())
    assert err((lo, hi)) < err(minmax)  # strictly: the search finds a better clip


def test_mse_weights_preset_quantizes():
    g, data = _net(True)
    q = slimfx.quantize(g, data, qconfig=QConfig.preset(weight_method="mse"))
    q.verify()
    ref = slimfx.to_torch(g, trainable=False)(data[0])
    out = slimfx.to_torch(q, trainable=False)(data[0])
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.99
