"""Graph, Node and Value: the mutable core of the IR, with use-def chains kept by the IR.

Node order is a doubly linked list that stays valid while it is edited: an erased
node keeps its forward link, so a loop over ``graph.nodes`` survives erasing the
node it stands on. ``Value.uses()`` returns a snapshot, so callers may rewire uses
while iterating.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from slimfx.errors import VerifyError
from slimfx.ir.ops import Attrs, OpDef, get_op
from slimfx.ir.symbolic import SymbolRange, symbol
from slimfx.ir.types import QParams, TensorType

__all__ = ["Source", "Use", "Value", "Node", "Graph"]

_NAME_RE = re.compile(r"[A-Za-z0-9_.]+")


@dataclass(frozen=True, slots=True)
class Source:
    """Where a node came from: the module path, the user's source line, the torch op."""

    module: str = ""
    location: str = ""
    torch_op: str = ""

    def __str__(self) -> str:
        parts = [p for p in (self.module, self.location) if p]
        return " at ".join(parts) if parts else "<unknown source>"


@dataclass(frozen=True, slots=True)
class Use:
    """One use of a Value: ``node.inputs[index] is value``."""

    node: Node
    index: int


class Value:
    """One SSA value: a graph input, a constant or a node result."""

    __slots__ = ("name", "type", "producer", "index", "const", "qparams", "mask", "_uses",
                 "__weakref__")

    def __init__(self, name: str, type: TensorType, *, producer: Node | None = None,
                 index: int = 0, const: torch.Tensor | None = None,
                 qparams: QParams | None = None) -> None:
        self.name = name
        self.type = type
        self.producer = producer
        self.index = index
        self.const = const
        self.qparams = qparams
        self.mask: torch.Tensor | None = None  # pruning mask of a constant (1 keeps)
        self._uses: dict[tuple[int, int], Use] = {}

    @property
    def is_const(self) -> bool:
        return self.const is not None

    @property
    def shape(self) -> tuple[Any, ...]:
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype

    def uses(self) -> list[Use]:
        """A snapshot of the uses of this value, in the order they were made."""
        return list(self._uses.values())

    @property
    def users(self) -> list[Node]:
        """Distinct nodes using this value, in use order."""
        seen: dict[int, Node] = {}
        for u in self._uses.values():
            seen.setdefault(id(u.node), u.node)
        return list(seen.values())

    def _add_use(self, node: Node, index: int) -> None:
        self._uses[(id(node), index)] = Use(node, index)

    def _remove_use(self, node: Node, index: int) -> None:
        self._uses.pop((id(node), index), None)

    def __repr__(self) -> str:
        return f"Value(%{self.name}: {self.type})"


class Node:
    """One operation. Results are Values; multi-result ops have several."""

    __slots__ = ("op", "inputs", "outputs", "attrs", "source", "graph", "_prev", "_next",
                 "_erased", "__weakref__")

    def __init__(self, op: OpDef, inputs: Sequence[Value], attrs: Attrs,
                 source: Source | None = None) -> None:
        self.op = op
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.attrs = attrs
        self.source = source or Source()
        self.graph: Graph | None = None
        self._prev: Node | None = None
        self._next: Node | None = None
        self._erased = False
        for i, v in enumerate(inputs):
            self.inputs.append(v)
            v._add_use(self, i)

    @property
    def name(self) -> str:
        """The name of the first result (nodes are named by what they produce)."""
        return self.outputs[0].name if self.outputs else f"<{self.op.name}>"

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise ValueError(f"{self.op.name} node %{self.name} has {len(self.outputs)} results")
        return self.outputs[0]

    def attr(self, name: str) -> Any:
        return self.attrs[name]

    def set_attrs(self, **updates: Any) -> None:
        """Replaces some attributes, checked against the op definition."""
        merged = dict(self.attrs)
        merged.update(updates)
        self.attrs = self.op.make_attrs(merged)

    def replace_input(self, index: int, value: Value) -> None:
        self.inputs[index]._remove_use(self, index)
        self.inputs[index] = value
        value._add_use(self, index)

    def set_inputs(self, values: Sequence[Value]) -> None:
        for i, v in enumerate(self.inputs):
            v._remove_use(self, i)
        self.inputs = list(values)
        for i, v in enumerate(self.inputs):
            v._add_use(self, i)

    def has(self, trait: Any) -> bool:
        return self.op.has(trait)

    def describe(self) -> str:
        """``%name = op`` plus the source, for error messages."""
        return f"%{self.name} = {self.op.name} ({self.source})"

    def __repr__(self) -> str:
        return f"Node({self.describe()})"


class _NodeList:
    """The ordered node sequence of a graph; iteration survives erasing the current node."""

    def __init__(self, graph: Graph) -> None:
        self._graph = graph

    def __iter__(self) -> Iterator[Node]:
        node = self._graph._head
        while node is not None:
            nxt = node._next
            if not node._erased:
                yield node
            node = nxt
            while node is not None and node._erased:
                node = node._next

    def __reversed__(self) -> Iterator[Node]:
        return reversed(list(self))

    def __len__(self) -> int:
        return self._graph._count

    def __getitem__(self, i: int) -> Node:
        return list(self)[i]


class Graph:
    """A static-shape dataflow graph: inputs, constants, an ordered node list, outputs."""

    __slots__ = ("name", "inputs", "outputs", "constants", "output_names", "symbols", "_head",
                 "_tail", "_count", "_names", "_insert_point")

    def __init__(self, name: str = "main") -> None:
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.output_names: list[str] | None = None  # user-facing names of outputs, if any
        self.constants: dict[str, Value] = {}
        # Symbols the shapes may use: name -> range (DESIGN.md §2; slimfx.ir.symbolic).
        self.symbols: dict[str, SymbolRange] = {}
        self._head: Node | None = None
        self._tail: Node | None = None
        self._count = 0
        self._names: set[str] = set()
        self._insert_point: tuple[str, Node | None] = ("end", None)

    # ----------------------------------------------------------------- names
    def unique_name(self, hint: str) -> str:
        """A fresh value name based on ``hint`` (characters outside [A-Za-z0-9_.] become _)."""
        base = re.sub(r"[^A-Za-z0-9_.]", "_", hint) or "v"
        name, i = base, 1
        while name in self._names:
            name = f"{base}_{i}"
            i += 1
        self._names.add(name)
        return name

    def rename(self, value: Value, hint: str) -> None:
        """Gives ``value`` a new unique name based on ``hint``."""
        self._names.discard(value.name)
        if value.is_const and self.constants.get(value.name) is value:
            del self.constants[value.name]
            value.name = self.unique_name(hint)
            self.constants[value.name] = value
        else:
            value.name = self.unique_name(hint)

    # ----------------------------------------------------------------- symbols
    def add_symbol(self, name: str, min: int = 1, max: int | None = None) -> Any:
        """Declares a shape symbol with range ``[min, max]`` (``max=None``: unbounded).

        Returns the sympy symbol, for building types such as ``f32[N,3,8,8]``.
        Re-declaring a symbol replaces its range.

        Raises:
            ValueError: a bad name (not an identifier, a reserved word) or range.
        """
        sym = symbol(name)
        rng = SymbolRange(min, max)
        problem = rng.problem()
        if problem:
            raise ValueError(f"symbol {name}: {problem}")
        self.symbols[name] = rng
        return sym

    # ----------------------------------------------------------------- values
    def add_input(self, name: str, type: TensorType) -> Value:
        v = Value(self.unique_name(name), type)
        self.inputs.append(v)
        return v

    def add_constant(self, tensor: torch.Tensor, name: str = "const",
                     qparams: QParams | None = None) -> Value:
        """Adds a constant (a parameter, buffer or folded tensor) under a unique name."""
        tensor = tensor.detach()
        v = Value(self.unique_name(name), TensorType.of(tensor), const=tensor, qparams=qparams)
        self.constants[v.name] = v
        return v

    def remove_constant(self, value: Value) -> None:
        if value._uses or value in self.outputs:
            raise VerifyError(f"constant %{value.name} is still used")
        self.constants.pop(value.name, None)
        self._names.discard(value.name)

    def set_outputs(self, values: Sequence[Value]) -> None:
        self.outputs = list(values)

    def values(self) -> Iterator[Value]:
        """Every value: inputs, constants, then node results in order."""
        yield from self.inputs
        yield from self.constants.values()
        for n in self.nodes:
            yield from n.outputs

    def value(self, name: str) -> Value:
        for v in self.values():
            if v.name == name:
                return v
        raise KeyError(f"no value named %{name}")

    # ----------------------------------------------------------------- nodes
    @property
    def nodes(self) -> _NodeList:
        return _NodeList(self)

    def node(self, name: str) -> Node:
        """The node producing the value called ``name``."""
        for n in self.nodes:
            if any(o.name == name for o in n.outputs):
                return n
        raise KeyError(f"no node produces %{name}")

    def find(self, op: str) -> list[Node]:
        """Nodes of one op, in order."""
        return [n for n in self.nodes if n.op.name == op]

    @contextlib.contextmanager
    def inserting_before(self, node: Node) -> Iterator[None]:
        saved, self._insert_point = self._insert_point, ("before", node)
        try:
            yield
        finally:
            self._insert_point = saved

    @contextlib.contextmanager
    def inserting_after(self, node: Node | None) -> Iterator[None]:
        """Insert after ``node`` (``None``: at the start of the graph)."""
        saved = self._insert_point
        self._insert_point = ("after", node) if node is not None else ("start", None)
        try:
            yield
        finally:
            self._insert_point = saved

    def create(self, op: str | OpDef, inputs: Sequence[Value], attrs: Mapping[str, Any] | None = None,
               types: Sequence[TensorType] | None = None, *, name: str | None = None,
               names: Sequence[str] | None = None, source: Source | None = None) -> Node:
        """Creates a node at the current insertion point and returns it.

        Result types come from ``types`` if given, else from the op's type
        inference. ``name``/``names`` are hints for the result names.
        """
        opdef = get_op(op) if isinstance(op, str) else op
        norm = opdef.make_attrs(attrs)
        if types is None:
            if opdef.infer is None:
                raise VerifyError(f"{opdef.name}: the op has no type inference; pass types=")
            types = opdef.infer([v.type for v in inputs], norm)
        node = Node(opdef, inputs, norm, source)  # after inference: a failure leaves no uses
        if opdef.num_results >= 0 and len(types) != opdef.num_results:
            raise VerifyError(f"{opdef.name}: expected {opdef.num_results} results, "
                              f"got {len(types)} types")
        if names is None:
            base = name or opdef.name
            names = [base] if len(types) == 1 else [f"{base}.{i}" for i in range(len(types))]
        for i, (t, n) in enumerate(zip(types, names, strict=True)):
            node.outputs.append(Value(self.unique_name(n), t, producer=node, index=i))
        self._link(node)
        return node

    def add(self, op: str | OpDef, inputs: Sequence[Value], attrs: Mapping[str, Any] | None = None,
            type: TensorType | None = None, *, name: str | None = None,
            source: Source | None = None) -> Value:
        """Creates a single-result node and returns its result."""
        node = self.create(op, inputs, attrs, None if type is None else [type], name=name,
                           source=source)
        return node.output

    def _link(self, node: Node) -> None:
        where, anchor = self._insert_point
        node.graph = self
        if where == "end" or (where == "after" and anchor is self._tail):
            prev, nxt = self._tail, None
        elif where == "start":
            prev, nxt = None, self._head
        elif where == "before":
            assert anchor is not None
            prev, nxt = anchor._prev, anchor
        else:
            assert anchor is not None
            prev, nxt = anchor, anchor._next
        node._prev, node._next = prev, nxt
        if prev is None:
            self._head = node
        else:
            prev._next = node
        if nxt is None:
            self._tail = node
        else:
            nxt._prev = node
        self._count += 1
        if where == "after":
            self._insert_point = ("after", node)  # keep insertion order for several creates

    def move_before(self, node: Node, anchor: Node) -> None:
        """Moves an existing node so that it comes right before ``anchor``."""
        self._unlink(node)
        node._erased = False
        with self.inserting_before(anchor):
            self._link(node)

    def _unlink(self, node: Node) -> None:
        if node._prev is None:
            self._head = node._next
        else:
            node._prev._next = node._next
        if node._next is None:
            self._tail = node._prev
        else:
            node._next._prev = node._prev
        node._erased = True
        self._count -= 1

    def erase(self, node: Node) -> None:
        """Removes a node whose results are unused; drops its uses of its inputs."""
        for o in node.outputs:
            if o._uses or any(o is out for out in self.outputs):
                users = ", ".join(f"%{u.node.name}" for u in o.uses()) or "graph outputs"
                raise VerifyError(f"cannot erase {node.describe()}: %{o.name} is used by {users}")
        for i, v in enumerate(node.inputs):
            v._remove_use(node, i)
        for o in node.outputs:
            self._names.discard(o.name)
        self._unlink(node)
        node.graph = None

    def replace_all_uses_with(self, old: Value, new: Value) -> None:
        """Points every use of ``old`` (graph outputs included) at ``new``."""
        if old is new:
            return
        for use in old.uses():
            use.node.replace_input(use.index, new)
        self.outputs = [new if o is old else o for o in self.outputs]

    # ----------------------------------------------------------------- whole graph
    def verify(self) -> None:
        """Checks the invariants; raises VerifyError naming the offending node."""
        from slimfx.ir.verifier import verify

        verify(self)

    def clone(self) -> Graph:
        """A structural copy. Constant tensors are shared: passes replace, never mutate them."""
        g = Graph(self.name)
        g.symbols = dict(self.symbols)
        vmap: dict[int, Value] = {}
        for v in self.inputs:
            nv = g.add_input(v.name, v.type)
            nv.qparams = v.qparams
            vmap[id(v)] = nv
        for v in self.constants.values():
            nv = Value(v.name, v.type, const=v.const, qparams=v.qparams)
            nv.mask = v.mask
            g._names.add(v.name)
            g.constants[v.name] = nv
            vmap[id(v)] = nv
        for n in self.nodes:
            node = Node(n.op, [vmap[id(i)] for i in n.inputs], n.attrs, n.source)
            for o in n.outputs:
                no = Value(o.name, o.type, producer=node, index=o.index, qparams=o.qparams)
                g._names.add(o.name)
                node.outputs.append(no)
                vmap[id(o)] = no
            g._link(node)
        g.outputs = [vmap[id(v)] for v in self.outputs]
        g.output_names = None if self.output_names is None else list(self.output_names)
        return g

    def to_networkx(self) -> Any:
        """A ``networkx.MultiDiGraph`` view for analyses (see ``slimfx.ir.nx``)."""
        from slimfx.ir.nx import to_networkx

        return to_networkx(self)

    def draw(self, path: str | os.PathLike[str], *, format: str | None = None,
             before: Graph | None = None) -> Path:
        """Writes a picture of the graph (SVG/PNG/PDF through Graphviz, or ``.dot`` text).

        See :func:`slimfx.ir.dot.draw`; raises SlimfxError when Graphviz is missing.
        """
        from slimfx.ir.dot import draw

        return draw(self, path, format=format, before=before)

    def format(self, *, locations: bool = False, inline_limit: int = 8) -> str:
        from slimfx.ir.printer import format_graph

        return format_graph(self, locations=locations, inline_limit=inline_limit)

    def __str__(self) -> str:
        return self.format()

    def __repr__(self) -> str:
        return (f"Graph({self.name!r}, {len(self.inputs)} inputs, {len(self.constants)} "
                f"constants, {len(self)} nodes)")

    def __len__(self) -> int:
        return self._count
