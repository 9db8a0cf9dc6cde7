"""``requantize(qconv(...))`` as one x86 kernel: the requantization in the dense's epilogue.

The int8 convolutions of a quantized model are each followed by a ``requantize`` of their
int32 sums; on x86 the two are lowered together (``register_fusion``), so the hand-scheduled
VNNI / AVX2 dense writes int8 and no int32 tensor (nor its int64 requantize chain) is left
between kernels. Both paths are checked, on edge shapes, for the same integers as the torch
reference, and for the fused kernel actually being the one built.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

tvm = pytest.importorskip("tvm", reason="the TVM backend needs apache-tvm")

import slimfx  # noqa: E402
from slimfx.backends.tvm.lower import lower_graph  # noqa: E402
from slimfx.backends.tvm.targets import resolve_target, target_has_feature  # noqa: E402

pytestmark = pytest.mark.tvm

# haswell: AVX2 and FMA, no AVX-512, a subset of every x86 host the project runs on
_AVX2 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell", "num-cores": 2}


def _host_has(feature: str) -> bool:
    return target_has_feature(tvm.target.Target(resolve_target("x86")), feature)


class _Edges(nn.Module):
    """Convolutions on edge shapes, each on its own input, all int8 -> int8."""

    def __init__(self) -> None:
        super().__init__()
        self.one_channel = nn.Conv2d(1, 16, 3, padding=1)        # C = 1
        self.odd = nn.Conv2d(5, 32, 3, stride=2, padding=1)      # odd C, stride 2, odd size
        self.pointwise = nn.Conv2d(7, 16, 1)                     # 1x1, no im2col
        self.tiny = nn.Conv2d(16, 16, 3, padding=1)              # 1x1 spatial input
        self.wide_pad = nn.Conv2d(3, 16, 5, stride=2, padding=2)  # 5x5, stride 2
        self.then = nn.Conv2d(16, 16, 3, padding=1)              # int8 -> int8 -> int8
        self.line = nn.Conv1d(3, 16, 3, padding=1)               # conv1d
        self.narrow = nn.Conv2d(5, 24, 3, padding=1)             # out channels 24: padded

    def forward(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor,
                e: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (torch.relu(self.one_channel(a)), self.odd(b), torch.relu(self.pointwise(c)),
                self.tiny(d), self.then(torch.relu(self.wide_pad(e))), self.line(f),
                self.narrow(b))


def _inputs(gen: torch.Generator, scale: float = 1.0) -> tuple[torch.Tensor, ...]:
    shapes = [(1, 1, 6, 6), (1, 5, 9, 7), (2, 7, 4, 4), (1, 16, 1, 1), (1, 3, 11, 11),
              (1, 3, 10)]
    return tuple(torch.randn(s, generator=gen) * scale for s in shapes)


@pytest.fixture(scope="module")
def graph() -> slimfx.ir.Graph:
    torch.manual_seed(0)
    model = _Edges().eval()
    gen = torch.Generator().manual_seed(1)
    g = slimfx.trace(model, _inputs(gen), dynamic_shapes={})
    return slimfx.quantize(g, [_inputs(gen) for _ in range(3)], "ptq-int8")


_TARGETS: dict[str, Any] = {"host": "x86", "avx2": _AVX2}


@pytest.mark.parametrize("target", list(_TARGETS))
def test_fused_requantize_conv_is_bit_exact(graph: slimfx.ir.Graph, target: str) -> None:
    if not _host_has("avx2"):
        pytest.skip("this CPU has no AVX2")
    compiled = slimfx.compile(graph, _TARGETS[target], tuning_db="/nonexistent-slimfx-db",
                              progress=False)
    ref_model = slimfx.to_torch(graph)
    gen = torch.Generator().manual_seed(2)
    for scale in (1.0, 4.0):  # 4x the calibrated range: saturating clamps
        feeds = _inputs(gen, scale)
        for got, ref in zip(compiled(*feeds), ref_model(*feeds), strict=True):
            got = torch.as_tensor(got)
            assert got.shape == ref.shape
            assert torch.equal(got, ref)


@pytest.mark.parametrize("target", list(_TARGETS))
def test_every_packed_conv_writes_int8(graph: slimfx.ir.Graph, target: str) -> None:
    mod = lower_graph(graph, target=_TARGETS[target])
    kind = "vnni" if target == "host" and _host_has("avx512vnni") else "avx2"
    dense = [gv.name_hint for gv in mod.functions if gv.name_hint.startswith("qconv_")
             and "_dense_" in gv.name_hint]
    convs = [n for n in graph.nodes if n.op.name in ("qconv1d", "qconv2d")]
    assert len(dense) == len(convs) == 8
    assert all(name.startswith(f"qconv_{kind}_dense_") and "_rq_int8_" in name
               for name in dense), dense
    # no int32 tensor between the kernels: the relax function never requantizes itself
    assert "right_shift" not in mod["main"].script()


def test_fusion_declines_without_an_x86_target(graph: slimfx.ir.Graph) -> None:
    mod = lower_graph(graph)  # no target: the portable lowerings, requantize on its own
    assert "right_shift" in mod["main"].script()
    assert not any("_rq_" in gv.name_hint for gv in mod.functions)


def test_lowering_ignores_the_ambient_target(graph: slimfx.ir.Graph) -> None:
    """Kernel choice reads the target passed to ``lower_graph``, never ``with target:``."""
    with tvm.target.Target(resolve_target(_AVX2)):
        ambient = lower_graph(graph)
    tvm.ir.assert_structural_equal(ambient, lower_graph(graph))
    assert not any(gv.name_hint.startswith("qconv_avx2") for gv in ambient.functions)
    with tvm.target.Target({"kind": "cuda", "arch": "sm_80"}):  # no effect the other way
        explicit = lower_graph(graph, target=_AVX2)
    assert any(gv.name_hint.startswith("qconv_avx2_dense") for gv in explicit.functions)
