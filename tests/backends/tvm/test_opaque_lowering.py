"""Opaque ATen calls with a TVM lowering (gather, advanced indexing, cumsum, weight norm)
compute what torch computes; others are still reported."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

tvm = pytest.importorskip("tvm", reason="the TVM backend needs apache-tvm")

import slimfx  # noqa: E402
from slimfx.errors import LoweringError  # noqa: E402

pytestmark = pytest.mark.tvm


class _Indexing(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("table", torch.arange(40.0).reshape(8, 5))
        self.register_buffer("rows", torch.tensor([[0, -1], [3, 7]]))
        self.register_buffer("cols", torch.tensor([4, -2]))
        self.conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(3, 4, 3))

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        picked = self.table[self.rows, self.cols]            # aten.index, broadcast + negatives
        per_row = x[:, self.rows[0]]                          # a None entry first
        gathered = torch.gather(x, 1, ids)                    # aten.gather
        running = torch.cumsum(ids.int(), dim=1)              # aten.cumsum (int32 -> int64)
        normed = self.conv(x.reshape(1, 3, 4))                # aten._weight_norm
        return picked, per_row, gathered, running, normed


def test_opaque_index_ops_match_torch() -> None:
    torch.manual_seed(0)
    model = _Indexing().eval()
    x = torch.randn(2, 6)
    ids = torch.tensor([[5, 0, 2], [1, 1, 4]])
    g = slimfx.trace(model, (x, ids))
    targets = {n.attrs["target"] for n in g.nodes if n.op.name == "opaque"}
    assert {"aten.index.Tensor", "aten.gather.default", "aten.cumsum.default"} <= targets
    compiled = slimfx.compile(g, "x86", tuning_db="/nonexistent-slimfx-db", progress=False)
    with torch.no_grad():
        ref = model(x, ids)
    out = compiled(x, ids)
    for r, o in zip(ref, out, strict=True):
        assert o.dtype == r.dtype and o.shape == r.shape
        if r.is_floating_point():
            np.testing.assert_allclose(o.numpy(), r.numpy(), rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(o, r)


def test_opaque_without_lowering_is_still_reported() -> None:
    class Bessel(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.special.i0(x) + 1

    g = slimfx.trace(Bessel(), (torch.randn(3),))
    with pytest.raises(LoweringError, match="i0"):
        slimfx.compile(g, "x86")
