"""Pipelines: nested sequences of passes, written in code or as strings.

Grammar of a pipeline string (whitespace is ignored)::

    pipeline := item ("," item)*
    item     := NAME ["{" [option ("," option)*] "}"]
    option   := KEY "=" value
    value    := NUMBER | true | false | none | WORD | "quoted string" | "[" [value ("," value)*] "]"

``NAME`` is a registered pass or named pipeline (expanded on parse). Examples:
``"fold-bn,fuse-activation"``, ``"a,b{opt=1,other=x},cleanup"``.
``str(pipeline)`` prints options only when they differ from their defaults, and
``Pipeline(str(p)) == p``: two pipelines are equal when they run the same passes
with the same options.
"""

from __future__ import annotations

import json
import logging
import re
import reprlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Union

from slimfx.errors import PassError, PipelineError, SlimfxError
from slimfx.ir.core import Graph
from slimfx.passes.base import Pass, PassResult, format_option_value
from slimfx.passes.context import PassContext
from slimfx.passes.instruments import PassRecord
from slimfx.passes.registry import get_pass, get_pipeline, unknown_name_message

__all__ = ["Pipeline"]

logger = logging.getLogger(__name__)

Item = Union[Pass, "Pipeline"]
Spec = Union[str, Pass, "Pipeline", Sequence[Union[str, Pass, "Pipeline"]]]

_MAX_DEPTH = 32  # deepest nesting of option lists the parser reads

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<number>-?(?:inf\b|nan\b|\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?))
  | (?P<word>[A-Za-z_][A-Za-z0-9_.\-]*)
  | (?P<punct>[{}\[\],=])
""", re.VERBOSE)


class Pipeline:
    """An ordered, possibly nested sequence of passes.

    Args:
        spec: a pipeline string, a pass, a pipeline, or a sequence of those.
        name: the name of a registered pipeline this one expands (set by the parser).

    Example::

        p = Pipeline("fold-bn,fuse-activation,cleanup")
        g2 = p(g)                     # runs on a clone of g
        text = p.describe()           # explicit pass list with every option
    """

    __slots__ = ("items", "name")

    def __init__(self, spec: Spec = (), *, name: str | None = None) -> None:
        self.name = name
        if isinstance(spec, str):
            items: tuple[Item, ...] = _Parser(spec).parse()
        elif isinstance(spec, Pass | Pipeline):
            items = (spec,)
        elif isinstance(spec, Sequence):
            out: list[Item] = []
            for s in spec:
                if isinstance(s, str):
                    out.extend(_Parser(s).parse())
                elif isinstance(s, Pass | Pipeline):
                    out.append(s)
                else:
                    raise PipelineError(f"a pipeline holds passes, pipelines and pipeline "
                                        f"strings, not {_describe(s)}")
            items = tuple(out)
        else:
            raise PipelineError(f"Pipeline() takes a pipeline string, a pass, a pipeline, or "
                                f"a list of those, not {_describe(spec)}")
        self.items = items

    @classmethod
    def parse(cls, text: str) -> Pipeline:
        """Parses a pipeline string (same as ``Pipeline(text)``)."""
        return cls(text)

    # ------------------------------------------------------------ structure
    @property
    def passes(self) -> tuple[Pass, ...]:
        """The passes run, nesting flattened."""
        out: list[Pass] = []
        for it in self.items:
            out.extend(it.passes if isinstance(it, Pipeline) else (it,))
        return tuple(out)

    def __iter__(self) -> Iterator[Pass]:
        return iter(self.passes)

    def __len__(self) -> int:
        return len(self.passes)

    def __add__(self, other: Spec) -> Pipeline:
        return Pipeline([self, other if isinstance(other, Pass | Pipeline) else Pipeline(other)])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            other = Pipeline(other)
        if not isinstance(other, Pipeline):
            return NotImplemented
        return self.passes == other.passes

    def __hash__(self) -> int:
        return hash(self.passes)

    def __str__(self) -> str:
        if self.name is not None and self._is_registered_expansion():
            return self.name
        return ",".join(s for s in (str(it) for it in self.items) if s)

    def _is_registered_expansion(self) -> bool:
        named = get_pipeline(self.name or "")
        return named is not None and Pipeline(named.text).passes == self.passes

    def __repr__(self) -> str:
        return f"Pipeline({str(self)!r})"

    def describe(self) -> str:
        """The explicit pass list, every option written out, with one line of doc each."""
        lines = [f"pipeline {str(self)!r}: {len(self)} passes"]
        for i, (p, origin) in enumerate(self._walk(())):
            opts = ",".join(f"{k}={format_option_value(v)}" for k, v in p.options().items())
            text = f"{p.name}{{{opts}}}" if opts else p.name
            via = f"  [from {'/'.join(origin)}]" if origin else ""
            doc = type(p).summary()
            lines.append(f"  {i + 1:>2}. {text}{via}" + (f"\n        {doc}" if doc else ""))
        return "\n".join(lines)

    def _walk(self, origin: tuple[str, ...]) -> Iterator[tuple[Pass, tuple[str, ...]]]:
        here = (*origin, self.name) if self.name else origin
        for it in self.items:
            if isinstance(it, Pipeline):
                yield from it._walk(here)
            else:
                yield it, here

    # ------------------------------------------------------------ running
    def __call__(self, graph: Graph, ctx: PassContext | None = None, *,
                 inplace: bool = False) -> Graph:
        """Runs the pipeline and returns the resulting graph.

        Args:
            graph: the input graph; left untouched unless ``inplace``.
            ctx: the pass context (instruments, analyses); a fresh one by default.
            inplace: let passes edit ``graph`` itself instead of a clone.
        """
        work = graph if inplace else graph.clone()
        return self.run(work, ctx).graph

    def run(self, graph: Graph, ctx: PassContext | None = None) -> PassResult:
        """Runs every pass on ``graph`` (edited in place) and reports whether any changed it.

        Raises:
            PassError: a pass failed; the message names it and the passes run before it.
        """
        ctx = ctx if ctx is not None else PassContext()
        for inst in ctx.instruments:
            inst.enter(graph, ctx)
        changed = False
        try:
            for index, p in enumerate(self.passes):
                for inst in ctx.instruments:
                    inst.before_pass(index, p, graph, ctx)
                nodes_before = len(graph)
                start = time.perf_counter()
                result = _run_one(p, index, graph, ctx)
                seconds = time.perf_counter() - start
                ctx.history.append(str(p))
                if result.graph is not graph:
                    ctx.analyses.invalidate(result.preserved if result.changed else frozenset(),
                                            result.graph)
                elif result.changed:
                    ctx.analyses.invalidate(result.preserved)
                logger.debug("pass %s: %.3f ms, changed=%s", p, seconds * 1e3, result.changed)
                record = PassRecord(index, p, result, seconds, nodes_before, len(result.graph))
                for inst in ctx.instruments:
                    inst.after_pass(record, ctx)
                graph = result.graph
                changed = changed or result.changed
        finally:
            for inst in ctx.instruments:
                inst.exit(graph, ctx)
        return PassResult(graph, changed)


def _describe(obj: object) -> str:
    """What a rejected pipeline item is, with a hint for pass classes."""
    if isinstance(obj, type) and issubclass(obj, Pass):
        return f"the pass class {obj.__name__} (instantiate it: {obj.__name__}())"
    try:
        text = _SHORT.repr(obj)  # bounded depth: a list nested 3,000 deep is fine
    except RecursionError:
        text = "..."
    return f"{type(obj).__name__} ({text[:60]}{'...' if len(text) > 60 else ''})"


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxother, _SHORT.maxstring = 4, 61, 61


def _run_one(p: Pass, index: int, graph: Graph, ctx: PassContext) -> PassResult:
    try:
        p.requires(graph)
        result = p.run(graph, ctx)
    except Exception as e:
        before = ", ".join(ctx.history) or "none"
        kind = "" if isinstance(e, SlimfxError) else f"{type(e).__name__}: "
        raise PassError(f"pass {str(p)!r} (#{index} in the pipeline) failed on graph "
                        f"@{graph.name}: {kind}{e}\n  passes run before it: {before}") from e
    if not isinstance(result, PassResult):
        raise PassError(f"pass {str(p)!r} returned {type(result).__name__}, not a PassResult; "
                        "return PassResult(graph, changed)")
    return result


# ---------------------------------------------------------------- parsing
@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    pos: int


@dataclass(frozen=True)
class _Raw:
    """An option value as written: its Python reading and its source text."""

    value: Any
    text: str
    bare: bool  # an unquoted scalar, which a str option may take as text
    pos: int


class _Parser:
    def __init__(self, text: str, expanding: tuple[str, ...] = ()) -> None:
        self.text = text
        self.expanding = expanding
        self.toks: list[_Tok] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                raise self._error(f"unexpected character {text[pos]!r}", pos)
            if m.lastgroup != "ws":
                self.toks.append(_Tok(m.lastgroup or "", m.group(), pos))
            pos = m.end()
        self.i = 0

    def _error(self, msg: str, pos: int) -> PipelineError:
        head, _, rest = msg.partition("\n")
        rest = f"\n{rest}" if rest else ""
        text, col = self.text, pos
        if len(text) > 120:  # show a window around the position
            cut = max(0, pos - 60)
            text, col = text[cut:cut + 120], pos - cut
        shown = repr(self.text) if len(self.text) <= 120 else f"{self.text[:60]!r}..."
        return PipelineError(f"pipeline {shown}, position {pos}: {head}\n"
                             f"  {text}\n  {' ' * col}^{rest}")

    def peek(self) -> _Tok:
        return self.toks[self.i] if self.i < len(self.toks) else _Tok("eof", "", len(self.text))

    def next(self) -> _Tok:
        tok = self.peek()
        self.i += 1
        return tok

    def expect(self, text: str, what: str) -> _Tok:
        tok = self.next()
        if tok.text != text:
            got = repr(tok.text) if tok.kind != "eof" else "the end"
            raise self._error(f"expected {what}, got {got}", tok.pos)
        return tok

    def parse(self) -> tuple[Item, ...]:
        items: list[Item] = []
        if self.peek().kind == "eof":
            return ()
        while True:
            items.append(self._item())
            tok = self.next()
            if tok.kind == "eof":
                return tuple(items)
            if tok.text != ",":
                raise self._error(f"expected ',' between passes, got {tok.text!r}", tok.pos)

    def _item(self) -> Item:
        tok = self.next()
        if tok.kind != "word":
            got = repr(tok.text) if tok.kind != "eof" else "the end"
            raise self._error(f"expected a pass name, got {got}", tok.pos)
        options: dict[str, _Raw] = {}
        if self.peek().text == "{":
            brace = self.next()
            options = self._options(brace)
        named = get_pipeline(tok.text)
        if named is not None:
            if options:
                raise self._error(f"pipeline {tok.text!r} takes no options", tok.pos)
            if tok.text in self.expanding:
                raise self._error(f"pipeline {tok.text!r} includes itself", tok.pos)
            inner = _Parser(named.text, (*self.expanding, tok.text)).parse()
            return Pipeline(inner, name=tok.text)
        try:
            cls = get_pass(tok.text)
        except PipelineError:
            raise self._error(unknown_name_message(tok.text), tok.pos) from None
        return _build(cls, options, self, tok)

    def _options(self, brace: _Tok) -> dict[str, _Raw]:
        options: dict[str, _Raw] = {}
        if self.peek().text == "}":
            self.next()
            return options
        while True:
            key = self.next()
            if key.kind != "word":
                raise self._error(f"expected an option name, got {key.text!r}", key.pos)
            if key.text in options:
                raise self._error(f"option {key.text!r} given twice", key.pos)
            self.expect("=", f"'=' after option {key.text!r}")
            options[key.text] = self._value()
            tok = self.next()
            if tok.text == "}":
                return options
            if tok.text != ",":
                got = repr(tok.text) if tok.kind != "eof" else "the end"
                raise self._error(f"expected ',' or '}}' in the options opened at position "
                                  f"{brace.pos}, got {got}", tok.pos)

    def _value(self, depth: int = 0) -> _Raw:
        tok = self.next()
        if depth >= _MAX_DEPTH:
            raise self._error(f"option values nested deeper than {_MAX_DEPTH} levels", tok.pos)
        if tok.text == "[":
            items: list[Any] = []
            start = tok.pos
            if self.peek().text != "]":
                while True:
                    items.append(self._value(depth + 1).value)
                    sep = self.next()
                    if sep.text == "]":
                        break
                    if sep.text != ",":
                        raise self._error(f"expected ',' or ']' in a list, got {sep.text!r}",
                                          sep.pos)
            else:
                self.next()
            return _Raw(tuple(items), self.text[start:self.peek().pos], False, start)
        if tok.kind == "number":
            t = tok.text
            try:
                value: Any = float(t) if re.search(r"[.eEn]", t) else int(t)
            except ValueError as e:  # more digits than Python converts
                raise self._error(f"number too long: {e}", tok.pos) from e
            return _Raw(value, t, True, tok.pos)
        if tok.kind == "string":
            try:
                text = json.loads(tok.text)
            except ValueError as e:
                bad = tok.pos + getattr(e, "pos", 0)
                raise self._error(f"bad string {tok.text[:40]!r}: "
                                  f"{getattr(e, 'msg', str(e))}", bad) from e
            return _Raw(text, tok.text, False, tok.pos)
        if tok.kind == "word":
            value = {"true": True, "false": False, "none": None}.get(tok.text, tok.text)
            return _Raw(value, tok.text, True, tok.pos)
        got = repr(tok.text) if tok.kind != "eof" else "the end"
        raise self._error(f"expected an option value, got {got}", tok.pos)


def _build(cls: type[Pass], options: dict[str, _Raw], parser: _Parser, tok: _Tok) -> Pass:
    specs = {s.name: s for s in cls.option_specs()}
    values: dict[str, Any] = {}
    for key, raw in options.items():
        spec = specs.get(key)
        if spec is None:
            values[key] = raw.value  # from_options reports the unknown name
            continue
        try:
            values[key] = spec.coerce(raw.value, cls.name)
        except PipelineError as e:
            if not raw.bare or raw.text == raw.value:
                raise parser._error(str(e), raw.pos) from e
            try:  # e.g. a str option written as 1e3
                values[key] = spec.coerce(raw.text, cls.name)
            except PipelineError:
                raise parser._error(str(e), raw.pos) from e
    try:
        return cls.from_options(values)
    except PipelineError as e:
        raise parser._error(str(e), tok.pos) from e
