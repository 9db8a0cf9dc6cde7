"""Static int8 end to end on a CNN trained on sklearn digits, and its error cases."""

from __future__ import annotations

import math

import pytest
import torch

import slimfx
from slimfx.errors import CalibrationError, QuantizationError, SlimfxError
from slimfx.ir import Graph, TensorType, parse
from slimfx.passes import Pipeline
from slimfx.passes.quant import OpQConfig, QConfig, QScheme, prepare_ptq
from slimfx.passes.quant.quantize_dequantize import to_qdq


def accuracy(fn, batches, labels) -> float:
    with torch.no_grad():
        pred = torch.cat([fn(b).argmax(1) for b in batches])
    return float((pred == labels).float().mean()) * 100


def test_float_graph_matches_module(digits):
    m, g, _, test, _ = digits
    with torch.no_grad():
        torch.testing.assert_close(slimfx.to_torch(g, trainable=False)(test[0]), m(test[0]),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("observer,method", [("minmax", "minmax"), ("histogram", "mse"),
                                             ("moving_average", "minmax")])
def test_ptq_int8_keeps_accuracy(digits, observer, method):
    m, g, train, test, labels = digits
    qc = QConfig.preset("x86", activation_observer=observer, method=method)
    q = slimfx.quantize(g, train[:10], qconfig=qc)
    ops = {n.op.name for n in q.nodes}
    assert {"qconv2d", "requantize", "qlinear"} <= ops
    assert not ops & {"conv2d", "linear", "batch_norm", "relu", "observer"}
    fp32 = accuracy(m, test, labels)
    int8 = accuracy(slimfx.to_torch(q), test, labels)
    assert fp32 > 90.0
    assert int8 >= fp32 - 1.0, (fp32, int8)


def test_integer_program_matches_simulated_qdq_within_one_step(digits):
    _, g, train, test, _ = digits
    qdq = slimfx.quantize(g, train[:5], form="qdq")
    int8 = slimfx.quantize(g, train[:5])
    a, b = slimfx.to_torch(qdq)(test[0]), slimfx.to_torch(int8)(test[0])
    step = int8.outputs[0].producer.attrs["scale"][0]
    diff = (a - b).abs() / step
    assert diff.max() <= 4.01  # rounding of the fixed-point multiplier vs float, accumulated
    assert (diff < 0.5).float().mean() > 0.9


def test_relu_fuses_into_the_clamp_and_observers_are_identity(digits):
    _, g, train, test, _ = digits
    prepared = prepare_ptq(g)
    # x, conv1 (BN folded, ReLU fused), conv2 (its output also feeds fc through the flatten),
    # fc, and the three weights
    assert len(prepared.find("observer")) == 7
    with torch.no_grad():
        torch.testing.assert_close(slimfx.to_torch(prepared)(test[0]),
                                   slimfx.to_torch(g, trainable=False)(test[0]),
                                   rtol=1e-4, atol=1e-4)
    q = slimfx.quantize(g, train[:3])
    for req in q.find("requantize")[:2]:  # conv1, conv2 carry a fused ReLU
        assert req.attrs["qmin"] == req.attrs["out_zero_point"]
    assert q.find("max_pool2d")[0].output.dtype == "i8"
    assert str(parse(str(q))) == str(q)


def test_design_flow_pipeline_calibrate_convert(digits):
    _, g, train, test, _ = digits
    prepared = Pipeline("ptq-int8")(g)
    slimfx.calibrate(prepared, train[:3], progress=False)
    q = Pipeline("convert-int8,dce")(prepared)
    ref = slimfx.quantize(g, train[:3])
    assert torch.equal(slimfx.to_torch(q)(test[1]), slimfx.to_torch(ref)(test[1]))


def test_excluded_layers_stay_float(digits):
    m, g, train, test, labels = digits
    q = slimfx.quantize(g, train[:5], qconfig=QConfig.preset(exclude=["fc"]))
    assert [n.op.name for n in q.nodes if n.name == "fc"] == ["linear"]
    assert q.find("qconv2d") and not q.find("qlinear")
    q2 = slimfx.quantize(g, train[:5], qconfig=QConfig(by_op={"conv2d": None}))
    assert not q2.find("qconv2d") and q2.find("qlinear")
    assert accuracy(slimfx.to_torch(q2), test, labels) >= accuracy(m, test, labels) - 1.0


def _two_scale_conv() -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType((4, 2, 6, 6)))
    w = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    w[:2] *= 100.0  # channels of very different magnitude
    y = g.add("conv2d", [x, g.add_constant(w, "w")], dict(stride=[1, 1], padding=[1, 1],
                                                         dilation=[1, 1]), name="conv")
    g.set_outputs([y])
    return g


def test_per_channel_weights_beat_per_tensor():
    g = _two_scale_conv()
    w = g.constants["w"].const
    data = [torch.randn(4, 2, 6, 6, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    errs = {}
    for per_channel in (True, False):
        q = slimfx.quantize(g, data, qconfig=QConfig.preset(per_channel_weights=per_channel))
        wq = [c for c in q.constants.values() if c.dtype == "i8"][0]
        assert wq.qparams.per_channel == per_channel
        scale = torch.tensor(wq.qparams.scale).reshape(-1, 1, 1, 1)
        w_hat = wq.const.to(torch.float32) * scale
        errs[per_channel] = float((w_hat - w)[2:].abs().max())  # the small channels
    # per tensor, the small channels get the big channels' step (~100x coarser)
    assert errs[True] * 20 < errs[False]


def test_symmetric_activations_have_zero_point_zero():
    g = _two_scale_conv()
    data = [torch.randn(4, 2, 6, 6)]
    q = slimfx.quantize(g, data, qconfig=QConfig.preset(symmetric_activations=True))
    assert all(n.attrs["zero_point"] == (0,) for n in q.find("quantize"))
    assert all(n.attrs["out_zero_point"] == 0 for n in q.find("requantize"))


def test_by_name_overrides_scheme():
    g = _two_scale_conv()
    sym = OpQConfig(QScheme(symmetric=True))
    q = slimfx.quantize(g, [torch.randn(4, 2, 6, 6)], qconfig=QConfig(by_name={"conv": sym}))
    assert q.find("requantize")[0].attrs["out_zero_point"] == 0


def test_report_lists_layers_and_sizes(digits):
    _, g, train, _, _ = digits
    text = slimfx.report(g, train[:3])
    for layer in ("conv1", "conv2", "fc", "outputs (int8 program)", "model size"):
        assert layer in text
    sqnrs = [float(line.split()[2]) for line in text.splitlines()
             if line.split()[:1] in (["conv1"], ["conv2"], ["fc"])]
    assert len(sqnrs) == 3 and all(s > 15 for s in sqnrs)


# ----------------------------------------------------------------------------- errors
def test_calibration_errors_are_clear(digits):
    _, g, train, _, _ = digits
    prepared = prepare_ptq(g)
    with pytest.raises(CalibrationError, match="no data"):
        slimfx.calibrate(prepared, [], progress=False)
    bad = train[0].clone()
    bad[0, 0, 0, 0] = math.nan
    with pytest.raises(CalibrationError, match=r"batch 0: input %x has 1 NaN and 0 inf"):
        slimfx.calibrate(prepared, [bad], progress=False)
    with pytest.raises(CalibrationError, match=r"input %x has shape \(3, 1, 8, 8\)"):
        slimfx.calibrate(prepared, [train[0][:3]], progress=False)
    with pytest.raises(CalibrationError, match="insert-observers"):
        slimfx.calibrate(g, train[:1], progress=False)


def test_quantize_errors_are_clear(digits):
    _, g, train, _, _ = digits
    with pytest.raises(QuantizationError, match="no statistics.*calibrate"):
        to_qdq(prepare_ptq(g))
    with pytest.raises(SlimfxError, match="no statistics"):
        Pipeline("ptq-int8,convert-int8")(g)
    with pytest.raises(QuantizationError, match="'conv9', which matches no node.*conv1, conv2, fc"):
        slimfx.quantize(g, train[:1], qconfig=QConfig.preset(exclude=["conv9"]))
    with pytest.raises(QuantizationError, match="not a registered op"):
        QConfig(by_op={"conv3d_typo": None})
    with pytest.raises(QuantizationError, match="needs calibration data"):
        slimfx.quantize(g)


def test_traced_model_quantizes_and_saves(digits, tmp_path):
    from slimfx.ir import load_graph, save_graph

    m, _, train, test, labels = digits
    g = slimfx.trace(m, (test[0],))
    q = slimfx.quantize(g, train[:5])
    assert q.find("qconv2d") and not q.find("conv2d")
    save_graph(q, tmp_path / "digits_int8")
    q2 = load_graph(tmp_path / "digits_int8")
    with torch.no_grad():
        assert torch.equal(slimfx.to_torch(q)(test[0]), slimfx.to_torch(q2)(test[0]))
    assert accuracy(slimfx.to_torch(q), test, labels) >= accuracy(m, test, labels) - 1.0
