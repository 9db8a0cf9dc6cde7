"""Helpers for pass tests: IR from small nn.Sequential models, running graphs, comparing.

``ir_from_sequential`` is a tiny hand-written converter for ``nn.Sequential`` chains
of Conv1d/Conv2d/ConvTranspose2d/Linear/BatchNorm/ReLU/ReLU6/Hardtanh/Dropout/
Identity/Flatten, so pass tests do not depend on the frontend.
"""

from __future__ import annotations

import torch
from torch import nn

from slimfx.backends.torch import to_torch
from slimfx.ir import Graph, TensorType, parse

__all__ = ["ir_from_sequential", "run_graph", "assert_same_outputs", "roundtrip"]


def _conv_attrs(m: nn.Module) -> dict:
    attrs = dict(stride=list(m.stride), padding=list(m.padding), dilation=list(m.dilation),
                 groups=m.groups)
    if isinstance(m, nn.ConvTranspose2d):
        attrs["output_padding"] = list(m.output_padding)
    return attrs


def ir_from_sequential(model: nn.Sequential, input_shape: tuple[int, ...]) -> Graph:
    """Builds the IR of a Sequential chain; constants are named like the state dict."""
    g = Graph()
    v = g.add_input("x", TensorType(input_shape))
    for name, m in model.named_children():
        def const(attr: str, m: nn.Module = m, name: str = name):
            t = getattr(m, attr)
            return None if t is None else g.add_constant(t.detach().clone(), f"{name}.{attr}")

        ops = {nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.ConvTranspose2d: "conv_transpose2d"}
        if type(m) in ops:
            ins = [v, const("weight")] + ([const("bias")] if m.bias is not None else [])
            v = g.add(ops[type(m)], ins, _conv_attrs(m), name=name)
        elif isinstance(m, nn.Linear):
            ins = [v, const("weight")] + ([const("bias")] if m.bias is not None else [])
            v = g.add("linear", ins, name=name)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            ins = [v, const("running_mean"), const("running_var")]
            if m.affine:
                ins += [const("weight"), const("bias")]
            v = g.add("batch_norm", ins, dict(eps=m.eps), name=name)
        elif isinstance(m, nn.ReLU):
            v = g.add("relu", [v], name=name)
        elif isinstance(m, nn.ReLU6):
            v = g.add("relu6", [v], name=name)
        elif isinstance(m, nn.Hardtanh):
            v = g.add("clamp", [v], dict(min=m.min_val, max=m.max_val), name=name)
        elif isinstance(m, nn.Dropout):
            v = g.add("dropout", [v], dict(p=m.p), name=name)
        elif isinstance(m, nn.Identity):
            v = g.add("identity", [v], name=name)
        elif isinstance(m, nn.Flatten):
            v = g.add("reshape", [v], dict(shape=[v.shape[0], -1]), name=name)
        else:
            raise NotImplementedError(type(m).__name__)
    g.set_outputs([v])
    g.verify()
    return g


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Gives every BatchNorm non-trivial statistics and affine parameters; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen))
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.randn(n, generator=gen))
                m.bias.data.copy_(torch.randn(n, generator=gen))
    return model.eval()


def run_graph(graph: Graph, *inputs: torch.Tensor) -> torch.Tensor:
    """Runs ``graph`` through the torch backend (constants as buffers)."""
    with torch.no_grad():
        return to_torch(graph, trainable=False)(*inputs)


def assert_same_outputs(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-4)


def roundtrip(graph: Graph) -> None:
    """print -> parse -> print is a fixed point."""
    text = str(graph)
    tensors = {n: v.const for n, v in graph.constants.items()}
    assert str(parse(text, tensors)) == text
