"""Reads the text form written by :mod:`slimfx.ir.printer` back into a Graph.

``parse(print(g))`` prints identically to ``g``. Tensors of constants too large to
be inlined come from ``constants`` (name -> tensor); without it they are zeros of
the declared type, which is enough for golden tests of graph structure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import torch

from slimfx.errors import ParseError
from slimfx.ir.core import Graph, Node, Source, Value
from slimfx.ir.ops import get_op
from slimfx.ir.types import DTYPES, QParams, TensorType

__all__ = ["parse"]

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<value>%[A-Za-z0-9_.]+)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<number>-?(?:(?:inf|nan)\b|\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[()\[\]{}<>,=:@])
""", re.VERBOSE)


class _Tokens:
    def __init__(self, text: str) -> None:
        self.toks: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                raise ParseError(f"line {_line(text, pos)}: unexpected character {text[pos]!r}")
            kind = m.lastgroup or ""
            if kind != "ws":
                self.toks.append((kind, m.group(), pos))
            pos = m.end()
        self.i = 0
        self.text = text

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
        if got != val:
            self.fail(f"expected {val!r}, got {got!r}", back=1)

    def accept(self, val: str) -> bool:
        if self.peek()[1] == val:
            self.i += 1
            return True
        return False

    def fail(self, msg: str, back: int = 0) -> None:
        idx = min(self.i - back, len(self.toks) - 1)
        pos = self.toks[idx][2] if self.toks else 0
        raise ParseError(f"line {_line(self.text, pos)}: {msg}")


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def parse(text: str, constants: Mapping[str, torch.Tensor] | None = None) -> Graph:
    """Parses the text form of one graph."""
    t = _Tokens(text)
    constants = constants or {}
    t.expect("graph")
    t.expect("@")
    g = Graph(t.next()[1])
    env: dict[str, Value] = {}
    t.expect("(")
    while not t.accept(")"):
        name = _value_name(t)
        t.expect(":")
        typ, qp = _type(t)
        v = Value(name, typ, qparams=qp)
        _define(g, env, v, t)
        g.inputs.append(v)
        t.accept(",")
    t.expect("{")
    while True:
        kind, val = t.peek()
        if val == "const":
            t.next()
            _const(t, g, env, constants)
        elif val == "return":
            t.next()
            outs = []
            while t.peek()[0] == "value":
                outs.append(_use(t, env))
                if not t.accept(","):
                    break
            g.outputs = outs
            if t.accept("names"):
                g.output_names = list(_attr_value(t))
            t.expect("}")
            break
        elif kind == "value":
            _node(t, g, env)
        else:
            t.fail(f"expected a node, 'const' or 'return', got {val!r}")
    return g


def _value_name(t: _Tokens) -> str:
    kind, val = t.next()
    if kind != "value":
        t.fail(f"expected a %value, got {val!r}", back=1)
    return val[1:]


def _define(g: Graph, env: dict[str, Value], v: Value, t: _Tokens) -> None:
    if v.name in env:
        t.fail(f"%{v.name} is defined twice", back=1)
    env[v.name] = v
    g._names.add(v.name)


def _use(t: _Tokens, env: dict[str, Value]) -> Value:
    name = _value_name(t)
    if name not in env:
        t.fail(f"%{name} is used before it is defined", back=1)
    return env[name]


def _type(t: _Tokens) -> tuple[TensorType, QParams | None]:
    kind, dt = t.next()
    if dt not in DTYPES:
        t.fail(f"unknown dtype {dt!r}; known: {sorted(DTYPES)}", back=1)
    t.expect("[")
    shape = []
    while not t.accept("]"):
        shape.append(int(t.next()[1]))
        t.accept(",")
    qp = None
    if t.peek()[1] == "q" and t.peek(1)[1] == "<":
        t.next()
        t.expect("<")
        qdt = t.next()[1]
        fields: dict[str, Any] = {}
        while t.accept(","):
            key = t.next()[1]
            t.expect("=")
            fields[key] = _attr_value(t)
        t.expect(">")
        scale = fields["scale"]
        zp = fields["zp"]
        rng = fields.get("range", (-128, 127))
        qp = QParams(qdt, scale if isinstance(scale, tuple) else (scale,),
                     zp if isinstance(zp, tuple) else (zp,), fields.get("axis"),
                     int(rng[0]), int(rng[1]))
    return TensorType(tuple(shape), dt), qp


def _attr_value(t: _Tokens) -> Any:
    kind, val = t.next()
    if val == "[":
        items = []
        while not t.accept("]"):
            items.append(_attr_value(t))
            t.accept(",")
        return tuple(items)
    if kind == "string":
        return json.loads(val)
    if kind == "number":
        if val in ("inf", "-inf", "nan") or any(c in val for c in ".eE"):
            return float(val)
        return int(val)
    if val == "none":
        return None
    if val == "true":
        return True
    if val == "false":
        return False
    t.fail(f"bad attribute value {val!r}", back=1)


def _const(t: _Tokens, g: Graph, env: dict[str, Value], constants: Mapping[str, torch.Tensor]) -> None:
    name = _value_name(t)
    t.expect(":")
    typ, qp = _type(t)
    tdt = DTYPES[typ.dtype]
    if t.accept("="):
        t.expect("dense")
        t.expect("<")
        data = _attr_value(t)
        t.expect(">")
        if typ.dtype == "bool":
            data = tuple(bool(x) for x in data)
        tensor = torch.tensor(data, dtype=tdt).reshape(typ.shape)
    elif name in constants:
        tensor = constants[name]
        if TensorType.of(tensor) != typ:
            t.fail(f"constant %{name}: given tensor is {TensorType.of(tensor)}, text says {typ}")
    else:
        tensor = torch.zeros(typ.shape, dtype=tdt)
    v = Value(name, typ, const=tensor, qparams=qp)
    _define(g, env, v, t)
    g.constants[name] = v


def _node(t: _Tokens, g: Graph, env: dict[str, Value]) -> None:
    names = [_value_name(t)]
    while t.accept(","):
        names.append(_value_name(t))
    t.expect("=")
    kind, opname = t.next()
    try:
        op = get_op(opname)
    except Exception as e:  # UnsupportedOpError
        t.fail(str(e), back=1)
        raise AssertionError from e
    t.expect("(")
    inputs = []
    while not t.accept(")"):
        inputs.append(_use(t, env))
        t.accept(",")
    attrs: dict[str, Any] = {}
    if t.accept("{"):
        while not t.accept("}"):
            key = t.next()[1]
            t.expect("=")
            attrs[key] = _attr_value(t)
            t.accept(",")
    t.expect(":")
    types = []
    while True:
        types.append(_type(t))
        if not t.accept(","):
            break
    source = Source()
    if t.accept("loc"):
        t.expect("(")
        parts = []
        while not t.accept(")"):
            parts.append(json.loads(t.next()[1]))
            t.accept(",")
        source = Source(*parts)
    if len(types) != len(names):
        t.fail(f"{opname}: {len(names)} results but {len(types)} types")
    try:
        node = Node(op, inputs, op.make_attrs(attrs), source)
    except TypeError as e:
        t.fail(str(e))
        raise AssertionError from e
    for i, (n, (typ, qp)) in enumerate(zip(names, types, strict=True)):
        v = Value(n, typ, producer=node, index=i, qparams=qp)
        _define(g, env, v, t)
        node.outputs.append(v)
    g._link(node)
