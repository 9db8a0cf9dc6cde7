"""Dynamic shapes for the frontends: torch.export ``dynamic_shapes`` specs -> graph symbols.

``slimfx.trace(model, x, dynamic_shapes=...)`` passes the spec to ``torch.export``
as it is (``Dim`` objects, ``Dim.AUTO``, ``Dim.STATIC``, per input, positional or by
argument name). The exported program's size symbols (``s0``, ``s77``...) become graph
symbols:

- named after the ``Dim`` the spec gave for the dimension (``Dim("B")`` -> ``B``);
- otherwise ``N`` for a dim 0, ``S`` for a dim 1, ``D<i>`` for others (a suffix makes
  names unique);
- with the range of ``ep.range_constraints``. torch.export gives an automatic dim the
  range ``[2, inf)`` (it specialises sizes 0 and 1); slimfx graphs take such a
  dimension from 1 (:data:`ONE_IS_GENERAL`), as every IR op is defined for a size of 1
  exactly as for other sizes (broadcasting is decided by the IR's types, not guarded
  on the example). A ``Dim`` with an explicit ``min`` keeps it.

:func:`default_spec` is the default when ``DEFAULT_DYNAMIC_BATCH`` is on: dim 0 of
every tensor input is ``Dim.AUTO``, every other dim static. A spec that contradicts
the model (torch's constraint violation) is a :class:`~slimfx.errors.TraceError`
naming the dim and the source line that made it static.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
import traceback
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils._pytree import tree_map

from slimfx.errors import TraceError
from slimfx.ir.symbolic import RESERVED, SymbolRange, check_symbol_name

__all__ = ["ONE_IS_GENERAL", "default_spec", "record_specialisations", "symbol_names",
           "violation_error"]

logger = logging.getLogger(__name__)

#: Automatic dims (no explicit ``min``) accept size 1 (torch.export says ``[2, inf)``).
ONE_IS_GENERAL = True

_TORCH_DIR = os.path.dirname(torch.__file__)


def default_spec(model: torch.nn.Module, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> Any:
    """``{0: Dim.AUTO}`` for every tensor input of rank >= 1 (a dict by argument name)."""
    auto = torch.export.Dim.AUTO

    def one(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return {0: auto} if x.dim() >= 1 else None
        return None

    if not kwargs:
        return tuple(tree_map(one, a) for a in args)
    bound = inspect.signature(model.forward).bind(*args, **kwargs)
    return {k: tree_map(one, v) for k, v in bound.arguments.items()}


def _spec_for(spec: Any, model: torch.nn.Module, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> dict[str, Any]:
    """Argument name -> its part of the spec (only for top-level tensor arguments)."""
    if spec is None:
        return {}
    try:
        params = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        params = []
    out: dict[str, Any] = {}
    if isinstance(spec, Mapping):
        out = dict(spec)
    elif isinstance(spec, (tuple, list)):
        names = params[:len(args)] + list(kwargs)
        out = {n: s for n, s in zip(names, spec, strict=False)}
    return out


def _dim_name(d: Any) -> str | None:
    name = getattr(d, "__name__", None)
    if isinstance(name, str) and check_symbol_name(name) is None:
        return name
    return None


def _dim_min(d: Any) -> int | None:
    if type(d).__name__ in ("_Dim", "Dim", "_DerivedDim") or hasattr(d, "min"):
        m = getattr(d, "min", None)
        if isinstance(m, int) and m != 0 and not isinstance(m, bool):
            return m
    return None


def _per_dim(part: Any, i: int) -> Any:
    if isinstance(part, Mapping):
        return part.get(i)
    if isinstance(part, (tuple, list)) and i < len(part):
        return part[i]
    return None


def symbol_names(ep: torch.export.ExportedProgram, spec: Any, model: torch.nn.Module | None,
                 args: tuple[Any, ...], kwargs: dict[str, Any], *, share_batch: bool = False,
                 where: Mapping[tuple[str, int], str] | None = None
                 ) -> tuple[dict[str, str], dict[str, SymbolRange], list[str]]:
    """Names and ranges of the program's input size symbols.

    Args:
        share_batch: the dim 0 symbols of inputs whose example sizes are equal become
            one symbol (the default spec: torch.export gives each ``Dim.AUTO`` its own
            symbol unless the model relates them). The graph is then the program
            restricted to equal batches, with the intersection of their ranges.
        where: (input, dim) -> the user line that made that dim static (see
            :func:`record_specialisations`), for the log lines.

    Returns:
        (torch symbol name -> slimfx name, slimfx name -> range, log lines saying
        which requested dims became static and which inputs share a batch symbol).
    """
    from torch.export.graph_signature import InputKind

    per_arg = _spec_for(spec, model, args, kwargs) if model is not None else {}
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    names: dict[str, str] = {}
    ranges: dict[str, SymbolRange] = {}
    mins: dict[str, int | None] = {}
    taken: set[str] = set()
    static: list[str] = []
    batch: dict[int, tuple[str, list[str]]] = {}  # example size -> (symbol, inputs)
    for s, node in zip(ep.graph_signature.input_specs, placeholders, strict=True):
        val = node.meta.get("val")
        if s.kind != InputKind.USER_INPUT or not isinstance(val, torch.Tensor):
            continue
        arg = s.arg.name
        part = per_arg.get(arg)
        for i, d in enumerate(val.shape):
            asked = _per_dim(part, i)
            expr = getattr(getattr(d, "node", None), "expr", None)
            if expr is None or expr.is_Integer:
                if asked is not None and asked is not torch.export.Dim.STATIC:
                    static.append(f"dim {i} of input {arg!r} is static ({int(d)}): "
                                  f"{_why_static(int(d), (where or {}).get((arg, i)))}")
                continue
            if not expr.is_Symbol:
                continue
            hint = getattr(d.node, "hint", None)
            shared = batch.get(hint) if share_batch and i == 0 and hint is not None else None
            if expr.name in names:
                if shared is not None and names[expr.name] == shared[0]:
                    shared[1].append(arg)
                continue
            if shared is not None:
                names[expr.name] = shared[0]
                shared[1].append(arg)
                continue
            want = _dim_name(asked) or ("N" if i == 0 else "S" if i == 1 else f"D{i}")
            name, k = want, 1
            while name in taken or name in RESERVED:
                k += 1
                name = f"{want}{k}"
            taken.add(name)
            names[expr.name] = name
            mins[expr.name] = _dim_min(asked)
            if share_batch and i == 0 and hint is not None:
                batch[hint] = (name, [arg])
    for sym, vr in ep.range_constraints.items():
        key = getattr(sym, "name", str(sym))
        if key not in names:
            continue
        lo = int(vr.lower) if vr.lower.is_Integer else 1
        hi = int(vr.upper) if vr.upper.is_Integer else None
        if ONE_IS_GENERAL and lo == 2 and mins.get(key) is None:
            lo = 1
        rng, have = SymbolRange(max(lo, 0), hi), ranges.get(names[key])
        if have is not None:  # symbols merged by share_batch: both ranges hold
            top = [m for m in (have.max, rng.max) if m is not None]
            rng = SymbolRange(max(have.min, rng.min), min(top) if top else None)
        ranges[names[key]] = rng
    for name, inputs in batch.values():
        if len(inputs) > 1:
            static.append(f"inputs {', '.join(map(repr, inputs))} share the batch symbol {name}")
    return names, ranges, static


def _why_static(size: int, line: str | None) -> str:
    if size in (0, 1):
        return ("the example size is 0 or 1, which torch.export specialises; trace with an "
                "example of size 2 or more for a dynamic dim")
    if line:
        return f"the model fixes it at {line}"
    return "the model needs this exact size"


# ------------------------------------------------------------------- constraint violations
_VIOLATED = re.compile(r"Constraints violated \(([^)]*)\)")


def is_violation(e: BaseException) -> bool:
    return bool(_VIOLATED.search(str(e))) or "You marked" in str(e)


def violation_error(e: BaseException, export: Any) -> TraceError:
    """The TraceError for torch's constraint violation ``e``, naming the dim and line.

    ``export`` re-runs the failing export; it runs once more, recording where the
    shape environment made the violated size static (the first frame of user code).
    """
    text = str(e).strip()
    m = _VIOLATED.search(text)
    dims = m.group(1) if m else "a dim"
    reasons = [ln.strip(" -") for ln in text.splitlines() if ln.strip().startswith("- ")]
    fixes = [ln.strip() for ln in text.splitlines() if re.match(r"\s+\w+ = ", ln)]
    where = _where_specialised(export)
    loc = f" at {where}" if where else ""
    reason = ("; ".join(reasons[:3]) or text.splitlines()[0]).rstrip(".")
    fix = f" (torch suggests: {', '.join(fixes[:4])})" if fixes else ""
    if re.search(r"specialized it to be a constant \(1\)", text):
        fix += (". torch.export specialises a size of 1 in the example inputs: trace with an "
                "example of size 2 or more in that dim (the range may still start at 1)")
    return TraceError(f"dynamic_shapes: the spec marks {dims} as dynamic but the model fixes "
                      f"it{loc}: {reason}{fix}. Declare that dim static (Dim.STATIC or leave "
                      "it out of the spec), let torch decide (Dim.AUTO), or change the model "
                      "so that the size may vary")


def _user_frame(stack: list[traceback.FrameSummary]) -> str | None:
    here = os.path.dirname(os.path.dirname(__file__))
    for f in reversed(stack):
        if f.filename.startswith(_TORCH_DIR) or f.filename.startswith(here):
            continue
        if "site-packages" in f.filename and "transformers" not in f.filename:
            continue
        if f.name == "<module>" or f.filename.startswith("<"):
            continue
        return f"{f.filename}:{f.lineno} ({f.line.strip() if f.line else f.name})"
    return None


_SOURCE = re.compile(r"^L\['(\w+)'\](?:\['(\w+)'\])?\.size\(\)\[(\d+)\]$")


@contextlib.contextmanager
def record_specialisations() -> Iterator[list[tuple[str | None, int, str]]]:
    """Within the block, records where torch.export makes a size static.

    Yields a list filled as the shape environment replaces a size symbol by an integer:
    ``(argument name, dim, line)``, the line being the first frame of user code at that
    moment (``file:line (code)``); the name is None (dim -1) for a symbol that is not an
    input's size. Sizes specialised before tracing (0 and 1) are not in it.
    """
    found: list[tuple[str | None, int, str]] = []
    try:
        from torch.fx.experimental.symbolic_shapes import ShapeEnv
    except ImportError:  # pragma: no cover - torch internals moved
        yield found
        return
    original = ShapeEnv._set_replacement

    def hooked(self: Any, a: Any, tgt: Any, msg: str) -> None:
        line = (_user_frame(traceback.extract_stack()[:-1])
                if getattr(tgt, "is_Integer", False) else None)
        if line:
            keys: list[tuple[str | None, int]] = []
            for src in self.var_to_sources.get(a, ()):
                m = _SOURCE.match(getattr(src, "name", ""))
                if m is not None:
                    arg = m.group(2) if m.group(1) == "kwargs" and m.group(2) else m.group(1)
                    keys.append((arg, int(m.group(3))))
            found.extend((arg, dim, line) for arg, dim in keys or [(None, -1)])
        return original(self, a, tgt, msg)

    ShapeEnv._set_replacement = hooked  # type: ignore[method-assign]
    try:
        yield found
    finally:
        ShapeEnv._set_replacement = original  # type: ignore[method-assign]


def _where_specialised(export: Any) -> str | None:
    """Runs ``export()`` again, recording where the shape environment fixed a size."""
    with record_specialisations() as found:
        try:
            export()
        except Exception:  # noqa: BLE001 - the failure is known; only the record matters
            pass
    return found[0][2] if found else None
