"""Pattern rewriting: rewrite rules, a rewriter through which all edits go, a worklist driver.

Patterns live in :mod:`slimfx.passes.patterns` (re-exported here). A
:class:`RewriteRule` has ``pattern()``, ``check(match) -> str | None`` (the
reason it refuses, ``None`` to accept) and ``rewrite(match, rewriter)``. Every
edit goes through a :class:`Rewriter`, which notifies listeners; the driver
:func:`apply_rules` listens to re-enqueue affected nodes and runs to a fixed
point. It returns the refusals (rule, node, reason) so tests and users can ask
why a rule did not fire (:func:`explain`).
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from slimfx.errors import PassError
from slimfx.ir.core import Graph, Node, Source, Value
from slimfx.ir.types import QParams, TensorType
from slimfx.passes.base import Pass, PassResult
from slimfx.passes.context import PassContext
from slimfx.passes.patterns import (
    Match,
    OpPattern,
    Pattern,
    is_const,
    is_op,
    match,
    wildcard,
)

__all__ = [
    "Pattern", "Match", "OpPattern", "wildcard", "is_const", "is_op", "match", "RewriteRule",
    "Rewriter", "RewriteListener", "Refusal", "RewriteResult", "RewritePass", "apply_rules",
    "explain",
]

logger = logging.getLogger(__name__)

class RewriteListener:
    """Receives every edit a :class:`Rewriter` makes."""

    def node_created(self, node: Node) -> None: ...
    def node_erased(self, node: Node) -> None: ...
    def node_changed(self, node: Node) -> None: ...
    def value_replaced(self, old: Value, new: Value) -> None: ...


class Rewriter:
    """Edits a graph and notifies listeners. New nodes go before ``anchor``.

    Rules edit only through it, so that the driver (a :class:`RewriteListener`) re-enqueues
    the nodes around each edit. :func:`apply_rules` sets ``anchor`` to the root of the
    current match; used on its own, pass ``before=`` to :meth:`create`.

    Args:
        graph: the graph to edit, in place.
        listeners: notified of every created, erased or changed node and replaced value.

    Attributes:
        changed: whether any edit was made.
    """

    def __init__(self, graph: Graph, listeners: Sequence[RewriteListener] = ()) -> None:
        self.graph = graph
        self.listeners = list(listeners)
        self.anchor: Node | None = None
        self.changed = False

    def _notify(self, event: str, *args: Any) -> None:
        self.changed = True
        for listener in self.listeners:
            getattr(listener, event)(*args)

    def create(self, op: str, inputs: Sequence[Value], attrs: Mapping[str, Any] | None = None,
               types: Sequence[TensorType] | None = None, *, name: str | None = None,
               source: Source | None = None, before: Node | None = None) -> Node:
        """Creates a node before ``before`` (default: the root of the current match).

        Args:
            op: the op name.
            inputs: its operands.
            attrs: its attributes (defaults from the op definition for the others).
            types: the result types; inferred from the operands when ``None``.
            name: the name of the (first) result; derived from ``op`` when ``None``.
            source: the source location; default the anchor's, so errors and pictures
                still point at the user's model line.
            before: the node to insert before.

        Returns:
            The new node (its results are ``node.outputs``).

        Raises:
            PassError: there is no insertion point (no match root and no ``before``).
        """
        anchor = before or self.anchor
        if anchor is None:
            raise PassError("Rewriter.create: no insertion point; pass before=")
        with self.graph.inserting_before(anchor):
            node = self.graph.create(op, inputs, attrs, types, name=name,
                                     source=source or anchor.source)
        self._notify("node_created", node)
        return node

    def add_constant(self, tensor: torch.Tensor, name: str,
                     qparams: QParams | None = None) -> Value:
        """Adds a constant (a folded weight, say) under a unique name derived from ``name``."""
        self.changed = True
        return self.graph.add_constant(tensor, name, qparams)

    def set_attrs(self, node: Node, **attrs: Any) -> None:
        node.set_attrs(**attrs)
        self._notify("node_changed", node)

    def replace_input(self, node: Node, index: int, value: Value) -> None:
        node.replace_input(index, value)
        self._notify("node_changed", node)

    def set_inputs(self, node: Node, values: Sequence[Value]) -> None:
        node.set_inputs(values)
        self._notify("node_changed", node)

    def replace_all_uses_with(self, old: Value, new: Value) -> None:
        users = old.users
        self.graph.replace_all_uses_with(old, new)
        self._notify("value_replaced", old, new)
        for n in users:
            self._notify("node_changed", n)

    def erase(self, node: Node) -> None:
        self._notify("node_erased", node)
        self.graph.erase(node)

    def replace_node(self, old: Node, new_values: Sequence[Value]) -> None:
        """Points every result of ``old`` at ``new_values`` and erases ``old``."""
        for o, n in zip(old.outputs, new_values, strict=True):
            self.replace_all_uses_with(o, n)
        self.erase(old)


@dataclass(frozen=True)
class RewriteRule:
    """One rewrite: ``pattern()`` + ``check()`` (failure reason) + ``rewrite()``."""

    name: ClassVar[str] = "rule"

    def pattern(self) -> Pattern:
        raise NotImplementedError

    def check(self, match: Match) -> str | None:
        """Returns why the rule must not fire on this match, or None to accept."""
        return None

    def rewrite(self, match: Match, rewriter: Rewriter) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Refusal:
    """A rule whose pattern matched at ``node`` but whose ``check`` refused."""

    rule: str
    node: str
    reason: str

    def __str__(self) -> str:
        return f"{self.rule} did not fire at %{self.node}: {self.reason}"


@dataclass
class RewriteResult:
    changed: bool = False
    applied: Counter[str] = field(default_factory=Counter)
    refusals: list[Refusal] = field(default_factory=list)

    def reasons(self, node: str | None = None) -> list[str]:
        """The refusal reasons (at one node, if given)."""
        return [r.reason for r in self.refusals if node is None or r.node == node]


class _Worklist(RewriteListener):
    def __init__(self, nodes: Iterable[Node]) -> None:
        self.queue: deque[Node] = deque(nodes)
        self.queued = {id(n) for n in self.queue}

    def push(self, node: Node | None) -> None:
        if node is not None and id(node) not in self.queued and node.graph is not None:
            self.queue.append(node)
            self.queued.add(id(node))

    def pop(self) -> Node:
        node = self.queue.popleft()
        self.queued.discard(id(node))
        return node

    def node_created(self, node: Node) -> None:
        self.push(node)
        for o in node.outputs:
            for u in o.users:
                self.push(u)

    def node_erased(self, node: Node) -> None:
        for v in node.inputs:
            self.push(v.producer)  # may have become single-use

    def node_changed(self, node: Node) -> None:
        self.push(node)
        for o in node.outputs:
            for u in o.users:
                self.push(u)

    def value_replaced(self, old: Value, new: Value) -> None:
        self.push(new.producer)


def apply_rules(graph: Graph, rules: Sequence[RewriteRule], *,
                max_rewrites: int = 1_000_000) -> RewriteResult:
    """Applies ``rules`` until none matches (a fixed point); edits ``graph`` in place."""
    patterns = [(r, r.pattern()) for r in rules]
    work = _Worklist(graph.nodes)
    rewriter = Rewriter(graph, [work])
    result = RewriteResult()
    refused: dict[tuple[str, int], Refusal] = {}
    while work.queue:
        node = work.pop()
        if node.graph is not graph:
            continue
        for rule, pat in patterns:
            m, _ = match(pat, node)
            if m is None:
                continue
            reason = rule.check(m)
            if reason is not None:
                refused[(rule.name, id(node))] = Refusal(rule.name, node.name, reason)
                continue
            refused.pop((rule.name, id(node)), None)
            rewriter.anchor = node
            rule.rewrite(m, rewriter)
            result.applied[rule.name] += 1
            if sum(result.applied.values()) > max_rewrites:
                raise PassError(f"rewrite rules did not reach a fixed point after {max_rewrites} "
                                f"rewrites ({dict(result.applied)}); a rule undoes another")
            break
    result.changed = rewriter.changed
    result.refusals = [r for r in refused.values() if _alive(graph, r.node)]
    return result


def _alive(graph: Graph, name: str) -> bool:
    try:
        graph.node(name)
    except KeyError:
        return False
    return True


def explain(graph: Graph, rules: str | RewritePass | Sequence[RewriteRule],
            node: str) -> list[str]:
    """Why each rule does (or does not) fire at node ``node`` or its direct users.

    Users of the node are listed only where they could be the root of the rule.

    Args:
        graph: the graph, left unchanged.
        rules: a rewrite pass by name (``"fold-bn"``), a :class:`RewritePass`, or rules.
        node: the name of the node (of its first result), e.g. ``"layer1.0.bn1"``.

    Returns:
        One line per rule and candidate root: ``"<rule> at %<node>: <reason>"``,
        or ``"... would fire"``.

    Raises:
        PassError: ``rules`` names a pass that is not built from rewrite rules.
    """
    if isinstance(rules, str):
        from slimfx.passes.registry import get_pass

        cls = get_pass(rules)
        if not issubclass(cls, RewritePass):
            raise PassError(f"pass {rules!r} is not a RewritePass; explain() needs rewrite rules")
        rules = cls()
    if isinstance(rules, RewritePass):
        rules = rules.rules()
    start = graph.node(node)
    roots = [start] + [u for o in start.outputs for u in o.users if u is not start]
    lines = []
    for rule in rules:
        pat = rule.pattern()
        for root in dict.fromkeys(roots):
            if root is not start and isinstance(pat, OpPattern) and not pat.accepts(root.op):
                continue  # a user of the node that cannot be the root of this rule
            m, reason = match(pat, root)
            if m is not None:
                reason = rule.check(m)
                if reason is None:
                    lines.append(f"{rule.name} at %{root.name}: would fire")
                    continue
            lines.append(f"{rule.name} at %{root.name}: {reason}")
    return lines


class RewritePass(Pass):
    """A pass that applies rewrite rules to a fixed point.

    Subclasses (frozen dataclasses) implement :meth:`rules`. Rules that matched
    but refused are logged at DEBUG and appended to ``ctx.refusals``;
    :meth:`explain` answers "why didn't this pass fire at node X?".
    """

    def rules(self) -> Sequence[RewriteRule]:
        raise NotImplementedError

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        result = apply_rules(graph, self.rules())
        for r in result.refusals:
            logger.debug("%s: %s", self.name, r)
        ctx.refusals.extend(result.refusals)
        return PassResult(graph, result.changed)

    def explain(self, graph: Graph, node: str) -> list[str]:
        """Why each rule of this pass does or does not fire at ``node`` (see :func:`explain`)."""
        return explain(graph, self.rules(), node)
