"""Dynamic shapes on third-party models (tiny random ``transformers`` configs).

A sentence model traced on 20 sentences of 12 tokens runs on 3 sentences (and other
lengths declared with ``Dim``): ``position_ids[:, :S]`` becomes a slice with a symbolic
end, ``arange(S)`` a slice of a constant, ``ones(B, S)`` an expanded scalar.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch.export import Dim

import slimfx
from slimfx.errors import RuntimeInputError
from slimfx.frontends.lower import ARANGE_CAP

transformers = pytest.importorskip("transformers")

_TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             vocab_size=100, max_position_embeddings=64)


def _text(b: int, s: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (b, s), generator=gen)
    mask = torch.ones(b, s, dtype=torch.int64)
    mask[0, s // 2:] = 0  # padding, so the mask matters
    return ids, mask


@pytest.fixture(scope="module")
def bert() -> tuple[torch.nn.Module, slimfx.ir.Graph]:
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(**_TEXT)).eval()
    ids, mask = _text(20, 12)
    dims = {0: Dim("B", min=1, max=64), 1: Dim("S", min=1, max=64)}
    g = slimfx.trace(model, {"input_ids": ids, "attention_mask": mask},
                     dynamic_shapes={"input_ids": dims, "attention_mask": dims})
    return model, g


@pytest.mark.slow
def test_bert_traced_on_20_sentences_runs_on_3(bert) -> None:
    model, g = bert
    assert str(g).splitlines()[0] == ("graph @main(%input_ids: i64[B,S], %attention_mask: "
                                      "i64[B,S]) where B in [1, 64], S in [1, 64] {")
    m = slimfx.to_torch(g)
    for b, s in ((3, 12), (1, 5), (7, 33)):
        ids, mask = _text(b, s, seed=b)
        with torch.no_grad():
            want = model(input_ids=ids, attention_mask=mask).last_hidden_state
            got = m(ids, mask)[0]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_bert_dynamic_int8_equals_static_traces(bert) -> None:
    model, g = bert
    q = slimfx.to_torch(slimfx.quantize(g, pipeline="dynamic-int8"))
    for b, s in ((3, 12), (2, 7)):
        ids, mask = _text(b, s, seed=s)
        static = slimfx.trace(model, {"input_ids": ids, "attention_mask": mask})
        ref = slimfx.to_torch(slimfx.quantize(static, pipeline="dynamic-int8"))
        with torch.no_grad():
            assert torch.equal(q(ids, mask)[0], ref(ids, mask)[0]), (b, s)


def test_arange_over_a_symbol_is_a_slice_of_a_constant(caplog) -> None:
    class Positions(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.arange(x.shape[1])

    g = slimfx.trace(Positions(), torch.zeros(2, 5, dtype=torch.int64),
                     dynamic_shapes=({1: Dim("S", max=40)},))
    assert "slice(%arange) {axis=0, start=0, end=S, step=1} : i64[S]" in str(g)
    x = torch.randint(0, 9, (2, 31))
    assert torch.equal(slimfx.to_torch(g)(x), Positions()(x))
    with caplog.at_level(logging.INFO, logger="slimfx.frontends"):
        auto = slimfx.trace(Positions(), torch.zeros(2, 5, dtype=torch.int64),
                            dynamic_shapes=({1: Dim.AUTO},))
    assert auto.symbols["S"].max == ARANGE_CAP and "gets the upper bound 8192" in caplog.text
    with pytest.raises(RuntimeInputError, match=r"size 8193 is outside the range of symbol S"):
        slimfx.to_torch(auto)(torch.zeros(2, ARANGE_CAP + 1, dtype=torch.int64))


@pytest.mark.slow
def test_default_dynamic_batch_serves_a_sentence_model() -> None:
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(**_TEXT)).eval()
    ids, mask = _text(20, 12)
    g = slimfx.trace(model, {"input_ids": ids, "attention_mask": mask})
    # Dim.AUTO per input gives each input's batch its own torch symbol here; inputs of
    # one example batch share one graph symbol
    assert [str(v.type) for v in g.inputs] == ["i64[N,12]", "i64[N,12]"]
    with pytest.raises(RuntimeInputError, match="symbol N"):
        slimfx.to_torch(g)(*_text(3, 12)[:1], _text(4, 12)[1])
    ids, mask = _text(3, 12, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(slimfx.to_torch(g)(ids, mask)[0],
                                   model(input_ids=ids, attention_mask=mask).last_hidden_state,
                                   rtol=1e-5, atol=1e-5)


def test_resnet_any_batch() -> None:
    torch.manual_seed(0)
    cfg = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16],
                                    depths=[1, 1], layer_type="basic")
    model = transformers.ResNetModel(cfg).eval()
    g = slimfx.trace(model, torch.randn(4, 3, 32, 32),
                     dynamic_shapes=({0: Dim.AUTO},))
    assert str(g.inputs[0].type) == "f32[N,3,32,32]"
    m = slimfx.to_torch(g)
    for b in (1, 3, 7):
        x = torch.randn(b, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(m(x)[0], model(x).last_hidden_state, rtol=1e-5,
                                       atol=1e-5)
