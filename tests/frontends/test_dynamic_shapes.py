"""slimfx.trace(..., dynamic_shapes=): torch.export Dim specs -> graph symbols, run at any size.

The spec forms (tuple per input, dict by name, ``Dim("B", min=, max=)``, ``Dim.AUTO``,
``Dim.STATIC``), the header with symbols and ranges, the text and file round trips,
an ``ExportedProgram`` from a ``.pt2``, ``DEFAULT_DYNAMIC_BATCH``, and the torch backend
running every size in range (out of range: RuntimeInputError naming the input).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.export import Dim

import slimfx
from slimfx.errors import RuntimeInputError, TraceError
from slimfx.ir import parse
from slimfx.ir.serialize import load_graph, save_graph
from slimfx.ir.symbolic import SymbolRange


class Cnn(nn.Module):
    """conv -> bn -> relu -> pool -> residual -> flatten (N*...) -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        y = nn.functional.max_pool2d(y + self.conv2(y), 2)
        return self.fc(y.reshape(y.shape[0], -1))


class Tokens(nn.Module):
    """(batch, sequence) ids: embedding, a mask, mean over the sequence, reshape(B*S)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.proj = nn.Linear(16, 16)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.proj(self.emb(ids)) * mask.unsqueeze(-1)
        flat = h.reshape(ids.shape[0] * ids.shape[1], 16)  # B*S rows
        return torch.relu(flat).reshape(ids.shape[0], ids.shape[1], 16).mean(1)


@pytest.fixture(scope="module")
def cnn() -> tuple[nn.Module, slimfx.ir.Graph]:
    torch.manual_seed(0)
    model = Cnn().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    g = slimfx.trace(model, torch.randn(4, 3, 8, 8),
                     dynamic_shapes=({0: Dim("N", min=1, max=64)},))
    return model, g


def _close(model: nn.Module, g: slimfx.ir.Graph, *inputs: torch.Tensor) -> None:
    with torch.no_grad():
        want = model(*inputs)
        got = slimfx.to_torch(g)(*inputs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_batch_symbol_in_header_and_runs_at_any_size(cnn) -> None:
    model, g = cnn
    text = str(g)
    assert text.splitlines()[0] == "graph @main(%x: f32[N,3,8,8]) where N in [1, 64] {"
    assert g.symbols == {"N": SymbolRange(1, 64)}
    assert re.search(r"= reshape\(%\w+\) \{shape=\[N,128\]\} : f32\[N,128\]", text), text
    for n in (1, 3, 7, 64):
        _close(model, g, torch.randn(n, 3, 8, 8))


def test_text_and_file_round_trips(cnn, tmp_path: Path) -> None:
    model, g = cnn
    text = str(g)
    again = parse(text, {k: v.const for k, v in g.constants.items()})
    assert str(again) == text
    save_graph(g, tmp_path / "g")
    loaded = load_graph(tmp_path / "g")
    assert str(loaded) == text and loaded.symbols == g.symbols
    _close(model, loaded, torch.randn(5, 3, 8, 8))


def test_out_of_range_and_wrong_static_dims_name_the_input(cnn) -> None:
    _, g = cnn
    m = slimfx.to_torch(g)
    with pytest.raises(RuntimeInputError, match=re.escape(
            "input 'x' dim 0: size 65 is outside the range of symbol N (N in [1, 64])")) as e:
        m(torch.randn(65, 3, 8, 8))
    assert "input 'x' is f32[N,3,8,8], given shape [65, 3, 8, 8]" in str(e.value)
    with pytest.raises(RuntimeInputError, match=re.escape(
            "input 'x': expected f32[N,3,8,8], got f32[2,3,9,8]")):
        m(torch.randn(2, 3, 9, 8))


def test_dict_spec_auto_static_and_two_symbols() -> None:
    torch.manual_seed(0)
    model = Tokens().eval()
    ids, mask = torch.randint(0, 50, (3, 6)), torch.ones(3, 6)
    spec = {"ids": {0: Dim("B", min=1, max=32), 1: Dim("S", min=1, max=128)},
            "mask": {0: Dim("B", min=1, max=32), 1: Dim("S", min=1, max=128)}}
    g = slimfx.trace(model, (ids, mask), dynamic_shapes=spec)
    assert str(g).splitlines()[0] == ("graph @main(%ids: i64[B,S], %mask: f32[B,S]) where "
                                      "B in [1, 32], S in [1, 128] {")
    for b, s in ((1, 1), (2, 9), (5, 3)):
        _close(model, g, torch.randint(0, 50, (b, s)), torch.rand(b, s))
    with pytest.raises(RuntimeInputError, match="symbol S.*must be equal"):
        slimfx.to_torch(g)(torch.randint(0, 50, (2, 4)), torch.rand(2, 5))

    auto = slimfx.trace(model, (ids, mask), dynamic_shapes=(
        {0: Dim.AUTO, 1: Dim.STATIC}, {0: Dim.AUTO, 1: Dim.STATIC}))
    assert [str(v.type) for v in auto.inputs] == ["i64[N,6]", "f32[N,6]"]
    assert auto.symbols == {"N": SymbolRange(1, None)}  # AUTO takes size 1 too
    _close(model, auto, torch.randint(0, 50, (1, 6)), torch.rand(1, 6))


def test_spec_contradicting_the_model_names_dim_and_line() -> None:
    class FixedBatch(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.reshape(4, -1)  # pins the batch to 4

    with pytest.raises(TraceError, match=r"dynamic_shapes: the spec marks .* as dynamic but "
                       r"the model fixes it at .*test_dynamic_shapes\.py:\d+ .*reshape\(4, -1\)"):
        slimfx.trace(FixedBatch(), torch.randn(4, 3), dynamic_shapes=({0: Dim("N")},))


def test_exported_program_from_a_pt2_file(cnn, tmp_path: Path) -> None:
    model, _ = cnn
    ep = torch.export.export(model, (torch.randn(4, 3, 8, 8),),
                             dynamic_shapes=({0: Dim("batch", max=16)},))
    torch.export.save(ep, tmp_path / "m.pt2")
    g = slimfx.trace(torch.export.load(tmp_path / "m.pt2"))
    assert str(g.inputs[0].type) == "f32[N,3,8,8]" and g.symbols == {"N": SymbolRange(0, 16)}  # torch.export says [0, 16]
    _close(model, g, torch.randn(3, 3, 8, 8))
    static = slimfx.trace(torch.export.export(model, (torch.randn(2, 3, 8, 8),)))
    assert static.inputs[0].type.is_static and not static.symbols


class _Pinned(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return a.sum(0) + b.reshape(-1), c * 2  # b's dim 0 is tied to a's dim 1: stays static


@pytest.mark.parametrize("method", ["export", "fx"])
def test_default_is_a_dynamic_batch(method: str) -> None:
    model = Cnn().eval()
    g = slimfx.trace(model, torch.randn(2, 3, 8, 8), method=method)
    assert str(g.inputs[0].type) == "f32[N,3,8,8]" and g.symbols == {"N": SymbolRange(1, None)}
    for n in (1, 7):
        _close(model, g, torch.randn(n, 3, 8, 8))


def test_default_logs_what_stays_static_and_why(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="slimfx.frontends"):
        p = slimfx.trace(_Pinned(), (torch.randn(3, 4), torch.randn(4, 1), torch.randn(1, 4)))
    assert [str(v.type) for v in p.inputs] == ["f32[N,4]", "f32[4,1]", "f32[1,4]"]
    assert re.search(r"dim 0 of input 'b' is static \(4\): the model fixes it at "
                     r".*test_dynamic_shapes\.py:\d+ \(return a\.sum\(0\) \+ b\.reshape", caplog.text)
    assert ("dim 0 of input 'c' is static (1): the example size is 0 or 1, which torch.export "
            "specialises") in caplog.text
    assert all(r.name.startswith("slimfx.frontends") for r in caplog.records
               if "is static" in r.getMessage())
    x = (torch.randn(6, 4), torch.randn(4, 1), torch.randn(1, 4))
    for got, want in zip(slimfx.to_torch(p)(*x), _Pinned()(*x), strict=True):
        assert torch.equal(got, want)


class _TwoTowers(nn.Module):
    """Two inputs torch.export does not relate: Dim.AUTO gives each its own symbol."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a * 2, b.sum(1)


@pytest.mark.parametrize("method", ["export", "fx"])
def test_default_inputs_of_one_batch_share_one_symbol(method: str, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="slimfx.frontends"):
        g = slimfx.trace(_TwoTowers(), {"a": torch.randn(4, 3), "b": torch.randn(4, 5)},
                         method=method)
    assert str(g).splitlines()[0] == ("graph @main(%a: f32[N,3], %b: f32[N,5]) where N >= 1 {")
    a, b = torch.randn(3, 3), torch.randn(3, 5)
    for got, want in zip(slimfx.to_torch(g)(a, b), _TwoTowers()(a, b), strict=True):
        assert torch.equal(got, want)
    with pytest.raises(RuntimeInputError, match="symbol N"):
        slimfx.to_torch(g)(torch.randn(3, 3), torch.randn(2, 5))
    # different example batches: export gives the other its own symbol, fx (one batch
    # symbol) keeps it static
    other = slimfx.trace(_TwoTowers(), (torch.randn(4, 3), torch.randn(5, 5)), method=method)
    want = {"export": ["f32[N,3]", "f32[N2,5]"], "fx": ["f32[N,3]", "f32[5,5]"]}[method]
    assert [str(v.type) for v in other.inputs] == want


@pytest.mark.parametrize("method", ["export", "fx"])
def test_default_example_batch_of_one_stays_static(method: str, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="slimfx.frontends"):
        g = slimfx.trace(Cnn().eval(), torch.randn(1, 3, 8, 8), method=method)
    assert g.inputs[0].type.is_static and not g.symbols
    assert "dim 0 of input 'x' is static (1): the example size is 0 or 1" in caplog.text


def test_static_when_asked(monkeypatch) -> None:
    model, x = Cnn().eval(), torch.randn(2, 3, 8, 8)
    for method in ("export", "fx"):
        assert slimfx.trace(model, x, method=method, dynamic_shapes={}).inputs[0].type.is_static
    monkeypatch.setattr(slimfx.frontends, "DEFAULT_DYNAMIC_BATCH", False)
    assert slimfx.trace(model, x).inputs[0].type.is_static


def test_fx_method_gives_the_batch_symbol_export_gives() -> None:
    torch.manual_seed(0)
    model = Cnn().eval()
    spec = ({0: Dim("N", min=1, max=64)},)
    g = slimfx.trace(model, torch.randn(4, 3, 8, 8), method="fx", dynamic_shapes=spec)
    export = slimfx.trace(model, torch.randn(4, 3, 8, 8), dynamic_shapes=spec)
    def body(graph: slimfx.ir.Graph) -> list[str]:  # the methods order constants differently
        return [ln for ln in str(graph).splitlines() if not ln.startswith("  const ")]

    assert body(g) == body(export) and sorted(g.constants) == sorted(export.constants)
    for n in (1, 3, 7):
        _close(model, g, torch.randn(n, 3, 8, 8))
    tokens = Tokens().eval()
    t = slimfx.trace(tokens, (torch.randint(0, 50, (3, 6)), torch.ones(3, 6)), method="fx",
                     dynamic_shapes=({0: Dim.AUTO}, {0: Dim.AUTO}))
    assert "reshape(%mul) {shape=[N*6,16]} : f32[N*6,16]" in str(t)
    _close(tokens, t, torch.randint(0, 50, (5, 6)), torch.rand(5, 6))


class _Half(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[: x.shape[0] // 2]


class _SizedConstant(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.linspace(0, 1, x.shape[0]).unsqueeze(1)


@pytest.mark.parametrize("model, why", [
    (_Half(), r"attribute end of %\w+ .* is 2, 2, 3 at batch sizes 4, 5, 6, not a\*N \+ c"),
    (_SizedConstant(), r"constant %\w+ .*depends on the batch size"),
])
def test_fx_method_refuses_what_does_not_generalize(model: nn.Module, why: str) -> None:
    with pytest.raises(TraceError, match=why):
        slimfx.trace(model, torch.randn(4, 3), method="fx", dynamic_shapes=({0: Dim("N")},))
    with pytest.raises(TraceError, match="dim 0 .* only: use method=\"export\""):
        slimfx.trace(model, torch.randn(4, 3), method="fx", dynamic_shapes=({1: Dim("S")},))


def test_indexing_a_symbolic_axis_golden() -> None:
    class Ends(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return x[0], x[:, -1], x[:, -2:], x[:, :-1]

    g = slimfx.trace(Ends(), torch.randn(3, 7, 4),
                     dynamic_shapes=({0: Dim("B", min=1, max=9), 1: Dim("S", min=3, max=20)},))
    assert str(g) == """\
graph @main(%x: f32[B,S,4]) where B in [1, 9], S in [3, 20] {
  %select = select(%x) {axis=0, index=0} : f32[S,4]
  %slice = slice(%x) {axis=1, start=S - 1, end=S, step=1} : f32[B,1,4]
  %reshape = reshape(%slice) {shape=[B,4]} : f32[B,4]
  %slice_1 = slice(%x) {axis=1, start=S - 2, end=S, step=1} : f32[B,2,4]
  %slice_2 = slice(%x) {axis=1, start=0, end=S - 1, step=1} : f32[B,S - 1,4]
  return %select, %reshape, %slice_1, %slice_2
}
"""
    assert str(parse(str(g))) == str(g)
    y = torch.randn(5, 11, 4)
    for got, want in zip(slimfx.to_torch(g)(y), Ends()(y), strict=True):
        assert torch.equal(got, want)


class _Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(6, 8, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0 = x.new_zeros(1, x.shape[0], 8)  # a batch-sized zero state
        return self.lstm(x, (h0, h0))[0][:, -1]


@pytest.mark.parametrize("method", ["export", "fx"])
def test_batch_sized_zero_state_becomes_an_expanded_scalar(method: str) -> None:
    torch.manual_seed(0)
    model = _Recurrent().eval()
    g = slimfx.trace(model, torch.randn(4, 5, 6), method=method,
                     dynamic_shapes=({0: Dim("N", min=1, max=64)},))
    assert re.search(r"= expand\(%[\w.]+\) \{shape=\[1,N,8\]\} : f32\[1,N,8\]", str(g)), str(g)
    for n in (1, 3):
        _close(model, g, torch.randn(n, 5, 6))
