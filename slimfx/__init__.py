"""slimfx: one IR in which pruning, quantization and compilation meet.

Public API (DESIGN.md §1): ``trace``, ``Pipeline``, ``register_pass``,
``calibrate``, ``quantize``, ``to_torch``, ``compile``, ``load``; quantization-aware
training: ``prepare_qat``, ``convert``; per-layer sensitivity: ``sensitivity``; accuracy budgets: ``Budget``;
quantization configs: ``QConfig``, ``QScheme``, ``OpQConfig``. Names are
imported lazily so that ``import slimfx`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "trace": "slimfx.frontends",
    "Pipeline": "slimfx.passes",
    "register_pass": "slimfx.passes",
    "calibrate": "slimfx.passes.quant",
    "quantize": "slimfx.passes.quant",
    "report": "slimfx.passes.quant",
    "sensitivity": "slimfx.passes.quant",
    "prepare_qat": "slimfx.passes.quant",
    "convert": "slimfx.passes.quant",
    "QConfig": "slimfx.passes.quant",
    "Budget": "slimfx.passes.quant",
    "QScheme": "slimfx.passes.quant",
    "OpQConfig": "slimfx.passes.quant",
    "to_torch": "slimfx.backends.torch",
    "compile": "slimfx.backends.tvm",
    "load": "slimfx.backends.tvm",
    "Graph": "slimfx.ir",
    "SlimfxError": "slimfx.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'slimfx' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
