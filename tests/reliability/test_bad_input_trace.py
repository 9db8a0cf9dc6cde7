"""Careless inputs to ``slimfx.trace`` and to ``slimfx.to_torch`` modules: a right answer or a
named error, never numbers for the wrong shape nor a crash deep inside torch."""

from __future__ import annotations

import logging
import timeit

import numpy as np
import pytest
import torch
import torch.nn as nn

import slimfx
from slimfx.backends.torch import to_torch
from slimfx.errors import RuntimeInputError, TraceError


class Lin(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class BatchFlatten(nn.Module):
    """Uses ``x.shape[0]``: a static graph bakes the traced batch size in."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1) * 2


class TwoInputs(nn.Module):
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x * mask


# ------------------------------------------------------------- to_torch input checks
def test_to_torch_rejects_another_batch_size() -> None:
    g = slimfx.trace(BatchFlatten(), (torch.randn(2, 3, 4),), dynamic_shapes={})  # static
    m = to_torch(g)
    x = torch.randn(2, 3, 4)
    assert torch.equal(m(x), x.reshape(2, -1) * 2)
    with pytest.raises(RuntimeInputError, match=r"input 'x': expected f32\[2,3,4\], got "
                                                 r"f32\[5,3,4\]; reshape/cast the input"):
        m(torch.randn(5, 3, 4))


def test_to_torch_rejects_wrong_dtype_and_rank() -> None:
    m = to_torch(slimfx.trace(Lin(), (torch.randn(2, 4),)))  # a dynamic batch N
    with pytest.raises(RuntimeInputError, match=r"input 'x': expected f32\[N,4\], got f64\[2,4\]"):
        m(torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(RuntimeInputError, match=r"got f32\[4\] \(rank 1, expected rank 2\)"):
        m(torch.randn(4))
    with pytest.raises(RuntimeInputError, match=r"input 'x': expected a torch tensor f32\[N,4\], "
                                                 r"got ndarray"):
        m(np.zeros((2, 4), np.float32))


def test_to_torch_count_and_names() -> None:
    g = slimfx.trace(TwoInputs(), (torch.randn(3), torch.randn(3)))
    m = to_torch(g)
    x, mask = torch.randn(3), torch.randn(3)
    assert torch.equal(m(x, mask), x * mask)
    assert torch.equal(m(mask=mask, x=x), x * mask)
    assert torch.equal(m(x, mask=mask), x * mask)
    with pytest.raises(RuntimeInputError, match=r"takes 2 input\(s\) \(x, mask\), got 1"):
        m(x)
    with pytest.raises(RuntimeInputError, match=r"takes 2 input\(s\) \(x, mask\), got 3"):
        m(x, mask, x)
    with pytest.raises(RuntimeInputError, match=r"unknown input name\(s\) 'maks'; missing "
                                                 r"input\(s\) 'mask'.*in order: x, mask"):
        m(x, maks=mask)
    with pytest.raises(RuntimeInputError, match=r"given both by position and by name: 'x'"):
        m(x, x=x, mask=mask)
    with pytest.raises(RuntimeInputError, match=r"as separate arguments, got one list"):
        m([x, mask])


def test_to_torch_check_keeps_training_and_is_cheap() -> None:
    """QAT / fine-tuning train through to_torch modules: gradients flow, calls stay fast."""
    m = to_torch(slimfx.trace(Lin(), (torch.randn(2, 4),)))
    m.train()
    x = torch.randn(2, 4, requires_grad=True)
    m(x).square().sum().backward()
    assert x.grad is not None and m.fc.weight.grad is not None
    with torch.no_grad():
        checked = min(timeit.repeat(lambda: m(x), number=200, repeat=3))
        bare = min(timeit.repeat(lambda: m.forward(x), number=200, repeat=3))
    assert (checked - bare) / 200 < 500e-6  # well under a millisecond per call (~20 us idle)


# ------------------------------------------------------------- trace: data-dependent
class BoolIndex(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[x > 0]


class BranchOnCount(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x[x > 0]
        if y.shape[0] > 2:
            return y.sum()
        return x.sum()


@pytest.mark.parametrize("method", ["export", "fx"])
def test_boolean_indexing_is_a_trace_error(method: str) -> None:
    with pytest.raises(TraceError) as info:
        slimfx.trace(BoolIndex(), (torch.randn(6),), method=method)
    msg = str(info.value)
    assert "aten.index" in msg and "data-dependent output shape" in msg
    assert "test_bad_input_trace.py:" in msg  # the user's source line
    assert "torch.where(mask, x, 0)" in msg


def test_control_flow_on_a_data_dependent_size_is_a_trace_error() -> None:
    with pytest.raises(TraceError, match=r"data-dependent values and shapes are unsupported"
                       r".*torch.where\(cond, a, b\)") as info:
        slimfx.trace(BranchOnCount(), (torch.randn(6),))
    assert str(info.value).startswith("torch.export: ")
    assert "test_bad_input_trace.py:" in str(info.value) and "y.shape[0] > 2" in str(info.value)


# ------------------------------------------------------------- trace: integer operands
class IntConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_int64_into_linear_is_refused_at_trace_time() -> None:
    x = torch.ones(2, 4, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="same dtype"):
        Lin()(x)  # what torch eager does
    with pytest.raises(TraceError, match=r"linear at fc at .*test_bad_input_trace.py:\d+ gets an "
                                         r"input of dtype i64 \(weight f32\).*x\.float\(\)"):
        slimfx.trace(Lin(), (x,))
    with pytest.raises(TraceError, match=r"fc"):  # fx runs the call first: torch's own error
        slimfx.trace(Lin(), (x,), method="fx")


def test_int64_into_conv_is_refused_at_trace_time() -> None:
    # torch.export's own fake conv refuses it; the error names the user's line
    with pytest.raises(TraceError, match=r"Input type \(long int\) and bias type \(float\) "
                                         r"should be the same\n  at .*test_bad_input_trace.py"):
        slimfx.trace(IntConv(), (torch.ones(1, 2, 3, 3, dtype=torch.int64),))


# ------------------------------------------------------------- trace: example inputs
def test_example_input_forms_are_accepted() -> None:
    x, m = torch.randn(2, 4), Lin()
    want = str(slimfx.trace(m, (x,)))
    assert str(slimfx.trace(m, x)) == want  # a single tensor
    assert str(slimfx.trace(m, [x])) == want  # a list
    assert str(slimfx.trace(m, {"x": x})) == want  # keyword inputs
    xg = x.clone().requires_grad_()  # tensors requiring grad: traced like any other
    g = slimfx.trace(m, (xg,))
    assert str(g) == want and g.inputs[0].type.dtype == "f32"


@pytest.mark.parametrize(("inputs", "pattern"), [
    (None, r"example_inputs must be a tensor, a tuple .* got NoneType"),
    ("x", r"example_inputs must be .* got str"),
    ((), r"do not match Lin.forward\(x: .*: missing a required argument: 'x'"),
    ({"x": torch.randn(2, 4), "y": 1}, r"do not match Lin.forward.*unexpected keyword "
                                       r"argument 'y'"),
    ((torch.randn(2, 4), torch.randn(2, 4)), r"do not match Lin.forward.*too many positional"),
    ((np.zeros((2, 4), np.float32),), r"example input 0 holds a numpy array; pass torch "
                                       r"tensors \(torch.from_numpy"),
])
def test_bad_example_inputs_are_named(inputs: object, pattern: str) -> None:
    with pytest.raises(TraceError, match=pattern):
        slimfx.trace(Lin(), inputs)


def test_model_that_is_not_a_module() -> None:
    with pytest.raises(TraceError, match=r"got the class Lin; pass an instance: Lin\(\.\.\.\)"):
        slimfx.trace(Lin, (torch.randn(2, 4),))
    def double(x: torch.Tensor) -> torch.Tensor:
        return 2 * x

    with pytest.raises(TraceError, match=r"got the function 'double'; wrap it in a module"):
        slimfx.trace(double, (torch.randn(2, 4),))
    with pytest.raises(TraceError, match=r"takes an nn.Module, got int"):
        slimfx.trace(3, (torch.randn(2, 4),))
    with pytest.raises(TraceError, match=r"unknown trace method 'jit'"):
        slimfx.trace(Lin(), (torch.randn(2, 4),), method="jit")


def test_model_in_training_mode_is_traced_in_eval_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    with torch.no_grad():
        m[1].running_mean.uniform_(-1, 1)
    m.train()
    x = torch.randn(3, 4)
    with caplog.at_level(logging.WARNING, logger="slimfx.frontends"):
        g = slimfx.trace(m, (x,))
    assert "training mode" in caplog.text and "running statistics" in caplog.text
    assert not m.training
    with torch.no_grad():
        assert torch.allclose(to_torch(g)(x), m(x), atol=1e-6)  # eval semantics
