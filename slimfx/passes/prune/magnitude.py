"""``prune-magnitude``: unstructured magnitude pruning with masks in the IR.

For each eligible weight ``W`` (operand 1 of a ``Weighted`` op, floating point,
rank >= 2) a mask ``M`` keeps the entries of largest ``|W|``:

- ``scope=layer``: every weight loses the ``round(s * numel)`` smallest entries;
- ``scope=global``: one threshold over all eligible weights together, so layers
  with many small weights lose more;
- per-layer overrides ``regex=sparsity`` fix a weight's own sparsity (they take
  no part in the global ranking); ``exclude`` regexes leave weights dense.

The pass stores ``M`` in ``Value.mask`` (bool, the weight's shape) and replaces
the constant by ``W * M``. Entries already masked stay masked (their magnitude
is 0), so repeated runs with rising sparsity are monotone.

:func:`export_sparse` writes constants as safetensors where masked weights are
a packed bitmask (1 bit per entry) plus the non-zero values, so the file size
counts real non-zeros.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from slimfx.errors import PruningError
from slimfx.ir.core import Graph, Value
from slimfx.ir.ops import Trait
from slimfx.passes.base import Pass, PassResult
from slimfx.passes.context import PassContext
from slimfx.passes.registry import register_pass

__all__ = ["eligible_weights", "magnitude_masks", "magnitude_prune", "PruneMagnitude",
           "parse_overrides", "export_sparse", "load_sparse", "SparseExport"]

log = logging.getLogger(__name__)


def eligible_weights(graph: Graph, exclude: Iterable[str] = ()) -> list[Value]:
    """Weights magnitude pruning may touch, minus those whose weight or node name matches
    one of the ``exclude`` regexes."""
    pats = []
    for p in (exclude,) if isinstance(exclude, str) else exclude:
        try:
            pats.append(re.compile(p))
        except (re.error, TypeError) as e:
            raise PruningError(f"prune-magnitude: exclude {p!r} is not a regex: {e}") from e
    out: dict[str, Value] = {}
    for node in graph.nodes:
        if not node.has(Trait.WEIGHTED) or len(node.inputs) < 2:
            continue
        w = node.inputs[1]
        if not w.is_const or not w.type.is_float or w.type.rank < 2:
            continue
        if any(p.search(w.name) or p.search(node.name) for p in pats):
            continue
        out.setdefault(w.name, w)
    return list(out.values())


def parse_overrides(overrides: Mapping[str, float] | Sequence[str]) -> dict[str, float]:
    """``{"regex": s}`` or ``("regex=s", ...)`` -> ``{"regex": s}``, checked."""
    if isinstance(overrides, str):
        overrides = (overrides,)  # one override, not its letters
    if isinstance(overrides, Mapping):
        items = dict(overrides)
    else:
        items = {}
        for item in overrides:
            pat, sep, val = item.rpartition("=")
            if not sep:
                raise PruningError(f"prune-magnitude: override {item!r} is not 'regex=sparsity'")
            try:
                items[pat] = float(val)
            except ValueError as e:
                raise PruningError(f"prune-magnitude: override {item!r}: {val!r} is not a "
                                   "number") from e
    for pat, s in items.items():
        _check_sparsity(s, f"override {pat!r}")
        try:
            re.compile(pat)
        except re.error as e:
            raise PruningError(f"prune-magnitude: override {pat!r} is not a regex: {e}") from e
    return items


def _check_sparsity(s: object, what: str) -> None:
    if isinstance(s, bool) or not isinstance(s, int | float) or not 0.0 <= float(s) < 1.0:
        raise PruningError(f"prune-magnitude: {what} sparsity={s!r} must lie in [0, 1): the "
                           "share of weights set to zero")


def _check_scope(scope: object) -> None:
    if scope not in ("global", "layer"):
        raise PruningError(f"prune-magnitude: scope={scope!r}; choose global (one threshold "
                           "for all weights) or layer (each weight alone)")


def _smallest_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask that is False at the ``k`` smallest entries of ``scores`` (exactly k)."""
    flat = scores.reshape(-1)
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if k > 0:
        keep[torch.argsort(flat, stable=True)[:k]] = False
    return keep.reshape(scores.shape)


def magnitude_masks(weights: Mapping[str, torch.Tensor], sparsity: float, *,
                    scope: Literal["global", "layer"] = "global",
                    overrides: Mapping[str, float] | None = None) -> dict[str, torch.Tensor]:
    """Keep-masks (bool) for ``weights`` by name; see the module docstring."""
    _check_sparsity(sparsity, "target")
    _check_scope(scope)
    overrides = dict(overrides or {})
    masks: dict[str, torch.Tensor] = {}
    ranked: dict[str, torch.Tensor] = {}
    for name, w in weights.items():
        s = next((v for p, v in overrides.items() if re.search(p, name)), None)
        if s is not None or scope == "layer":
            s = sparsity if s is None else s
            masks[name] = _smallest_mask(w.detach().abs(), round(s * w.numel()))
        else:
            ranked[name] = w.detach().abs().reshape(-1)
    if ranked:
        allw = torch.cat(list(ranked.values()))
        keep = _smallest_mask(allw, round(sparsity * allw.numel()))
        off = 0
        for name, flat in ranked.items():
            masks[name] = keep[off:off + flat.numel()].reshape(weights[name].shape)
            off += flat.numel()
    return masks


def magnitude_prune(graph: Graph, sparsity: float = 0.5, *,
                    scope: Literal["global", "layer"] = "global",
                    overrides: Mapping[str, float] | Sequence[str] = (),
                    exclude: Iterable[str] = ()) -> int:
    """Masks ``graph``'s weights in place; returns how many weights were masked.

    Raises:
        PruningError: ``graph`` is not a slimfx graph, a sparsity outside [0, 1), an
            unknown scope, a malformed override, or no eligible weight (all excluded).
    """
    if not isinstance(graph, Graph):
        hint = ("trace it first with slimfx.trace(model, example_inputs)"
                if isinstance(graph, torch.nn.Module) else "pass the graph from slimfx.trace")
        raise PruningError(f"prune-magnitude: graph is a {type(graph).__name__}, not a slimfx "
                           f"graph; {hint}")
    _check_sparsity(sparsity, "target")
    _check_scope(scope)
    ov = parse_overrides(overrides)
    weights = eligible_weights(graph, exclude)
    if not weights:
        raise PruningError("prune-magnitude: no weight to prune (every conv/linear weight is "
                           "excluded, or the graph has none)")
    for pat in ov:
        if not any(re.search(pat, w.name) for w in weights):
            raise PruningError(f"prune-magnitude: override {pat!r} matches no weight; weights "
                               f"are named like {weights[0].name!r}")
    masks = magnitude_masks({w.name: _current(w) for w in weights}, sparsity, scope=scope,
                            overrides=ov)
    for w in weights:
        set_mask(w, masks[w.name])
    return len(weights)


def _current(w: Value) -> torch.Tensor:
    assert w.const is not None
    return w.const if w.mask is None else w.const * w.mask


def set_mask(w: Value, mask: torch.Tensor) -> None:
    """Stores ``mask`` (combined with any earlier mask) and applies it to the constant."""
    assert w.const is not None
    mask = mask.to(torch.bool)
    if w.mask is not None:
        mask = mask & w.mask.to(torch.bool)
    w.mask = mask
    w.const = w.const * mask.to(w.const.dtype)


@register_pass
@dataclass(frozen=True)
class PruneMagnitude(Pass):
    """Unstructured magnitude pruning; masks live in ``Value.mask``.

    Attributes:
        sparsity: share of weights set to zero, in [0, 1).
        scope: global (one threshold) or layer (each weight alone).
        overrides: ``regex=sparsity`` entries matched against weight names.
        exclude: regexes of weight or node names to leave dense.
    """

    name = "prune-magnitude"
    sparsity: float = 0.5
    scope: Literal["global", "layer"] = "global"
    overrides: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        n = magnitude_prune(graph, self.sparsity, scope=self.scope, overrides=self.overrides,
                            exclude=self.exclude)
        return PassResult(graph, n > 0 and self.sparsity > 0,
                          preserved=frozenset({"shape-info", "use-count", "channel-deps"}))


# ------------------------------------------------------------------ sparse export
@dataclass(frozen=True)
class SparseExport:
    """Bytes of the constants stored densely vs. as bitmask + non-zero values."""

    path: Path
    dense_bytes: int
    sparse_bytes: int
    file_bytes: int

    @property
    def ratio(self) -> float:
        return self.sparse_bytes / max(self.dense_bytes, 1)


def export_sparse(graph: Graph, path: str | os.PathLike[str], *,
                  min_sparsity: float = 0.0) -> SparseExport:
    """Writes every constant to a safetensors file, masked ones in sparse form.

    A constant with a mask (or with at least ``min_sparsity`` zeros when
    ``min_sparsity > 0``) is stored as ``NAME.bitmask`` (uint8, packed bits of
    ``W != 0``) and ``NAME.values`` (the non-zeros in order); the others as is.
    Shapes and dtypes are in the header metadata.
    """
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, list[int]] = {}
    dense = sparse = 0
    for v in graph.constants.values():
        t = v.const
        assert t is not None
        t = t.detach().contiguous()
        nbytes = t.numel() * t.element_size()
        dense += nbytes
        nz = t != 0
        zero_share = 1.0 - float(nz.float().mean()) if t.numel() else 0.0
        if t.is_floating_point() and (v.mask is not None or
                                      (min_sparsity > 0 and zero_share >= min_sparsity)):
            bits = torch.from_numpy(np.packbits(nz.reshape(-1).numpy()))
            vals = t[nz].contiguous()
            tensors[f"{v.name}.bitmask"], tensors[f"{v.name}.values"] = bits, vals
            meta[v.name] = list(t.shape)
            sparse += bits.numel() + vals.numel() * vals.element_size()
        else:
            tensors[v.name] = t
            sparse += nbytes
    path = Path(path)
    save_file(tensors, str(path), metadata={"slimfx.sparse": json.dumps(meta)})
    return SparseExport(path, dense, sparse, path.stat().st_size)


def load_sparse(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Reads :func:`export_sparse` output back into dense tensors by constant name."""
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("slimfx.sparse", "{}"))
        for key in f.keys():
            if key.endswith((".bitmask", ".values")):
                continue
            out[key] = f.get_tensor(key)
        for name, shape in meta.items():
            bits = f.get_tensor(f"{name}.bitmask").numpy()
            vals = f.get_tensor(f"{name}.values")
            numel = int(np.prod(shape)) if shape else 1
            nz = torch.from_numpy(np.unpackbits(bits)[:numel].astype(bool))
            dense = torch.zeros(numel, dtype=vals.dtype)
            dense[nz] = vals
            out[name] = dense.reshape(shape)
    return out
