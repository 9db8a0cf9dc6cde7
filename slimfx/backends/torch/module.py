"""IR -> ``torch.fx.GraphModule``: the reference executor.

Each IR node becomes one ``call_function`` of its kernel (see ``kernels.py``);
constants become parameters (floating point, rank >= 1) or buffers under their
IR names, nested like the original module tree (``layer1.0.conv1.weight``).
The module is differentiable, so calibration and QAT train through it.
"""

from __future__ import annotations

import operator
import re
from typing import Any

import torch
import torch.fx as fx
from torch.utils._pytree import tree_leaves

from slimfx.backends.torch.kernels import KERNELS
from slimfx.errors import UnsupportedOpError
from slimfx.ir.core import Graph, Value

__all__ = ["to_torch", "SlimfxModule"]


class SlimfxModule(fx.GraphModule):
    """A GraphModule built from a slimfx Graph.

    ``value_names`` maps IR constant names to attribute paths in this module, so
    trained parameters can be written back (see :func:`sync_constants`).
    """

    value_names: dict[str, str]
    source_graph: Graph


def _flatten_outputs(result: Any, n: int) -> tuple[Any, ...]:
    leaves = tree_leaves(result)
    if len(leaves) != n:
        raise UnsupportedOpError(f"a multi-result node produced {len(leaves)} values, expected {n}")
    return tuple(leaves)


def _fx_name(name: str) -> str:
    name = re.sub(r"\W", "_", name)
    return name if name[:1].isalpha() or name[:1] == "_" else f"v_{name}"


def _attach(root: torch.nn.Module, path: str, tensor: torch.Tensor, trainable: bool) -> str | None:
    parts = path.split(".")
    mod = root
    for p in parts[:-1]:
        if not p.isidentifier() and not p.isdigit():
            return None
        child = mod._modules.get(p)
        if child is None:
            if hasattr(mod, p):
                return None
            child = torch.nn.Module()
            mod.add_module(p, child)
        mod = child
    leaf = parts[-1]
    if leaf in mod._modules or hasattr(mod, leaf) or not (leaf.isidentifier() or leaf.isdigit()):
        return None
    if trainable and tensor.is_floating_point() and tensor.dim() > 0:
        mod.register_parameter(leaf, torch.nn.Parameter(tensor.clone()))
    else:
        mod.register_buffer(leaf, tensor.clone())
    return path


def to_torch(graph: Graph, *, trainable: bool = True) -> SlimfxModule:
    """Builds a runnable, differentiable ``torch.fx.GraphModule`` from ``graph``.

    Args:
        graph: the IR graph.
        trainable: floating-point constants of rank >= 1 become ``nn.Parameter``.

    Raises:
        UnsupportedOpError: an op has no torch kernel (names every such node).
    """
    missing = [n for n in graph.nodes if n.op.name not in KERNELS]
    if missing:
        lines = "\n  ".join(n.describe() for n in missing)
        raise UnsupportedOpError(
            f"no torch kernel for {len(missing)} node(s):\n  {lines}\n"
            "register one with slimfx.backends.torch.register_kernel(op_name)")
    root = torch.nn.Module()
    g = fx.Graph()
    env: dict[int, fx.Node] = {}
    names: dict[str, str] = {}
    for v in graph.inputs:
        env[id(v)] = g.placeholder(_fx_name(v.name))
    # Running statistics of batch norm are state, not parameters to train.
    stats = {id(n.inputs[i]) for n in graph.nodes if n.op.name == "batch_norm" for i in (1, 2)}
    # So are the scale / zero point a fake_quantize does not learn (QAT).
    stats |= {id(n.inputs[i]) for n in graph.nodes if n.op.name == "fake_quantize"
              for i, learn in ((1, "learn_scale"), (2, "learn_zero_point")) if not n.attrs[learn]}
    for v in graph.constants.values():
        assert v.const is not None
        train = trainable and id(v) not in stats
        path = _attach(root, v.name, v.const, train)
        if path is None:
            path = "_c_" + re.sub(r"\W", "_", v.name)
            while hasattr(root, path):
                path += "_"
            _attach(root, path, v.const, train)
        names[v.name] = path
        env[id(v)] = g.get_attr(path)
    for node in graph.nodes:
        args = tuple(env[id(v)] for v in node.inputs)
        call = g.create_node("call_function", KERNELS[node.op.name], args, dict(node.attrs),
                             name=_fx_name(node.name))
        if len(node.outputs) == 1 and node.op.num_results == 1:
            env[id(node.outputs[0])] = call
        elif len(node.outputs) == 1 and node.op.name == "opaque":
            env[id(node.outputs[0])] = call
        else:
            flat = g.call_function(_flatten_outputs, (call, len(node.outputs)))
            for i, o in enumerate(node.outputs):
                env[id(o)] = g.call_function(operator.getitem, (flat, i))
    outs = [env[id(v)] for v in graph.outputs]
    g.output(outs[0] if len(outs) == 1 else tuple(outs))
    module = fx.GraphModule(root, g, class_name="SlimfxModule")
    module.__class__ = type("SlimfxModule", (SlimfxModule, module.__class__), {})
    module.value_names = names
    module.source_graph = graph  # what slimfx.convert writes the trained constants into
    module.eval()
    return module  # type: ignore[return-value]


def sync_constants(graph: Graph, module: SlimfxModule) -> None:
    """Writes the module's (trained) parameters and buffers back into the graph constants."""
    state = dict(module.named_parameters())
    state.update(dict(module.named_buffers()))
    for name, path in module.value_names.items():
        v: Value = graph.constants[name]
        v.const = state[path].detach().clone()
