"""What users may pass to ``quantize`` / ``calibrate`` / ``report``, checked with clear errors.

``data`` is an iterable of *batches* (a list, a ``DataLoader``, a generator, ...). A
batch is one of:

- a tensor (for a graph with one input);
- a tuple or list of tensors, one per graph input, in the order of ``graph.inputs``;
- a dict ``{input name: tensor}`` keyed by the graph's input names (``print(graph)``
  shows them; the frontend names them after the arguments of ``forward``). Keys are
  matched by name, so their order does not matter; an unknown or missing name is an
  error that lists the graph's input names;
- ``(inputs, labels)``, as a classification ``DataLoader`` yields it: a batch of two
  items for a graph that does not take two inputs is read as ``(inputs, labels)``;
  ``inputs`` (a tensor, a tuple of tensors or a dict, as above) is used and the labels
  are dropped. For any other layout pass ``input_fn=`` (a function ``batch -> inputs``)
  to ``calibrate`` / ``quantize`` / ``prepare_qat``; it is applied to every batch first.

Every tensor must have the dtype its graph input was traced with, and its shape: a
static dimension exactly, a symbolic one (``N`` in ``f32[N,3,32,32]``, from
``slimfx.trace(..., dynamic_shapes=...)``) any size in the symbol's range, the same size
wherever the symbol appears. So a graph traced with a dynamic batch calibrates with a
``DataLoader`` as it is, batches of any size and a partial last batch included.
Float inputs must be finite: a NaN or inf in calibration data raises
:class:`~slimfx.errors.CalibrationError` naming the input and the batch. (Such a value
would poison every range it reaches, and dropping the batch quietly would hide a broken
data pipeline; fix or filter the data instead.)

A single tensor, a dict, a string or ``None`` in place of ``data`` is refused with a
message saying what to pass; so is an ``nn.Module`` in place of the graph.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch

from slimfx.errors import CalibrationError, SlimfxError
from slimfx.ir.core import Graph
from slimfx.ir.signature import shape_matches
from slimfx.ir.symbolic import bind_shapes

__all__ = ["expect_graph", "check_data", "check_num_batches", "batch_args", "no_data_error",
           "with_input_fn"]


def expect_graph(graph: Any, where: str, error: type[SlimfxError]) -> Graph:
    """``graph`` itself if it is a slimfx :class:`Graph`; otherwise ``error`` saying what to do.

    Args:
        graph: what the user passed as the graph.
        where: the function, for the message (``"slimfx.quantize"``).
        error: the error class to raise.
    """
    if isinstance(graph, Graph):
        return graph
    if isinstance(graph, torch.nn.Module):
        raise error(f"{where}: graph is a torch module ({type(graph).__name__}), not a slimfx "
                    "graph; trace it first with slimfx.trace(model, example_inputs) and pass "
                    "the result")
    raise error(f"{where}: graph must be a slimfx Graph (from slimfx.trace), got "
                f"{type(graph).__name__}")


def check_num_batches(num_batches: Any, where: str) -> None:
    """Refuses a ``num_batches`` that is not ``None`` or a positive int."""
    if num_batches is None:
        return
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise CalibrationError(f"{where}: num_batches={num_batches!r} must be a positive int "
                               "(or None for every batch)")


def check_data(data: Any, where: str) -> Iterable[Any]:
    """``data`` if it can be an iterable of batches; otherwise a CalibrationError.

    Raises:
        CalibrationError: ``None``, a string, a single tensor or dict (one batch, not an
            iterable of batches), or something that is not iterable at all.
    """
    if data is None:
        raise CalibrationError(f"{where}: data is None; pass calibration batches, e.g. a "
                               "list of input tensors shaped like the traced example inputs")
    if isinstance(data, str | bytes):
        raise CalibrationError(f"{where}: data is a string ({data!r}), not an iterable of "
                               "batches; pass a list of input tensors")
    if isinstance(data, torch.Tensor):
        raise CalibrationError(
            f"{where}: data is a single tensor of shape {tuple(data.shape)}, not an iterable of "
            "batches; pass a list, e.g. [x] for one batch or list(x.split(batch_size)) "
            "(iterating a tensor would take its rows as batches)")
    if isinstance(data, Mapping):
        raise CalibrationError(f"{where}: data is a single dict (one batch); pass a list of "
                               "batches, e.g. [batch]")
    try:
        iter(data)
    except TypeError:
        raise CalibrationError(f"{where}: data must be an iterable of batches (a list, a "
                               f"DataLoader, a generator), got {type(data).__name__}") from None
    return data


class _Mapped:
    """``data`` with ``fn`` applied to every batch; re-iterable and sized like ``data``."""

    def __init__(self, data: Iterable[Any], fn: Callable[[Any], Any]) -> None:
        self.data, self.fn = data, fn

    def __iter__(self) -> Iterator[Any]:
        for i, batch in enumerate(self.data):
            try:
                yield self.fn(batch)
            except SlimfxError:
                raise
            except Exception as e:
                raise CalibrationError(f"input_fn failed on batch {i}: {type(e).__name__}: "
                                       f"{e}") from e

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]


def with_input_fn(data: Iterable[Any], input_fn: Any, where: str) -> Iterable[Any]:
    """``data`` whose batches go through ``input_fn`` (``None``: ``data`` itself).

    Raises:
        CalibrationError: ``input_fn`` is not callable.
    """
    if input_fn is None:
        return data
    if not callable(input_fn):
        raise CalibrationError(f"{where}: input_fn must be a function batch -> inputs (a "
                               f"tensor, a tuple of tensors or a dict), got "
                               f"{type(input_fn).__name__}")
    mapped = _Mapped(data, input_fn)
    return mapped if hasattr(data, "__len__") else iter(mapped)


def no_data_error(graph: Graph, data: Iterable[Any], where: str) -> CalibrationError:
    """The error for ``data`` that yielded no batch (hints at a consumed iterator)."""
    hint = ""
    if isinstance(data, Iterator):
        hint = (f" ({type(data).__name__} objects can be read only once: this one may have "
                "been consumed already; pass a list instead)")
    return CalibrationError(f"{where} of graph @{graph.name} got no data{hint}; pass an "
                            "iterable with at least one batch")


def _names(graph: Graph) -> str:
    return ", ".join("%" + v.name for v in graph.inputs)


def _from_dict(graph: Graph, batch: Mapping[Any, Any], index: int) -> tuple[Any, ...]:
    names = [v.name for v in graph.inputs]
    unknown = [k for k in batch if k not in names]
    missing = [n for n in names if n not in batch]
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown input name(s) {', '.join(map(repr, unknown))}")
        if missing:
            parts.append(f"missing {', '.join(map(repr, missing))}")
        raise CalibrationError(
            f"calibration batch {index} is a dict with {' and '.join(parts)}; graph "
            f"@{graph.name} takes inputs {_names(graph)} (a dict batch is matched by name; "
            "drop labels and other entries the graph does not take)")
    return tuple(batch[n] for n in names)


def batch_args(graph: Graph, batch: Any, index: int) -> tuple[torch.Tensor, ...]:
    """The graph's positional arguments for one batch, checked (see the module docstring).

    Raises:
        CalibrationError: the batch does not fit the graph's inputs (named).
    """
    if (isinstance(batch, list | tuple) and len(batch) == 2 and len(graph.inputs) != 2
            and isinstance(batch[0], torch.Tensor | list | tuple | Mapping)):
        batch = batch[0]  # (inputs, labels): the labels are not the graph's business
    if isinstance(batch, torch.Tensor):
        args: tuple[Any, ...] = (batch,)
    elif isinstance(batch, list | tuple):
        args = tuple(batch)
    elif isinstance(batch, Mapping):
        args = _from_dict(graph, batch, index)
    else:
        raise CalibrationError(f"calibration batch {index} is a {type(batch).__name__}; a batch "
                               "is a tensor, a tuple of tensors (one per graph input) or a dict "
                               "keyed by input name")
    if len(args) != len(graph.inputs):
        raise CalibrationError(
            f"calibration batch {index} has {len(args)} tensors but graph @{graph.name} takes "
            f"{len(graph.inputs)} inputs ({_names(graph)}); "
            "a batch is the inputs, or (inputs, labels); for other layouts pass "
            "input_fn=lambda batch: inputs")
    for v, a in zip(graph.inputs, args, strict=True):
        if not isinstance(a, torch.Tensor):
            raise CalibrationError(f"calibration batch {index}: input %{v.name} is a "
                                   f"{type(a).__name__}, not a tensor")
        if a.dtype != v.type.torch_dtype:
            raise CalibrationError(
                f"calibration batch {index}: input %{v.name} has dtype {a.dtype} but the graph "
                f"takes {v.type}; convert it, e.g. x.to({v.type.torch_dtype})")
        if not shape_matches(v.type.shape, tuple(a.shape)):
            if v.type.is_static:
                hint = ("the graph has static shapes: trace it with a dynamic batch, "
                        "slimfx.trace(model, x, dynamic_shapes={" + repr(v.name) +
                        ": {0: torch.export.Dim.AUTO}}), to take batches of any size (or use "
                        "drop_last=True in a DataLoader)")
            else:
                hint = "only its symbolic dims may vary"
            raise CalibrationError(
                f"calibration batch {index}: input %{v.name} has shape {tuple(a.shape)} but "
                f"the graph was traced with {v.type}; {hint}")
        if a.is_floating_point() and not bool(torch.isfinite(a).all()):
            nan = int(torch.isnan(a).sum())
            inf = int(torch.isinf(a).sum())
            raise CalibrationError(
                f"calibration batch {index}: input %{v.name} has {nan} NaN and {inf} inf "
                "values; calibration needs finite data (fix or filter these batches)")
    if graph.symbols:
        try:
            bind_shapes(graph, {v.name: tuple(a.shape) for v, a in zip(graph.inputs, args,
                                                                       strict=True)})
        except SlimfxError as e:
            raise CalibrationError(f"calibration batch {index}: {e}") from e
    return args
