"""``MODEL`` arguments of the CLI: a ``.pt2`` program, a slimfx graph, or a Python factory.

- ``model.pt2``: a program saved with ``torch.export.save``. It is loaded with
  ``torch.export.load`` and traced again from its module (``ep.module()``) with the example
  inputs saved in it (``ep.example_inputs``), so the graph is the one ``slimfx.trace`` gives
  for the original model. Loading a ``.pt2`` runs no Python code from the file, but torch
  must know every type in its input/output structure: a program returning a
  ``transformers`` ``ModelOutput`` needs ``transformers`` imported, so export such models
  with ``config.return_dict=False`` (plain tuples) or use a factory.
- ``graph.safetensors``: a slimfx graph written by ``save_graph`` (``slimfx quantize -o``);
  loading it runs no code.
- ``package.module:factory``: imports ``package.module`` (the current directory first on
  the path, as ``python -m`` does) and calls ``factory()``, which returns
  ``(model, example_inputs)``. This runs that code: it is the user's own.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimfx.errors import SlimfxError, TraceError
from slimfx.ir.core import Graph

__all__ = ["LoadedModel", "load_model", "MODEL_HELP"]

MODEL_HELP = ("a torch.export program (.pt2), a slimfx graph (.safetensors) or a Python entry "
              "point package.module:factory returning (model, example_inputs)")
_ENTRY = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")


@dataclass
class LoadedModel:
    """A loaded ``MODEL``: a graph, or a torch module with its example inputs.

    Attributes:
        spec: the argument as given.
        module: the torch module (``None`` for a graph file).
        example_inputs: a tuple of positional inputs or a dict of keyword inputs.
    """

    spec: str
    module: Any = None
    example_inputs: Any = None
    _graph: Graph | None = field(default=None, repr=False)

    @property
    def graph(self) -> Graph:
        """The slimfx graph (traced on first use for modules).

        Raises:
            TraceError: the module cannot be traced (the message says why).
        """
        if self._graph is None:
            from slimfx.frontends import trace

            self._graph = trace(self.module, self.example_inputs)
        return self._graph

    def positional_inputs(self) -> tuple[Any, ...]:
        """The example inputs as positional arguments (dicts in their insertion order)."""
        ex = self.example_inputs
        return tuple(ex.values()) if isinstance(ex, dict) else tuple(ex)


def load_model(spec: str) -> LoadedModel:
    """Loads ``spec`` (see the module docstring).

    Raises:
        SlimfxError: a missing file, an unknown kind of file, a ``.pt2`` torch cannot load, a
            factory that cannot be imported, fails or returns something else than
            ``(model, example_inputs)``.
    """
    p = Path(spec)
    suffix = p.suffix.lower()
    if suffix in (".pt2", ".safetensors") or p.exists():
        if not p.exists():
            raise SlimfxError(f"model file {spec!r} does not exist")
        if not p.is_file():
            raise SlimfxError(f"model {spec!r} is not a file; MODEL is {MODEL_HELP}")
        if suffix == ".safetensors":
            from slimfx.ir.serialize import load_graph

            return LoadedModel(spec, _graph=load_graph(p))
        if suffix == ".pt2":
            return _load_pt2(p, spec)
        if suffix in (".slim", ".tar"):
            raise SlimfxError(f"model file {spec!r} is a compiled model: it can be run "
                              "('slimfx run', 'slimfx bench'), not compressed or compiled "
                              f"again; MODEL is {MODEL_HELP}")
        raise SlimfxError(f"model file {spec!r}: unknown kind of file {p.suffix or '(no suffix)'!r}"
                          f"; MODEL is {MODEL_HELP}")
    if _ENTRY.fullmatch(spec):
        return _load_entry_point(spec)
    raise SlimfxError(f"model {spec!r} is neither an existing file nor a package.module:factory "
                      f"entry point; MODEL is {MODEL_HELP}")


def _load_pt2(p: Path, spec: str) -> LoadedModel:
    import torch

    from slimfx._cli.common import captured_logs

    with captured_logs("torch.export", "torch._export") as logs:
        try:
            ep = torch.export.load(str(p))
        except Exception as e:  # noqa: BLE001 - torch raises many unrelated types here
            raise SlimfxError(f"cannot load {spec!r} as a torch.export program: "
                              f"{_pt2_reason(e, logs)}") from e
    ex = ep.example_inputs
    if ex is None:
        raise SlimfxError(f"{spec!r} holds no example inputs; save a program exported with "
                          "torch.export.export(model, args) so that it records them")
    args, kwargs = ex
    try:
        unlifted = ep.module(check_guards=False)
        # ep.module() refuses .eval() (which slimfx.trace calls); a plain GraphModule over
        # the same graph and parameters does not
        module = torch.fx.GraphModule(unlifted, unlifted.graph)
    except Exception as e:  # noqa: BLE001
        raise TraceError(f"cannot rebuild the module of {spec!r}: {_first_line(e)}") from e
    inputs: Any = tuple(args)
    if kwargs:
        try:
            inputs = dict(inspect.signature(module.forward).bind(*args, **kwargs).arguments)
        except TypeError as e:
            raise TraceError(f"{spec!r}: its example inputs do not fit its forward(): {e}") from e
    return LoadedModel(spec, module=module, example_inputs=inputs)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _pt2_reason(e: BaseException, logs: list[str]) -> str:
    for msg in reversed(logs):
        m = re.search(r"Deserializing ([\w.]+) in pytree is not registered", msg)
        if m:
            return (f"its inputs or outputs use the type {m.group(1)}, which torch must have "
                    "imported to read the file; export the model so that it takes and returns "
                    "tensors, tuples and dicts (for transformers: config.return_dict=False), or "
                    "give MODEL as a package.module:factory entry point")
    lines = [ln.strip() for msg in logs for ln in msg.splitlines() if ln.strip()]
    if lines and "error when deserializing" in _first_line(e):
        return lines[-1]
    return _first_line(e)


def _load_entry_point(spec: str) -> LoadedModel:
    import torch

    module_name, _, attr = spec.partition(":")
    added = False
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
        added = True
    try:
        mod = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - whatever the user's module raises
        raise SlimfxError(f"cannot import {module_name!r} for model {spec!r}: "
                          f"{type(e).__name__}: {_first_line(e)}") from e
    finally:
        if added:
            sys.path.remove(str(Path.cwd()))
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SlimfxError(f"model {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SlimfxError(f"model {spec!r}: {attr!r} is a {type(obj).__name__}, not a function "
                          "returning (model, example_inputs)")
    try:
        result = obj()
    except Exception as e:  # noqa: BLE001
        raise SlimfxError(f"model {spec!r}: {attr}() raised {type(e).__name__}: "
                          f"{_first_line(e)}") from e
    if not (isinstance(result, tuple | list) and len(result) == 2
            and isinstance(result[0], torch.nn.Module)):
        raise SlimfxError(f"model {spec!r}: {attr}() must return (model, example_inputs) with "
                          f"an nn.Module model, got {type(result).__name__}")
    model, ex = result
    if isinstance(ex, torch.Tensor):
        ex = (ex,)
    if not isinstance(ex, tuple | list | dict):
        raise SlimfxError(f"model {spec!r}: example_inputs must be a tensor, a tuple or a dict "
                          f"of tensors, got {type(ex).__name__}")
    return LoadedModel(spec, module=model.eval(), example_inputs=ex if isinstance(ex, dict)
                       else tuple(ex))
