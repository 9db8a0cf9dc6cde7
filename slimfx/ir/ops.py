"""The op registry: what an op is, independent of any backend.

An :class:`OpDef` declares operands, typed attributes with defaults, traits and a
type-inference function. Backends keep their own tables keyed by op name. Users
add ops with :func:`register_op`; the frontend, printer, parser, verifier and
passes treat them like built-in ones.
"""

from __future__ import annotations

import difflib
import enum
import math
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from slimfx.errors import AttrError, UnsupportedOpError
from slimfx.ir.symbolic import ShapeError, format_dim, normalize_dim
from slimfx.ir.types import DTYPES, TensorType

if TYPE_CHECKING:
    pass

__all__ = [
    "Trait",
    "AttrDef",
    "Attrs",
    "OpDef",
    "register_op",
    "get_op",
    "has_op",
    "all_ops",
]


class Trait(enum.Enum):
    """Properties passes may rely on instead of matching op names."""

    PURE = "pure"  # no side effects: removable when unused, foldable on constants
    ELEMENTWISE = "elementwise"  # out[i] depends on in[i] only (with broadcasting)
    UNARY_ACTIVATION = "unary_activation"  # elementwise, one tensor operand
    QUANTIZABLE = "quantizable"  # has an integer form (DESIGN.md §4)
    CHANNEL_AXIS = "channel_axis"  # output channels live on axis 1 (or -1 for linear)
    WEIGHTED = "weighted"  # operand 1 is a weight, operand 2 an optional bias
    FUSABLE_ACTIVATION = "fusable_activation"  # has act_min/act_max attributes
    SHAPE_ONLY = "shape_only"  # moves data without computing on it (view, permute, ...)
    IDENTITY = "identity"  # at inference, output equals operand 0
    NORMALIZATION = "normalization"
    QUANT = "quant"  # quantize/dequantize/requantize/observer bookkeeping
    OPAQUE = "opaque"


_KINDS = {
    "int": (int,),
    "float": (float, int),
    "bool": (bool,),
    "str": (str,),
    "ints": (tuple,),
    "dims": (tuple,),
    "dim": (object,),
    "floats": (tuple,),
    "dtype": (str,),
    "any": (object,),
}


@dataclass(frozen=True, slots=True)
class AttrDef:
    """One typed attribute of an op.

    ``kind`` is one of int, float, bool, str, ints, floats, dim, dims, dtype, any.
    ``dims`` is a list of dimensions: ints or symbolic expressions such as
    ``N*64`` (``reshape``/``expand`` targets); ``dim`` is one (``slice`` bounds such
    as ``S`` or ``S - 1``). A default of ``None`` makes the
    attribute optional (None allowed).
    """

    name: str
    kind: str
    default: Any = field(default=...)

    @property
    def required(self) -> bool:
        return self.default is ...

    def normalize(self, value: Any, op: str) -> Any:
        """Checks and freezes ``value`` for this attribute (lists become tuples)."""
        if value is None:
            if self.default is None:
                return None
            raise AttrError(f"{op}: attribute {self.name!r} may not be None")
        try:
            value = _freeze(value)
        except AttrError as e:
            raise AttrError(f"{op}: attribute {self.name!r}: {e}") from None
        if self.kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise AttrError(f"{op}: attribute {self.name!r} expects a float, got {value!r}")
            return float(value)
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise AttrError(f"{op}: attribute {self.name!r} expects an int, got {value!r}")
            return int(value)
        if self.kind == "dim":
            if isinstance(value, bool) or isinstance(value, tuple | str | float):
                raise AttrError(f"{op}: attribute {self.name!r} expects an int or a symbolic "
                                f"dim, got {value!r}")
            if type(value) is int:
                return value
            try:
                return normalize_dim(value)
            except ShapeError as e:
                raise AttrError(f"{op}: attribute {self.name!r}: {e}") from e
        if self.kind == "dims":
            if isinstance(value, int) and not isinstance(value, bool):
                value = (value,)
            if not isinstance(value, tuple) or any(isinstance(v, bool) for v in value):
                raise AttrError(f"{op}: attribute {self.name!r} expects a list of dims, "
                                f"got {value!r}")
            try:
                return tuple(v if type(v) is int else normalize_dim(v) for v in value)
            except ShapeError as e:
                raise AttrError(f"{op}: attribute {self.name!r}: {e}") from e
        if self.kind in ("ints", "floats"):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = (value,)
            if not isinstance(value, tuple):
                raise AttrError(f"{op}: attribute {self.name!r} expects a list, got {value!r}")
            conv = int if self.kind == "ints" else float
            try:
                return tuple(conv(v) for v in value)
            except (TypeError, ValueError, OverflowError) as e:
                raise AttrError(f"{op}: attribute {self.name!r} expects a list of "
                                f"{self.kind[:-1]}s, got {value!r}") from e
        if self.kind == "dtype":
            if value not in DTYPES:
                raise AttrError(f"{op}: attribute {self.name!r} expects a dtype, got {value!r}")
            return value
        if self.kind == "any":
            try:
                hash(value)
            except TypeError as e:
                raise AttrError(f"{op}: attribute {self.name!r}: {e}; give numbers, strings "
                                "or lists of them") from e
            return value
        if not isinstance(value, _KINDS[self.kind]):
            raise AttrError(f"{op}: attribute {self.name!r} expects {self.kind}, got {value!r}")
        return value


MAX_ATTR_DEPTH = 32  # deepest nesting of lists in an attribute value


def _freeze(value: Any, depth: int = 0) -> Any:
    if isinstance(value, list | tuple | dict):
        if depth >= MAX_ATTR_DEPTH:
            raise AttrError(f"attribute value nested deeper than {MAX_ATTR_DEPTH} levels; give "
                            "a flat list (or lists of lists at most that deep)")
        if isinstance(value, dict):
            return tuple((k, _freeze(v, depth + 1)) for k, v in value.items())
        return tuple(_freeze(v, depth + 1) for v in value)
    return value


class Attrs(Mapping[str, Any]):
    """An immutable, ordered attribute mapping. ``replace(**kw)`` makes a new one."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] | None = None) -> None:
        self._items: dict[str, Any] = dict(items or {})

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Attrs):
            return _attrs_equal(self._items, other._items)
        if isinstance(other, Mapping):
            return _attrs_equal(self._items, dict(other))
        return NotImplemented

    def __repr__(self) -> str:
        return f"Attrs({self._items!r})"


def _attrs_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.keys() != b.keys():
        return False
    for k, va in a.items():
        vb = b[k]
        if isinstance(va, float) and isinstance(vb, float) and math.isnan(va) and math.isnan(vb):
            continue
        if va != vb:
            return False
    return True


InferFn = Callable[[Sequence[TensorType], Mapping[str, Any]], list[TensorType]]


@dataclass(frozen=True)
class OpDef:
    """The definition of one op.

    Args:
        name: unique op name used in the text form, e.g. ``conv2d``.
        operands: operand names; a trailing ``?`` marks an optional operand
            (optional ones come last), a trailing ``*`` a variadic last operand.
        attrs: attribute definitions in print order.
        traits: properties passes may query with :meth:`has`.
        infer: maps input types and attributes to result types; ``None`` means
            the types recorded at trace time are trusted.
        num_results: fixed result count, or ``-1`` when the node decides.
        doc: one line of semantics.
    """

    name: str
    operands: tuple[str, ...] = ()
    attrs: tuple[AttrDef, ...] = ()
    traits: frozenset[Trait] = frozenset()
    infer: InferFn | None = None
    num_results: int = 1
    doc: str = ""

    def has(self, trait: Trait) -> bool:
        return trait in self.traits

    @property
    def variadic(self) -> bool:
        return bool(self.operands) and self.operands[-1].endswith("*")

    @property
    def min_operands(self) -> int:
        return sum(1 for o in self.operands if not o.endswith(("?", "*")))

    @property
    def max_operands(self) -> float:
        return math.inf if self.variadic else len(self.operands)

    def attr_def(self, name: str) -> AttrDef:
        for a in self.attrs:
            if a.name == name:
                return a
        raise KeyError(name)

    def make_attrs(self, given: Mapping[str, Any] | None) -> Attrs:
        """Validates ``given`` against the declared attributes and fills defaults."""
        given = dict(given or {})
        out: dict[str, Any] = {}
        for a in self.attrs:
            if a.name in given:
                out[a.name] = a.normalize(given.pop(a.name), self.name)
            elif a.required:
                raise AttrError(f"{self.name}: missing required attribute {a.name!r}")
            else:
                out[a.name] = a.default
        if given:
            known = [a.name for a in self.attrs]
            raise AttrError(f"{self.name}: unknown attributes {sorted(given)}; known: {known}")
        return Attrs(out)

    def __post_init__(self) -> None:
        if self.infer is not None and not getattr(self.infer, "_symbolic_guard", False):
            object.__setattr__(self, "infer", _guarded(self.name, self.infer))

    def __repr__(self) -> str:
        return f"OpDef({self.name!r})"


_GUARDS: weakref.WeakKeyDictionary[Any, dict[str, InferFn]] = weakref.WeakKeyDictionary()


def _guarded(name: str, infer: InferFn) -> InferFn:
    """One guard per (function, op name), so equal OpDefs stay equal."""
    try:
        per_name = _GUARDS.setdefault(infer, {})
    except TypeError:  # not weak-referenceable
        return _guard_symbolic(name, infer)
    if name not in per_name:
        per_name[name] = _guard_symbolic(name, infer)
    return per_name[name]


def _guard_symbolic(name: str, infer: InferFn) -> InferFn:
    """Wraps ``infer`` so that symbolic inputs fail with a ShapeError naming the op.

    Static inputs behave exactly as before (same results, same exceptions). With a
    symbolic input, a ShapeError gains the op name, and a TypeError or
    ArithmeticError (sympy refusing ``int()``, ``range()`` or a comparison it
    cannot decide) becomes a ShapeError that names the op and the symbolic
    dimensions. A ValueError or IndexError is the op's own message and stays.
    """

    def guarded(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
        try:
            return infer(types, attrs)
        except ShapeError as e:
            if str(e).startswith(f"{name}:"):
                raise
            raise ShapeError(f"{name}: {e}") from e
        except (TypeError, ArithmeticError) as e:
            symbolic = [(i, j, d) for i, t in enumerate(types) if isinstance(t, TensorType)
                        for j, d in enumerate(t.shape) if type(d) is not int]
            if not symbolic:
                raise
            dims = ", ".join(f"operand {i} dim {j} = {format_dim(d)}" for i, j, d in symbolic[:4])
            raise ShapeError(f"{name}: shape inference cannot handle the symbolic "
                             f"dimension(s) {dims}: {type(e).__name__}: {e}") from e

    guarded._symbolic_guard = True  # type: ignore[attr-defined]
    guarded.__wrapped__ = infer  # type: ignore[attr-defined]
    guarded.__doc__ = infer.__doc__
    return guarded


_REGISTRY: dict[str, OpDef] = {}


def register_op(opdef: OpDef, *, override: bool = False) -> OpDef:
    """Adds an op to the registry; users call this to define their own ops."""
    if opdef.name in _REGISTRY and not override:
        raise ValueError(f"op {opdef.name!r} is already registered (pass override=True)")
    _REGISTRY[opdef.name] = opdef
    return opdef


def get_op(name: str) -> OpDef:
    """Looks an op up by name.

    Raises:
        UnsupportedOpError: no op of that name is registered.
    """
    _ensure_builtin()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):  # TypeError: an unhashable name
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnsupportedOpError(
            f"unknown op {name!r}{hint}: register it with slimfx.ir.register_op(OpDef(...))"
        ) from None


def has_op(name: str) -> bool:
    _ensure_builtin()
    return name in _REGISTRY


def all_ops() -> dict[str, OpDef]:
    _ensure_builtin()
    return dict(_REGISTRY)


def _ensure_builtin() -> None:
    # Built-in ops live in opset.py; importing it registers them.
    from slimfx.ir import opset  # noqa: F401
