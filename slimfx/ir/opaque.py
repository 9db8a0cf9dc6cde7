"""Targets and argument specs of ``opaque`` nodes.

An opaque node keeps a torch callable by name (``target``) and its non-tensor
arguments as JSON (``spec``), with tensor operands written ``{"$in": i}``.

Names resolve without running code and without walking attributes of modules:

- ``ns.op.overload`` (or ``ns.op``) names a torch operator overload (or packet)
  of an allowlisted ``torch.ops`` namespace (:data:`FILE_NAMESPACES`), checked to
  be an ``OpOverload``/``OpOverloadPacket`` of that very operator; the few ops
  that touch files (``aten::save``, ``aten::from_file``) are refused;
- any other name only if registered in this process: by the user with
  :func:`register_target`, or by the frontend when it traces a callable that is
  not an operator overload (:func:`target_name`).

Graphs read from files (:func:`slimfx.ir.load_graph`) may name only operator
overloads and targets the user registered with :func:`register_target`
(:func:`check_file_target`); their specs are checked by :func:`check_spec`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

import torch

from slimfx.errors import UnsupportedOpError
from slimfx.ir.types import DTYPES, dtype_from_torch

__all__ = ["FILE_NAMESPACES", "register_target", "resolve_target", "target_name",
           "check_file_target", "encode_spec", "decode_spec", "check_spec"]

#: ``torch.ops`` namespaces whose operator overloads a graph file may name.
FILE_NAMESPACES: dict[str, Any] = {
    "aten": torch.ops.aten,
    "prims": torch.ops.prims,
    "quantized": torch.ops.quantized,
    "quantized_decomposed": torch.ops.quantized_decomposed,
}
# Operators of those namespaces that read or write files: never resolved by name.
_REFUSED = frozenset({"aten::save", "aten::from_file", "aten::_print"})
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_MAX_SPEC_DEPTH = 32

_USER: dict[str, Callable[..., Any]] = {}  # register_target: the user vouches for these
_TRACED: dict[str, Callable[..., Any]] = {}  # target_name: this process traced these

_MEMORY_FORMATS = {str(m).split(".")[-1]: m for m in (
    torch.contiguous_format, torch.channels_last, torch.channels_last_3d, torch.preserve_format)}
_LAYOUTS = {str(m).split(".")[-1]: m for m in (torch.strided, torch.sparse_coo)}


def register_target(name: str, fn: Callable[..., Any]) -> str:
    """Makes ``fn`` resolvable as ``name`` in this process, graph files included.

    Registering a name says the process trusts it: a loaded graph file that names
    it will call ``fn``.
    """
    if not callable(fn):
        raise TypeError(f"register_target: {fn!r} is not callable")
    _USER[name] = fn
    return name


def _method_caller(method: str) -> Callable[..., Any]:
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, method)(*args, **kwargs)
    return call


def target_name(fn: Any) -> str:
    """A resolvable name for a torch op or a traced callable.

    Operator overloads get their ``ns.op.overload`` name. Other callables (and
    tensor method names from fx ``call_method``) are registered for this process
    under a readable name (``torch.sin``, ``method.view``, ``user.<module>.<name>``).
    """
    if isinstance(fn, torch._ops.OpOverload):
        ns = fn.namespace
        return f"{ns}.{fn._schema.name.split('::')[-1]}.{fn._overloadname}"
    if isinstance(fn, torch._ops.OpOverloadPacket):
        ns, _, op = fn._qualified_op_name.partition("::")
        return f"{ns}.{op}"
    if isinstance(fn, str):  # a tensor method name from fx call_method
        name = f"method.{fn}"
        _TRACED.setdefault(name, _method_caller(fn))
        return name
    module = getattr(fn, "__module__", None) or ""
    qual = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", repr(fn))
    root = module.split(".")[0]
    if root in ("torch", "_operator", "operator", "math"):
        name = f"{module.replace('_operator', 'operator')}.{qual}"
    else:
        name = f"user.{module}.{qual}"
    for alias, home in (("torch", torch), ("torch.nn.functional", torch.nn.functional),
                        ("torch.Tensor", torch.Tensor)):
        short = getattr(fn, "__name__", None)
        if isinstance(short, str) and getattr(home, short, None) is fn:  # torch's own
            name = f"{alias}.{short}"
            break
    for table in (_USER, _TRACED):
        if table.get(name) is fn:
            return name
    base, i = name, 1
    while name in _USER or name in _TRACED:  # another callable has that name already
        name = f"{base}#{i}"
        i += 1
    _TRACED[name] = fn
    return name


def _operator(name: str) -> Any:
    """The allowlisted torch operator overload (or packet) called ``name``; ValueError if none."""
    parts = name.split(".")
    if len(parts) not in (2, 3) or parts[0] not in FILE_NAMESPACES:
        raise ValueError(f"it is not ns.op.overload with ns one of {sorted(FILE_NAMESPACES)}")
    if not all(_IDENT.match(p) and not p.startswith("__") for p in parts):
        raise ValueError("its parts must be identifiers without leading '__'")
    ns, op = parts[0], parts[1]
    qualified = f"{ns}::{op}"
    if qualified in _REFUSED:
        raise ValueError(f"{qualified} reads or writes files")
    if not torch._C._jit_get_schemas_for_operator(qualified):
        raise ValueError(f"no operator {qualified} is registered")
    try:
        packet = getattr(FILE_NAMESPACES[ns], op)
    except (AttributeError, RuntimeError) as e:
        raise ValueError(f"no operator {qualified}: {e}") from e
    if not isinstance(packet, torch._ops.OpOverloadPacket) or packet._qualified_op_name != qualified:
        raise ValueError(f"{qualified} is not an operator")
    if len(parts) == 2:
        return packet
    overload = parts[2]
    if overload not in packet.overloads():
        raise ValueError(f"{qualified} has no overload {overload!r}; it has {packet.overloads()}")
    obj = getattr(packet, overload)
    if not isinstance(obj, torch._ops.OpOverload) or obj._overloadname != overload:
        raise ValueError(f"{qualified}.{overload} is not an operator overload")
    return obj


def check_file_target(name: str) -> None:
    """Checks that a graph file may name ``name`` as an opaque target.

    Raises:
        ValueError: ``name`` is neither an allowlisted torch operator overload nor
            registered by the user with :func:`register_target`; says why.
    """
    if name in _USER:
        return
    try:
        _operator(name)
    except ValueError as e:
        raise ValueError(f"opaque target {name!r} is not an allowlisted torch operator "
                         f"overload ({e}); a graph file may name only aten/prims/quantized "
                         "operator overloads, or targets registered with "
                         "slimfx.ir.opaque.register_target") from None


def resolve_target(name: str) -> Callable[..., Any]:
    """The callable for an opaque target name (never imports modules or walks attributes).

    Raises:
        UnsupportedOpError: the name is neither registered in this process nor an
            allowlisted torch operator overload.
    """
    fn = _USER.get(name) or _TRACED.get(name)
    if fn is not None:
        return fn
    try:
        return _operator(name)  # type: ignore[no-any-return]
    except ValueError as e:
        raise UnsupportedOpError(
            f"opaque target {name!r} cannot be resolved in this process ({e}): user "
            "functions must be registered with slimfx.ir.opaque.register_target(name, fn) "
            "before the graph is run") from None


def encode_spec(args: tuple[Any, ...], kwargs: dict[str, Any],
                tensor_index: Callable[[Any], int]) -> str:
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
    return json.dumps({"args": [enc(a) for a in args],
                       "kwargs": {k: enc(v) for k, v in kwargs.items()}}, sort_keys=True)


def _decode(spec: str, inputs: list[Any] | None, n_inputs: int) -> tuple[list[Any], dict[str, Any]]:
    """Decodes (``inputs`` given) or only checks (``inputs`` None) a spec; ValueError if bad."""
    def dec(a: Any, depth: int) -> Any:
        if depth > _MAX_SPEC_DEPTH:
            raise ValueError(f"arguments nested deeper than {_MAX_SPEC_DEPTH}")
        if a is None or isinstance(a, (bool, int, float, str)):
            return a
        if isinstance(a, list):
            return [dec(x, depth + 1) for x in a]
        if not isinstance(a, dict) or len(a) != 1:
            raise ValueError(f"bad argument {str(a)[:60]}")
        (tag, x), = a.items()
        if tag == "$in":
            if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < n_inputs:
                raise ValueError(f"operand index {x!r} out of range for {n_inputs} operands")
            return inputs[x] if inputs is not None else None
        if tag == "$float" and x in ("inf", "-inf", "nan"):
            return float(x)
        if tag == "$dtype" and x in DTYPES:
            return DTYPES[x]
        if tag == "$device" and isinstance(x, str):
            try:
                return torch.device(x)
            except RuntimeError as e:
                raise ValueError(f"bad device {x!r}") from e
        if tag == "$memory_format" and x in _MEMORY_FORMATS:
            return _MEMORY_FORMATS[x]
        if tag == "$layout" and x in _LAYOUTS:
            return _LAYOUTS[x]
        if tag == "$tuple" and isinstance(x, list):
            return tuple(dec(y, depth + 1) for y in x)
        if tag == "$slice" and isinstance(x, list) and len(x) == 3:
            return slice(*(dec(y, depth + 1) for y in x))
        if tag == "$ellipsis" and x is True:
            return Ellipsis
        if tag == "$dict" and isinstance(x, dict):
            return {k: dec(v, depth + 1) for k, v in x.items()}
        raise ValueError(f"bad argument {str(a)[:60]}")

    try:
        data = json.loads(spec)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"spec is not valid JSON: {e}") from None
    if (not isinstance(data, dict) or set(data) != {"args", "kwargs"}
            or not isinstance(data["args"], list) or not isinstance(data["kwargs"], dict)):
        raise ValueError('spec must be {"args": [...], "kwargs": {...}}')
    return ([dec(a, 1) for a in data["args"]],
            {k: dec(v, 1) for k, v in data["kwargs"].items()})


def check_spec(spec: str, n_inputs: int) -> None:
    """Checks an argument spec for ``n_inputs`` operands without building anything.

    Raises:
        ValueError: the spec is not valid JSON, has an unknown tag or an operand
            index out of range; says which.
    """
    _decode(spec, None, n_inputs)


def decode_spec(spec: str, inputs: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    """Rebuilds call arguments from a spec and the node's operand values.

    Raises:
        UnsupportedOpError: the spec is malformed (see :func:`check_spec`).
    """
    try:
        return _decode(spec, inputs, len(inputs))
    except ValueError as e:
        raise UnsupportedOpError(f"opaque argument spec {spec[:80]!r}: {e}") from None
