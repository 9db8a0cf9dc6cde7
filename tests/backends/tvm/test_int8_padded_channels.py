"""Out channels that are not a multiple of the kernel's lanes (16 VNNI, 8 AVX2) are padded
with zero weights and sliced off after the hand-scheduled x86 kernels: the same integers.
MobileNetV2's 24-channel convolutions and its 1000-way classifier take this path."""

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

_TARGETS: dict[str, Any] = {
    "host": "x86",
    "avx2": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell", "num-cores": 2},
}


def _host_has(feature: str) -> bool:
    return target_has_feature(tvm.target.Target(resolve_target("x86")), feature)


@pytest.mark.parametrize("target", list(_TARGETS))
def test_odd_out_channels_take_the_hand_kernels_bit_exact(target: str) -> None:
    if not _host_has("avx2"):
        pytest.skip("this CPU has no AVX2")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), nn.ReLU(), nn.Conv2d(24, 12, 1),
                          nn.Flatten(), nn.Linear(12 * 5 * 5, 1000)).eval()
    x = torch.randn(1, 3, 5, 5)
    g = slimfx.quantize(slimfx.trace(model, (x,)), [(torch.randn_like(x),) for _ in range(3)])
    names = [gv.name_hint for gv in lower_graph(g, target=_TARGETS[target]).functions]
    assert sum("_dense_" in n and n.startswith("qconv_") for n in names) == 2, names
    if target == "host" and _host_has("avx512vnni"):
        assert any(n.startswith("qdense_vnni_") and n.endswith("x1008") for n in names), names
    compiled = slimfx.compile(g, _TARGETS[target], tuning_db="/nonexistent-slimfx-db",
                              progress=False)
    for inp in (x, torch.randn_like(x) * 3):
        assert torch.equal(torch.as_tensor(compiled(inp)), slimfx.to_torch(g)(inp))
