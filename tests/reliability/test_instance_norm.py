"""InstanceNorm (segmentation UNets): IR op, frontend rule, torch kernel, int8 float island, TVM.

``nn.InstanceNorm{1,2}d`` export as ``aten.instance_norm``; with the input's statistics they
become the ``instance_norm`` op (they used to be opaque nodes TVM could not lower), with
running statistics (``track_running_stats=True`` in eval) inference ``batch_norm``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import slimfx
from slimfx.backends.torch import to_torch


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, affine: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), nn.InstanceNorm2d(cout, affine=affine),
            nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1),
            nn.InstanceNorm2d(cout, affine=not affine), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class TinyUNet(nn.Module):
    """Two levels: encoder blocks, max-pool, decoder with transposed conv and skip concat."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = Block(3, 8, affine=True)
        self.enc2 = Block(8, 16, affine=False)
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dec = Block(16, 8, affine=True)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        return self.head(self.dec(torch.cat([self.up(e2), e1], 1)))


def _unet() -> TinyUNet:
    torch.manual_seed(0)
    m = TinyUNet().eval()
    with torch.no_grad():  # non-trivial affine parameters
        for mod in m.modules():
            if isinstance(mod, nn.InstanceNorm2d) and mod.affine:
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.3, 0.3)
    return m


X = torch.randn(1, 3, 16, 16)


def test_unet_instance_norm_is_an_ir_op_and_matches_eager() -> None:
    m = _unet()
    g = slimfx.trace(m, (X,))
    ops = [n.op.name for n in g.nodes]
    assert ops.count("instance_norm") == 6 and "opaque" not in ops
    affine = [n for n in g.find("instance_norm") if len(n.inputs) == 3]
    assert len(affine) == 3  # weight and bias operands only where affine=True
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(to_torch(g)(x), m(x), atol=1e-5, rtol=0)
    g2 = slimfx.ir.parse(str(g))  # the text form round-trips the new op
    assert str(g2) == str(g)


@pytest.mark.parametrize("method", ["export", "fx"])
@pytest.mark.parametrize("affine", [False, True])
def test_instance_norm_1d_both_frontends(method: str, affine: bool) -> None:
    torch.manual_seed(1)
    m = nn.Sequential(nn.Conv1d(4, 6, 3), nn.InstanceNorm1d(6, affine=affine, eps=1e-3)).eval()
    if affine:
        with torch.no_grad():
            m[1].weight.uniform_(0.5, 2.0)
            m[1].bias.uniform_(-1.0, 1.0)
    x = torch.randn(2, 4, 9)
    g = slimfx.trace(m, (x,), method=method)
    (node,) = g.find("instance_norm")
    assert node.attrs["eps"] == pytest.approx(1e-3)
    with torch.no_grad():
        assert torch.allclose(to_torch(g)(x), m(x), atol=1e-5, rtol=0)


def test_instance_norm_with_running_stats_is_batch_norm() -> None:
    m = nn.InstanceNorm2d(4, affine=True, track_running_stats=True)
    with torch.no_grad():
        m.running_mean.uniform_(-1, 1)
        m.running_var.uniform_(0.5, 2)
        m.weight.uniform_(0.5, 1.5)
    m.eval()
    x = torch.randn(2, 4, 5, 5)
    g = slimfx.trace(m, (x,))
    assert [n.op.name for n in g.nodes] == ["batch_norm"]
    with torch.no_grad():
        assert torch.allclose(to_torch(g)(x), m(x), atol=1e-5, rtol=0)


def test_instance_norm_is_a_float_island_in_int8() -> None:
    m = _unet()
    calib = [(torch.randn(1, 3, 16, 16),) for _ in range(3)]
    g8 = slimfx.quantize(slimfx.trace(m, (X,)), calib, "ptq-int8")
    ends = []
    for n in g8.find("instance_norm"):
        assert n.inputs[0].producer.op.name == "dequantize"
        assert n.inputs[0].dtype == "f32"
        (relu,) = n.outputs[0].users  # the island: dequantize, instance_norm, relu, quantize
        assert relu.op.name == "relu"
        ends += [u.op.name for u in relu.outputs[0].users]
    # the one before the (float) transposed convolution feeds it directly
    assert sorted(ends) == ["conv_transpose2d"] + ["quantize"] * 5
    assert g8.find("qconv2d")  # the convolutions around it are integer


tvm = pytest.importorskip("tvm", reason="the TVM backend needs apache-tvm")


@pytest.mark.tvm
def test_unet_instance_norm_compiles_fp32_and_int8() -> None:
    m = _unet()
    x = torch.randn(1, 3, 16, 16)
    g = slimfx.trace(m, (X,))
    with torch.no_grad():
        want = m(x)
    assert torch.allclose(slimfx.compile(g, "x86")(x), want, atol=1e-4, rtol=0)

    calib = [(torch.randn(1, 3, 16, 16),) for _ in range(3)]
    g8 = slimfx.quantize(g, calib, "ptq-int8")
    # One build returns the integer output of the last quantize and the float tail.
    (out,) = g8.outputs
    deq = out.producer
    assert deq.op.name == "dequantize"
    g2 = g8.clone()
    g2.set_outputs([g2.value(deq.inputs[0].name), g2.value(out.name)])
    with torch.no_grad():
        ref_q, ref = to_torch(g2)(x)
    got_q, got = slimfx.compile(g2, "x86")(x)
    assert ref_q.dtype in (torch.int8, torch.uint8)
    assert torch.equal(got_q, ref_q)  # bit for bit
    (scale,) = deq.attrs["scale"]
    assert (got - ref).abs().max().item() <= 1e-6 * scale
