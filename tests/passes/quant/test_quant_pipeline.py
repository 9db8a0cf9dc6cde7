"""Quantization as one pipeline: every step of slimfx.quantize / prepare_qat is a pass under
one PassContext (instruments see them all), and each pass's ``requires`` names what must
run first (calibrate, quantize-dequantize, hoist-passthrough, qdq-to-int8, ...)."""

from __future__ import annotations

import pytest
import torch

import slimfx
from slimfx.errors import PassError, QuantizationError
from slimfx.ir import Graph, TensorType
from slimfx.passes import Pipeline
from slimfx.passes.context import PassContext
from slimfx.passes.instruments import DumpToDir, Timing, VerifyAfterEach
from slimfx.passes.quant import QConfig
from slimfx.passes.quant.api import prepare_ptq
from slimfx.passes.quant.calibrate import calibrate
from slimfx.passes.quant.hoist_passthrough import hoistable
from slimfx.passes.quant.pipelines import PTQ_PREPARE
from slimfx.passes.quant.quantize_dequantize import observers_to_qdq

PTQ_STEPS = ["remove-identity", "fold-bn", "fuse-activation", "dce", "insert-observers",
             "calibrate", "quantize-dequantize", "hoist-passthrough", "qdq-to-int8", "dce"]
QAT_STEPS = ["remove-identity", "fold-bn", "fuse-activation", "dce", "insert-observers",
             "calibrate", "insert-fake-quant"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _names(ctx: PassContext) -> list[str]:
    return [h.split("{")[0] for h in ctx.history]


def test_quantize_runs_every_step_under_one_context(digits, tmp_path):
    _, g, train, test, _ = digits
    timing, dump = Timing(), DumpToDir(tmp_path / "ptq")
    ctx = PassContext([timing, dump, VerifyAfterEach()])
    q = slimfx.quantize(g, train[:3], ctx=ctx)
    assert _names(ctx) == PTQ_STEPS
    assert [r.pass_.name for r in timing.records] == PTQ_STEPS
    assert len(dump.files) == len(PTQ_STEPS) + 1  # the input, then one per pass
    assert dump.files[-1].read_text() == str(q)
    assert "observer" in (tmp_path / "ptq" / "005-insert-observers.slimfx").read_text()
    assert "min_val=none" not in dump.files[6].read_text()  # after calibrate: ranges set
    with torch.no_grad():  # the same program as without a context
        assert torch.equal(slimfx.to_torch(q)(test[0]),
                           slimfx.to_torch(slimfx.quantize(g, train[:3]))(test[0]))
    ctx = PassContext()
    slimfx.quantize(g, train[:3], bias_correction=True, ctx=ctx)
    assert _names(ctx)[5:7] == ["calibrate", "bias-correction"]


def test_pipeline_strings_are_completed_with_visible_passes(digits):
    _, g, train, test, _ = digits
    ctx = PassContext()
    q = slimfx.quantize(g, train[:3], "fold-bn,insert-observers{weight_bits=4}", ctx=ctx)
    assert _names(ctx) == ["fold-bn", "insert-observers", "calibrate", "quantize-dequantize",
                           "hoist-passthrough", "qdq-to-int8", "dce"]
    ctx = PassContext()
    slimfx.quantize(g, train[:3], "fold-bn,insert-observers,quantize-dequantize", form="qdq",
                    ctx=ctx)
    assert _names(ctx)[-3:] == ["quantize-dequantize", "hoist-passthrough", "dce"]
    # the W4A8 options of the pass string give the program of the W4A8 QConfig
    w4 = slimfx.quantize(g, train[:3], PTQ_PREPARE.replace("insert-observers",
                                                           "insert-observers{weight_bits=4}"))
    ref = slimfx.quantize(g, train[:3], qconfig=QConfig.preset("x86", weight_bits=4))
    assert str(w4) == str(ref)
    assert {n.inputs[1].qparams.qmax for n in q.find("qconv2d")} == {7}


def test_prepare_qat_runs_every_step_under_one_context(digits, tmp_path):
    _, g, train, _, _ = digits
    dump = DumpToDir(tmp_path / "qat")
    ctx = PassContext([dump])
    gq = slimfx.prepare_qat(g, train[:3], ctx=ctx)
    assert _names(ctx) == QAT_STEPS and dump.files[-1].read_text() == str(gq)
    assert str(gq) == str(Pipeline("qat-int8").run(g.clone(), _with_data(train[:3])).graph)
    ctx = PassContext()
    gb = slimfx.prepare_qat(g, train[:3], fold_bn="batch-stats", ctx=ctx)
    assert _names(ctx) == ["record-conv-bn", *QAT_STEPS, "insert-conv-bn"]
    assert gb.find("conv2d_bn") and str(Pipeline("qat-int8-bn")) == "qat-int8-bn"
    with pytest.raises(QuantizationError, match="PassContext"):
        slimfx.prepare_qat(g, train[:3], ctx="dump")


def test_convert_runs_the_convert_qat_passes(digits):
    _, g, train, test, _ = digits
    gb = slimfx.prepare_qat(g, train[:3], fold_bn="batch-stats")
    ctx = PassContext([VerifyAfterEach()])
    g8 = slimfx.convert(gb, ctx=ctx)
    assert _names(ctx) == ["fold-conv-bn", "fake-quant-to-qdq", "hoist-passthrough",
                           "qdq-to-int8", "dce"]
    ctx = PassContext()
    gqdq = slimfx.convert(gb, form="qdq", ctx=ctx)
    assert "qdq-to-int8" not in _names(ctx) and gqdq.find("conv2d")
    assert str(Pipeline("qdq-to-int8,dce")(gqdq)) == str(g8)
    with pytest.raises(PassError, match="run 'fold-conv-bn' before 'fake-quant-to-qdq'"):
        Pipeline("fake-quant-to-qdq")(gb)


def _with_data(data) -> PassContext:
    ctx = PassContext()
    ctx.data = data  # type: ignore[attr-defined]
    return ctx


def test_convert_int8_is_a_named_pipeline_of_three_passes(digits):
    _, g, train, test, _ = digits
    assert [p.name for p in Pipeline("convert-int8").passes] == [
        "quantize-dequantize", "hoist-passthrough", "qdq-to-int8"]
    assert str(Pipeline("ptq-int8,convert-int8")) == "ptq-int8,convert-int8"
    prepared = prepare_ptq(g)
    calibrate(prepared, train[:3], progress=False)
    ctx = PassContext()
    q = Pipeline("convert-int8,dce").run(prepared.clone(), ctx).graph
    assert _names(ctx) == ["quantize-dequantize", "hoist-passthrough", "qdq-to-int8", "dce"]
    assert str(q) == str(slimfx.quantize(g, train[:3]))


# --------------------------------------------------------------------------- requires
def test_requires_name_the_pass_to_run_first(digits):
    _, g, train, _, _ = digits
    with pytest.raises(PassError, match="ctx.data"):
        Pipeline("ptq-int8,calibrate")(g)  # no data in the context
    with pytest.raises(PassError, match="run 'insert-observers' before 'calibrate'"):
        Pipeline("calibrate").run(g.clone(), _with_data(train[:1]))
    prepared = prepare_ptq(g)
    with pytest.raises(PassError, match="run 'calibrate' before it"):
        Pipeline("insert-fake-quant")(prepared)
    calibrate(prepared, train[:2], progress=False)
    with pytest.raises(PassError, match="run 'quantize-dequantize' and 'hoist-passthrough'"):
        Pipeline("qdq-to-int8")(prepared)
    with pytest.raises(PassError, match="run 'quantize-dequantize' before 'hoist-passthrough'"):
        Pipeline("hoist-passthrough")(prepared)
    qdq = prepared.clone()
    observers_to_qdq(qdq)
    assert [n.op.name for n in hoistable(qdq)] == ["max_pool2d", "reshape"]
    with pytest.raises(PassError, match=r"max_pool2d.*run 'hoist-passthrough' before"):
        Pipeline("qdq-to-int8")(qdq)
    gq = slimfx.prepare_qat(g, train[:2])
    with pytest.raises(PassError, match="run 'record-conv-bn' first"):
        Pipeline("insert-conv-bn")(gq)
    with pytest.raises(PassError, match="run 'insert-fake-quant' before it"):
        Pipeline("insert-conv-bn")(g)


def test_a_failing_step_raises_its_own_error_kind_with_the_pipeline_context(digits):
    _, g, train, _, _ = digits
    bad = [torch.full_like(train[0], float("nan"))]
    with pytest.raises(slimfx.errors.CalibrationError, match=r"pass 'calibrate' \(#5"):
        slimfx.quantize(g, bad)


# --------------------------------------------------------------------------- hoisting
def _pool_graph(axis: int | None) -> Graph:
    g = Graph("pool")
    x = g.add_input("x", TensorType((1, 2, 4, 4)))
    attrs = dict(dtype="i8", scale=[0.1] if axis is None else [0.1, 0.2],
                 zero_point=[3] if axis is None else [0, 0], axis=axis, qmin=-128, qmax=127)
    q = g.add("quantize", [x], attrs, name="xq")
    d = g.add("dequantize", [q], attrs, name="xdq")
    y = g.add("max_pool2d", [d], dict(kernel=[2, 2], stride=[2, 2], padding=[0, 0],
                                      dilation=[1, 1]), name="pool")
    g.set_outputs([g.add("reshape", [y], dict(shape=[1, 8]), name="flat")])
    g.verify()
    return g


def test_hoist_passthrough_moves_the_chain_onto_int8():
    g = _pool_graph(None)
    out = Pipeline("hoist-passthrough")(g)
    ops = [(n.op.name, n.outputs[0].dtype) for n in out.nodes]
    assert ops == [("quantize", "i8"), ("max_pool2d", "i8"), ("reshape", "i8"),
                   ("dequantize", "f32")]
    x = torch.randn(1, 2, 4, 4) * 3
    assert torch.equal(slimfx.to_torch(out)(x), slimfx.to_torch(g)(x))  # exact
    per_channel = _pool_graph(1)  # the rule must not fire: max does not commute per channel
    assert str(Pipeline("hoist-passthrough")(per_channel)) == str(per_channel)
    assert not hoistable(per_channel)
