"""equalize-cross-layer: golden IR, exact float numerics, equalized ranges, refusals, and
the accuracy it recovers for per-tensor int8 on a MobileNetV2-style model."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import slimfx
from slimfx.ir import Graph, TensorType
from slimfx.models.mobilenet import InvertedResidual
from slimfx.passes import PassContext, Pipeline
from slimfx.passes.quant.equalize_cross_layer import (
    EqualizeCrossLayer,
    absorb_bias,
    candidate_pairs,
    check_pair,
    divide_output_channels,
    equalize_cross_layer,
    input_channel_ranges,
    output_channel_ranges,
    scale_input_channels,
)
from slimfx.passes.quant.report import sqnr
from tests.passes.pass_helpers import assert_same_outputs, ir_from_sequential, roundtrip, run_graph

BEFORE = """\
graph @main(%x: f32[1,3,8,8]) {
  const %c1.weight : f32[4,3,3,3]
  const %c1.bias : f32[4]
  const %c2.weight : f32[5,4,1,1]
  const %c2.bias : f32[5]
  %c1 = conv2d(%x, %c1.weight, %c1.bias) {stride=[1,1], padding=[1,1], dilation=[1,1], groups=1, act_min=none, act_max=none} : f32[1,4,8,8]
  %relu = relu(%c1) : f32[1,4,8,8]
  %c2 = conv2d(%relu, %c2.weight, %c2.bias) {stride=[1,1], padding=[0,0], dilation=[1,1], groups=1, act_min=none, act_max=none} : f32[1,5,8,8]
  return %c2
}
"""

@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny convs: one thread avoids oversubscription on a busy machine (10x here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


AFTER = """\
graph @main(%x: f32[1,3,8,8]) {
  const %c2.bias : f32[5]
  const %c1.weight_equalized : f32[4,3,3,3]
  const %c1.bias_equalized : f32[4]
  const %c2.weight_equalized : f32[5,4,1,1]
  %c1 = conv2d(%x, %c1.weight_equalized, %c1.bias_equalized) {stride=[1,1], padding=[1,1], dilation=[1,1], groups=1, act_min=none, act_max=none} : f32[1,4,8,8]
  %relu = relu(%c1) : f32[1,4,8,8]
  %c2 = conv2d(%relu, %c2.weight_equalized, %c2.bias) {stride=[1,1], padding=[0,0], dilation=[1,1], groups=1, act_min=none, act_max=none} : f32[1,5,8,8]
  return %c2
}
"""


def uneven_(model: nn.Module, seed: int = 0, lo: float = 0.01, hi: float = 10.0) -> nn.Module:
    """Scales each output channel of each conv/linear by a random factor in [lo, hi]."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            n = m.weight.shape[0]
            f = torch.exp(torch.empty(n).uniform_(math.log(lo), math.log(hi), generator=gen))
            m.weight.data *= f.reshape(-1, *([1] * (m.weight.dim() - 1)))
            if m.bias is not None:
                m.bias.data *= f
    return model.eval()


def conv_relu_conv() -> nn.Sequential:
    torch.manual_seed(0)
    return uneven_(nn.Sequential(OrderedDict(c1=nn.Conv2d(3, 4, 3, padding=1), relu=nn.ReLU(),
                                             c2=nn.Conv2d(4, 5, 1))))


def weight(g: Graph, node: str) -> torch.Tensor:
    w = g.node(node).inputs[1].const
    assert w is not None
    return w


def test_golden_numerics_and_ranges() -> None:
    model = conv_relu_conv()
    g = ir_from_sequential(model, (1, 3, 8, 8))
    assert g.format(inline_limit=0) == BEFORE
    out = Pipeline("equalize-cross-layer,dce")(g)
    assert out.format(inline_limit=0) == AFTER
    roundtrip(out)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert_same_outputs(run_graph(out, x), model(x), atol=1e-5)
    r1, r2 = output_channel_ranges(weight(out, "c1")), input_channel_ranges(weight(out, "c2"))
    torch.testing.assert_close(r1, r2, rtol=1e-5, atol=0)  # r1_i / s_i == r2_i * s_i
    again = Pipeline("equalize-cross-layer").run(out, PassContext())
    assert not again.changed  # idempotent: an equalized graph is left as it is
    before = output_channel_ranges(weight(g, "c1"))
    assert float(before.max() / before.min()) > 10  # the test model is uneven ...
    assert float(r1.max() / r1.min()) < float(before.max() / before.min())  # ... and no more


def test_depthwise_chain_fused_converges() -> None:
    """conv1x1 -> relu -> dw3x3 -> relu -> conv1x1 (MobileNetV2), relus fused first."""
    torch.manual_seed(1)
    model = uneven_(nn.Sequential(OrderedDict(
        expand=nn.Conv2d(4, 12, 1), r1=nn.ReLU(), dw=nn.Conv2d(12, 12, 3, padding=1, groups=12),
        r2=nn.ReLU(), project=nn.Conv2d(12, 6, 1, bias=False))), seed=1)
    g = Pipeline("fuse-activation,dce")(ir_from_sequential(model, (2, 4, 6, 6)))
    out = g.clone()
    res = equalize_cross_layer(out)
    assert res.pairs == [("expand", "dw"), ("dw", "project")]
    assert res.iterations > 1 and not res.refusals
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        assert_same_outputs(run_graph(out, x), model(x), atol=1e-5)
    dw = weight(out, "dw")
    torch.testing.assert_close(output_channel_ranges(weight(out, "expand")),
                               input_channel_ranges(dw, groups=12), rtol=1e-4, atol=0)
    torch.testing.assert_close(output_channel_ranges(dw),
                               input_channel_ranges(weight(out, "project")), rtol=1e-4, atol=0)


def test_linear_pair_and_no_bias() -> None:
    torch.manual_seed(2)
    model = uneven_(nn.Sequential(OrderedDict(fc1=nn.Linear(6, 8, bias=False), act=nn.ReLU(),
                                              fc2=nn.Linear(8, 3))), seed=2)
    g = ir_from_sequential(model, (4, 6))
    out = EqualizeCrossLayer()(g)
    x = torch.randn(4, 6)
    with torch.no_grad():
        assert_same_outputs(run_graph(out, x), model(x), atol=1e-5)
    torch.testing.assert_close(output_channel_ranges(weight(out, "fc1")),
                               input_channel_ranges(weight(out, "fc2")), rtol=1e-5, atol=0)
    assert len(out.node("fc1").inputs) == 2  # no bias was added


def test_relu6_refused_or_replaced() -> None:
    torch.manual_seed(3)
    model = uneven_(nn.Sequential(OrderedDict(c1=nn.Conv2d(3, 4, 1), act=nn.ReLU6(),
                                              c2=nn.Conv2d(4, 2, 1))), seed=3)
    g = ir_from_sequential(model, (1, 3, 4, 4))
    res = equalize_cross_layer(g.clone())
    assert not res.pairs
    assert res.reasons("c1") == [
        "%act is a ReLU6, which is not positively homogeneous (relu6(x / s) != relu6(x) / s); "
        "use relu6=relu to replace it by ReLU as Nagel et al. do (this changes the float "
        "function above 6)"]
    fused = Pipeline("fuse-activation")(g)
    ctx = PassContext()
    unchanged = Pipeline("equalize-cross-layer").run(fused.clone(), ctx)
    assert not unchanged.changed
    assert "the activation fused into %c1 is a ReLU6" in str(ctx.refusals[0])
    replaced = Pipeline("equalize-cross-layer{relu6=relu},dce")(g)
    assert [n.op.name for n in replaced.nodes] == ["conv2d", "relu", "conv2d"]
    assert Pipeline("equalize-cross-layer{relu6=relu}")(fused).node("c1").attrs["act_max"] is None
    relu_model = nn.Sequential(model.c1, nn.ReLU(), model.c2)
    x = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        assert_same_outputs(run_graph(replaced, x), relu_model(x), atol=1e-5)


def _conv(g: Graph, x, w, name: str):  # noqa: ANN001, ANN202
    attrs = dict(stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1)
    return g.add("conv2d", [x, w], attrs, name=name)


def test_refusals_shared_weight_other_users_bn_clamp() -> None:
    torch.manual_seed(4)
    g = Graph()
    x = g.add_input("x", TensorType((1, 4, 3, 3)))
    wa = g.add_constant(torch.randn(4, 4, 1, 1), "wa")
    wb = g.add_constant(torch.randn(4, 4, 1, 1), "wb")
    y = g.add("relu", [_conv(g, x, wa, "c1")], name="r1")
    y = _conv(g, _conv(g, y, wb, "c2"), wb, "c3")  # c2 and c3 share %wb
    g.set_outputs([y])
    g.verify()
    res = equalize_cross_layer(g)
    assert not res.pairs
    assert res.reasons("c1") == ["the weight %wb of %c2 is shared with %c3; scaling it would "
                                 "change that node too"]
    assert res.reasons("c2") == ["the weight %wb of %c2 is shared with %c3; scaling it would "
                                 "change that node too"]

    g = Graph()
    x = g.add_input("x", TensorType((1, 4, 3, 3)))
    c1 = _conv(g, x, g.add_constant(torch.randn(4, 4, 1, 1), "w1"), "c1")
    clamp = g.add("clamp", [c1], dict(min=-1.0, max=None), name="clamp")
    c2 = _conv(g, clamp, g.add_constant(torch.randn(4, 4, 1, 1), "w2"), "c2")
    bn = g.add("batch_norm", [c2] + [g.add_constant(t, f"bn.{i}") for i, t in
                                     enumerate([torch.zeros(4), torch.ones(4)])],
               dict(eps=1e-5), name="bn")
    c3 = _conv(g, bn, g.add_constant(torch.randn(4, 4, 1, 1), "w3"), "c3")
    c4 = _conv(g, c3, g.add_constant(torch.randn(4, 4, 1, 1), "w4"), "c4")
    g.set_outputs([c4, c3])
    g.verify()
    res = equalize_cross_layer(g)
    assert not res.pairs
    assert res.reasons("c1") == ["%clamp clamps at -1.0, which is not positively homogeneous "
                                 "(f(x / s) != f(x) / s); only none and relu are"]
    assert res.reasons("bn") == ["%bn is a batch_norm before %c3; run fold-bn first"]
    assert res.reasons("c3") == ["the result %c3 of %c3 is also used by the graph outputs; "
                                 "scaling its channels would change what they see"]


def _bn_relu_conv(act: nn.Module, second: nn.Module) -> nn.Sequential:
    torch.manual_seed(5)
    m = nn.Sequential(OrderedDict(c1=nn.Conv2d(3, 4, 3, padding=1), bn=nn.BatchNorm2d(4),
                                  act=act, c2=second))
    with torch.no_grad():  # pre-activations ~ N(beta, gamma^2) with beta >> 3 gamma ...
        m.bn.running_var.fill_(1e4)  # ... for these inputs: bn(x) ~ beta exactly
        m.bn.weight.copy_(torch.tensor([1.0, 0.5, 2.0, 1.0]))
        m.bn.bias.copy_(torch.tensor([10.0, 0.5, 8.0, -1.0]))
    return m.eval()


@pytest.mark.parametrize("second", [lambda: nn.Conv2d(4, 5, 1, bias=False),
                                    lambda: nn.Conv2d(4, 4, 3, groups=4),
                                    lambda: nn.Conv2d(4, 8, 1, groups=2)],
                         ids=["conv1x1-nobias", "depthwise", "grouped"])
def test_absorb_bias(second) -> None:  # noqa: ANN001
    model = _bn_relu_conv(nn.ReLU(), second())
    g = ir_from_sequential(model, (2, 3, 6, 6))
    absorbed = g.clone()
    got = absorb_bias(absorbed)
    assert got.pairs == [("bn", "c2")]
    c = torch.tensor([10.0 - 3, 0.0, 8.0 - 6, 0.0])  # max(0, beta - 3 |gamma|)
    torch.testing.assert_close(got.scales["bn"], c.double())
    torch.testing.assert_close(absorbed.node("bn").inputs[4].const, model.bn.bias.detach() - c)
    ctx = PassContext()
    res = Pipeline("absorb-bias,fold-bn,dce").run(g.clone(), ctx)
    assert res.changed and not ctx.refusals
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():  # exact here: every pre-activation is above c, no padding
        assert_same_outputs(run_graph(res.graph, x), model(x), atol=1e-4)


def test_absorb_bias_refuses_relu6() -> None:
    g = ir_from_sequential(_bn_relu_conv(nn.ReLU6(), nn.Conv2d(4, 2, 1)), (1, 3, 4, 4))
    ctx = PassContext()
    assert not Pipeline("absorb-bias").run(g, ctx).changed
    assert [str(r) for r in ctx.refusals] == [
        "absorb-bias did not fire at %bn: %act is not a ReLU: relu6(x - c) != relu6(x) - c "
        "above 6, and a clamp does not commute with the shift either"]


def test_named_pipeline() -> None:
    names = [p.name for p in Pipeline("ptq-int8-cle").passes]
    assert names[names.index("fold-bn"):] == ["fold-bn", "fuse-activation", "dce",
                                              "equalize-cross-layer", "dce", "insert-observers"]
    g = ir_from_sequential(conv_relu_conv(), (1, 3, 8, 8))
    data = [torch.randn(1, 3, 8, 8) for _ in range(2)]
    g8 = slimfx.quantize(g, data, "ptq-int8-cle")
    assert g8.find("qconv2d") and not g8.find("observer")
    # the same integer program as the passes spelled out
    spelled = slimfx.quantize(g, data, "fuse-activation,equalize-cross-layer,dce,"
                                       "insert-observers")
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(run_graph(g8, x), run_graph(spelled, x))


# ------------------------------------------------------------------ the headline figure
class MiniMobileNetV2(nn.Module):
    """A stem and four of the zoo's MobileNetV2 inverted residual blocks (width 16-24), with
    ReLU for ReLU6 (as Nagel et al. do before equalizing), for 32x32 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())
        self.features = nn.Sequential(InvertedResidual(16, 8, 1, 1), InvertedResidual(8, 16, 2, 6),
                                      InvertedResidual(16, 16, 1, 6),
                                      InvertedResidual(16, 24, 2, 6))
        self.head = nn.Linear(24, 10)
        for mod in list(self.modules()):
            for name, child in mod.named_children():
                if isinstance(child, nn.ReLU6):
                    setattr(mod, name, nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(self.stem(x)), 1)
        return self.head(x.flatten(1))


def _unequalize(g: Graph, gen: torch.Generator) -> None:
    """The inverse of CLE with random factors in [0.01, 10]: W1 rows * f, b1 * f, W2 cols / f.

    It changes nothing in float (the test checks), but gives the folded weights the uneven
    per-channel ranges of a trained MobileNetV2, which a random init lacks.
    """
    for first, act, second in candidate_pairs(g):
        if check_pair(first, act, second) is not None:
            continue
        w1 = weight(g, first.name)
        f = torch.exp(torch.empty(w1.shape[0]).uniform_(math.log(0.01), math.log(10),
                                                         generator=gen))
        first.replace_input(1, g.add_constant(divide_output_channels(w1, 1 / f), "w1_uneven"))
        if len(first.inputs) > 2:
            b = first.inputs[2].const
            assert b is not None
            first.replace_input(2, g.add_constant(b * f, "b1_uneven"))
        groups = second.attrs.get("groups", 1)
        second.replace_input(1, g.add_constant(
            scale_input_channels(weight(g, second.name), 1 / f, groups), "w2_uneven"))


def _output_sqnr(ref: Graph, g: Graph, batches: list[torch.Tensor]) -> float:
    a, b = slimfx.to_torch(ref, trainable=False), slimfx.to_torch(g, trainable=False)
    signal = noise = 0.0
    with torch.no_grad():
        for x in batches:
            fa, fb = a(x).double(), b(x).double()
            signal += float((fa ** 2).sum())
            noise += float(((fa - fb) ** 2).sum())
    return sqnr(signal, noise)


@pytest.fixture(scope="module")
def mobilenet_uneven() -> tuple[Graph, list[torch.Tensor], list[torch.Tensor]]:
    torch.manual_seed(0)
    model = MiniMobileNetV2().eval()
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5, generator=gen)
            m.bias.data.normal_(0, 0.2, generator=gen)
            m.running_mean.normal_(0, 0.1, generator=gen)
            m.running_var.uniform_(0.5, 1.5, generator=gen)
    x = torch.randn(8, 3, 32, 32, generator=gen)
    g = Pipeline("remove-identity,fold-bn,fuse-activation,dce")(slimfx.trace(model, (x,)))
    _unequalize(g, gen)
    g = Pipeline("dce")(g)
    with torch.no_grad():
        assert_same_outputs(run_graph(g, x), model(x), atol=1e-4)
    calib = [torch.randn(8, 3, 32, 32, generator=gen) for _ in range(4)]
    test = [torch.randn(8, 3, 32, 32, generator=gen) for _ in range(4)]
    return g, calib, test


def test_mobilenet_v2_per_tensor_recovered(mobilenet_uneven) -> None:  # noqa: ANN001
    g, calib, test = mobilenet_uneven
    cle = g.clone()
    res = equalize_cross_layer(cle)
    assert len(res.pairs) >= 8
    # an exact reparametrisation: the float graph computes the same function
    assert _output_sqnr(g, cle, test) > 100
    per_tensor = "insert-observers{weights=per-tensor}"
    figures = {
        "per-tensor": slimfx.quantize(g, calib, per_tensor),
        "per-tensor+cle": slimfx.quantize(g, calib, "equalize-cross-layer,dce," + per_tensor),
        "per-channel": slimfx.quantize(g, calib, "insert-observers"),
    }
    db = {k: _output_sqnr(g, v, test) for k, v in figures.items()}
    print("output SQNR vs float (dB):", {k: round(v, 1) for k, v in db.items()})
    # measured: per-tensor 11.0, per-tensor + CLE 43.4, per-channel 9.9 (the uneven
    # activations, per tensor, hurt per-channel weights too; CLE evens both)
    assert db["per-tensor+cle"] > db["per-tensor"] + 20
    assert db["per-tensor+cle"] > db["per-channel"] + 10


def test_cle_recovers_per_tensor_int8_of_a_depthwise_model_with_spread_channels() -> None:
    """The MobileNet failure of per-tensor int8 (Nagel et al. 2019): a trained depthwise
    CNN whose depthwise channels are rescaled by s_c in [1/100, 100] (the pointwise inputs
    by 1/s_c, the same function, as BN folding leaves MobileNets) collapses under
    per-tensor PTQ; equalize-cross-layer first brings it within 1 pt of float, above
    per-channel PTQ (``benchmarks/qat_depthwise.py`` prints the table)."""
    import importlib.util
    from pathlib import Path

    import slimfx
    from slimfx.models.digits import load_digits_split
    from slimfx.passes.quant import QConfig

    path = Path(__file__).parents[3] / "benchmarks" / "qat_depthwise.py"
    spec = importlib.util.spec_from_file_location("qat_depthwise", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    torch.manual_seed(0)
    data = load_digits_split()
    xte, yte = data.x_test[:320], data.y_test[:320]
    model = bench.DepthwiseCNN()
    bench.fit(model, data.x_train, data.y_train, steps=400, lr=1e-2, seed=1)
    fp32 = bench.top1(model, xte, yte)
    bench.rescale_depthwise_(model, 100.0)
    g = slimfx.trace(model, (xte[:bench.BATCH],), dynamic_shapes={})
    calib = list(data.x_train[:8 * bench.BATCH].split(bench.BATCH))
    per_tensor = QConfig.preset("x86", per_channel_weights=False)

    def acc(graph) -> float:  # noqa: ANN001
        q = slimfx.quantize(graph, calib, qconfig=per_tensor)
        return bench.top1(slimfx.to_torch(q, trainable=False), xte, yte)

    plain = acc(g)
    eq = Pipeline("fold-bn,equalize-cross-layer,dce")(g)
    assert any(n.op.name == "conv2d" and n.attrs["groups"] > 1 for n in eq.nodes)
    cle = acc(eq)
    per_channel = bench.top1(slimfx.to_torch(slimfx.quantize(g, calib), trainable=False),
                             xte, yte)
    assert fp32 > 95 and plain < fp32 - 20, (fp32, plain)
    assert cle >= fp32 - 1 and cle > per_channel, (fp32, cle, per_channel)
