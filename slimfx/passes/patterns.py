"""Declarative patterns over the dataflow graph, matched backwards from a root value.

::

    conv = is_op("conv2d", "linear")(wildcard(), is_const()).named("conv")
    pat = is_op("relu")(conv.has_one_use())

``is_op`` takes op names or :class:`~slimfx.ir.ops.Trait` values; calling the
pattern constrains operands (a prefix: trailing optional operands are free).
``only_used_by(p)`` requires every use of the value to be a node matched by ``p``.
:func:`match` returns the :class:`Match` or the reason the pattern failed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from slimfx.ir.core import Node, Value
from slimfx.ir.ops import OpDef, Trait

__all__ = ["Match", "Pattern", "OpPattern", "wildcard", "is_const", "is_op", "match"]


class Match:
    """What a pattern matched: values and nodes by pattern, and the root node.

    Read it by the names given with :meth:`Pattern.named`: ``match.value("x")`` (or
    ``match["x"]``) is the value a named pattern matched, ``match.node("conv")`` the node
    producing the value of a named op pattern; ``"x" in match`` tells whether a name was
    bound. ``nodes`` lists the nodes matched by op patterns, the root first.
    docs/tutorials/rewrite.md walks through a rule that uses them.

    Attributes:
        root: the node the match is rooted at (whose first result the pattern matched).
        nodes: the nodes matched by op patterns, root first.
    """

    def __init__(self, root: Node) -> None:
        self.root = root
        self._values: dict[int, Value] = {}
        self._names: dict[str, Value] = {}
        self.nodes: list[Node] = []  # nodes matched by op patterns, root first

    def bind(self, pattern: Pattern, value: Value) -> str | None:
        old = self._values.get(id(pattern))
        if old is not None and old is not value:
            return f"pattern bound to %{old.name} and %{value.name}"
        self._values[id(pattern)] = value
        if pattern.name is not None:
            self._names[pattern.name] = value
        if isinstance(pattern, OpPattern) and value.producer not in self.nodes:
            assert value.producer is not None
            self.nodes.append(value.producer)
        return None

    def value(self, key: str | Pattern) -> Value:
        """The value matched by a named pattern (or a pattern object)."""
        return self._names[key] if isinstance(key, str) else self._values[id(key)]

    def node(self, key: str | Pattern) -> Node:
        """The node producing the value matched by an op pattern."""
        producer = self.value(key).producer
        if producer is None:
            raise KeyError(f"pattern {key!r} matched %{self.value(key).name}, which has no node")
        return producer

    def __getitem__(self, key: str) -> Value:
        return self._names[key]

    def __contains__(self, key: str) -> bool:
        return key in self._names


class Pattern:
    """Base of all patterns. ``match_value`` returns None on success, else the reason."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.constraints: list[Callable[[Value, Match], str | None]] = []

    def named(self, name: str) -> Pattern:
        """Binds the matched value under ``name`` in the :class:`Match`; returns ``self``.

        Names are how a rule reads its match (``match.value(name)``, ``match.node(name)``).
        Naming does not make two patterns equal: to require the same value at two places,
        use one pattern object twice (``x = wildcard(); is_op("mul")(x, is_op("sigmoid")(x))``).
        """
        self.name = name
        return self

    def has_one_use(self) -> Pattern:
        """The value is used exactly once and is not a graph output."""
        def check(v: Value, m: Match) -> str | None:
            uses = len(v.uses())
            graph = m.root.graph
            if graph is not None and any(v is o for o in graph.outputs):
                return f"%{v.name} is a graph output"
            return None if uses == 1 else f"%{v.name} has {uses} uses"
        self.constraints.append(check)
        return self

    def only_used_by(self, other: Pattern) -> Pattern:
        """Every use of the value is a node matched by ``other`` (checked after matching)."""
        def check(v: Value, m: Match) -> str | None:
            allowed = m._values.get(id(other))
            owner = allowed.producer if allowed is not None else None
            graph = m.root.graph
            if graph is not None and any(v is o for o in graph.outputs):
                return f"%{v.name} is a graph output"
            others = [u.node for u in v.uses() if u.node is not owner]
            if others:
                names = ", ".join(f"%{n.name}" for n in others)
                return f"%{v.name} is also used by {names}"
            return None
        self.constraints.append(check)
        return self

    def where(self, predicate: Callable[[Value], bool], reason: str) -> Pattern:
        """An extra predicate on the matched value; ``reason`` explains a failure."""
        self.constraints.append(lambda v, m: None if predicate(v) else f"%{v.name}: {reason}")
        return self

    def _match(self, value: Value, m: Match) -> str | None:
        raise NotImplementedError

    def match_value(self, value: Value, m: Match) -> str | None:
        reason = self._match(value, m)
        if reason is None:
            reason = m.bind(self, value)
        return reason

    def check_constraints(self, m: Match) -> str | None:
        value = m._values.get(id(self))
        if value is not None:
            for c in self.constraints:
                reason = c(value, m)
                if reason is not None:
                    return reason
        return None

    def all_patterns(self) -> Iterable[Pattern]:
        yield self


class _Wildcard(Pattern):
    def _match(self, value: Value, m: Match) -> str | None:
        return None

    def __repr__(self) -> str:
        return "wildcard()"


class _Const(Pattern):
    def _match(self, value: Value, m: Match) -> str | None:
        return None if value.is_const else f"%{value.name} is not a constant"

    def __repr__(self) -> str:
        return "is_const()"


class OpPattern(Pattern):
    """Matches a value produced by a node whose op is one of ``ops`` or has one of ``traits``."""

    def __init__(self, ops: Sequence[str | Trait]) -> None:
        super().__init__()
        self.op_names = frozenset(o for o in ops if isinstance(o, str))
        self.traits = frozenset(o for o in ops if isinstance(o, Trait))
        self.operands: tuple[Pattern, ...] | None = None
        self.attr_values: dict[str, Any] = {}

    def __call__(self, *operands: Pattern) -> OpPattern:
        self.operands = operands
        return self

    def has_attr(self, **attrs: Any) -> OpPattern:
        self.attr_values.update(attrs)
        return self

    def accepts(self, op: OpDef) -> bool:
        return op.name in self.op_names or any(op.has(t) for t in self.traits)

    def _match(self, value: Value, m: Match) -> str | None:
        node = value.producer
        if node is None:
            kind = "a constant" if value.is_const else "a graph input"
            return f"%{value.name} is {kind}, not the result of {self}"
        if not self.accepts(node.op):
            return f"%{value.name} comes from {node.op.name}, not {self}"
        for k, v in self.attr_values.items():
            if node.attrs.get(k) != v:
                return f"%{node.name}: attribute {k}={node.attrs.get(k)!r}, expected {v!r}"
        if self.operands is not None:
            if len(node.inputs) < len(self.operands):
                return (f"%{node.name} has {len(node.inputs)} operands, "
                        f"expected {len(self.operands)}")
            for i, (p, v) in enumerate(zip(self.operands, node.inputs, strict=False)):
                reason = p.match_value(v, m)
                if reason is not None:
                    return f"operand {i} of %{node.name}: {reason}"
        return None

    def all_patterns(self) -> Iterable[Pattern]:
        yield self
        for p in self.operands or ():
            yield from p.all_patterns()

    def __repr__(self) -> str:
        names = sorted(self.op_names) + sorted(t.value for t in self.traits)
        return "|".join(names)


def wildcard() -> Pattern:
    """Matches any value."""
    return _Wildcard()


def is_const() -> Pattern:
    """Matches a constant value."""
    return _Const()


def is_op(*ops: str | Trait) -> OpPattern:
    """Matches the result of a node whose op has one of the names or traits given."""
    if not ops:
        raise ValueError("is_op needs at least one op name or Trait")
    return OpPattern(ops)


def match(pattern: Pattern, node: Node) -> tuple[Match | None, str | None]:
    """Matches ``pattern`` rooted at ``node``'s first result: (match, None) or (None, reason)."""
    m = Match(node)
    if not node.outputs:
        return None, f"%{node.name} has no results"
    reason = pattern.match_value(node.outputs[0], m)
    if reason is None:
        for p in pattern.all_patterns():
            reason = p.check_constraints(m)
            if reason is not None:
                break
    return (None, reason) if reason is not None else (m, None)
