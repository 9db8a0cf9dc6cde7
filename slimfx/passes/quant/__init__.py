"""Quantization (DESIGN.md §4): QConfig, observers, calibration, QDQ, the exact int8
program, dynamic int8 and fp16/bf16.

Passes: ``insert-observers``, ``quantize-dequantize``, ``convert-int8``,
``quantize-dynamic-int8``, ``cast-half``, ``bias-correction``, ``insert-fake-quant``.
Pipelines: ``ptq-int8`` (prepare half), ``qat-int8``, ``dynamic-int8``, ``fp16``, ``bf16``.
Functions: :func:`calibrate`, :func:`quantize`, :func:`report`, :func:`prepare_qat`,
:func:`convert` (quantization-aware training).
"""

from __future__ import annotations

from slimfx.passes.quant import pipelines as _pipelines  # noqa: F401  (named pipelines)
from slimfx.passes.quant.api import prepare_ptq, quantize
from slimfx.passes.quant.bias_correction import BiasCorrection, bias_correction
from slimfx.passes.quant.calibrate import calibrate
from slimfx.passes.quant.cast_fp16 import CastHalf
from slimfx.passes.quant.convert_int8 import ConvertInt8
from slimfx.passes.quant.dynamic_int8 import QuantizeDynamicInt8
from slimfx.passes.quant.insert_fake_quant import InsertFakeQuant
from slimfx.passes.quant.insert_observers import InsertObservers
from slimfx.passes.quant.qat import convert, prepare_qat
from slimfx.passes.quant.qconfig import OpQConfig, QConfig, QScheme
from slimfx.passes.quant.quantize_dequantize import QuantizeDequantize
from slimfx.passes.quant.report import report

__all__ = [
    "BiasCorrection",
    "CastHalf",
    "ConvertInt8",
    "InsertFakeQuant",
    "InsertObservers",
    "OpQConfig",
    "QConfig",
    "QScheme",
    "QuantizeDequantize",
    "QuantizeDynamicInt8",
    "bias_correction",
    "calibrate",
    "convert",
    "prepare_ptq",
    "prepare_qat",
    "quantize",
    "report",
]
