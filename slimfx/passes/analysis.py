"""Analyses computed on demand, cached, and dropped when a pass changes the graph.

An analysis is a class with a class-level ``name`` and a classmethod
``compute(graph, ctx)``. ``ctx.analysis(graph, UseCount)`` returns the cached
result or computes it. After a pass reports ``changed=True`` every cached
analysis is dropped except those named in the pass result's ``preserved``.

Two small analyses come built in: :class:`UseCount` and :class:`ShapeInfo`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from slimfx.ir.core import Graph
from slimfx.ir.types import TensorType

if TYPE_CHECKING:
    from slimfx.passes.context import PassContext

__all__ = ["Analysis", "AnalysisManager", "UseCount", "ShapeInfo"]


class Analysis(Protocol):
    """What an analysis class provides."""

    name: ClassVar[str]

    @classmethod
    def compute(cls, graph: Graph, ctx: PassContext) -> Any: ...


A = TypeVar("A")


class AnalysisManager:
    """Caches analysis results per graph; passes invalidate them through :meth:`invalidate`.

    Attributes:
        computed: how many times each analysis was computed (for tests and profiling).
    """

    def __init__(self) -> None:
        self._cache: dict[str, tuple[Graph, Any]] = {}
        self.computed: dict[str, int] = {}

    def get(self, graph: Graph, cls: type[A], ctx: PassContext) -> A:
        """The result of analysis ``cls`` on ``graph``, computed if not cached."""
        name = cls.name  # type: ignore[attr-defined]
        hit = self._cache.get(name)
        if hit is not None and hit[0] is graph:
            return hit[1]
        result = cls.compute(graph, ctx)  # type: ignore[attr-defined]
        self._cache[name] = (graph, result)
        self.computed[name] = self.computed.get(name, 0) + 1
        return result

    def cached(self, name: str) -> bool:
        """Whether an analysis of this name is currently cached."""
        return name in self._cache

    def invalidate(self, preserved: frozenset[str] = frozenset(),
                   graph: Graph | None = None) -> None:
        """Drops every cached result except ``preserved`` ones (on ``graph``, when given)."""
        self._cache = {k: v for k, v in self._cache.items()
                       if k in preserved and (graph is None or v[0] is graph)}

    def clear(self) -> None:
        self._cache.clear()


@dataclass(frozen=True)
class UseCount:
    """How many times each value is used (graph outputs count as uses), by value name."""

    name: ClassVar[str] = "use-count"
    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def compute(cls, graph: Graph, ctx: PassContext) -> UseCount:
        counts = {v.name: len(v.uses()) for v in graph.values()}
        for v in graph.outputs:
            counts[v.name] = counts.get(v.name, 0) + 1
        return cls(counts)

    def __getitem__(self, name: str) -> int:
        return self.counts[name]


@dataclass(frozen=True)
class ShapeInfo:
    """The type of every value, by value name."""

    name: ClassVar[str] = "shape-info"
    types: dict[str, TensorType] = field(default_factory=dict)

    @classmethod
    def compute(cls, graph: Graph, ctx: PassContext) -> ShapeInfo:
        return cls({v.name: v.type for v in graph.values()})

    def __getitem__(self, name: str) -> TensorType:
        return self.types[name]
