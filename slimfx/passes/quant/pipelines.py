"""Named quantization pipelines (DESIGN.md §1).

``ptq-int8`` is the *prepare* half of static int8: after it, calibrate the graph
(``calibrate`` on ``ctx.data``, or ``slimfx.calibrate``), optionally correct the biases
(``bias-correction``, which needs the calibration data) and run ``convert-int8``
(``quantize-dequantize,hoist-passthrough,qdq-to-int8``); :func:`slimfx.quantize` runs
all of it as one pipeline, :data:`PTQ_FULL`. ``ptq-int8-cle`` is ``ptq-int8`` with
``equalize-cross-layer`` after ``fold-bn``. ``ptq-int8-adaround`` is ``ptq-int8`` with
``adaround`` after the observers: :func:`slimfx.quantize` calibrates (and, with
``bias_correction=True``, corrects the biases) first, then AdaRound learns the rounding of
each weight on the same data, then ``convert-int8``. ``qat-int8`` is the ``ptq-int8`` preparation,
``calibrate`` and ``insert-fake-quant`` (see :func:`slimfx.prepare_qat`); ``qat-int8-bn``
the same with BatchNorm trained on batch statistics (``record-conv-bn`` first,
``insert-conv-bn`` last). ``convert-qat`` turns the trained graph into the integer
program (:func:`slimfx.convert`). The others are complete.
"""

from __future__ import annotations

from slimfx.passes.registry import register_pipeline

__all__ = ["PTQ_PREPARE", "PTQ_CLE_PREPARE", "PTQ_ADAROUND_PREPARE", "QAT_PREPARE", "QAT_BN_PREPARE", "CONVERT_INT8",
           "CONVERT_QAT", "PTQ_FULL"]

PTQ_PREPARE = "remove-identity,fold-bn,fuse-activation,dce,insert-observers"
CONVERT_INT8 = "quantize-dequantize,hoist-passthrough,qdq-to-int8"
PTQ_FULL = "ptq-int8,calibrate,convert-int8,dce"
"""What :func:`slimfx.quantize` runs by default (plus ``bias-correction`` when asked)."""

register_pipeline("convert-int8", CONVERT_INT8,
                  "calibrated observers (or QDQ) -> the exact integer program: "
                  "quantize-dequantize, hoist-passthrough, qdq-to-int8")

register_pipeline("ptq-int8", PTQ_PREPARE,
                  "static int8, prepare half: fold BN, fuse activations, insert observers; then "
                  "slimfx.calibrate and convert-int8")
PTQ_CLE_PREPARE = ("remove-identity,fold-bn,fuse-activation,dce,equalize-cross-layer,dce,"
                   "insert-observers")

register_pipeline("ptq-int8-cle", PTQ_CLE_PREPARE,
                  "static int8, prepare half, with cross-layer equalization of the weight ranges "
                  "after fold-bn (helps per-tensor weights); then slimfx.calibrate and "
                  "convert-int8")
PTQ_ADAROUND_PREPARE = PTQ_PREPARE + ",adaround"

register_pipeline("ptq-int8-adaround", PTQ_ADAROUND_PREPARE,
                  "static int8 with AdaRound: the ptq-int8 passes, then (after slimfx.quantize's "
                  "calibrate on ctx.data) adaround learns each weight's rounding up or down on "
                  "the same data; then convert-int8")
QAT_PREPARE = PTQ_PREPARE + ",calibrate,insert-fake-quant"

register_pipeline("qat-int8", QAT_PREPARE,
                  "quantization-aware training: the ptq-int8 passes, calibrate (on ctx.data), "
                  "then fake_quantize in place of each observer; slimfx.prepare_qat(graph, "
                  "data) runs it, slimfx.convert(trained module) gives the int8 program")
QAT_BN_PREPARE = "record-conv-bn," + QAT_PREPARE + ",insert-conv-bn"

CONVERT_QAT = "fold-conv-bn,fake-quant-to-qdq,hoist-passthrough,qdq-to-int8,dce"

register_pipeline("convert-qat", CONVERT_QAT,
                  "a trained QAT graph -> the exact integer program (slimfx.convert runs it; "
                  "form='qdq' stops before qdq-to-int8)")
register_pipeline("qat-int8-bn", QAT_BN_PREPARE,
                  "qat-int8 with each conv2d -> batch_norm trained on batch statistics "
                  "(slimfx.prepare_qat(..., fold_bn='batch-stats'))")
register_pipeline("dynamic-int8", "quantize-dynamic-int8{per_token=true}",
                  "int8 weights, activation scales computed per row at run time (linear, "
                  "matmul, RNNs)")
register_pipeline("fp16", "fold-bn,dce,cast-half{dtype=f16}", "fold BN in fp32, then fp16 weights "
                  "and activations; softmax, norms and reductions stay fp32")
register_pipeline("bf16", "fold-bn,dce,cast-half{dtype=bf16}", "fold BN in fp32, then bf16 weights "
                  "and activations; softmax, norms and reductions stay fp32")
