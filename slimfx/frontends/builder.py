"""The state both frontends share while they build a Graph.

:class:`GraphBuilder` owns the graph under construction and the small policies
every lowering needs: python scalars become 0-d constants (``float`` -> f32,
``int`` -> i64, ``bool`` -> bool), parameters become constants named by their
module-tree name, every node gets a :class:`~slimfx.ir.Source`, result names are
derived from the module path, and ops the frontend cannot normalise become
``opaque`` nodes that keep the torch callable.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from slimfx.errors import SlimfxError
from slimfx.ir.core import Graph, Node, Source, Value
from slimfx.ir.opaque import encode_spec, target_name
from slimfx.ir.types import TensorType

__all__ = ["GraphBuilder", "Unmapped", "Refusal", "user_location", "module_path"]

logger = logging.getLogger(__name__)

_TORCH_DIR = os.path.dirname(torch.__file__)
_FRAME_RE = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


class Unmapped(Exception):  # noqa: N818 - a control-flow signal, not an error users see
    """Raised by a lowering rule when this call cannot be normalised; it becomes opaque."""


@dataclass(frozen=True)
class Refusal:
    """One construct the frontend refuses, with where it came from."""

    what: str
    source: Source

    def __str__(self) -> str:
        return f"{self.what} ({self.source})"


def user_location(stack_trace: str | None) -> str:
    """The innermost ``file:line`` of a stack trace that is not inside torch itself."""
    if not stack_trace:
        return ""
    frames = _FRAME_RE.findall(stack_trace)
    for path, line, _ in reversed(frames):
        if not path.startswith(_TORCH_DIR) and "<eval_with_key>" not in path:
            return f"{path}:{line}"
    return ""


def module_path(nn_module_stack: Any) -> str:
    """The innermost module path of an ``nn_module_stack`` meta entry (``''`` at top level)."""
    if not nn_module_stack:
        return ""
    path = list(nn_module_stack.values())[-1][0]
    path = str(path)
    if path.startswith("L['self']") or path.startswith("L__self__"):
        return ""  # dynamo-style keys are not module paths
    return path


@dataclass
class GraphBuilder:
    """Builds one Graph; lowering rules call its methods.

    Attributes:
        graph: the graph being built.
        source: the Source given to nodes created now (set per torch node).
        refusals: constructs the frontend refuses; reported all at once at the end.
    """

    graph: Graph
    source: Source = field(default_factory=Source)
    refusals: list[Refusal] = field(default_factory=list)
    _scalars: dict[tuple[Any, str], Value] = field(default_factory=dict)
    _tensors: dict[int, Value] = field(default_factory=dict)
    _module_first: set[str] = field(default_factory=set)
    _keep: list[torch.Tensor] = field(default_factory=list)  # keeps id() keys unique

    # ------------------------------------------------------------- constants
    def constant(self, tensor: torch.Tensor, name: str) -> Value:
        """A constant for ``tensor``; the same tensor object gives the same Value."""
        key = id(tensor)
        if key not in self._tensors:
            t = tensor.detach()
            if isinstance(t, torch.nn.Parameter):
                t = t.data
            self._tensors[key] = self.graph.add_constant(t, name)
            self._keep.append(tensor)
        return self._tensors[key]

    def scalar(self, x: bool | int | float, dtype: str | None = None) -> Value:
        """A 0-d constant for a python scalar (f32 for floats, i64 for ints)."""
        if dtype is None:
            dtype = "bool" if isinstance(x, bool) else "i64" if isinstance(x, int) else "f32"
        key = (repr(x), dtype)
        if key not in self._scalars:
            t = torch.tensor(x, dtype=TensorType((), dtype).torch_dtype)
            self._scalars[key] = self.graph.add_constant(t, "scalar")
        return self._scalars[key]

    def value(self, x: Any) -> Value:
        """A Value for an operand: Values pass through, scalars/tensors become constants."""
        if isinstance(x, Value):
            return x
        if isinstance(x, (bool, int, float)):
            return self.scalar(x)
        if isinstance(x, torch.Tensor):
            return self.constant(x, "const")
        raise Unmapped(f"operand {x!r} is not a tensor")

    # ------------------------------------------------------------- nodes
    def name_hint(self, op: str, *, primary: bool | None = None) -> str:
        """A readable result name: the module path for the module's first primary op.

        Helper ops (pad, reshape, cast...) and later ops get ``path.op``.
        """
        path = self.source.module
        if not path:
            return op
        if primary is None:
            primary = op not in _HELPER_OPS
        if primary and path not in self._module_first:
            self._module_first.add(path)
            return path
        return f"{path}.{op}"

    def add(self, op: str, inputs: Sequence[Any], attrs: dict[str, Any] | None = None) -> Value:
        """Adds a single-result node of a built-in op; operands go through :meth:`value`."""
        vals = [self.value(x) for x in inputs]
        try:
            return self.graph.add(op, vals, attrs, name=self.name_hint(op), source=self.source)
        except (TypeError, ValueError, KeyError, IndexError) as e:
            raise Unmapped(f"{op}: {e}") from e

    def create(self, op: str, inputs: Sequence[Any], attrs: dict[str, Any] | None = None) -> Node:
        """Adds a node that may have several results."""
        vals = [self.value(x) for x in inputs]
        try:
            return self.graph.create(op, vals, attrs, name=self.name_hint(op), source=self.source)
        except (TypeError, ValueError, KeyError, IndexError) as e:
            raise Unmapped(f"{op}: {e}") from e

    def opaque(self, fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any],
               result: Any) -> Any:
        """An ``opaque`` node calling ``fn``; ``result`` is an example (real or fake) output.

        Returns the result structure with one Value per tensor leaf.
        """
        operands: list[Value] = []

        def index(v: Any) -> int:
            if isinstance(v, torch.Tensor):
                v = self.constant(v, "const")
            if not isinstance(v, Value):
                raise SlimfxError(f"cannot encode argument {v!r} of {fn}")
            operands.append(v)
            return len(operands) - 1

        spec = encode_spec(tuple(args), dict(kwargs), index)
        leaves, tree = tree_flatten(result)
        if not leaves or not all(isinstance(t, torch.Tensor) for t in leaves):
            raise Unmapped(f"{fn} returns non-tensor values")
        types = [TensorType.of(t) for t in leaves]
        hint = self.name_hint(_short(fn))
        names = [hint] if len(types) == 1 else [f"{hint}.{i}" for i in range(len(types))]
        node = self.graph.create("opaque", operands, {"target": target_name(fn), "spec": spec},
                                 types, names=names, source=self.source)
        return tree_unflatten(list(node.outputs), tree)

    def refuse(self, what: str) -> None:
        """Records a construct the frontend cannot trace (reported with all others)."""
        self.refusals.append(Refusal(what, self.source))

    # ------------------------------------------------------------- rollback
    def mark(self) -> Node | None:
        """The current last node; :meth:`rollback` erases everything after it."""
        return self.graph._tail

    def rollback(self, mark: Node | None) -> None:
        """Erases nodes created after ``mark`` (newest first)."""
        created = []
        node = self.graph._head if mark is None else mark._next
        while node is not None:
            created.append(node)
            node = node._next
        for n in reversed(created):
            self.graph.erase(n)


_HELPER_OPS = frozenset({"pad", "reshape", "permute", "cast", "slice", "select", "expand",
                         "split", "scalar", "mul"})


def _short(fn: Any) -> str:
    if isinstance(fn, torch._ops.OpOverload):
        return fn._schema.name.split("::")[-1]
    return getattr(fn, "__name__", "opaque")
