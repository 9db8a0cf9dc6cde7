"""Graphs thousands of nodes deep: nothing in slimfx may recurse on graph depth.

DenseNet-121's concat chains failed to lower (``LoweringError ... maximum recursion depth
exceeded`` in qconv2d: ``LowerContext.is_static`` walked the Relax bindings recursively).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import slimfx
from slimfx.backends.torch import to_torch
from slimfx.ir import load_graph, parse, save_graph

DEPTH = 3000


class AddChain(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.n):
            x = x + 1
        return x


@pytest.fixture(scope="module")
def chain() -> slimfx.Graph:
    g = slimfx.trace(AddChain(DEPTH), (torch.zeros(1, 4),))
    assert len(g.nodes) == DEPTH
    return g


def test_deep_chain_trace_passes_torch_text_and_files(chain: slimfx.Graph,
                                                      tmp_path: Path) -> None:
    assert sys.getrecursionlimit() < DEPTH  # the depth would overflow any recursive walk
    x = torch.randn(1, 4)
    want = AddChain(DEPTH)(x)  # (3000 float additions of 1, rounded at each step)
    g = slimfx.Pipeline("fold-constants,dce")(chain.clone())
    g.verify()
    assert torch.equal(to_torch(g)(x), want)
    text = str(g)
    assert str(parse(text)) == text
    save_graph(g, tmp_path / "deep")
    g2 = load_graph(tmp_path / "deep")
    assert torch.equal(to_torch(g2)(x), want)
    assert g.to_networkx().number_of_nodes() >= DEPTH


tvm = pytest.importorskip("tvm", reason="the TVM backend needs apache-tvm")


@pytest.mark.tvm
def test_deep_chain_compiles(chain: slimfx.Graph) -> None:
    x = torch.randn(1, 4)
    assert torch.equal(slimfx.compile(chain, "x86")(x), to_torch(chain)(x))


@pytest.mark.tvm
def test_lower_context_is_static_on_a_deep_chain() -> None:
    """``is_static`` walks the bindings without recursion and answers in linear time."""
    import numpy as np
    from tvm import relax

    from slimfx.backends.tvm.lower import LowerContext

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4,), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            ctx = LowerContext(bb)
            c = relax.const(np.ones(4, "float32"))
            s, d = c, x
            for _ in range(DEPTH):
                s = bb.emit(relax.op.add(s, c))
                d = bb.emit(relax.op.add(d, c))
                assert ctx.is_static(s) and not ctx.is_static(d)
            out = bb.emit_output(relax.op.add(s, d))
        bb.emit_func_output(out)


class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1-BN-ReLU-conv3x3, concatenated to its input (DenseNet-BC)."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth), nn.ReLU(),
            nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1)


class DenseNet121Depth(nn.Module):
    """DenseNet-121's depth (blocks of 6/12/24/16 layers, 3 transitions), tiny widths."""

    def __init__(self, growth: int = 8, init: int = 16, classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, init, 3, padding=1, bias=False)]
        c = init
        for i, n in enumerate((6, 12, 24, 16)):
            for _ in range(n):
                layers.append(DenseLayer(c, growth))
                c += growth
            if i < 3:
                layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False),
                           nn.AvgPool2d(2)]
                c //= 2
        layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                   nn.Linear(c, classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture(scope="module")
def densenet_int8() -> tuple[slimfx.Graph, torch.Tensor]:
    """The int8 DenseNet-121-depth graph, its final dequantize removed (integer output)."""
    torch.manual_seed(0)
    m = DenseNet121Depth().eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    x = torch.randn(1, 3, 32, 32)
    g = slimfx.trace(m, (x,))
    assert len(g.find("cat")) == 58
    g8 = slimfx.quantize(g, [(torch.randn(1, 3, 32, 32),) for _ in range(2)], "ptq-int8")
    assert len(g8.find("qconv2d")) >= 100
    (out,) = g8.outputs
    deq = out.producer
    assert deq.op.name == "dequantize"
    g8.set_outputs([deq.inputs[0]])
    g8.erase(deq)
    return g8, x


@pytest.mark.tvm
def test_densenet121_depth_int8_lowers(densenet_int8: tuple[slimfx.Graph, torch.Tensor]) -> None:
    """The qconv2d lowering's is_static walk used to overflow Python's stack here."""
    from slimfx.backends.tvm.lower import lower_graph

    mod = lower_graph(densenet_int8[0])
    assert "main" in [gv.name_hint for gv in mod.functions]


@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("SLIMFX_HEAVY"),
    reason="builds ~120 distinct conv kernels (minutes on 2 cores, over make test's budget); "
           "set SLIMFX_HEAVY=1 to run it (make fuzz does)")
def test_densenet121_depth_int8_compiles_bit_exact(
        densenet_int8: tuple[slimfx.Graph, torch.Tensor]) -> None:
    """Compiled for x86, the integer output equals the torch backend's bit for bit.

    Slow: ~120 distinct conv kernels to build (minutes on 2 loaded cores).
    """
    g8, x = densenet_int8
    with torch.no_grad():
        want = to_torch(g8)(x)
    assert want.dtype == torch.int8
    got = slimfx.compile(g8, "x86")(x)
    assert torch.equal(got, want)
