"""Every named quantization pipeline on the transformers models of the foundation suite.

For each tiny Hugging Face model (``tests/models/zoo_hf.py``) and each pipeline
(``ptq-int8`` through :func:`slimfx.quantize` with calibration and convert-int8,
``dynamic-int8``, ``fp16``, ``bf16``): the quantized graph verifies, lowers with
:func:`slimfx.to_torch`, runs, and stays numerically close to the fp32 graph:

- all outputs finite;
- fp16 / bf16: the first output within the dtype's tolerance of fp32
  (max error relative to the output's range);
- dynamic-int8: cosine similarity to fp32 above 0.99 (and something quantized when
  the model has linear/matmul layers);
- ptq-int8: integer ops really present (qlinear/qconv), cosine similarity above 0.9.

The fp32 reference is the eager model (the traced graph is checked against it
first). Random-init CNNs with BatchNorm (HF initialises BN weights and conv weights
with std 0.02, so activations vanish after a few blocks) get variance-preserving
conv weights and identity BatchNorms, so that their outputs are not ~1e-30 and the
comparison means something.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import slimfx
from slimfx.ir.core import Graph
from tests.models.zoo_hf import HF_MODELS, hf_model

pytest.importorskip("transformers")

PIPELINES = ("ptq-int8", "dynamic-int8", "fp16", "bf16")
# max |out - ref| / max |ref| of the first output
_HALF_TOL = {"fp16": 1e-2, "bf16": 6e-2}
_DYNAMIC_COS = 0.99
_PTQ_COS = 0.9
_DYNAMIC_OPS = {"linear", "matmul", "lstm", "gru"}
# the heaviest models on 2 cores (deep CNNs: tracing, calibration and fp16 convs on CPU)
_SLOW = {"mobilenet-v2", "efficientnet"}


def _rescale_batchnorm_cnn(model: nn.Module) -> None:
    """Variance-preserving conv/linear weights and identity BatchNorms (in place)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
        for bn in bns:
            bn.reset_parameters()  # weight 1, bias 0, running mean 0, running var 1


def _outputs(out: object) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for t in out if isinstance(t, torch.Tensor)]  # type: ignore[union-attr]


@functools.cache
def _traced(name: str) -> tuple[Graph, tuple[torch.Tensor, ...], torch.Tensor]:
    model, inputs = hf_model(name)
    _rescale_batchnorm_cnn(model)
    with torch.no_grad():
        eager = _outputs(model(**inputs))[0]
    g = slimfx.trace(model, inputs)
    args = tuple(inputs.values())
    with torch.no_grad():
        ref = _outputs(slimfx.to_torch(g, trainable=False)(*args))[0]
    torch.testing.assert_close(ref, eager, rtol=1e-4, atol=1e-5 * float(eager.abs().max()))
    assert float(eager.abs().max()) > 1e-5, f"{name}: degenerate output, nothing to compare"
    return g, args, ref


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(),
                                                 dim=0))


def _params() -> list:
    return [pytest.param(m, p, id=f"{m}-{p}",
                         marks=[pytest.mark.slow] if m in _SLOW else [])
            for m in HF_MODELS for p in PIPELINES]


@pytest.mark.parametrize(("model", "pipeline"), _params())
def test_pipeline_on_hf_model(model: str, pipeline: str) -> None:
    g, args, ref = _traced(model)
    before = str(g)
    if pipeline == "ptq-int8":
        q = slimfx.quantize(g, [args])
    else:
        q = slimfx.quantize(g, pipeline=pipeline)
    assert str(g) == before, "quantize must leave its input graph untouched"
    q.verify()
    ops = {n.op.name for n in q.nodes}
    with torch.no_grad():
        outs = _outputs(slimfx.to_torch(q, trainable=False)(*args))
    for i, o in enumerate(outs):
        assert torch.isfinite(o.float()).all(), f"{model}/{pipeline}: output {i} not finite"
    out = outs[0].float()
    assert out.shape == ref.shape
    cos = _cosine(out, ref)
    if pipeline in _HALF_TOL:
        assert "cast" in ops, f"{model}/{pipeline}: nothing was cast to half"
        err = float((out - ref).abs().max() / ref.abs().max())
        assert err < _HALF_TOL[pipeline], f"{model}/{pipeline}: rel err {err:.4f}"
    elif pipeline == "dynamic-int8":
        if {n.op.name for n in g.nodes} & _DYNAMIC_OPS:
            assert any(op.startswith("dynamic_") for op in ops), f"{model}: nothing quantized"
        else:  # a pure CNN: nothing for dynamic int8 to do
            assert ops == {n.op.name for n in g.nodes}
        assert cos > _DYNAMIC_COS, f"{model}/{pipeline}: cosine {cos:.4f}"
    else:
        assert ops & {"qlinear", "qconv1d", "qconv2d", "qmatmul"}, f"{model}: no integer ops"
        assert cos > _PTQ_COS, f"{model}/{pipeline}: cosine {cos:.4f}"
