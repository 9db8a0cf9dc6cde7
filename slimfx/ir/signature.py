"""Checking call inputs against a graph's input signature, for every backend.

The torch backend (:func:`slimfx.to_torch` modules) and compiled models check
their inputs the same way, with the same messages, *before* anything runs:

- :func:`bind_inputs`: positional and keyword (input name) arguments to the
  signature order; wrong counts, unknown, duplicate and missing names are one
  :class:`~slimfx.errors.RuntimeInputError` that lists the inputs in order.
- :func:`shape_matches` / :func:`dim_matches`: one dimension at a time, so a
  symbolic dimension (not an ``int``) accepts any size once graphs carry symbols.
- :func:`type_mismatch`: the message for a wrong shape or dtype, naming the
  input, the expected and the given type.

Nothing here imports a backend.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from slimfx.errors import RuntimeInputError
from slimfx.ir.types import TensorType

__all__ = ["bind_inputs", "dim_matches", "shape_matches", "type_mismatch"]


def dim_matches(expected: Any, given: int) -> bool:
    """Whether a given size fits an expected dimension.

    An ``int`` dimension must be equal; anything else is a symbolic dimension
    (checked against its range by the graph that declares it) and fits any size.
    """
    if isinstance(expected, int):
        return expected == given
    return True


def shape_matches(expected: Sequence[Any], given: Sequence[int]) -> bool:
    """Whether a shape fits an expected shape, dimension by dimension."""
    if len(expected) != len(given):
        return False
    if all(isinstance(d, int) for d in expected):  # the static (common, fast) case
        return tuple(expected) == tuple(given)
    return all(dim_matches(e, g) for e, g in zip(expected, given, strict=True))


def type_mismatch(name: str, expected: TensorType, shape: Sequence[int], dtype: str,
                  *, detail: str = "", remedy: str = "retrace the model with inputs of "
                  "this shape") -> RuntimeInputError:
    """The error for input ``name`` of ``dtype[shape]`` where ``expected`` was wanted.

    Args:
        name: the input's name.
        expected: its type in the graph.
        shape: the given shape.
        dtype: the given dtype, as a short IR name (``f32``) or a library's name.
        detail: extra words after the expected type (e.g. the numpy dtype).
        remedy: what to do, appended after ``reshape/cast the input or``.
    """
    given = f"{dtype}[{','.join(str(int(d)) for d in shape)}]"
    rank = (f" (rank {len(shape)}, expected rank {expected.rank})"
            if len(shape) != expected.rank else "")
    return RuntimeInputError(f"input {name!r}: expected {expected}{detail}, got {given}{rank}; "
                             f"reshape/cast the input or {remedy}")


def bind_inputs(names: Sequence[str], args: Sequence[Any], kwargs: Mapping[str, Any], *,
                who: str, is_tensor: Callable[[Any], bool] | None = None,
                call: str = "f") -> list[Any]:
    """Inputs in signature order, from positional and keyword (input name) arguments.

    Args:
        names: the input names, in order.
        args: the positional arguments.
        kwargs: the keyword arguments (keys are input names).
        who: how messages name the callee (``"the compiled model"``).
        is_tensor: recognises a tensor, to explain ``f([x, y])`` for ``f(x, y)``.
        call: how the message's example names the callee (``compiled(*inputs)``).

    Raises:
        RuntimeInputError: wrong count; unknown, duplicate or missing names.
    """
    expected = ", ".join(names)
    if (is_tensor is not None and len(args) == 1 and not kwargs and len(names) != 1
            and isinstance(args[0], list | tuple) and args[0]
            and all(is_tensor(a) for a in args[0])):
        raise RuntimeInputError(
            f"{who} takes {len(names)} input(s) ({expected}) as separate arguments, got one "
            f"{type(args[0]).__name__} of {len(args[0])} tensors; unpack it: {call}(*inputs)")
    if not kwargs:
        if len(args) != len(names):
            raise RuntimeInputError(f"{who} takes {len(names)} input(s) ({expected}), "
                                    f"got {len(args)}")
        return list(args)
    problems = []
    if len(args) > len(names):
        problems.append(f"{len(args)} positional inputs for {len(names)} input(s)")
    unknown = [k for k in kwargs if k not in names]
    duplicate = [n for n in names[:len(args)] if n in kwargs]
    missing = [n for n in names[len(args):] if n not in kwargs]
    if unknown:
        problems.append(f"unknown input name(s) {', '.join(map(repr, unknown))}")
    if duplicate:
        problems.append("input(s) given both by position and by name: "
                        f"{', '.join(map(repr, duplicate))}")
    if missing:
        problems.append(f"missing input(s) {', '.join(map(repr, missing))}")
    if problems:
        raise RuntimeInputError(f"{'; '.join(problems)}; {who}'s inputs are, in order: "
                                f"{expected}")
    return list(args) + [kwargs[n] for n in names[len(args):]]
