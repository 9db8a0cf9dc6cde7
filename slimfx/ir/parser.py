"""Reads the text form written by :mod:`slimfx.ir.printer` back into a Graph.

``parse(print(g))`` prints identically to ``g``. Tensors of constants too large to
be inlined come from ``constants`` (name -> tensor); without it they are zeros of
the declared type, which is enough for golden tests of graph structure.

Every error is a :class:`~slimfx.errors.ParseError` that gives the line and
column and shows the offending line with a caret. The parsed graph is checked by
the verifier (result types are re-inferred and compared with the text), so a
graph that parses is a valid one. Nothing recurses on the nesting depth of the
input beyond :data:`MAX_DEPTH` levels of attribute lists (and
:data:`~slimfx.ir.symbolic.MAX_EXPR_DEPTH` levels of a dimension expression).

Symbolic dimensions (``f32[N,3,8,8]``, ``shape=[N*64,-1]``) are read by
:func:`slimfx.ir.symbolic.parse_dim`, which knows ints, the symbols declared in
the header (``graph @main(...) where N in [1, 64] {``), ``+ - * //`` and
parentheses, and evaluates nothing.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, NoReturn

import torch

from slimfx.errors import ParseError, UnsupportedOpError, VerifyError
from slimfx.ir.core import Graph, Node, Source, Value
from slimfx.ir.ops import get_op
from slimfx.ir.symbolic import DimSyntaxError, SymbolRange, check_symbol_name, parse_dim
from slimfx.ir.types import DTYPES, QParams, TensorType
from slimfx.ir.verifier import verify as verify_graph
from slimfx.ir.verifier import verify_node

__all__ = ["parse", "MAX_DEPTH", "MAX_ZERO_FILL"]

#: The deepest nesting of attribute lists the parser reads.
MAX_DEPTH = 32
#: The most elements of a constant the parser fills with zeros when no tensor is given.
MAX_ZERO_FILL = 1 << 27

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<value>%[A-Za-z0-9_.]+)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<number>-?(?:(?:inf|nan)\b|\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[()\[\]{}<>,=:@*+/-])
""", re.VERBOSE)


def _where(text: str, pos: int) -> tuple[str, str]:
    """``line L, column C`` plus the source line with a caret under ``pos``."""
    line = text.count("\n", 0, pos) + 1
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    src = text[start:end if end >= 0 else len(text)]
    col = pos - start + 1
    if len(src) > 120:  # keep the caret readable on long lines
        cut = max(0, col - 60)
        src, col = src[cut:cut + 120], col - cut
    return f"line {line}, column {col}", f"\n  {src}\n  {' ' * (col - 1)}^"


class _Tokens:
    def __init__(self, text: str) -> None:
        self.toks: list[tuple[str, str, int]] = []
        self.text = text
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                self.fail_at(pos, f"unexpected character {text[pos]!r}")
            kind = m.lastgroup or ""
            if kind != "ws":
                self.toks.append((kind, m.group(), pos))
            pos = m.end()
        self.i = 0
        # Declared symbol names; None while reading the inputs, whose symbols are
        # declared after them (checked against the header by _symbols).
        self.symbols: dict[str, SymbolRange] | None = None
        self.pending: list[tuple[str, int]] = []

    def pos(self, k: int = 0) -> int:
        """The text position of the token ``k`` ahead (negative: behind)."""
        idx = self.i + k
        if 0 <= idx < len(self.toks):
            return self.toks[idx][2]
        return len(self.text)

    def peek(self, k: int = 0) -> tuple[str, str]:
        if self.i + k < len(self.toks):
            kind, val, _ = self.toks[self.i + k]
            return kind, val
        return "eof", ""

    def next(self) -> tuple[str, str]:
        tok = self.peek()
        self.i += 1
        return tok

    def expect(self, val: str) -> None:
        kind, got = self.next()
        if got != val or kind in ("string", "eof"):
            self.fail(f"expected {val!r}, got {_show(kind, got)}", back=1)

    def accept(self, val: str) -> bool:
        kind, got = self.peek()
        if got == val and kind != "string":
            self.i += 1
            return True
        return False

    def fail(self, msg: str, back: int = 0) -> NoReturn:
        self.fail_at(self.pos(-back), msg)

    def fail_at(self, pos: int, msg: str) -> NoReturn:
        where, caret = _where(self.text, pos)
        raise ParseError(f"{where}: {msg}{caret}")


def _show(kind: str, val: str) -> str:
    return "the end of the text" if kind == "eof" else repr(val)


def parse(text: str, constants: Mapping[str, torch.Tensor] | None = None, *,
          require_constants: bool = False, verify: bool = True) -> Graph:
    """Parses the text form of one graph.

    Args:
        text: the text form, as printed by ``str(graph)`` or ``graph.format()``.
        constants: tensors of constants printed without their data, by name.
        require_constants: a constant without inline data must be in ``constants``
            (instead of becoming zeros).
        verify: run the verifier on the result (result types re-inferred and
            compared with the text); turn off only to read broken graphs on purpose.

    Raises:
        ParseError: the text is malformed, names an unknown op or an undefined value,
            disagrees with ``constants``, or describes an invalid graph; the message
            gives the line and column.
    """
    if not isinstance(text, str):
        raise ParseError(f"parse expects the text form as a str, got {type(text).__name__}")
    t = _Tokens(text)
    constants = constants or {}
    t.expect("graph")
    t.expect("@")
    kind, gname = t.next()
    if kind != "ident":
        t.fail(f"expected the graph name, got {_show(kind, gname)}", back=1)
    g = Graph(gname)
    env: dict[str, Value] = {}
    t.expect("(")
    while not t.accept(")"):
        pos = t.pos()
        name = _value_name(t)
        t.expect(":")
        typ, qp = _type(t)
        v = Value(name, typ, qparams=qp)
        _define(g, env, v, t, pos)
        g.inputs.append(v)
        if not t.accept(","):
            t.expect(")")
            break
    g.symbols = _symbols(t)
    t.expect("{")
    while True:
        kind, val = t.peek()
        if val == "const" and kind == "ident":
            t.next()
            _const(t, g, env, constants, require_constants)
        elif val == "return" and kind == "ident":
            ret_pos = t.pos()
            t.next()
            outs = []
            while t.peek()[0] == "value":
                outs.append(_use(t, env))
                if not t.accept(","):
                    break
            g.outputs = outs
            if t.accept("names"):
                pos = t.pos()
                names = _attr_value(t)
                if not isinstance(names, tuple) or not all(isinstance(n, str) for n in names):
                    t.fail_at(pos, "output names must be a list of strings")
                g.output_names = list(names)
            t.expect("}")
            break
        elif kind == "value":
            _node(t, g, env, verify)
        else:
            t.fail(f"expected a node, 'const' or 'return', got {_show(kind, val)}")
    if t.peek()[0] != "eof":
        t.fail(f"unexpected {_show(*t.peek())} after the end of the graph")
    if verify:
        try:
            verify_graph(g)
        except VerifyError as e:
            where, caret = _where(text, ret_pos)
            raise ParseError(f"{where}: the graph is invalid: "
                             f"{str(e).removeprefix('verify: ')}{caret}") from e
    return g


def _value_name(t: _Tokens) -> str:
    kind, val = t.next()
    if kind != "value":
        t.fail(f"expected a %value, got {_show(kind, val)}", back=1)
    return val[1:]


def _define(g: Graph, env: dict[str, Value], v: Value, t: _Tokens, pos: int) -> None:
    if v.name in env:
        t.fail_at(pos, f"%{v.name} is defined twice")
    env[v.name] = v
    g._names.add(v.name)


def _use(t: _Tokens, env: dict[str, Value]) -> Value:
    name = _value_name(t)
    if name not in env:
        t.fail(f"%{name} is used before it is defined", back=1)
    return env[name]


def _int(t: _Tokens, what: str) -> int:
    kind, val = t.next()
    if kind != "number" or not re.fullmatch(r"-?\d+", val):
        t.fail(f"expected an integer {what}, got {_show(kind, val)}", back=1)
    try:
        return int(val)
    except ValueError as e:  # more digits than Python converts
        t.fail(f"integer {what} too long: {e}", back=1)


_EXPR_PUNCT = frozenset("()*+-/")


def _starts_expr(t: _Tokens) -> bool:
    """Whether the next attribute value is a dimension expression (``N*64``, ``(S + 1)``)."""
    kind, val = t.peek()
    if kind == "ident":
        return val not in ("none", "true", "false")
    if kind == "punct":
        return val in ("(", "-")
    if kind == "number":
        nk, nv = t.peek(1)
        return nk == "punct" and nv in ("*", "/", "+", "-")
    return False


def _expr(t: _Tokens, what: str) -> Any:
    """Reads the tokens of one dimension expression and parses their text with parse_dim."""
    start = t.pos()
    depth = 0
    idents: list[tuple[str, int]] = []
    while True:
        kind, val = t.peek()
        if kind == "punct" and val in _EXPR_PUNCT:
            if val == ")":
                if depth == 0:
                    break
                depth -= 1
            elif val == "(":
                depth += 1
        elif kind == "ident":
            idents.append((val, t.pos()))
        elif kind != "number":
            break
        t.next()
    end = t.toks[t.i - 1][2] + len(t.toks[t.i - 1][1]) if t.i > 0 else start
    text = t.text[start:end] if end > start else ""
    if not text:
        t.fail(f"expected {what}, got {_show(*t.peek())}")
    for name, pos in idents:
        if check_symbol_name(name):
            t.fail_at(pos, f"expected an integer {what}, got {name!r} "
                           f"({check_symbol_name(name)})")
        if t.symbols is not None and name not in t.symbols:
            if what == "attribute value":
                t.fail_at(pos, f"bad attribute value {name!r}: not a declared symbol (declare "
                               f"it in the graph header: `where {name} >= 1`; strings are "
                               f"quoted: \"{name}\")")
            t.fail_at(pos, f"expected an integer {what}, got {name!r} (not a declared symbol; "
                           f"declare it in the graph header: `where {name} >= 1`)")
    try:
        value = parse_dim(text, None)
    except DimSyntaxError as e:
        t.fail_at(start + e.offset, str(e))
    if t.symbols is None:
        t.pending.extend(idents)
    return value


def _dim(t: _Tokens) -> Any:
    kind, val = t.peek()
    nxt = t.peek(1)
    if kind == "number" and not (nxt[0] == "punct" and nxt[1] in ("*", "/", "+", "-")):
        dim = _int(t, "dimension")
        if dim < 0:
            t.fail(f"dimension {dim} is negative", back=1)
        return dim
    pos = t.pos()
    dim = _expr(t, "dimension")
    if type(dim) is int and dim < 0:
        t.fail_at(pos, f"dimension {dim} is negative")
    return dim


def _symbols(t: _Tokens) -> dict[str, SymbolRange]:
    """The header's ``where N in [1, 64], S >= 1`` clause (empty without one)."""
    symbols: dict[str, SymbolRange] = {}
    if t.peek() == ("ident", "where"):
        t.next()
        while True:
            kind, name = t.next()
            problem = check_symbol_name(name) if kind == "ident" else "expected a symbol name"
            if problem:
                t.fail(f"{problem}, got {_show(kind, name)}", back=1)
            if name in symbols:
                t.fail(f"symbol {name} is declared twice", back=1)
            pos = t.pos()
            if t.accept(">"):
                t.expect("=")
                rng = SymbolRange(_int(t, "symbol minimum"), None)
            else:
                t.expect("in")
                t.expect("[")
                lo = _int(t, "symbol minimum")
                t.expect(",")
                if t.peek() == ("number", "inf"):
                    t.next()
                    hi = None
                else:
                    hi = _int(t, "symbol maximum")
                t.expect("]")
                rng = SymbolRange(lo, hi)
            problem = rng.problem()
            if problem:
                t.fail_at(pos, f"symbol {name}: {problem}")
            symbols[name] = rng
            if not t.accept(","):
                break
    t.symbols = symbols
    for name, pos in t.pending:
        if name not in symbols:
            t.fail_at(pos, f"expected an integer dimension, got {name!r} (not a declared "
                           f"symbol; declare it in the graph header: `where {name} >= 1`)")
    t.pending = []
    return symbols


def _type(t: _Tokens) -> tuple[TensorType, QParams | None]:
    kind, dt = t.next()
    if dt not in DTYPES or kind != "ident":
        t.fail(f"unknown dtype {dt!r}; known: {sorted(DTYPES)}", back=1)
    t.expect("[")
    shape = []
    while not t.accept("]"):
        shape.append(_dim(t))
        if not t.accept(","):
            t.expect("]")
            break
    qp = None
    if t.peek()[1] == "q" and t.peek(1)[1] == "<":
        start = t.pos()
        t.next()
        t.expect("<")
        kind, qdt = t.next()
        if qdt not in DTYPES or kind != "ident":
            t.fail(f"unknown quantized dtype {qdt!r}; known: {sorted(DTYPES)}", back=1)
        fields: dict[str, Any] = {}
        while t.accept(","):
            kind, key = t.next()
            if key not in ("scale", "zp", "axis", "range") or key in fields:
                t.fail(f"expected one of scale, zp, axis, range (each once), got "
                       f"{_show(kind, key)}", back=1)
            t.expect("=")
            fields[key] = _attr_value(t)
        t.expect(">")
        qp = _qparams(t, start, qdt, fields)
    return TensorType(tuple(shape), dt), qp


def _qparams(t: _Tokens, start: int, qdt: str, fields: dict[str, Any]) -> QParams:
    missing = [k for k in ("scale", "zp") if k not in fields]
    if missing:
        t.fail_at(start, f"quantization parameters miss {', '.join(missing)}")
    scale, zp = fields["scale"], fields["zp"]
    rng = fields.get("range", (-128, 127))
    axis = fields.get("axis")
    numbers = (int, float)
    ok = (all(isinstance(s, numbers) and not isinstance(s, bool)
              for s in (scale if isinstance(scale, tuple) else (scale,)))
          and all(isinstance(z, int) and not isinstance(z, bool)
                  for z in (zp if isinstance(zp, tuple) else (zp,)))
          and isinstance(rng, tuple) and len(rng) == 2
          and all(isinstance(r, int) and not isinstance(r, bool) for r in rng)
          and (axis is None or (isinstance(axis, int) and not isinstance(axis, bool))))
    if not ok:
        t.fail_at(start, "quantization parameters need scale=float or [floats], zp=int or "
                         "[ints], axis=int and range=[int,int]")
    try:
        return QParams(qdt, scale if isinstance(scale, tuple) else (scale,),
                       zp if isinstance(zp, tuple) else (zp,), axis, rng[0], rng[1])
    except (ValueError, TypeError, OverflowError) as e:
        t.fail_at(start, str(e))


def _attr_value(t: _Tokens, depth: int = 0) -> Any:
    if depth >= MAX_DEPTH:
        t.fail(f"attribute lists nested deeper than {MAX_DEPTH} levels")
    if _starts_expr(t):
        return _expr(t, "attribute value")
    kind, val = t.next()
    if val == "[" and kind == "punct":
        items = []
        while not t.accept("]"):
            items.append(_attr_value(t, depth + 1))
            if not t.accept(","):
                t.expect("]")
                break
        return tuple(items)
    if kind == "string":
        try:
            return json.loads(val)
        except ValueError as e:
            t.fail(f"bad string {val[:40]!r}: {e}", back=1)
    if kind == "number":
        if val in ("inf", "-inf", "nan", "-nan") or any(c in val for c in ".eE"):
            return float(val)
        try:
            return int(val)
        except ValueError as e:  # more digits than Python converts
            t.fail(f"integer too long: {e}", back=1)
    if kind == "ident" and val in ("none", "true", "false"):
        return {"none": None, "true": True, "false": False}[val]
    t.fail(f"bad attribute value {_show(kind, val)}", back=1)


def _const(t: _Tokens, g: Graph, env: dict[str, Value], constants: Mapping[str, torch.Tensor],
           require: bool) -> None:
    start = t.pos()
    name = _value_name(t)
    t.expect(":")
    typ, qp = _type(t)
    if not typ.is_static:
        t.fail_at(start, f"constant %{name} has a symbolic type {typ}; constants are static")
    tdt = DTYPES[typ.dtype]
    if t.accept("="):
        t.expect("dense")
        t.expect("<")
        pos = t.pos()
        data = _attr_value(t)
        t.expect(">")
        tensor = _dense(t, pos, name, typ, data)
    elif name in constants:
        tensor = constants[name]
        if not isinstance(tensor, torch.Tensor):
            t.fail_at(start, f"constant %{name}: given {type(tensor).__name__}, not a tensor")
        try:
            given = TensorType.of(tensor)
        except KeyError:
            t.fail_at(start, f"constant %{name}: given tensor has dtype {tensor.dtype}, which "
                             f"the IR does not know; text says {typ}")
        if given != typ:
            t.fail_at(start, f"constant %{name}: given tensor is {given}, text says {typ}")
    elif require:
        t.fail_at(start, f"constant %{name} ({typ}) has no inline data and no tensor was given")
    elif typ.numel > MAX_ZERO_FILL:
        t.fail_at(start, f"constant %{name} ({typ}) has {typ.numel} elements and no tensor; "
                         "give its tensor in constants")
    else:
        tensor = torch.zeros(typ.shape, dtype=tdt)
    v = Value(name, typ, const=tensor, qparams=qp)
    _define(g, env, v, t, start)
    g.constants[name] = v


def _dense(t: _Tokens, pos: int, name: str, typ: TensorType, data: Any) -> torch.Tensor:
    if not isinstance(data, tuple) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in data):
        t.fail_at(pos, f"constant %{name}: dense data must be a flat list of numbers")
    if len(data) != typ.numel:
        t.fail_at(pos, f"constant %{name}: {len(data)} values for {typ} ({typ.numel} elements)")
    if typ.dtype == "bool":
        if any(x not in (0, 1) for x in data):
            t.fail_at(pos, f"constant %{name}: bool data must be 0 or 1")
        data = tuple(bool(x) for x in data)
    elif not typ.is_float and typ.dtype != "c64" and not all(
            isinstance(x, int) or (math.isfinite(x) and x == int(x)) for x in data):
        t.fail_at(pos, f"constant %{name}: {typ.dtype} data must be integers")
    try:
        return torch.tensor(data, dtype=DTYPES[typ.dtype]).reshape(typ.shape)
    except (RuntimeError, OverflowError, TypeError, ValueError) as e:
        t.fail_at(pos, f"constant %{name}: data does not fit {typ}: {e}")


def _node(t: _Tokens, g: Graph, env: dict[str, Value], check: bool) -> None:
    start = t.pos()
    names = [_value_name(t)]
    while t.accept(","):
        names.append(_value_name(t))
    t.expect("=")
    kind, opname = t.next()
    if kind != "ident":
        t.fail(f"expected an op name, got {_show(kind, opname)}", back=1)
    try:
        op = get_op(opname)
    except UnsupportedOpError as e:
        t.fail(str(e), back=1)
    t.expect("(")
    inputs = []
    while not t.accept(")"):
        inputs.append(_use(t, env))
        if not t.accept(","):
            t.expect(")")
            break
    attrs: dict[str, Any] = {}
    attr_pos = t.pos()
    if t.accept("{"):
        while not t.accept("}"):
            kind, key = t.next()
            if kind != "ident":
                t.fail(f"expected an attribute name, got {_show(kind, key)}", back=1)
            if key in attrs:
                t.fail(f"attribute {key!r} given twice", back=1)
            t.expect("=")
            attrs[key] = _attr_value(t)
            if not t.accept(","):
                t.expect("}")
                break
    t.expect(":")
    types = []
    while True:
        types.append(_type(t))
        if not t.accept(","):
            break
    source = Source()
    if t.accept("loc"):
        t.expect("(")
        parts: list[str] = []
        while not t.accept(")"):
            kind, val = t.next()
            if kind != "string" or len(parts) == 3:
                t.fail("loc(...) takes up to three strings", back=1)
            try:
                parts.append(json.loads(val))
            except ValueError as e:
                t.fail(f"bad string {val[:40]!r}: {e}", back=1)
            if not t.accept(","):
                t.expect(")")
                break
        source = Source(*parts)
    if len(set(names)) != len(names):
        t.fail_at(start, "a node defines the same name twice")
    if len(types) != len(names):
        t.fail_at(start, f"{opname}: {len(names)} results but {len(types)} types")
    try:
        node_attrs = op.make_attrs(attrs)
    except (TypeError, ValueError, OverflowError) as e:
        t.fail_at(attr_pos, str(e))
    node = Node(op, inputs, node_attrs, source)
    for i, (n, (typ, qp)) in enumerate(zip(names, types, strict=True)):
        v = Value(n, typ, producer=node, index=i, qparams=qp)
        if n in env:
            for j, u in enumerate(node.inputs):  # leave no use records behind
                u._remove_use(node, j)
            t.fail_at(start, f"%{n} is defined twice")
        env[n] = v
        g._names.add(n)
        node.outputs.append(v)
    g._link(node)
    if check:
        try:
            verify_node(node)
        except VerifyError as e:
            t.fail_at(start, str(e).removeprefix("verify: "))
