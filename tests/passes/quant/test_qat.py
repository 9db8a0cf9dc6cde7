"""Quantization-aware training: the fake_quantize op and kernel, insert-fake-quant,
prepare_qat -> train -> convert, and the bad inputs."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import slimfx
from slimfx.backends.torch import KERNELS
from slimfx.backends.torch.kernels_qat import fake_quantize, lsq_grad_scale
from slimfx.errors import PassError, QuantizationError, VerifyError
from slimfx.ir import Graph, TensorType, parse
from slimfx.passes import Pipeline
from slimfx.passes.context import PassContext
from slimfx.passes.quant import OpQConfig, QConfig, QScheme
from slimfx.passes.quant.api import prepare_ptq
from slimfx.passes.quant.calibrate import calibrate

BATCH = 60
# (dtype, qmin, qmax): int8 affine, int8 symmetric weights, uint8, int4, symmetric int4
RANGES = [("i8", -128, 127), ("i8", -127, 127), ("u8", 0, 255), ("i8", -8, 7), ("i8", -7, 7)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread avoids oversubscription on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _qdq(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, dtype: str, qmin: int,
         qmax: int, axis: int | None) -> torch.Tensor:
    """The QDQ form through the backend's own quantize/dequantize kernels."""
    attrs = dict(dtype=dtype, scale=tuple(scale.tolist()), zero_point=tuple(zp.tolist()),
                 axis=axis, qmin=qmin, qmax=qmax)
    return KERNELS["dequantize"](KERNELS["quantize"](x, **attrs), **attrs)


def _edge_data(scale: float, zp: int, qmin: int, qmax: int, n: int = 4000) -> torch.Tensor:
    """Random values plus exact ties, the clamp edges and beyond, +-inf and NaN."""
    g = torch.Generator().manual_seed(qmax - qmin)
    k = torch.arange(qmin - zp - 3, qmax - zp + 4, dtype=torch.float64)
    special = torch.cat([k * scale, (k + 0.5) * scale, (k - 0.5) * scale,
                         torch.tensor([(qmin - zp - 0.5) * scale, (qmax - zp + 0.5) * scale,
                                       float("inf"), -float("inf"), float("nan"), 0.0, -0.0])])
    rand = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 2.4 * (qmax - qmin) * scale
    return torch.cat([special, rand]).to(torch.float32)


# --------------------------------------------------------------------------- forward
@pytest.mark.parametrize("dtype,qmin,qmax", RANGES)
def test_forward_equals_qdq_per_tensor(dtype, qmin, qmax):
    for scale, zp in [(0.0123456789, (qmin + qmax) // 3), (1 / 3, qmin), (2.0 ** -7, qmax)]:
        x = _edge_data(scale, zp, qmin, qmax)
        s = torch.tensor([scale], dtype=torch.float64)
        z = torch.tensor([zp], dtype=torch.int64)
        got = fake_quantize(x, s, z, qmin=qmin, qmax=qmax)
        want = _qdq(x, s, z, dtype, qmin, qmax, None)
        assert got.dtype == want.dtype == torch.float32
        assert torch.equal(got, want), (scale, zp, (got - want).abs().max())
        # a learnable (float) zero point is rounded half to even, like convert does
        zf = torch.tensor([zp + 0.4], dtype=torch.float32)
        assert torch.equal(fake_quantize(x, s, zf, qmin=qmin, qmax=qmax), want)


@pytest.mark.parametrize("dtype,qmin,qmax", RANGES)
def test_forward_equals_qdq_per_channel(dtype, qmin, qmax):
    g = torch.Generator().manual_seed(1)
    scales = torch.rand(5, generator=g, dtype=torch.float64) * 0.1 + 1e-3
    zps = torch.randint(qmin, qmax + 1, (5,), generator=g)
    if qmin < 0 and qmax == -qmin:
        zps = torch.zeros(5, dtype=torch.int64)
    x = torch.randn(3, 5, 7, generator=g) * 2
    x[0, :, 0] = (torch.tensor(qmax) - zps + 0.5) * scales  # ties at the upper edge
    x[1, :, 1] = (torch.tensor(qmin) - zps) * scales  # exactly the lower edge
    x[2, :, 2] = (torch.arange(5) + 0.5) * scales  # ties inside
    got = fake_quantize(x, scales, zps, qmin=qmin, qmax=qmax, axis=1)
    assert torch.equal(got, _qdq(x, scales, zps, dtype, qmin, qmax, 1))
    got_neg = fake_quantize(x, scales, zps, qmin=qmin, qmax=qmax, axis=-2)
    assert torch.equal(got_neg, got)


@given(data=st.data())
def test_forward_equals_qdq_property(data):
    dtype = data.draw(st.sampled_from(["i8", "u8"]))
    lo, hi = (-128, 127) if dtype == "i8" else (0, 255)
    qmin = data.draw(st.integers(lo, hi - 1))
    qmax = data.draw(st.integers(qmin + 1, hi))
    channels = data.draw(st.sampled_from([None, 1, 3]))
    n = 1 if channels is None else channels
    scales = data.draw(st.lists(st.floats(1e-6, 10.0), min_size=n, max_size=n))
    zps = data.draw(st.lists(st.integers(qmin, qmax), min_size=n, max_size=n))
    seed = data.draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, n, 5, generator=g) * max(scales) * (qmax - qmin)
    k = torch.randint(qmin - 2, qmax + 3, (4, n, 5), generator=g).double()
    s64 = torch.tensor(scales, dtype=torch.float64)
    ties = ((k + 0.5) * s64.reshape(1, -1, 1)).float()
    x = torch.where(torch.rand(4, n, 5, generator=g) < 0.3, ties, x)
    axis = None if channels is None else 1
    got = fake_quantize(x, s64, torch.tensor(zps), qmin=qmin, qmax=qmax, axis=axis)
    assert torch.equal(got, _qdq(x, s64, torch.tensor(zps), dtype, qmin, qmax, axis))


# --------------------------------------------------------------------------- gradients
def test_ste_mask_matches_the_range_and_torch_fake_quantize():
    g = torch.Generator().manual_seed(2)
    for qmin, qmax, zp in [(-128, 127, 3), (0, 255, 128), (-8, 7, 0)]:
        scale = 0.037
        x = (torch.rand(5000, generator=g) - 0.5) * (qmax - qmin) * scale * 1.6
        x.requires_grad_(True)
        fake_quantize(x, torch.tensor([scale], dtype=torch.float64),
                      torch.tensor([zp]), qmin=qmin, qmax=qmax).backward(torch.ones(5000))
        r = torch.round(x.detach() / torch.tensor(scale, dtype=torch.float32)) + zp
        mask = ((r >= qmin) & (r <= qmax)).float()
        assert torch.equal(x.grad, mask)
        assert 0 < mask.sum() < 5000  # both sides of the clamp are exercised
        xt = x.detach().clone().requires_grad_(True)
        torch.fake_quantize_per_tensor_affine(xt, scale, zp, qmin, qmax).backward(
            torch.ones(5000))
        assert torch.equal(x.grad, xt.grad)


def test_ste_per_channel_matches_torch():
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(4, 6, 5, generator=g) * 3).requires_grad_(True)
    scales = torch.rand(6, generator=g) * 0.02 + 0.005
    zps = torch.randint(-20, 20, (6,), generator=g, dtype=torch.int32)
    up = torch.randn(4, 6, 5, generator=g)
    fake_quantize(x, scales.double(), zps.long(), qmin=-128, qmax=127, axis=1).backward(up)
    xt = x.detach().clone().requires_grad_(True)
    torch.fake_quantize_per_channel_affine(xt, scales, zps, 1, -128, 127).backward(up)
    assert torch.equal(x.grad, xt.grad)


@pytest.mark.parametrize("qmin,qmax,zp", [(-128, 127, 5), (0, 255, 100), (-7, 7, 0)])
def test_lsq_gradients_match_torch_learnable_per_tensor(qmin, qmax, zp):
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(2000, generator=g) * 40 * 0.02).requires_grad_(True)
    up = torch.randn(2000, generator=g)
    s = torch.tensor([0.02], dtype=torch.float64, requires_grad=True)
    z = torch.tensor([float(zp)], requires_grad=True)
    fake_quantize(x, s, z, qmin=qmin, qmax=qmax).backward(up)
    factor = lsq_grad_scale(2000, qmax)
    assert factor == pytest.approx(1 / (2000 * qmax) ** 0.5)
    xt = x.detach().clone().requires_grad_(True)
    st = torch.tensor([0.02], requires_grad=True)
    zt = torch.tensor([float(zp)], requires_grad=True)
    torch._fake_quantize_learnable_per_tensor_affine(xt, st, zt, qmin, qmax, factor).backward(up)
    assert torch.equal(x.grad, xt.grad)
    assert s.grad.dtype == torch.float64 and s.grad.shape == (1,)
    torch.testing.assert_close(s.grad.float(), st.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(z.grad, zt.grad, rtol=1e-4, atol=1e-7)


def test_lsq_gradients_match_torch_learnable_per_channel():
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(8, 3, 3, 3, generator=g)).requires_grad_(True)
    up = torch.randn(8, 3, 3, 3, generator=g)
    scales = torch.rand(8, generator=g) * 0.01 + 0.004
    s = scales.double().requires_grad_(True)
    fake_quantize(x, s, torch.zeros(8, dtype=torch.int64), qmin=-127, qmax=127,
                  axis=0).backward(up)
    st = scales.clone().requires_grad_(True)
    zt = torch.zeros(8)
    xt = x.detach().clone().requires_grad_(True)
    torch._fake_quantize_learnable_per_channel_affine(
        xt, st, zt, 0, -127, 127, lsq_grad_scale(27, 127)).backward(up)
    assert torch.equal(x.grad, xt.grad)
    torch.testing.assert_close(s.grad.float(), st.grad, rtol=1e-4, atol=1e-6)


def test_lsq_scale_gradient_against_finite_differences():
    # d/ds of the real function is round(x/s) inside the range (piecewise), qmin-z / qmax-z
    # outside; LSQ adds the straight-through term -x/s for the elements inside.
    g = torch.Generator().manual_seed(6)
    scale, zp, qmin, qmax = 0.05, 2, -128, 127
    u = torch.randint(-150, 150, (3000,), generator=g).double()
    frac = torch.rand(3000, generator=g, dtype=torch.float64) * 0.6 - 0.3  # away from ties
    x = ((u + frac) * scale).float()
    c = torch.randn(3000, generator=g, dtype=torch.float64)
    z = torch.tensor([zp])

    def loss(s: float) -> float:
        y = fake_quantize(x, torch.tensor([s], dtype=torch.float64), z, qmin=qmin, qmax=qmax)
        return float((c * y.double()).sum())

    s = torch.tensor([scale], dtype=torch.float64, requires_grad=True)
    (c * fake_quantize(x, s, z, qmin=qmin, qmax=qmax).double()).sum().backward()
    eps = scale * 1e-4
    fd = (loss(scale + eps) - loss(scale - eps)) / (2 * eps)
    r = torch.round(x.double() / scale) + zp
    inside = (r >= qmin) & (r <= qmax)
    ste = float((c * inside * x.double() / scale).sum())
    assert 0 < int(inside.sum()) < 3000
    got = float(s.grad) / lsq_grad_scale(3000, qmax)
    assert got == pytest.approx(fd - ste, rel=2e-3, abs=1e-2)


# --------------------------------------------------------------------------- the op in the IR
def _fq_graph(scales: int, attrs: dict) -> Graph:
    g = Graph("fq")
    x = g.add_input("x", TensorType((2, 3)))
    s = g.add_constant(torch.full((scales,), 0.1, dtype=torch.float64), "s")
    z = g.add_constant(torch.zeros(scales, dtype=torch.int64), "z")
    g.set_outputs([g.add("fake_quantize", [x, s, z], attrs)])
    g.verify()
    return g


def test_fake_quantize_op_checks_its_operands():
    with pytest.raises((VerifyError, ValueError, TypeError), match="scale"):
        _fq_graph(2, dict(axis=1))  # 2 scales for 3 channels
    with pytest.raises((VerifyError, ValueError, TypeError), match="does not fit"):
        _fq_graph(1, dict(dtype="u8", qmin=-1, qmax=255))
    g = _fq_graph(3, dict(axis=1, qmin=-8, qmax=7))
    assert "fake_quantize(%x, %s, %z) {dtype=\"i8\", qmin=-8, qmax=7, axis=1" in str(g)
    x = torch.randn(2, 3)
    assert torch.equal(slimfx.to_torch(g)(x), fake_quantize(
        x, torch.full((3,), 0.1, dtype=torch.float64), torch.zeros(3), qmin=-8, qmax=7, axis=1))


_OBS = ('kind="minmax", method="minmax", axis={axis}, dtype="i8", qmin={lo}, qmax=127, '
        'symmetric={sym}, averaging_constant=0.01, percentile=99.99, bins=2048, ')
_FQ = 'dtype="i8", qmin={lo}, qmax=127, axis={axis}, learn_scale=false, learn_zero_point=false'
GOLDEN_BEFORE = f"""graph @lin(%x: f32[4,3]) {{
  const %fc.weight : f32[2,3] = dense<[0.5,-0.25,1.0,-1.0,0.75,0.125]>
  const %fc.bias : f32[2] = dense<[0.5,-0.5]>
  %x.obs = observer(%x) {{{_OBS.format(axis="none", lo=-128, sym="false")}\
min_val=[-1.0], max_val=[2.75]}} : f32[4,3]
  %fc.weight.obs = observer(%fc.weight) {{{_OBS.format(axis=0, lo=-127, sym="true")}\
min_val=none, max_val=none}} : f32[2,3]
  %fc = linear(%x.obs, %fc.weight.obs, %fc.bias) {{act_min=none, act_max=none}} : f32[4,2]
  %fc.obs = observer(%fc) {{{_OBS.format(axis="none", lo=-128, sym="false")}\
min_val=[-0.5], max_val=[3.5]}} : f32[4,2]
  return %fc.obs
}}"""
# x: scale 3.75/255, zp -128 - round(-1/scale) = -60; weight: max|w| per row / 127;
# fc: scale 4/255, zp -128 + round(0.5/scale) = -96
GOLDEN_AFTER = f"""graph @lin(%x: f32[4,3]) {{
  const %fc.weight : f32[2,3] = dense<[0.5,-0.25,1.0,-1.0,0.75,0.125]>
  const %fc.bias : f32[2] = dense<[0.5,-0.5]>
  const %x.fq_scale : f64[1] = dense<[0.014705882352941176]>
  const %x.fq_zero_point : i64[1] = dense<[-60]>
  const %fc.weight.fq_scale : f64[2] = dense<[0.007874015748031496,0.007874015748031496]>
  const %fc.weight.fq_zero_point : i64[2] = dense<[0,0]>
  const %fc.fq_scale : f64[1] = dense<[0.01568627450980392]>
  const %fc.fq_zero_point : i64[1] = dense<[-96]>
  %x.fq = fake_quantize(%x, %x.fq_scale, %x.fq_zero_point) {{{_FQ.format(lo=-128, axis="none")}\
}} : f32[4,3]
  %fc.weight.fq = fake_quantize(%fc.weight, %fc.weight.fq_scale, %fc.weight.fq_zero_point) \
{{{_FQ.format(lo=-127, axis=0)}}} : f32[2,3]
  %fc = linear(%x.fq, %fc.weight.fq, %fc.bias) {{act_min=none, act_max=none}} : f32[4,2]
  %fc.fq = fake_quantize(%fc, %fc.fq_scale, %fc.fq_zero_point) \
{{{_FQ.format(lo=-128, axis="none")}}} : f32[4,2]
  return %fc.fq
}}
"""


def test_insert_fake_quant_golden():
    before = parse(GOLDEN_BEFORE)
    after = Pipeline("insert-fake-quant")(before)
    assert str(after) == GOLDEN_AFTER
    assert str(parse(str(after))) == GOLDEN_AFTER  # the text form round trips
    # converting gives exactly the QDQ form quantize-dequantize gives the observers
    want = Pipeline("quantize-dequantize")(before)
    assert str(slimfx.convert(after, form="qdq")) == str(want)
    x = torch.linspace(-1.5, 3, 12).reshape(4, 3)
    assert torch.equal(slimfx.to_torch(after)(x), slimfx.to_torch(want)(x))
    # uncalibrated activation observers are refused
    with pytest.raises(PassError, match="calibrate"):
        Pipeline("insert-fake-quant")(parse(GOLDEN_BEFORE.replace(
            "min_val=[-1.0], max_val=[2.75]", "min_val=none, max_val=none")))


def test_qscheme_range_must_fit_its_dtype():
    with pytest.raises(QuantizationError, match="does not fit"):
        QScheme(qmin=-200, qmax=127)
    with pytest.raises(QuantizationError, match="does not fit"):
        QScheme(dtype="u8")  # the default range [-128, 127] is not unsigned
    assert QScheme(qmin=-8, qmax=7).qmax == 7  # 4-bit ranges are fine


# --------------------------------------------------------------------------- digits end to end
@pytest.fixture(scope="module")
def digits():
    from slimfx.models.digits import pretrained_digits_cnn

    model, data = pretrained_digits_cnn()
    g = slimfx.trace(model, (data.x_test[:BATCH],))
    train = list(data.x_train[:1380].split(BATCH))
    test = list(data.x_test.split(BATCH))
    return model, g, data, train, test


def _accuracy(fn, batches, labels) -> float:
    with torch.no_grad():
        pred = torch.cat([torch.as_tensor(fn(b)).argmax(1) for b in batches])
    return float((pred == labels).float().mean()) * 100


def test_placement_equals_insert_observers(digits):
    _, g, _, train, _ = digits
    observed = prepare_ptq(g)
    calibrate(observed, train[:4], progress=False)
    gq = slimfx.prepare_qat(g, train[:4])
    obs = [(n.inputs[0].name, n.attrs["axis"], n.attrs["qmin"], n.attrs["qmax"])
           for n in observed.find("observer")]
    fqs = [(n.inputs[0].name, n.attrs["axis"], n.attrs["qmin"], n.attrs["qmax"])
           for n in gq.find("fake_quantize")]
    assert fqs == obs and len(fqs) >= 9  # the input, 4 weights, the results
    ops_obs = [n.op.name.replace("observer", "fq") for n in observed.nodes]
    ops_fq = [n.op.name.replace("fake_quantize", "fq") for n in gq.nodes]
    assert ops_fq == ops_obs


def test_convert_without_training_equals_ptq(digits):
    _, g, _, train, test = digits
    gq = slimfx.prepare_qat(g, train[:4])
    for form in ("int8", "qdq"):
        got = slimfx.convert(gq, form=form)
        want = slimfx.quantize(g, train[:4], form=form)
        assert str(got) == str(want)
        assert set(got.constants) == set(want.constants)
        for name, v in want.constants.items():
            assert torch.equal(got.constants[name].const, v.const), name
        for a, b in zip(got.nodes, want.nodes, strict=True):
            assert a.attrs == b.attrs and a.output.qparams == b.output.qparams
        assert torch.equal(slimfx.to_torch(got)(test[0]), slimfx.to_torch(want)(test[0]))
    # the module of the untrained graph converts to the same program
    assert str(slimfx.convert(slimfx.to_torch(gq))) == str(slimfx.quantize(g, train[:4]))


def test_to_torch_of_a_qat_graph_is_trainable(digits):
    _, g, _, train, _ = digits
    gq = slimfx.prepare_qat(g, train[:2], learn_scales=True)
    m = slimfx.to_torch(gq)
    params = dict(m.named_parameters())
    assert all(p.requires_grad for p in params.values())
    scales = [n for n in params if n.endswith("fq_scale")]
    assert len(scales) == len(gq.find("fake_quantize"))
    assert not any(n.endswith("fq_zero_point") for n in params)  # fixed: buffers
    m.train()
    loss = F.cross_entropy(m(train[0]), torch.zeros(BATCH, dtype=torch.int64))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params.values())
    m.eval()
    # wrappers (DataParallel, DistributedDataParallel) are looked through
    assert str(slimfx.convert(torch.nn.DataParallel(m))) == str(slimfx.convert(m))
    fixed = slimfx.to_torch(slimfx.prepare_qat(g, train[:2]))
    assert not any(n.endswith("fq_scale") for n, _ in fixed.named_parameters())


def test_prepared_graph_saves_and_loads(digits, tmp_path):
    from slimfx.ir.serialize import load_graph, save_graph

    _, g, _, train, test = digits
    gq = slimfx.prepare_qat(g, train[:2], learn_scales=True, learn_zero_points=True)
    save_graph(gq, tmp_path / "qat.slimg")
    back = load_graph(tmp_path / "qat.slimg")
    assert str(back) == str(gq)
    assert torch.equal(slimfx.to_torch(back)(test[0]), slimfx.to_torch(gq)(test[0]))
    assert str(slimfx.convert(back)) == str(slimfx.convert(gq))


def _train(m: torch.nn.Module, data, steps: int, lr: float, scale_lr: float = 0.0) -> None:
    scales = [p for n, p in m.named_parameters() if n.endswith("fq_scale")]
    rest = [p for n, p in m.named_parameters() if not n.endswith("fq_scale")]
    groups = [{"params": rest, "lr": lr}] + ([{"params": scales, "lr": scale_lr}]
                                             if scales else [])
    opt = torch.optim.Adam(groups)
    gen = torch.Generator().manual_seed(0)
    m.train()
    for _ in range(steps):
        idx = torch.randint(0, len(data.y_train), (BATCH,), generator=gen)
        loss = F.cross_entropy(m(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()


def test_qat_on_digits_trains_and_converts(digits):
    model, g, data, train, test = digits
    fp32 = _accuracy(model, test, data.y_test)
    ptq = _accuracy(slimfx.to_torch(slimfx.quantize(g, train[:8])), test, data.y_test)
    m = slimfx.to_torch(slimfx.prepare_qat(g, train[:8]))
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    _train(m, data, steps=300, lr=1e-4)
    assert any(not torch.equal(p, before[n]) for n, p in m.named_parameters())
    with torch.no_grad():
        trained = [m(b) for b in test]
    # the QDQ form of the trained module computes exactly what it computes
    gqdq = slimfx.convert(m, form="qdq")
    mq = slimfx.to_torch(gqdq)
    assert all(torch.equal(mq(b), y) for b, y in zip(test, trained, strict=True))
    g8 = slimfx.convert(m)
    assert not g8.find("fake_quantize") and g8.find("qconv2d") and g8.find("qlinear")
    qat = _accuracy(slimfx.to_torch(g8), test, data.y_test)
    print(f"digits accuracy: fp32 {fp32:.2f}%, PTQ int8 {ptq:.2f}%, QAT int8 {qat:.2f}% "
          "(300 Adam steps)")
    assert qat >= ptq - 1.0
    assert qat >= fp32 - 1.5


def test_qat_recovers_low_bit_weights(digits):
    # 3-bit weights ([-3, 3], an integer range of the same int8 contract): post-training
    # quantization loses accuracy, training through the fake quantization wins it back
    _, g, data, train, test = digits
    w3 = QScheme(qmin=-3, qmax=3, symmetric=True, per_channel=True)
    cfg = QConfig(OpQConfig(weight=w3))
    ptq = _accuracy(slimfx.to_torch(slimfx.quantize(g, train[:8], qconfig=cfg)), test,
                    data.y_test)
    m = slimfx.to_torch(slimfx.prepare_qat(g, train[:8], cfg))
    _train(m, data, steps=150, lr=1e-3)
    g8 = slimfx.convert(m)
    w = [v.const for v in g8.constants.values() if v.dtype == "i8"]
    assert w and all(int(t.abs().max()) <= 3 for t in w)
    qat = _accuracy(slimfx.to_torch(g8), test, data.y_test)
    print(f"digits W3A8: PTQ {ptq:.2f}%, QAT {qat:.2f}% (150 Adam steps)")
    assert qat >= ptq + 1.0


def test_learned_scales_are_written_back(digits):
    _, g, data, train, test = digits
    m = slimfx.to_torch(slimfx.prepare_qat(g, train[:4], learn_scales=True,
                                           learn_zero_points=True))
    start = {n: p.detach().clone() for n, p in m.named_parameters() if "fq_" in n}
    _train(m, data, steps=20, lr=1e-4, scale_lr=1e-5)
    moved = [n for n, p in m.named_parameters() if "fq_" in n and not torch.equal(p, start[n])]
    assert any(n.endswith("fq_scale") for n in moved)
    assert any(n.endswith("fq_zero_point") for n in start)
    assert not any("weight" in n and n.endswith("fq_zero_point") for n in start)  # symmetric
    gqdq = slimfx.convert(m, form="qdq")
    with torch.no_grad():
        assert torch.equal(slimfx.to_torch(gqdq)(test[0]), m(test[0]))
    g8 = slimfx.convert(m)
    assert len(g8.find("qconv2d")) == 3 and len(g8.find("qlinear")) == 1  # nothing left float
    assert _accuracy(slimfx.to_torch(g8), test, data.y_test) > 80
    # a scale trained to a negative value is refused, naming the node
    with torch.no_grad():
        next(p for n, p in m.named_parameters() if n.endswith("fq_scale")).fill_(-1.0)
    with pytest.raises(QuantizationError, match="trained quantization parameters"):
        slimfx.convert(m)


@pytest.mark.tvm
@pytest.mark.skipif(importlib.util.find_spec("tvm") is None, reason="needs apache-tvm")
def test_converted_qat_program_compiles_bit_exact(digits):
    _, g, data, train, test = digits
    m = slimfx.to_torch(slimfx.prepare_qat(g, train[:4]))
    _train(m, data, steps=30, lr=1e-4)
    g8 = slimfx.convert(m)
    c = slimfx.compile(g8, "x86")
    ref = slimfx.to_torch(g8)
    for b in test:
        assert torch.equal(torch.as_tensor(c(b)), ref(b))


# --------------------------------------------------------------------------- pipelines
def test_qat_int8_pipeline(digits):
    _, g, _, train, _ = digits
    ctx = PassContext()
    ctx.data = train[:4]  # type: ignore[attr-defined]
    got = Pipeline("qat-int8").run(g.clone(), ctx).graph
    assert str(got) == str(slimfx.prepare_qat(g, train[:4]))
    assert [p.name for p in Pipeline("qat-int8").passes][-3:] == [
        "insert-observers", "calibrate", "insert-fake-quant"]  # calibration is a visible pass
    with pytest.raises(PassError, match="prepare_qat"):
        Pipeline("qat-int8")(g)  # no data to calibrate on
    with pytest.raises(QuantizationError, match="prepare_qat"):
        slimfx.quantize(g, train[:4], "qat-int8")
    with pytest.raises(PassError, match="insert-observers"):
        Pipeline("insert-fake-quant")(g)


# --------------------------------------------------------------------------- bad input
def test_bad_input(digits):
    model, g, _, train, _ = digits
    with pytest.raises(QuantizationError, match="prepare_qat"):
        slimfx.convert(g)  # a float graph
    with pytest.raises(QuantizationError, match="prepare_qat"):
        slimfx.convert(slimfx.to_torch(g))  # the module of a float graph
    with pytest.raises(QuantizationError, match="not a module built by slimfx.to_torch"):
        slimfx.convert(model)
    with pytest.raises(QuantizationError, match="got str"):
        slimfx.convert("model.pt")
    g8 = slimfx.quantize(g, train[:2])
    with pytest.raises(QuantizationError, match="already quantized"):
        slimfx.convert(g8)
    with pytest.raises(QuantizationError, match="already quantized"):
        slimfx.prepare_qat(g8, train[:2])
    with pytest.raises(QuantizationError, match="already quantized or prepared"):
        slimfx.prepare_qat(slimfx.prepare_qat(g, train[:2]), train[:2])
    with pytest.raises(QuantizationError, match="calibration data"):
        slimfx.prepare_qat(g)
    with pytest.raises(QuantizationError, match="trace it first"):
        slimfx.prepare_qat(model, train[:2])
    with pytest.raises(QuantizationError, match="qconfig must be a QConfig"):
        slimfx.prepare_qat(g, train[:2], qconfig="x86")
    with pytest.raises(QuantizationError, match="selects no node"):
        slimfx.prepare_qat(g, train[:2], qconfig=QConfig(default=None))
    with pytest.raises(QuantizationError, match="form"):
        slimfx.convert(slimfx.prepare_qat(g, train[:2]), form="int4")


def test_public_names():
    for name in ("prepare_qat", "convert", "QConfig", "QScheme", "OpQConfig"):
        assert name in slimfx.__all__ and getattr(slimfx, name) is not None
