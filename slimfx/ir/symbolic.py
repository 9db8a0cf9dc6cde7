"""Symbolic dimensions: a dimension is an ``int`` or a sympy expression over declared symbols.

A graph declares its symbols in ``graph.symbols`` (name -> :class:`SymbolRange`);
the text form prints them after the inputs, sorted by name::

    graph @main(%x: f32[N,3,8,8], %ids: i64[B,S]) where B in [1, 64], N >= 1, S in [1, 512] {

``N >= 1`` is a range without an upper bound (the default range is ``[1, inf)``).

Expressions use sympy (the algebra torch itself depends on); this module only
prints and parses them. The grammar, over ints and declared symbols only::

    expr   := term (("+" | "-") term)*
    term   := factor (("*" | "//") factor)*
    factor := INT | SYMBOL | "(" expr ")" | "-" factor

``a // b`` is floor division. Printing is deterministic (``N*64``, ``S + 1``,
``(N*S)//2``) and ``parse_dim(format_dim(d)) == d``. Parsing never evaluates
text: :func:`parse_dim` is a recursive descent limited to :data:`MAX_EXPR_DEPTH`
levels and :data:`MAX_EXPR_LEN` characters. Static dimensions stay Python
``int`` everywhere (a sympy ``Integer`` result is turned back into an ``int``).

Symbols are sympy symbols with ``integer=True, nonnegative=True``; always make
them with :func:`symbol` so that equal names give equal symbols.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import re
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import sympy

from slimfx.errors import RuntimeInputError, VerifyError

if TYPE_CHECKING:
    from slimfx.ir.core import Graph

__all__ = [
    "Dim",
    "DimSyntaxError",
    "MAX_EXPR_DEPTH",
    "MAX_EXPR_LEN",
    "RESERVED",
    "ShapeError",
    "SymbolRange",
    "bind_shapes",
    "ceildiv",
    "check_symbol_name",
    "dim_symbols",
    "eval_dim",
    "floordiv",
    "format_dim",
    "format_symbol",
    "from_torch_dim",
    "from_torch_expr",
    "is_static_dim",
    "normalize_dim",
    "parse_dim",
    "provably_equal",
    "symbol",
    "symbols_of",
    "torch_symbol_names",
]

#: A dimension: a static ``int`` or a sympy expression over declared symbols.
Dim = Union[int, sympy.Expr]  # noqa: UP007 (sympy.Expr is untyped: keep the alias explicit)

#: The deepest nesting (parentheses, unary minus) :func:`parse_dim` reads.
MAX_EXPR_DEPTH = 32
#: The longest dimension expression :func:`parse_dim` reads, in characters.
MAX_EXPR_LEN = 512
_MAX_INT = 1 << 63
_MAX_POW = 8  # N**k prints as k factors; larger powers are refused

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: Words of the text form that may not name a symbol.
RESERVED = frozenset({"none", "true", "false", "inf", "nan", "in", "where", "q", "dense", "loc",
                      "names", "const", "return", "graph"})


class ShapeError(VerifyError, ValueError):
    """Shape inference cannot handle (or rejects) a symbolic dimension.

    A :class:`~slimfx.errors.VerifyError` that is also a ``ValueError``, so code that
    catches type-inference failures as ``ValueError`` keeps working.
    """


@dataclass(frozen=True, slots=True)
class SymbolRange:
    """The values a symbol may take: ``min <= value <= max`` (``max=None``: unbounded)."""

    min: int = 1
    max: int | None = None

    def contains(self, value: int) -> bool:
        return value >= self.min and (self.max is None or value <= self.max)

    def problem(self) -> str | None:
        """Why the range is invalid, or None."""
        if type(self.min) is not int or (self.max is not None and type(self.max) is not int):
            return f"range bounds must be ints, got [{self.min!r}, {self.max!r}]"
        if self.min < 0:
            return f"range minimum {self.min} is negative"
        if self.max is not None and self.max < self.min:
            return f"range [{self.min}, {self.max}] is empty (max < min)"
        return None

    def __str__(self) -> str:
        return f"[{self.min}, {'inf' if self.max is None else self.max}]"


def format_symbol(name: str, rng: SymbolRange) -> str:
    """``N in [1, 1024]``, or ``N >= 1`` without an upper bound."""
    if rng.max is None:
        return f"{name} >= {rng.min}"
    return f"{name} in [{rng.min}, {rng.max}]"


def check_symbol_name(name: object) -> str | None:
    """Why ``name`` cannot name a symbol, or None."""
    if not isinstance(name, str) or not _NAME.match(name):
        return f"symbol name {name!r} is not an identifier"
    if name in RESERVED:
        return f"symbol name {name!r} is a reserved word of the text form"
    return None


def symbol(name: str) -> Any:
    """The sympy symbol called ``name`` (integer, nonnegative).

    Raises:
        ValueError: ``name`` is not an identifier or is a reserved word.
    """
    problem = check_symbol_name(name)
    if problem:
        raise ValueError(problem)
    return sympy.Symbol(name, integer=True, nonnegative=True)


def is_static_dim(d: object) -> bool:
    return type(d) is int


def _check_expr(e: Any, depth: int = 0) -> None:
    """Raises ShapeError unless ``e`` is built from ints, symbols, +, *, small powers, floor."""
    if depth > 4 * MAX_EXPR_DEPTH:
        raise ShapeError(f"dimension expression {e} is nested too deeply")
    if e.is_Symbol:
        if check_symbol_name(e.name) or not e.is_integer:
            raise ShapeError(f"dimension symbol {e} must come from slimfx.ir.symbolic.symbol()")
        return
    if e.is_Integer:
        return
    if e.is_Add or e.is_Mul:
        coeff = e.as_coeff_Add()[0] if e.is_Add else e.as_coeff_Mul()[0]
        if not coeff.is_Integer:
            raise ShapeError(f"dimension {e} is not integral (coefficient {coeff})")
        for a in e.args:
            if not a.is_Number:
                _check_expr(a, depth + 1)
        return
    if e.is_Pow:
        base, exp = e.args
        if not (exp.is_Integer and 1 < exp <= _MAX_POW):
            raise ShapeError(f"dimension {e} has an unsupported power")
        _check_expr(base, depth + 1)
        return
    if isinstance(e, sympy.floor):
        num, den = e.args[0].as_numer_denom()
        _check_expr(num, depth + 1)
        _check_expr(den, depth + 1)
        return
    raise ShapeError(f"dimension {e} uses {type(e).__name__}, which the IR cannot express "
                     "(only + - * // over ints and symbols)")


def normalize_dim(d: Any) -> Dim:
    """An ``int`` for static dimensions, else a checked sympy expression.

    Raises:
        ShapeError: a sympy value that is not an integer-valued expression of
            ints and symbols with + - * //.
    """
    if type(d) is int:
        return d
    if isinstance(d, sympy.Basic):
        if d.is_Integer:
            return int(d)
        if not d.free_symbols:
            raise ShapeError(f"dimension {d} is not an integer")
        _check_expr(d)
        d = _canonical(d)
        return int(d) if d.is_Integer else d
    return int(d)


@functools.lru_cache(maxsize=4096)
def _canonical(d: Any) -> Any:
    """The expression its own text parses to (print -> parse is then a fixed point).

    sympy simplifies differently depending on how an expression was built
    (``floor(-floor(N/S))`` stays, ``-(N//S)`` parsed from its text becomes
    ``-floor(N/S)``); types compare structurally, so every dimension is kept in
    the form that its text form reads back as.
    """
    for _ in range(4):
        text = _fmt(d)
        if len(text) > MAX_EXPR_LEN:
            raise ShapeError(f"dimension {text[:60]}... is longer than {MAX_EXPR_LEN} characters")
        try:
            again = _DimParser(text, None).parse()
        except DimSyntaxError as e:
            raise ShapeError(f"dimension {text[:60]} cannot be written in the text form: "
                             f"{e}") from e
        if again == d:
            break
        d = again
        if d.is_Integer:
            return d
        _check_expr(d)
    return d


def dim_symbols(d: Dim) -> set[str]:
    """Names of the symbols a dimension uses (empty for an int)."""
    if isinstance(d, int):
        return set()
    return {s.name for s in d.free_symbols}


def floordiv(a: Dim, b: Dim) -> Dim:
    """``a // b`` on dimensions (an int when both are ints)."""
    if type(a) is int and type(b) is int:
        return a // b
    return normalize_dim(sympy.floor(sympy.sympify(a) / b))


def ceildiv(a: Dim, b: Dim) -> Dim:
    """``ceil(a / b)`` for a positive ``b``, as ``(a + b - 1) // b``."""
    return floordiv(a + b - 1, b)


def provably_equal(a: Dim, b: Dim) -> bool:
    """Whether two dimensions are equal for every value of their symbols."""
    if type(a) is int and type(b) is int:
        return a == b
    if a == b:
        return True
    diff = sympy.expand(sympy.sympify(a) - b)
    if diff == 0:
        return True
    if diff.is_number:
        return False
    try:
        return bool(sympy.simplify(diff) == 0)
    except (TypeError, ValueError, RecursionError):
        return False


def eval_dim(d: Dim, bindings: Mapping[str, int]) -> int:
    """The value of a dimension once its symbols are bound.

    Raises:
        KeyError: a symbol of ``d`` has no binding.
    """
    if isinstance(d, int):
        return d
    missing = sorted(dim_symbols(d) - set(bindings))
    if missing:
        raise KeyError(f"symbol(s) {', '.join(missing)} of {format_dim(d)} are not bound")
    return int(d.subs({symbol(k): int(bindings[k]) for k in dim_symbols(d)}))


# ------------------------------------------------------------------- printing
def format_dim(d: Dim) -> str:
    """The text of one dimension: ``3``, ``N``, ``N*64``, ``S + 1``, ``(N*S)//2``."""
    if type(d) is int:
        return str(d)
    return _fmt(d)


def _atomic(e: Any) -> bool:
    return bool(e.is_Symbol or (e.is_Integer and e >= 0))


def _paren(e: Any) -> str:
    s = _fmt(e)
    return s if _atomic(e) else f"({s})"


def _fmt(e: Any) -> str:
    if e.is_Integer:
        return str(int(e))
    if e.is_Symbol:
        return str(e.name)
    if e.is_Add:
        terms = e.as_ordered_terms()
        out = ""
        for i, t in enumerate(terms):
            neg = t.could_extract_minus_sign()
            body = _fmt(-t) if neg else _fmt(t)
            if i == 0:
                out = f"-{_neg_operand(-t)}" if neg else body
            else:
                out += f" - {body}" if neg else f" + {body}"
        return out
    if e.is_Mul:
        coeff, rest = e.as_coeff_Mul()
        if coeff < 0:
            return f"-{_neg_operand(-e)}"
        parts = []
        for f in rest.as_ordered_factors():
            if f.is_Pow:
                parts += [_paren(f.args[0])] * int(f.args[1])
            elif f.is_Add or isinstance(f, sympy.floor):
                parts.append(f"({_fmt(f)})")
            else:
                parts.append(_fmt(f))
        if coeff != 1:
            parts.append(str(int(coeff)))
        return "*".join(parts)
    if e.is_Pow:
        return "*".join([_paren(e.args[0])] * int(e.args[1]))
    if isinstance(e, sympy.floor):
        num, den = e.args[0].as_numer_denom()
        return f"{_paren(num)}//{_paren(den)}"
    raise ShapeError(f"cannot print dimension {e}")


def _neg_operand(e: Any) -> str:
    """The operand of a unary minus (a factor: parenthesized unless atomic or a product)."""
    s = _fmt(e)
    return s if _atomic(e) or (e.is_Mul and not s.startswith("-")) else f"({s})"


# ------------------------------------------------------------------- parsing
_TOKEN = re.compile(r"\s*(?:(?P<int>\d+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>//|[-+*()]))")


class DimSyntaxError(ValueError):
    """A malformed dimension expression; ``offset`` is where in the text."""

    def __init__(self, msg: str, offset: int) -> None:
        super().__init__(msg)
        self.offset = offset


class _DimParser:
    def __init__(self, text: str, symbols: Container[str] | None) -> None:
        self.text = text
        self.symbols = symbols
        self.toks: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None or m.end() == pos:
                if text[pos:].strip() == "":
                    break
                raise DimSyntaxError(f"unexpected character {text[pos]!r} in dimension "
                                     f"{text!r}", pos)
            kind = m.lastgroup or ""
            self.toks.append((kind, m.group(kind), m.start(kind)))
            pos = m.end()
        self.i = 0

    def parse(self) -> Any:
        """The whole text as one sympy expression (not yet normalized)."""
        if not self.toks:
            raise DimSyntaxError("empty dimension", 0)
        value = self.expr(0)
        if self.i != len(self.toks):
            raise self.fail(f"unexpected {self.peek()[1]!r}")
        return value

    def peek(self) -> tuple[str, str, int]:
        return self.toks[self.i] if self.i < len(self.toks) else ("eof", "", len(self.text))

    def fail(self, msg: str) -> DimSyntaxError:
        return DimSyntaxError(f"{msg} in dimension {self.text!r}", self.peek()[2])

    def expr(self, depth: int) -> Any:
        if depth > MAX_EXPR_DEPTH:
            raise self.fail(f"expression nested deeper than {MAX_EXPR_DEPTH} levels")
        value = self.term(depth)
        while self.peek()[1] in ("+", "-") and self.peek()[0] == "op":
            op = self.peek()[1]
            self.i += 1
            rhs = self.term(depth)
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(self, depth: int) -> Any:
        value = self.factor(depth)
        while self.peek()[1] in ("*", "//") and self.peek()[0] == "op":
            op = self.peek()[1]
            self.i += 1
            pos = self.peek()[2]
            rhs = self.factor(depth)
            if op == "*":
                value = value * rhs
            else:
                if rhs == 0:
                    raise DimSyntaxError(f"division by zero in dimension {self.text!r}", pos)
                value = sympy.floor(value / rhs)
        return value

    def factor(self, depth: int) -> Any:
        kind, val, pos = self.peek()
        if kind == "int":
            self.i += 1
            if len(val) > 19 or int(val) >= _MAX_INT:
                raise DimSyntaxError(f"integer {val[:24]} too large in dimension {self.text!r}",
                                     pos)
            return sympy.Integer(int(val))
        if kind == "name":
            self.i += 1
            problem = check_symbol_name(val)
            if problem:
                raise DimSyntaxError(f"{problem} in dimension {self.text!r}", pos)
            if self.symbols is not None and val not in self.symbols:
                raise DimSyntaxError(f"undeclared symbol {val!r} in dimension {self.text!r}; "
                                     "declare it in the graph header (where N in [1, 64])", pos)
            return symbol(val)
        if val == "(":
            self.i += 1
            inner = self.expr(depth + 1)
            if self.peek()[1] != ")":
                raise self.fail("expected ')'")
            self.i += 1
            return inner
        if val == "-":
            self.i += 1
            if depth + 1 > MAX_EXPR_DEPTH:
                raise self.fail(f"expression nested deeper than {MAX_EXPR_DEPTH} levels")
            return -self.factor(depth + 1)
        raise self.fail("expected an integer, a symbol or '('" if kind != "eof"
                        else "unexpected end")


def parse_dim(text: str, symbols: Container[str] | None = None) -> Dim:
    """Reads one dimension written by :func:`format_dim`; evaluates nothing.

    Args:
        text: the dimension, e.g. ``"N*64"``.
        symbols: the declared symbol names; ``None`` accepts any identifier.

    Raises:
        DimSyntaxError: (a ValueError, with ``offset``) malformed text, an
            undeclared symbol, nesting deeper than :data:`MAX_EXPR_DEPTH`, text
            longer than :data:`MAX_EXPR_LEN`, or a non-integral result.
    """
    if not isinstance(text, str):
        raise DimSyntaxError(f"a dimension is text, got {type(text).__name__}", 0)
    if len(text) > MAX_EXPR_LEN:
        raise DimSyntaxError(f"dimension expression longer than {MAX_EXPR_LEN} characters", 0)
    value = _DimParser(text, symbols).parse()
    try:
        return normalize_dim(value)
    except ShapeError as e:
        raise DimSyntaxError(str(e), 0) from e


# ------------------------------------------------------------------- binding
def bind_shapes(graph: Graph, shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """Binds the graph's symbols from concrete input shapes, checking ranges.

    Args:
        graph: the graph whose inputs (by name) and symbol ranges apply.
        shapes: input name -> concrete shape, for some or all inputs.

    Returns:
        symbol name -> value, for every symbol the given inputs determine.

    Raises:
        RuntimeInputError: an unknown input name, a wrong rank or static size, a
            symbol bound to two different sizes, a size outside its symbol's range,
            or an expression dimension that does not match; the message names the
            input, the dimension, the symbol and its range.
    """
    by_name = {v.name: v for v in graph.inputs}
    unknown = [k for k in shapes if k not in by_name]
    if unknown:
        raise RuntimeInputError(f"unknown input(s) {', '.join(map(repr, unknown))}; the graph's "
                                f"inputs are {', '.join(by_name)}")
    bound: dict[str, int] = {}
    where: dict[str, str] = {}
    deferred: list[tuple[str, int, Any, int]] = []
    for name, shape in shapes.items():
        want = by_name[name].type
        given = tuple(int(s) for s in shape)
        if len(given) != want.rank:
            raise RuntimeInputError(f"input {name!r}: expected {want} (rank {want.rank}), got "
                                    f"shape {list(given)} (rank {len(given)})")
        for i, (d, g) in enumerate(zip(want.shape, given, strict=True)):
            if isinstance(d, int):
                if d != g:
                    raise RuntimeInputError(f"input {name!r}: dim {i} is {g}, expected {d} "
                                            f"({want})")
            elif d.is_Symbol:
                _bind(graph, bound, where, d.name, g, f"input {name!r} dim {i}")
            else:
                deferred.append((name, i, d, g))
    for name, i, d, g in deferred:
        free = dim_symbols(d) - set(bound)
        if len(free) == 1:  # solve an affine dim such as N*2 or S + 1 for its one symbol
            s = symbol(free.pop())
            sol = [r for r in sympy.solve(sympy.Eq(d, g), s) if r.is_Integer]
            if sol:
                _bind(graph, bound, where, s.name, int(sol[0]), f"input {name!r} dim {i}")
        try:
            value = eval_dim(d, bound)
        except KeyError as e:
            raise RuntimeInputError(f"input {name!r}: dim {i} ({format_dim(d)}) cannot be "
                                    f"bound from size {g}: {e.args[0]}") from e
        if value != g:
            env = ", ".join(f"{k}={v}" for k, v in sorted(bound.items()))
            raise RuntimeInputError(f"input {name!r}: dim {i} is {g}, but {format_dim(d)} = "
                                    f"{value} with {env}")
    return bound


def _bind(graph: Graph, bound: dict[str, int], where: dict[str, str], sym: str, value: int,
          what: str) -> None:
    rng = graph.symbols.get(sym, SymbolRange())
    if not rng.contains(value):
        raise RuntimeInputError(f"{what}: size {value} is outside the range of symbol {sym} "
                                f"({format_symbol(sym, rng)}); give a size in {rng} or retrace "
                                "with a wider range")
    if sym in bound and bound[sym] != value:
        raise RuntimeInputError(f"{what}: size {value} for symbol {sym}, but {where[sym]} gave "
                                f"{sym}={bound[sym]}; these dimensions must be equal")
    bound.setdefault(sym, value)
    where.setdefault(sym, what)


def symbols_of(types: Iterable[Any]) -> set[str]:
    """Every symbol name used by the shapes of some TensorTypes."""
    out: set[str] = set()
    for t in types:
        for d in t.shape:
            if type(d) is not int:
                out |= dim_symbols(d)
    return out


# ------------------------------------------------------------------- torch symbols
#: torch symbol name (``s77``) -> slimfx symbol name (``N``), while a frontend lowers.
_TORCH_NAMES: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "slimfx_torch_symbol_names", default=None)


@contextlib.contextmanager
def torch_symbol_names(names: Mapping[str, str]) -> Iterator[None]:
    """Within the block, :func:`from_torch_dim` renames torch's symbols by ``names``."""
    token = _TORCH_NAMES.set(dict(names))
    try:
        yield
    finally:
        _TORCH_NAMES.reset(token)


def from_torch_expr(e: Any, names: Mapping[str, str]) -> Any:
    """A torch shape expression (sympy over ``s0, s1, ...``) in slimfx symbols.

    Raises:
        ShapeError: a symbol ``names`` does not map, or a function (``Mod``,
            ``Max``...) the IR cannot express.
    """
    if e.is_Integer:
        return sympy.Integer(int(e))
    if e.is_Symbol:
        if e.name not in names:
            raise ShapeError(f"torch size symbol {e.name} is not one of the graph's symbols "
                             f"({', '.join(sorted(set(names.values()))) or 'none'})")
        return symbol(names[e.name])
    if e.is_Add:
        return sympy.Add(*(from_torch_expr(a, names) for a in e.args))
    if e.is_Mul:
        return sympy.Mul(*(from_torch_expr(a, names) for a in e.args))
    if e.is_Pow and e.args[1].is_Integer and int(e.args[1]) > 0:
        return from_torch_expr(e.args[0], names) ** int(e.args[1])
    kind = type(e).__name__
    if kind == "FloorDiv":
        a, b = (from_torch_expr(x, names) for x in e.args)
        return sympy.floor(a / b)
    if kind == "CeilDiv":
        a, b = (from_torch_expr(x, names) for x in e.args)
        return sympy.floor((a + b - 1) / b)
    raise ShapeError(f"torch size expression {e} uses {kind}, which the IR cannot express "
                     "(only + - * // over ints and symbols)")


def from_torch_dim(d: Any) -> Dim:
    """A dimension of a torch (fake) tensor: ``int``, or a ``SymInt`` as a slimfx dim.

    Raises:
        ShapeError: a symbolic size outside :func:`torch_symbol_names` (or with a
            symbol it does not name).
    """
    if type(d) is int:
        return d
    node = getattr(d, "node", None)
    expr = getattr(node, "expr", None)
    if expr is None:
        return int(d)
    if expr.is_Integer:
        return int(expr)
    names = _TORCH_NAMES.get()
    if names is None:
        raise ShapeError(f"symbolic torch size {expr} outside a slimfx frontend")
    return normalize_dim(from_torch_expr(expr, names))
