"""int8 models from ``transformers`` through TVM x86: the same integers as the torch backend.

DESIGN.md §4: the integer program is exact, so :func:`slimfx.compile` (x86) and
:func:`slimfx.to_torch` must produce the same integers for the same input. For each tiny
model of ``tests/models/zoo_hf_int8.py`` (ResNet, MobileNetV2, ConvNeXt, EfficientNet, Swin,
ViT, SegFormer, BERT with sdpa and with eager attention, DistilBERT, Wav2Vec2):

- ``ptq-int8``: calibrated on 4 random batches, run on a fifth batch drawn 1.25x wider than
  the calibration data (so activations saturate and the clamps act). Every graph output
  produced by a ``dequantize`` must be EQUAL (the same integers times the same scale);
  for an output computed in float after its last ``dequantize`` (a final LayerNorm, a
  tanh pooler) the integer inputs of those last ``dequantize`` nodes are made outputs too
  and must be EQUAL, and the float output itself may differ by float rounding only:
  at most ``1e-6`` of the output's scale (its largest magnitude);
- ``dynamic-int8`` (BERT with sdpa attention, DistilBERT, Wav2Vec2): no integer tensor
  leaves a kernel (activations are quantized at run time inside ``dynamic_linear``), and
  the float ops before a ``dynamic_linear`` (LayerNorm, GELU, ...) differ between torch and
  TVM by float rounding (a few 1e-7, relative); the run-time quantization turns such a
  difference into one quantization step of the input where a value sits at a rounding
  boundary (measured on Wav2Vec2: 3e-7 before ``q_proj``, 2e-3 after it, 2e-5 at the output).
  So the float outputs are held to ``1e-3`` of the output's scale, and
  ``tests/reliability/test_model_regressions.py`` checks that ``dynamic_linear`` itself is
  exact on identical inputs;
- sanity: the int8 reference is close to the fp32 eager model (cosine similarity above
  0.9 for ptq-int8, 0.99 for dynamic-int8), so a model quantized to garbage is noticed.

Two x86 code paths: the host's own target (``x86``: AVX-512 VNNI ``vpdpbusd`` kernels on
this Zen 4) and an AVX2-only target (``mcpu=haswell``: the ``vpmaddwd`` kernels), which runs
on any AVX2 host. The AVX2 path runs on a subset (``_AVX2``) to keep the suite's cost down.
One compile per model and path, with no tuning records.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils._pytree import tree_leaves

tvm = pytest.importorskip("tvm", reason="the TVM backend needs apache-tvm")
pytest.importorskip("transformers")

import slimfx  # noqa: E402
from slimfx.ir.core import Graph, Value  # noqa: E402
from tests.models.zoo_hf_int8 import INT8_MODELS, int8_model, random_batch  # noqa: E402

pytestmark = [pytest.mark.tvm, pytest.mark.slow]

NO_DB = "/nonexistent-slimfx-db"  # no tuning records: the default schedules
TARGETS: dict[str, Any] = {
    "vnni": "x86",
    "avx2": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell", "num-cores": 2},
}
_FEATURE = {"vnni": "avx512_vnni", "avx2": "avx2"}  # /proc/cpuinfo flag each path needs
PTQ, DYNAMIC = "ptq-int8", "dynamic-int8"
# (model, pipeline): every model static int8; the text/audio transformers dynamic int8 too
# (BERT with sdpa: its static int8 is the eager-attention variant's)
CASES = tuple((m, PTQ) for m in INT8_MODELS if m != "bert") + tuple(
    (m, DYNAMIC) for m in ("bert", "distilbert", "wav2vec2"))
# the AVX2 path on a subset (suite cost): im2col conv (ResNet), depthwise conv and linear
# with a layer scale (ConvNeXt), linear and attention matmuls (BERT eager); the dynamic
# int8 matmuls use the AVX2 kernel on both targets
_AVX2 = {("resnet", PTQ), ("convnext", PTQ), ("bert-eager", PTQ)}
# float outputs: max |TVM - torch| / max |torch| (dynamic int8: see the module docstring)
_FLOAT_TOL = {PTQ: 1e-6, DYNAMIC: 1e-3}
_COSINE = {PTQ: 0.9, DYNAMIC: 0.99}
_CALIBRATION = 4
_TEST_SCALE = 1.25  # the test batch is wider than the calibration batches


def _host_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _leaves(x: object) -> list[torch.Tensor]:
    return [t.detach() for t in tree_leaves(x) if isinstance(t, torch.Tensor)]


@functools.cache
def _model(name: str) -> tuple[Graph, dict[str, torch.Tensor], list[torch.Tensor]]:
    """The traced float graph, the test batch and the eager fp32 outputs on it."""
    model, inputs = int8_model(name)
    g = slimfx.trace(model, inputs)
    test = random_batch(inputs, seed=100, scale=_TEST_SCALE)
    with torch.no_grad():
        eager = [t.float() for t in _leaves(model(**test))]
    return g, test, eager


@functools.cache
def _quantized(name: str, pipeline: str) -> Graph:
    g, test, _ = _model(name)
    if pipeline == DYNAMIC:
        return slimfx.quantize(g, pipeline=pipeline)
    batches = [tuple(random_batch(test, seed=i).values()) for i in range(_CALIBRATION)]
    return slimfx.quantize(g, batches)


def _last_dequantizes(v: Value) -> list[Value]:
    """The ``dequantize`` results that the float value ``v`` is computed from, with no
    other ``dequantize`` in between (the start of the float tail of an output)."""
    found: list[Value] = []
    seen: set[int] = set()
    stack = [v]
    while stack:
        x = stack.pop()
        if id(x) in seen or x.producer is None:
            continue
        seen.add(id(x))
        if x.producer.op.name == "dequantize":
            found.append(x)
        else:
            stack.extend(i for i in x.producer.inputs if i.dtype.startswith(("f", "bf")))
    return found


def _checked(q: Graph) -> tuple[Graph, list[str]]:
    """A copy of ``q`` whose outputs also include the integer inputs of the last
    ``dequantize`` of every float tail; and, per output, how it is compared: ``equal``
    (integers, and dequantized integers) or ``float`` (within float rounding)."""
    g = q.clone()
    outputs, kinds = list(g.outputs), []
    extra: list[Value] = []
    for v in g.outputs:
        if not v.dtype.startswith(("f", "bf")) or v.producer.op.name == "dequantize":
            kinds.append("equal")
            continue
        kinds.append("float")
        for dq in _last_dequantizes(v):
            x = dq.producer.inputs[0]
            if all(x is not o for o in outputs + extra):
                extra.append(x)
    g.set_outputs(outputs + extra)
    if g.output_names is not None:
        g.output_names = [*g.output_names, *(x.name for x in extra)]
    return g, kinds + ["equal"] * len(extra)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(),
                                                       b.flatten().double(), dim=0))


def _cases() -> list[Any]:
    return [pytest.param(name, pipeline, isa, id=f"{name}-{pipeline}-{isa}")
            for name, pipeline in CASES for isa in TARGETS
            if isa == "vnni" or (name, pipeline) in _AVX2]


@pytest.mark.parametrize(("name", "pipeline", "isa"), _cases())
def test_int8_model_on_x86_equals_torch(name: str, pipeline: str, isa: str) -> None:
    if _FEATURE[isa] not in _host_flags():
        pytest.skip(f"this CPU has no {_FEATURE[isa]}: the {isa} kernels cannot run here")
    _, test, eager = _model(name)
    q = _quantized(name, pipeline)
    g, kinds = _checked(q)
    feeds = list(test.values())
    with torch.no_grad():
        ref = _leaves(slimfx.to_torch(g, trainable=False)(*feeds))
    compiled = slimfx.compile(g, TARGETS[isa], tuning_db=NO_DB, progress=False)
    got = compiled(*feeds)
    got = [got] if len(g.outputs) == 1 else list(got)
    assert len(got) == len(ref) == len(kinds)
    for out, r, o, kind in zip(g.outputs, ref, got, kinds, strict=True):
        o = torch.as_tensor(np.asarray(o))
        assert o.dtype == r.dtype and o.shape == r.shape, out.name
        if kind == "equal":
            differ = int((o != r).sum())
            assert differ == 0, f"{name}: {differ} of {r.numel()} values of %{out.name} differ"
        else:
            err = float((o - r).abs().max())
            scale = float(r.abs().max())
            assert err <= _FLOAT_TOL[pipeline] * scale, \
                f"{name}: %{out.name} off by {err} (scale {scale})"
    assert any(k == "equal" for k in kinds) or pipeline == DYNAMIC
    for i, e in enumerate(eager):  # the graph's own outputs come first, in the eager order
        cos = _cosine(ref[i].float(), e)
        assert cos > _COSINE[pipeline], f"{name}/{pipeline}: output {i} cosine {cos:.4f} vs fp32"
