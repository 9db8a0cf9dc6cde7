"""Shared checks for frontend tests: trace -> verify -> run equals eager -> text round trip."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._pytree import tree_leaves

import slimfx
from slimfx.ir import Graph, parse


def leaves(x: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(x) if isinstance(t, torch.Tensor)]


def run_graph(g: Graph, inputs: Any) -> list[torch.Tensor]:
    m = slimfx.to_torch(g)
    args = tuple(inputs.values()) if isinstance(inputs, dict) else (
        (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs))
    with torch.no_grad():
        return leaves(m(*args))


def eager(model: torch.nn.Module, inputs: Any) -> list[torch.Tensor]:
    with torch.no_grad():
        if isinstance(inputs, dict):
            return leaves(model(**inputs))
        if isinstance(inputs, torch.Tensor):
            return leaves(model(inputs))
        return leaves(model(*inputs))


def assert_close_to_eager(g: Graph, model: torch.nn.Module, inputs: Any) -> None:
    """max |graph - eager| <= 1e-5 * max(1, max |eager|), leaf by leaf."""
    ref = eager(model, inputs)
    out = run_graph(g, inputs)
    assert len(out) == len(ref), f"{len(out)} outputs, eager gives {len(ref)}"
    for i, (r, o) in enumerate(zip(ref, out, strict=True)):
        assert o.shape == r.shape and o.dtype == r.dtype, f"output {i}: {o.shape} {o.dtype} " \
                                                          f"vs {r.shape} {r.dtype}"
        if r.is_floating_point():
            tol = 1e-5 * max(1.0, r.abs().max().item() if r.numel() else 1.0)
            err = (o - r).abs().max().item() if r.numel() else 0.0
            assert err <= tol, f"output {i}: max abs error {err} > {tol}"
        else:
            assert torch.equal(o, r), f"output {i} differs"


def assert_round_trips(g: Graph) -> None:
    text = str(g)
    g2 = parse(text, {name: v.const for name, v in g.constants.items()})
    assert str(g2) == text


def check(model: torch.nn.Module, inputs: Any, method: str = "export") -> Graph:
    """Traces and checks everything a frontend promises; returns the graph.

    Where the graph has a dynamic batch (the default), it is also run at another batch
    size (the inputs whose dim 0 is symbolic, rows repeated), against eager.
    """
    model.eval()
    g = slimfx.trace(model, inputs, method=method)
    g.verify()
    assert_close_to_eager(g, model, inputs)
    assert_round_trips(g)
    other = other_batch(g, inputs)
    if other is not None:
        assert_close_to_eager(g, model, other)
    return g


def other_batch(g: Graph, inputs: Any, delta: int = 1) -> Any:
    """``inputs`` with ``delta`` more rows in the inputs whose dim 0 is a symbol (or None)."""
    batched = {v.name for v in g.inputs if v.type.rank >= 1 and type(v.type.shape[0]) is not int}
    if not batched:
        return None

    def grow(x: Any) -> Any:
        if not isinstance(x, torch.Tensor):
            return x
        b = x.shape[0] + delta
        return torch.cat([x] * -(-b // x.shape[0]))[:b]

    if isinstance(inputs, dict):
        return {k: grow(v) if k in batched else v for k, v in inputs.items()}
    seq = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    return tuple(grow(x) if i < len(g.inputs) and g.inputs[i].name in batched else x
                 for i, x in enumerate(seq))


def ops(g: Graph) -> list[str]:
    return [n.op.name for n in g.nodes]
