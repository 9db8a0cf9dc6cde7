"""The TVM backend: IR -> Relax -> native code for x86, ARM and CUDA (DESIGN.md §6).

``compile(graph, target)`` lowers a graph (one lowering per op, see :mod:`.lower`),
optionally tunes it with meta-schedule (:mod:`.tuning`) and builds a :class:`Compiled`
model; ``load(path)`` reads a saved one (:mod:`.artifact`). Names are imported lazily so
that importing this package does not import TVM.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "compile": "slimfx.backends.tvm.build",
    "load": "slimfx.backends.tvm.artifact",
    "sha256_file": "slimfx.backends.tvm.artifact",
    "Compiled": "slimfx.backends.tvm.compiled",
    "BenchmarkResult": "slimfx.backends.tvm.compiled",
    "TensorSpec": "slimfx.backends.tvm.compiled",
    "ProfileReport": "slimfx.backends.tvm.profile",
    "ProfileRow": "slimfx.backends.tvm.profile",
    "register_lowering": "slimfx.backends.tvm.lower",
    "has_lowering": "slimfx.backends.tvm.lower",
    "lower_graph": "slimfx.backends.tvm.lower",
    "register_opaque_lowering": "slimfx.backends.tvm.lower_opaque",
    "LowerContext": "slimfx.backends.tvm.lower",
    "resolve_target": "slimfx.backends.tvm.targets",
    "KNOWN_TARGETS": "slimfx.backends.tvm.targets",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'slimfx.backends.tvm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
