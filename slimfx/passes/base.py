"""The pass contract: :class:`Pass`, :class:`PassResult` and typed pass options.

A pass is a frozen dataclass with a class-level kebab-case ``name``; its options
are the dataclass fields. ``run(graph, ctx)`` returns a :class:`PassResult`
saying whether the graph changed and which analyses survive the change. Passes
keep no state on ``self``: everything a run needs lives in the graph or the
:class:`~slimfx.passes.context.PassContext`.

Option fields may be typed ``int``, ``float``, ``bool``, ``str``, a ``Literal``
of strings (an enum spelled as strings), an :class:`enum.Enum`, a homogeneous
``tuple[X, ...]`` of those, or ``X | None``. Values are checked when the pass is
constructed, from Python or from a pipeline string.

Example::

    @register_pass
    @dataclass(frozen=True)
    class RemoveMulByOne(Pass):
        name = "remove-mul-by-one"

        def run(self, graph: Graph, ctx: PassContext) -> PassResult:
            ...
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from slimfx.errors import PipelineError
from slimfx.ir.core import Graph

if TYPE_CHECKING:
    from slimfx.passes.context import PassContext

__all__ = ["Pass", "PassResult", "OptionSpec", "format_option_value"]

_KEBAB = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


@dataclass(frozen=True)
class PassResult:
    """What a pass returns.

    Attributes:
        graph: the resulting graph (the input graph, edited in place, or a new one).
        changed: whether the pass modified anything.
        preserved: names of analyses still valid after the pass (only read when
            ``changed`` is true; an unchanged graph keeps every analysis).
    """

    graph: Graph
    changed: bool
    preserved: frozenset[str] = frozenset()


@dataclass(frozen=True)
class OptionSpec:
    """One option of a pass: its field name, type, default and checker."""

    name: str
    annotation: Any
    default: Any

    def coerce(self, value: Any, pass_name: str) -> Any:
        """Checks ``value`` against the option type; lists become tuples.

        Raises:
            PipelineError: the value does not fit the declared type.
        """
        try:
            return _coerce(self.annotation, value)
        except (TypeError, ValueError) as e:
            raise PipelineError(
                f"pass {pass_name!r}: option {self.name!r} expects {_type_name(self.annotation)}, "
                f"got {value!r} ({e})") from e


@dataclass(frozen=True)
class Pass:
    """Base class of every pass. Subclasses are frozen dataclasses.

    Class attributes:
        name: kebab-case name used in pipeline strings and the registry.
        description: one line shown by ``Pipeline.describe()`` (defaults to the
            first docstring line).
    """

    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for spec in type(self).option_specs():
            value = getattr(self, spec.name)
            object.__setattr__(self, spec.name, spec.coerce(value, self.name))

    # ------------------------------------------------------------ to override
    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Transforms ``graph`` (in place or into a new graph) and reports the change."""
        raise NotImplementedError(f"pass {self.name!r} does not implement run()")

    def requires(self, graph: Graph) -> None:
        """Checks preconditions; raises PassError naming the pass that establishes them."""

    # ------------------------------------------------------------ conveniences
    def __call__(self, graph: Graph, ctx: PassContext | None = None, *,
                 inplace: bool = False) -> Graph:
        """Runs this pass alone, like a one-pass :class:`~slimfx.passes.Pipeline`."""
        from slimfx.passes.pipeline import Pipeline

        return Pipeline([self])(graph, ctx, inplace=inplace)

    @classmethod
    def option_specs(cls) -> tuple[OptionSpec, ...]:
        """The typed options of this pass, in field order."""
        return _option_specs(cls)

    def options(self) -> dict[str, Any]:
        """All option values, by name."""
        return {s.name: getattr(self, s.name) for s in self.option_specs()}

    def non_default_options(self) -> dict[str, Any]:
        """Options whose value differs from the default (what ``str()`` prints)."""
        return {s.name: getattr(self, s.name) for s in self.option_specs()
                if not _same(getattr(self, s.name), s.default)}

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Pass:
        """Builds the pass from a name -> value mapping, checking names and types."""
        specs = {s.name: s for s in cls.option_specs()}
        unknown = sorted(set(options) - set(specs))
        if unknown:
            known = ", ".join(specs) or "none"
            raise PipelineError(f"pass {cls.name!r}: unknown option(s) {', '.join(unknown)}; "
                                f"its options are: {known}")
        missing = [s.name for s in specs.values() if s.default is dataclasses.MISSING
                   and s.name not in options]
        if missing:
            raise PipelineError(f"pass {cls.name!r}: option(s) {', '.join(missing)} are required")
        try:
            return cls(**dict(options))
        except TypeError as e:
            raise PipelineError(f"pass {cls.name!r}: {e}") from e

    @classmethod
    def summary(cls) -> str:
        """The first line of the pass docstring."""
        doc = (cls.__doc__ or "").strip()
        if not doc or doc.startswith(f"{cls.__name__}("):  # dataclass' generated doc
            return ""
        return doc.splitlines()[0]

    def __str__(self) -> str:
        opts = self.non_default_options()
        if not opts:
            return self.name
        body = ",".join(f"{k}={format_option_value(v)}" for k, v in opts.items())
        return f"{self.name}{{{body}}}"


# ---------------------------------------------------------------- option types
_SPECS: dict[type, tuple[OptionSpec, ...]] = {}


def _option_specs(cls: type) -> tuple[OptionSpec, ...]:
    cached = _SPECS.get(cls)
    if cached is None:
        cached = _SPECS[cls] = _compute_option_specs(cls)
    return cached


def _compute_option_specs(cls: type) -> tuple[OptionSpec, ...]:
    if not dataclasses.is_dataclass(cls):
        raise PipelineError(f"pass class {cls.__name__} must be a @dataclass(frozen=True)")
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = f.default
        if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        annotation = hints.get(f.name, Any)
        if default is not dataclasses.MISSING:
            try:
                default = _coerce(annotation, default)
            except (TypeError, ValueError) as e:
                raise PipelineError(f"pass class {cls.__name__}: the default of option "
                                    f"{f.name!r} does not fit its type ({e})") from e
        out.append(OptionSpec(f.name, annotation, default))
    return tuple(out)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _coerce(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value)
            except (TypeError, ValueError) as e:
                errors.append(str(e))
        raise TypeError("; ".join(errors))
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ValueError(f"choose one of {', '.join(map(str, choices))}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            value = (value,)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v) for v in value)
        if len(args) != len(value):
            raise ValueError(f"expected {len(args)} items")
        return tuple(_coerce(a, v) for a, v in zip(args, value, strict=True))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        for member in tp:
            if value in (member.value, member.name):
                return member
        raise ValueError(f"choose one of {', '.join(str(m.value) for m in tp)}")
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError("not a bool (write true or false)")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("not an int")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError("not a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TypeError("not a string")
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise TypeError(f"unsupported option type {_type_name(tp)}")


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def format_option_value(value: Any) -> str:
    """Writes an option value the way the pipeline parser reads it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return format_option_value(value.value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        if _BARE.fullmatch(value) and value not in ("true", "false", "none"):
            return value
        return json.dumps(value)
    if isinstance(value, tuple | list):
        return "[" + ",".join(format_option_value(v) for v in value) + "]"
    raise TypeError(f"cannot write option value {value!r}")


def is_kebab(name: str) -> bool:
    """Whether ``name`` is a valid kebab-case pass name."""
    return bool(_KEBAB.fullmatch(name))
