"""Models of the graph-level fuzz campaign (``fuzz_graphs.py``) whose mismatch was triaged.

``dynamic_int8_attention_714`` (campaign G2, seed 12, model 13 of ``draw_specs(500, 15)``):
dynamic-int8 on ``x[2,7,5,5] concat[1,2] conv[4,5,1,0] concat[1,2] head=attention
seed=714`` gave 1.33e-4 against the 1e-4 bound. Not a defect of the build: the float convs
before the attention differ from torch by fp32 accumulation order (<= 1.2e-6 at
``max|x| = 1.96``), and at the quantizer of q/k/v one element has ``x / s = 73.50001``
in torch and ``73.49992`` in the build (``s = max|row| / 127`` moves too), so it rounds to 74
vs 73: one int8 step of the linears' input, which softmax / layer norm / mean carry to every
output of that batch row (the Wav2Vec2 case of ``test_model_regressions.py`` again). The
campaign now checks dynamic-int8 split at the quantizers (``_explain_by_flips``): the torch
reference fed the build's quantizer inputs must match within the fp32 bound, and so must
every quantizer input. These tests reproduce the finding and show that the split check
still fails on a wrong output or a wrong float segment.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("tvm", reason="the TVM backend needs apache-tvm")

import slimfx  # noqa: E402
from tests.reliability.fuzz_graphs import (  # noqa: E402
    Bundle,
    GraphReport,
    ModelSpec,
    _close,
    _explain_by_flips,
    _with_quantizer_inputs,
    random_model,
)

pytestmark = pytest.mark.tvm

SPEC_714 = ModelSpec(batch=2, channels=7, size=5,
                     blocks=(("concat", (1, 2)), ("conv", (4, 5, 1, 0)), ("concat", (1, 2))),
                     head="attention", seed=714)


@pytest.fixture(scope="module")
def build_714():
    # the campaign's input: 4th model of a bundle whose generator is seeded with the first
    # model's seed (714 too), every earlier model drawing an x[2,7,5,5] as well
    gen = torch.Generator().manual_seed(714)
    x = [torch.randn(2, 7, 5, 5, generator=gen) * 2 for _ in range(4)][3]
    gp = slimfx.quantize(slimfx.trace(Bundle([random_model(SPEC_714)]).eval(), (x,)),
                         pipeline="dynamic-int8")
    ref = slimfx.to_torch(gp)(x).detach()
    gq, taps = _with_quantizer_inputs(gp)
    out = [torch.as_tensor(o) for o in slimfx.compile(gq, "x86")(x)]
    return x, ref, gq, taps, out[0], out[1:]


def test_714_end_to_end_exceeds_the_fp32_bound(build_714) -> None:
    _, ref, _, taps, got, _ = build_714
    assert [t.name for t in taps] == ["models.0.3.permute", "models.0.3.mean"]
    err = (ref - got).abs().max().item()
    assert 1e-4 < err < 1e-3  # one int8 step carried through attention, not noise
    assert _close(ref, got, 1e-4)


def test_714_is_one_rounding_flip_of_a_quantizer(build_714) -> None:
    x, ref, gq, taps, got, tapped = build_714
    report = GraphReport()
    assert _explain_by_flips(gq, taps, tapped, (x,), 0, got, "e2e", report, "m") == ""
    assert len(report.details) == 1 and "explained: 1 element(s)" in report.details[0]


def test_714_split_check_catches_a_wrong_output(build_714) -> None:
    x, _, gq, taps, got, tapped = build_714
    bad = got.clone()
    bad[0, 0] += 3e-4
    msg = _explain_by_flips(gq, taps, tapped, (x,), 0, bad, "e2e", GraphReport(), "m")
    assert "fed the build's quantizer inputs: max abs error 0.0003" in msg


def test_714_split_check_catches_a_wrong_float_segment(build_714) -> None:
    x, _, gq, taps, got, tapped = build_714
    wrong = [t.clone() for t in tapped]
    wrong[0][1, 3, 2] += 1e-3  # the conv stack's output, a q/k/v input
    msg = _explain_by_flips(gq, taps, wrong, (x,), 0, got, "e2e", GraphReport(), "m")
    assert "quantizer input %models.0.3.permute (fed reference): max abs error 0.001" in msg
