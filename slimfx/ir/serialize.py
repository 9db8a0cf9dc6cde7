"""Saving and loading graphs: one safetensors file, no pickle.

The file holds every constant tensor (and pruning masks under ``mask:<name>``);
4-bit weights (``int4.py``: ``i8`` constants whose qparams range fits in ``[-8, 7]``) are
stored packed two per byte under ``int4:<name>``, their shapes in the header, and unpacked
to ``i8`` at load;
its metadata header holds the text form of the graph (with source locations and
the shape symbols with their ranges, ``where N in [1, 64]``) and the format version. Loading parses text and reads tensors: no code runs.
Opaque nodes may name only allowlisted torch operator overloads (or targets the
user registered with :func:`slimfx.ir.opaque.register_target`), and their
argument specs are checked, before the graph is returned; the graph is verified
(result types re-inferred and compared with the file).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from slimfx.errors import ArtifactError, ParseError, SlimfxError
from slimfx.ir.core import Graph
from slimfx.ir.int4 import is_int4, pack_int4, unpack_int4
from slimfx.ir.opaque import check_file_target, check_spec
from slimfx.ir.parser import parse

__all__ = ["save_graph", "load_graph", "FORMAT"]

FORMAT = "slimfx.graph/1"
_MASK = "mask:"
_INT4 = "int4:"
_CORRUPT = "the file is corrupt or from an incompatible slimfx version"


def _as_path(path: object, verb: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise ArtifactError(f"cannot {verb} a graph file at {path!r}: expected a str or "
                            f"path-like, got {type(path).__name__}")
    return Path(path)


def save_graph(graph: Graph, path: str | os.PathLike[str]) -> None:
    """Writes ``graph`` to ``path`` (a ``.safetensors`` file), replacing it atomically.

    Raises:
        ArtifactError: ``path`` cannot be written (a directory, a parent that is a
            file or missing, no permission, ...); the OSError is chained.
    """
    from safetensors.torch import save

    p = _as_path(path, "write")
    tensors: dict[str, torch.Tensor] = {}
    int4_shapes: dict[str, list[int]] = {}
    for name, v in graph.constants.items():
        if v.const is None:
            raise ArtifactError(f"cannot save graph @{graph.name}: constant %{name} holds no "
                                "tensor")
        if is_int4(v):
            try:
                tensors[_INT4 + name] = pack_int4(v.const)
            except ValueError as e:
                raise ArtifactError(f"cannot save graph @{graph.name}: constant %{name} is "
                                    f"4-bit by its qparams but {e}") from e
            int4_shapes[name] = list(v.type.shape)
        else:
            tensors[name] = v.const.detach().contiguous().clone()
        if v.mask is not None:
            tensors[_MASK + name] = v.mask.detach().contiguous().clone()
    meta = {
        "format": FORMAT,
        "graph": graph.format(locations=True, inline_limit=0),
        "output_names": json.dumps(graph.output_names),
        "int4": json.dumps(int4_shapes),
    }
    data = save(tensors, metadata=meta)
    if p.is_dir():
        raise ArtifactError(f"cannot write graph file {p}: it is a directory")
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, p)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        reason = e.strerror or str(e)
        raise ArtifactError(f"cannot write graph file {p}: {reason}") from e


def load_graph(path: str | os.PathLike[str]) -> Graph:
    """Reads a graph written by :func:`save_graph`; runs no code from the file.

    Raises:
        ArtifactError: the file is missing, not a slimfx graph, of another format
            version, corrupt (truncated, bad header, text that does not parse or
            does not verify, tensors that do not match the graph text, missing or
            extra tensors), or names an opaque target that is not an allowlisted
            torch operator overload.
    """
    from safetensors import SafetensorError, safe_open

    p = _as_path(path, "read")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (OSError, SafetensorError, RuntimeError, ValueError) as e:
        raise ArtifactError(f"cannot read graph file {p}: {e} ({_CORRUPT}?)") from e
    if meta.get("format") != FORMAT:
        raise ArtifactError(f"{p} is not a slimfx graph of format {FORMAT} "
                            f"(found {meta.get('format')!r})")
    if "graph" not in meta:
        raise ArtifactError(f"{p}: the header has no graph text; {_CORRUPT}")
    consts = {k: t for k, t in tensors.items() if not k.startswith((_MASK, _INT4))}
    packed = _unpack_int4(meta, tensors, p)
    consts.update(packed)
    try:
        graph = parse(meta["graph"], consts, require_constants=True)
    except ParseError as e:
        raise ArtifactError(f"{p}: the stored graph does not parse or verify ({_CORRUPT}): "
                            f"{e}") from e
    _check_opaque(graph, p)
    extra = sorted(set(consts) - set(graph.constants))
    if extra:
        raise ArtifactError(f"{p}: tensors {extra[:5]} belong to no constant of the graph; "
                            f"{_CORRUPT}")
    for name in packed:
        if not is_int4(graph.constants[name]):
            raise ArtifactError(f"{p}: constant %{name} is stored packed as 4-bit, but the graph "
                                f"gives it no 4-bit qparams; {_CORRUPT}")
    for k, t in tensors.items():
        if not k.startswith(_MASK):
            continue
        v = graph.constants.get(k[len(_MASK):])
        if v is None:
            raise ArtifactError(f"{p}: mask {k!r} belongs to no constant of the graph; "
                                f"{_CORRUPT}")
        if t.dtype != torch.bool or tuple(t.shape) != v.type.shape:
            raise ArtifactError(f"{p}: mask {k!r} is {t.dtype}{list(t.shape)}, but constant "
                                f"%{v.name} needs bool{list(v.type.shape)}; {_CORRUPT}")
        v.mask = t
    graph.output_names = _output_names(meta, len(graph.outputs), p)
    return graph


def _unpack_int4(meta: dict[str, str], tensors: dict[str, torch.Tensor],
                 p: Path) -> dict[str, torch.Tensor]:
    try:
        shapes = json.loads(meta.get("int4", "{}"))
    except (ValueError, RecursionError) as e:
        raise ArtifactError(f"{p}: int4 in the header is not valid JSON ({e}); {_CORRUPT}") from e
    keys = {k[len(_INT4):] for k in tensors if k.startswith(_INT4)}
    if not isinstance(shapes, dict) or set(shapes) != keys:
        raise ArtifactError(f"{p}: the packed 4-bit tensors {sorted(keys)[:5]} do not match "
                            f"the shapes in the header; {_CORRUPT}")
    out = {}
    for name, shape in shapes.items():
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise ArtifactError(f"{p}: the 4-bit shape of %{name} is {shape!r}, not a list of "
                                f"sizes; {_CORRUPT}")
        try:
            out[name] = unpack_int4(tensors[_INT4 + name], shape)
        except ValueError as e:
            raise ArtifactError(f"{p}: constant %{name}: {e}; {_CORRUPT}") from e
    return out


def _check_opaque(graph: Graph, p: Path) -> None:
    for node in graph.nodes:
        if node.op.name != "opaque":
            continue
        target = node.attrs["target"]
        try:
            check_file_target(target)
            check_spec(node.attrs["spec"], len(node.inputs))
        except (ValueError, SlimfxError) as e:
            raise ArtifactError(f"{p}: node {node.describe()}: {e}; the graph file is refused "
                                "(loading a graph never runs code it names)") from e


def _output_names(meta: dict[str, str], n_outputs: int, p: Path) -> list[str] | None:
    try:
        names = json.loads(meta.get("output_names", "null"))
    except (ValueError, RecursionError) as e:
        raise ArtifactError(f"{p}: output_names in the header is not valid JSON ({e}); "
                            f"{_CORRUPT}") from e
    if names is None:
        return None
    if (not isinstance(names, list) or len(names) != n_outputs
            or not all(isinstance(n, str) for n in names)):
        raise ArtifactError(f"{p}: output_names in the header must be a list of {n_outputs} "
                            f"strings, got {str(names)[:80]}; {_CORRUPT}")
    return names
