"""Whole models through TVM: the foundation's suite of ``transformers`` architectures and the
project's own zoo, compiled for x86 in fp32 (within 1e-4 of eager, relative to the output
scale) and in fp16 (within fp16 tolerance)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._pytree import tree_leaves

tvm = pytest.importorskip("tvm", reason="the TVM backend needs apache-tvm")

import slimfx  # noqa: E402
from slimfx.models import get_model  # noqa: E402
from tests.models.test_zoo import TINY  # noqa: E402
from tests.models.zoo_hf import HF_MODELS, hf_model  # noqa: E402

pytestmark = [pytest.mark.tvm, pytest.mark.slow]

NO_DB = "/nonexistent-slimfx-db"  # no tuning records: the default schedules


def _leaves(x: object) -> list[torch.Tensor]:
    return [t.detach().float() for t in tree_leaves(x) if isinstance(t, torch.Tensor)]


def _check(name: str, ref: list[torch.Tensor], out: list[torch.Tensor], rel: float) -> None:
    assert len(out) == len(ref), name
    for i, (r, o) in enumerate(zip(ref, out, strict=True)):
        assert o.shape == r.shape, (name, i)
        err = (o.float() - r).abs().max().item()
        assert err <= rel * max(1.0, r.abs().max().item()), f"{name}[{i}]: max abs error {err}"


@pytest.mark.parametrize("name", HF_MODELS)
def test_hf_model_fp32_on_x86_matches_eager(name: str) -> None:
    pytest.importorskip("transformers")
    model, inputs = hf_model(name)
    g = slimfx.trace(model, inputs)
    compiled = slimfx.compile(g, "x86", tuning_db=NO_DB, progress=False)
    with torch.no_grad():
        ref = _leaves(model(**inputs))
    _check(name, ref, _leaves(compiled(*inputs.values())), 1e-4)


@pytest.mark.parametrize("name", sorted(TINY))
def test_zoo_model_fp32_on_x86_matches_eager(name: str) -> None:
    options, _ = TINY[name]
    model, inputs = get_model(name, batch_size=2, **options)
    g = slimfx.trace(model, inputs)
    compiled = slimfx.compile(g, "x86", tuning_db=NO_DB, progress=False)
    with torch.no_grad():
        ref = _leaves(model(*inputs))
    _check(name, ref, _leaves(compiled(*inputs)), 1e-4)


@pytest.mark.parametrize("name", [*HF_MODELS, *sorted(TINY)])
def test_fp16_on_x86_matches_eager(name: str) -> None:
    """fp16 (softmax, norms and reductions kept fp32) compiled for x86: the error stays
    within a few fp16 ulps of the output scale."""
    if name in TINY:
        options, _ = TINY[name]
        model, args = get_model(name, batch_size=2, **options)
        g = slimfx.trace(model, args)
        feeds = list(args)
        with torch.no_grad():
            ref = _leaves(model(*feeds))
    else:
        pytest.importorskip("transformers")
        model, inputs = hf_model(name)
        g = slimfx.trace(model, inputs)
        feeds = list(inputs.values())
        with torch.no_grad():
            ref = _leaves(model(**inputs))
    g16 = slimfx.quantize(g, pipeline="fp16")
    compiled = slimfx.compile(g16, "x86", tuning_db=NO_DB, progress=False)
    _check(name, ref, _leaves(compiled(*feeds)), 2e-2)


def _at_batch(inputs: dict[str, torch.Tensor], b: int, seed: int) -> dict[str, torch.Tensor]:
    """Inputs like ``inputs`` at batch ``b``: fresh values (masks: the last sample padded)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in inputs.items():
        shape = (b, *v.shape[1:])
        if v.is_floating_point():
            out[k] = torch.randn(shape, generator=gen, dtype=v.dtype)
        elif "mask" in k:
            m = torch.ones(shape, dtype=v.dtype)
            m[-1, ..., max(1, shape[-1] * 2 // 3):] = 0
            out[k] = m
        else:
            out[k] = torch.randint(0, int(v.max()) + 1, shape, generator=gen, dtype=v.dtype)
    return out


@pytest.mark.parametrize("name", HF_MODELS)
def test_hf_model_traced_with_a_dynamic_batch_compiles_once_for_every_size(name: str) -> None:
    """Traced with a dynamic batch (every input's dim 0), compiled without ``shapes=``: the
    batch symbol is per sample (masks' batch index, merged rows, RNN-free, cumsum/gather
    along the sequence), so one build serves batches 1 and 3 within 1e-4 of eager."""
    pytest.importorskip("transformers")
    from slimfx.backends.tvm.specialize import batch_symbols

    model, inputs = hf_model(name)
    n = torch.export.Dim("N", min=1, max=16)
    g = slimfx.trace(model, inputs, dynamic_shapes={k: {0: n} for k in inputs})
    assert batch_symbols(g) == {"N": None}
    compiled = slimfx.compile(g, "x86", tuning_db=NO_DB, progress=False)
    assert compiled.batch == "N"
    for b in (1, 3):
        x = _at_batch(inputs, b, seed=b)
        with torch.no_grad():
            ref = _leaves(model(**x))
        _check(f"{name}@{b}", ref, _leaves(compiled(**x)), 1e-4)
