"""Quantization (DESIGN.md §4): QConfig, observers, calibration, QDQ, the exact int8
program, dynamic int8 and fp16/bf16.

Passes: ``insert-observers``, ``calibrate``, ``quantize-dequantize``,
``hoist-passthrough``, ``qdq-to-int8``, ``quantize-dynamic-int8``, ``cast-half``,
``bias-correction``, ``insert-fake-quant``, ``record-conv-bn``, ``insert-conv-bn``,
``equalize-cross-layer``, ``absorb-bias``, ``smooth-quant``, ``adaround``.
Pipelines: ``ptq-int8`` (prepare half), ``ptq-int8-cle``, ``ptq-int8-adaround``,
``convert-int8``, ``qat-int8``, ``qat-int8-bn``, ``dynamic-int8``, ``fp16``, ``bf16``.
Functions: :func:`calibrate`, :func:`quantize`, :func:`report`, :func:`prepare_qat`,
:func:`convert` (quantization-aware training), :func:`sensitivity` (per-layer
sensitivity to quantization), :func:`mixed_precision` and :class:`Budget` (float/int8 per
layer under an accuracy budget).
"""

from __future__ import annotations

from slimfx.passes.quant import pipelines as _pipelines  # noqa: F401  (named pipelines)
from slimfx.passes.quant.adaround import AdaRound, adaround
from slimfx.passes.quant.api import prepare_ptq, quantize
from slimfx.passes.quant.bias_correction import BiasCorrection, bias_correction
from slimfx.passes.quant.calibrate import Calibrate, calibrate
from slimfx.passes.quant.cast_fp16 import CastHalf
from slimfx.passes.quant.convert_int8 import QdqToInt8
from slimfx.passes.quant.dynamic_int8 import QuantizeDynamicInt8
from slimfx.passes.quant.equalize_cross_layer import (
    AbsorbBias,
    EqualizeCrossLayer,
    equalize_cross_layer,
)
from slimfx.passes.quant.hoist_passthrough import HoistPassthrough
from slimfx.passes.quant.insert_fake_quant import InsertFakeQuant
from slimfx.passes.quant.insert_observers import InsertObservers
from slimfx.passes.quant.mixed_precision import Budget, MixedPrecisionResult, mixed_precision
from slimfx.passes.quant.qat import convert, prepare_qat
from slimfx.passes.quant.qconfig import OpQConfig, QConfig, QScheme
from slimfx.passes.quant.quantize_dequantize import QuantizeDequantize
from slimfx.passes.quant.report import report
from slimfx.passes.quant.sensitivity import SensitivityReport, sensitivity
from slimfx.passes.quant.smooth_quant import SmoothQuant, smooth_quant

__all__ = [
    "AbsorbBias",
    "AdaRound",
    "Budget",
    "BiasCorrection",
    "Calibrate",
    "CastHalf",
    "EqualizeCrossLayer",
    "HoistPassthrough",
    "InsertFakeQuant",
    "InsertObservers",
    "MixedPrecisionResult",
    "OpQConfig",
    "QdqToInt8",
    "QConfig",
    "QScheme",
    "QuantizeDequantize",
    "QuantizeDynamicInt8",
    "SensitivityReport",
    "SmoothQuant",
    "adaround",
    "bias_correction",
    "calibrate",
    "convert",
    "equalize_cross_layer",
    "mixed_precision",
    "prepare_ptq",
    "prepare_qat",
    "quantize",
    "report",
    "sensitivity",
    "smooth_quant",
]
