"""The default CPU schedule's inlining keeps code (and compile time) linear in the op count.

A chain ``x = x + 1`` repeated ``n`` times, quantized to int8, is one fused PrimFunc of
``n + 1`` quantize -> dequantize stages; each stage reads its input several times
(``round_half_even`` reads ``floor(x)`` five times). Inlining every stage copied each into
every read: code, and compile time, grew by that factor per stage (n = 2 took ~100 s).
"""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

tvm = pytest.importorskip("tvm", reason="the TVM backend needs apache-tvm")

import slimfx  # noqa: E402
from slimfx.backends.tvm import tuning  # noqa: E402
from slimfx.backends.tvm.cpu_schedule import default_cpu_schedule  # noqa: E402
from slimfx.backends.tvm.lower import lower_graph  # noqa: E402
from slimfx.backends.tvm.targets import resolve_target  # noqa: E402

pytestmark = pytest.mark.tvm


class _AddChain(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.n):
            x = x + 1
        return x


def _int8_chain(n: int) -> tuple[slimfx.ir.Graph, torch.Tensor]:
    torch.manual_seed(n)
    x = torch.randn(1, 16)
    g = slimfx.trace(_AddChain(n).eval(), (x,))
    return slimfx.quantize(g, [(torch.randn(1, 16),) for _ in range(2)]), x


def _scheduled_size(g: slimfx.ir.Graph) -> int:
    """Characters of the scheduled PrimFuncs' TVMScript (a proxy for expression size)."""
    target = tvm.target.Target(resolve_target("x86"))
    mod = lower_graph(g, target=target)
    with tvm.transform.PassContext(opt_level=3):
        mod = tuning.prepare(mod, target)
        with target:
            mod = default_cpu_schedule()(mod)
    prims = [mod[gv] for gv in mod.functions if isinstance(mod[gv], tvm.tirx.PrimFunc)]
    assert all(f.attrs["tirx.is_scheduled"] for f in prims)
    return sum(len(f.script()) for f in prims)


def test_scheduled_code_grows_linearly_with_the_chain() -> None:
    small, large = (_scheduled_size(_int8_chain(n)[0]) for n in (3, 6))
    # 4 -> 7 stages: linear growth is 7/4 = 1.75x; copying each stage into its reads grew
    # it by a factor of >= 5 per stage
    assert large < 2.5 * small, (small, large)


def test_long_int8_chain_compiles_fast_and_bit_exact() -> None:
    g, x = _int8_chain(8)
    t0 = time.perf_counter()
    compiled = slimfx.compile(g, "x86", tuning_db="/nonexistent-slimfx-db")
    seconds = time.perf_counter() - t0
    assert seconds < 60, f"compile took {seconds:.0f} s"  # exponential: hours
    for inp in (x, torch.randn(1, 16) * 4):
        assert torch.equal(torch.as_tensor(compiled(inp)), slimfx.to_torch(g)(inp))


def test_padded_input_quantize_builds_and_is_bit_exact() -> None:
    """A float pad before the input's quantize: ``floor(pad(x) / s)`` is too large to copy
    into its five reads, so it stays a block; its first reader (``x/s - floor(x/s)``) must
    not be reverse-inlined into it, which left the other readers reading a buffer nothing
    wrote ("Buffer compute_intermediate is used before its definition" at build time)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 16, 3, stride=2)).eval()
    x = torch.randn(2, 3, 32, 32)
    g = slimfx.quantize(slimfx.trace(model, (x,)), [(torch.randn_like(x),) for _ in range(2)])
    compiled = slimfx.compile(g, "x86", tuning_db="/nonexistent-slimfx-db")
    assert torch.equal(torch.as_tensor(compiled(x)), slimfx.to_torch(g)(x))
