"""Targets and argument specs of ``opaque`` nodes.

An opaque node keeps a torch callable by name (``target``) and its non-tensor
arguments as JSON (``spec``), with tensor operands written ``{"$in": i}``. Names
resolve without running user code: ``aten.*``/``prims.*`` through ``torch.ops``,
a fixed set of ``torch.*``/``operator.*``/``math.*`` functions by attribute
lookup, and anything else only if registered in this process with
:func:`register_target` (the frontend does that for user callables it traces).
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable
from typing import Any

import torch

from slimfx.errors import UnsupportedOpError
from slimfx.ir.types import DTYPES, dtype_from_torch

__all__ = ["register_target", "resolve_target", "target_name", "encode_spec", "decode_spec"]

_TARGETS: dict[str, Callable[..., Any]] = {}
_SAFE_ROOTS = {"torch": torch, "operator": operator, "math": math}


def register_target(name: str, fn: Callable[..., Any]) -> str:
    """Makes ``fn`` resolvable as ``name`` in this process."""
    _TARGETS[name] = fn
    return name


def target_name(fn: Any) -> str:
    """A resolvable name for a torch op or function; registers unknown callables."""
    if isinstance(fn, torch._ops.OpOverload):
        ns = fn.namespace
        return f"{ns}.{fn._schema.name.split('::')[-1]}.{fn._overloadname}"
    if isinstance(fn, str):  # a tensor method name from fx call_method
        return f"method.{fn}"
    module = getattr(fn, "__module__", None) or ""
    qual = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", repr(fn))
    if module.split(".")[0] in ("torch", "_operator", "operator", "math"):
        module = module.replace("_operator", "operator")
        name = f"{module}.{qual}"
        try:
            if resolve_target(name) is fn:
                return name
        except UnsupportedOpError:
            pass
        if module.startswith("torch"):
            for alias in (f"torch.{qual}", f"torch.nn.functional.{qual}", f"torch.Tensor.{qual}"):
                try:
                    if resolve_target(alias) is fn:
                        return alias
                except UnsupportedOpError:
                    continue
    name = f"user.{module}.{qual}"
    register_target(name, fn)
    return name


def resolve_target(name: str) -> Callable[..., Any]:
    """The callable for an opaque target name (never imports user modules)."""
    if name in _TARGETS:
        return _TARGETS[name]
    parts = name.split(".")
    if parts[0] == "method" and len(parts) == 2:
        method = parts[1]
        return lambda self, *a, **k: getattr(self, method)(*a, **k)
    try:
        if parts[0] in ("aten", "prims", "quantized_decomposed", "_c10d_functional"):
            obj: Any = getattr(torch.ops, parts[0])
            for p in parts[1:]:
                obj = getattr(obj, p)
            return obj
        if parts[0] in _SAFE_ROOTS:
            obj = _SAFE_ROOTS[parts[0]]
            for p in parts[1:]:
                obj = getattr(obj, p)
            if callable(obj):
                return obj
    except AttributeError:
        pass
    raise UnsupportedOpError(
        f"opaque target {name!r} cannot be resolved in this process: user functions must be "
        "registered with slimfx.ir.opaque.register_target(name, fn) before the graph is run")


def encode_spec(args: tuple[Any, ...], kwargs: dict[str, Any], tensor_index: Callable[[Any], int]) -> str:
    """JSON for call arguments; ``tensor_index`` maps a tensor argument to its operand index."""
    def enc(a: Any) -> Any:
        if a is None or isinstance(a, (bool, int, str)):
            return a
        if isinstance(a, float):
            return {"$float": repr(a)} if not math.isfinite(a) else a
        if isinstance(a, torch.dtype):
            return {"$dtype": dtype_from_torch(a)}
        if isinstance(a, torch.device):
            return {"$device": str(a)}
        if isinstance(a, torch.memory_format):
            return {"$memory_format": str(a).split(".")[-1]}
        if isinstance(a, torch.layout):
            return {"$layout": str(a).split(".")[-1]}
        if isinstance(a, tuple):
            return {"$tuple": [enc(x) for x in a]}
        if isinstance(a, list):
            return [enc(x) for x in a]
        if isinstance(a, slice):
            return {"$slice": [enc(a.start), enc(a.stop), enc(a.step)]}
        if a is Ellipsis:
            return {"$ellipsis": True}
        if isinstance(a, dict):
            return {"$dict": {k: enc(v) for k, v in a.items()}}
        return {"$in": tensor_index(a)}
    return json.dumps({"args": [enc(a) for a in args], "kwargs": {k: enc(v) for k, v in kwargs.items()}},
                      sort_keys=True)


def decode_spec(spec: str, inputs: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    """Rebuilds call arguments from a spec and the node's operand values."""
    def dec(a: Any) -> Any:
        if isinstance(a, list):
            return [dec(x) for x in a]
        if isinstance(a, dict):
            if "$in" in a:
                return inputs[a["$in"]]
            if "$float" in a:
                return float(a["$float"])
            if "$dtype" in a:
                return DTYPES[a["$dtype"]]
            if "$device" in a:
                return torch.device(a["$device"])
            if "$memory_format" in a:
                return getattr(torch, a["$memory_format"])
            if "$layout" in a:
                return getattr(torch, a["$layout"])
            if "$tuple" in a:
                return tuple(dec(x) for x in a["$tuple"])
            if "$slice" in a:
                return slice(*(dec(x) for x in a["$slice"]))
            if "$ellipsis" in a:
                return Ellipsis
            if "$dict" in a:
                return {k: dec(v) for k, v in a["$dict"].items()}
        return a
    data = json.loads(spec)
    return [dec(a) for a in data["args"]], {k: dec(v) for k, v in data["kwargs"].items()}
