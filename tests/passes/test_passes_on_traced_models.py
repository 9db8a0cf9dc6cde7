"""The standard pipeline on models traced by the frontend, checked against PyTorch eager."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimfx
from slimfx.models import randomize_batchnorm_, resnet18
from slimfx.passes import PassContext, Pipeline, Timing


class Residual(nn.Module):
    """conv-bn-relu6, a residual conv-bn, hardtanh, then linear-bn1d-relu."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 6 * 6, 5)
        self.bn3 = nn.BatchNorm1d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.relu6(self.bn1(self.conv1(x)))
        y = nn.functional.hardtanh(self.bn2(self.conv2(y)) + y, -1.0, 2.0)
        return torch.relu(self.bn3(self.fc(torch.flatten(y, 1))))


def test_traced_model_matches_eager() -> None:
    torch.manual_seed(0)
    model = randomize_batchnorm_(Residual().eval())
    x = torch.randn(2, 3, 6, 6)
    g = slimfx.trace(model, (x,))
    out = Pipeline("fold-bn,fuse-activation,cleanup")(g)
    ops = [n.op.name for n in out.nodes]
    assert "batch_norm" not in ops and "relu" not in ops and "relu6" not in ops
    fused = {n.op.name: (n.attrs["act_min"], n.attrs["act_max"]) for n in out.nodes
             if n.has(slimfx.ir.Trait.FUSABLE_ACTIVATION) and n.attrs["act_min"] is not None}
    assert fused == {"conv2d": (0.0, 6.0), "linear": (0.0, None)}
    with torch.no_grad():
        torch.testing.assert_close(slimfx.to_torch(out, trainable=False)(x), model(x),
                                   atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_resnet18_matches_eager() -> None:
    torch.manual_seed(0)
    model = randomize_batchnorm_(resnet18(num_classes=10, width=8).eval())
    x = torch.randn(2, 3, 32, 32)
    g = slimfx.trace(model, (x,))
    timing = Timing()
    out = Pipeline("fold-bn,fuse-activation,cleanup")(g, PassContext([timing]))
    assert g.find("batch_norm") and not out.find("batch_norm")
    fused = [n for n in out.find("conv2d") if n.attrs["act_min"] == 0.0]
    assert len(fused) == 9  # stem + the first conv of each of the 8 basic blocks
    with torch.no_grad():
        torch.testing.assert_close(slimfx.to_torch(out, trainable=False)(x), model(x),
                                   atol=1e-4, rtol=1e-4)
    assert [r.result.changed for r in timing.records] == [True, True, False, False, True]
