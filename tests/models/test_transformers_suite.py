"""Tiny ``transformers`` models through ``slimfx.trace`` (torch.export): the graph verifies,
runs equal to eager (every tensor leaf of the output) and its text form round-trips."""

from __future__ import annotations

import pytest
import torch
from torch.utils._pytree import tree_leaves

import slimfx
from slimfx.ir import parse
from tests.models.zoo_hf import HF_MODELS, hf_model

pytest.importorskip("transformers")


def _leaves(x: object) -> list[torch.Tensor]:
    return [t for t in tree_leaves(x) if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("name", HF_MODELS)
def test_hf_model_traces_and_matches_eager(name: str) -> None:
    model, inputs = hf_model(name)
    g = slimfx.trace(model, inputs)
    g.verify()
    assert [v.name for v in g.inputs] == list(inputs)
    with torch.no_grad():
        ref = _leaves(model(**inputs))
        out = _leaves(slimfx.to_torch(g)(*inputs.values()))
    assert len(out) == len(ref)
    for r, o in zip(ref, out, strict=True):
        assert o.shape == r.shape
        tol = 1e-5 * max(1.0, r.abs().max().item())
        assert (o - r).abs().max().item() <= tol
    text = str(g)
    assert str(parse(text, {k: v.const for k, v in g.constants.items()})) == text
    # the bulk of the model is normalised: attention/convolution layers are real IR ops
    kinds = {n.op.name for n in g.nodes}
    assert kinds & {"linear", "conv2d", "conv1d", "matmul", "sdpa"}
    opaque = [n for n in g.nodes if n.op.name == "opaque"]
    assert len(opaque) <= 3, [n.attrs["target"] for n in opaque]
