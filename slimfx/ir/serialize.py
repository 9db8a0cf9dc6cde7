"""Saving and loading graphs: one safetensors file, no pickle.

The file holds every constant tensor (and pruning masks under ``mask:<name>``);
its metadata header holds the text form of the graph (with source locations)
and the format version. Loading parses text and reads tensors: no code runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from slimfx.errors import ArtifactError, ParseError
from slimfx.ir.core import Graph
from slimfx.ir.parser import parse

__all__ = ["save_graph", "load_graph", "FORMAT"]

FORMAT = "slimfx.graph/1"
_MASK = "mask:"


def save_graph(graph: Graph, path: str | Path) -> None:
    """Writes ``graph`` to ``path`` (a ``.safetensors`` file)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for name, v in graph.constants.items():
        assert v.const is not None
        tensors[name] = v.const.detach().contiguous().clone()
        if v.mask is not None:
            tensors[_MASK + name] = v.mask.detach().contiguous().clone()
    meta = {
        "format": FORMAT,
        "graph": graph.format(locations=True, inline_limit=0),
        "output_names": json.dumps(graph.output_names),
    }
    save_file(tensors, str(path), metadata=meta)


def load_graph(path: str | Path) -> Graph:
    """Reads a graph written by :func:`save_graph`.

    Raises:
        ArtifactError: the file is missing, not a slimfx graph, of another format
            version, or its tensors do not match the graph text.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (OSError, SafetensorError) as e:
        raise ArtifactError(f"cannot read graph file {path}: {e}") from e
    if meta.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a slimfx graph of format {FORMAT} "
                            f"(found {meta.get('format')!r})")
    consts = {k: t for k, t in tensors.items() if not k.startswith(_MASK)}
    try:
        graph = parse(meta["graph"], consts)
    except (ParseError, KeyError) as e:
        raise ArtifactError(f"{path}: the stored graph does not parse: {e}") from e
    missing = sorted(set(graph.constants) - set(consts))
    if missing:
        raise ArtifactError(f"{path}: tensors missing for constants {missing[:5]}")
    for k, t in tensors.items():
        if k.startswith(_MASK):
            graph.constants[k[len(_MASK):]].mask = t
    names = json.loads(meta.get("output_names", "null"))
    graph.output_names = names
    return graph
