"""Models traced with the default dynamic batch, through slimfx.compile without ``shapes=``.

``slimfx.trace`` gives dim 0 a batch symbol ``N`` by default; ``x.size(0)`` in a reshape
is then the graph dim ``N`` (no size op at run time). The compiled model serves every
batch, and at batch 1 its program is the one of the model traced static at batch 1
(the same hand-scheduled int8 kernels).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

tvm = pytest.importorskip("tvm", reason="the TVM backend needs apache-tvm")

import slimfx  # noqa: E402
from slimfx.backends.tvm.build import _specialize  # noqa: E402
from slimfx.backends.tvm.lower import lower_graph  # noqa: E402
from slimfx.errors import RuntimeInputError  # noqa: E402

pytestmark = pytest.mark.tvm


class _SizeReshape(nn.Module):
    """conv -> relu -> ``view(x.size(0), -1)`` -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        return self.fc(y.view(y.size(0), -1))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return _SizeReshape().eval()


def _x(b: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, 6, 6, generator=torch.Generator().manual_seed(seed))


def test_size_in_a_reshape_is_the_batch_symbol_at_every_batch() -> None:
    model = _model()
    g = slimfx.trace(model, _x(4))
    assert str(g.inputs[0].type) == "f32[N,3,6,6]"
    assert "{shape=[N,288]} : f32[N,288]" in str(g), str(g)
    assert not g.find("opaque")
    c = slimfx.compile(g, "x86")
    assert c.batch == "N"
    ref = slimfx.to_torch(g)
    for b in (1, 3, 7):
        x = _x(b, b)
        with torch.no_grad():
            want = model(x)
        torch.testing.assert_close(ref(x), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(c(x), want, rtol=1e-4, atol=1e-4)


def test_int8_default_trace_batch_one_is_the_static_program() -> None:
    model = _model()
    samples = [_x(1, 100 + i) for i in range(9)]
    g = slimfx.quantize(slimfx.trace(model, _x(4)), samples, "ptq-int8")
    static = slimfx.quantize(slimfx.trace(model, _x(1), dynamic_shapes={}), samples,
                             "ptq-int8")
    assert str(g.inputs[0].type) == "f32[N,3,6,6]" and static.inputs[0].type.is_static
    bound, symbols, batch, _ = _specialize(g, None, "auto")
    assert batch == "N" and set(symbols) == {"N"}
    # the per-sample program is the static batch-1 program: same kernels, same schedule
    tvm.ir.assert_structural_equal(lower_graph(bound), lower_graph(static))
    c = slimfx.compile(g, "x86")
    ref = slimfx.to_torch(g)
    for b in (1, 3, 7):
        x = _x(b, b)
        assert torch.equal(c(x), ref(x)), f"batch {b}"
    with pytest.raises(RuntimeInputError, match="input 'x'"):
        c(torch.randn(2, 3, 7, 6))
