"""Named quantization pipelines (DESIGN.md §1).

``ptq-int8`` is the *prepare* half of static int8: after it, calibrate the graph
(``slimfx.calibrate``), optionally correct the biases (``bias-correction``, which needs
the calibration data) and run ``convert-int8``; :func:`slimfx.quantize` does all of it.
The others are complete.
"""

from __future__ import annotations

from slimfx.passes.registry import register_pipeline

__all__ = ["PTQ_PREPARE"]

PTQ_PREPARE = "remove-identity,fold-bn,fuse-activation,dce,insert-observers"

register_pipeline("ptq-int8", PTQ_PREPARE,
                  "static int8, prepare half: fold BN, fuse activations, insert observers; then "
                  "slimfx.calibrate and convert-int8")
register_pipeline("dynamic-int8", "quantize-dynamic-int8{per_token=true}",
                  "int8 weights, activation scales computed per row at run time (linear, "
                  "matmul, RNNs)")
register_pipeline("fp16", "fold-bn,dce,cast-half{dtype=f16}", "fold BN in fp32, then fp16 weights "
                  "and activations; softmax, norms and reductions stay fp32")
register_pipeline("bf16", "fold-bn,dce,cast-half{dtype=bf16}", "fold BN in fp32, then bf16 weights "
                  "and activations; softmax, norms and reductions stay fp32")
