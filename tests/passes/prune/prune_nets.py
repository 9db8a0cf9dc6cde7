"""Small IR networks for the pruning tests, built with the IR API (random weights).

Each builder mirrors the structure of a well-known family: ResNet basic and
bottleneck blocks (residual adds, downsample branch), MobileNetV2 inverted
residuals (depthwise), DenseNet blocks (concat chains), a CNN that flattens
into a linear layer, and a transformer encoder block (attention heads + FFN).
"""

from __future__ import annotations

import torch

from slimfx.backends.torch import to_torch
from slimfx.errors import PruningError
from slimfx.ir import Graph, TensorType, Value
from slimfx.passes.prune import apply_channel_plan, mask_channel_plan, plan_channel_pruning


class Net:
    """A graph under construction with layer helpers; weights come from one seeded RNG."""

    def __init__(self, seed: int = 0) -> None:
        self.g = Graph()
        self.gen = torch.Generator().manual_seed(seed)
        self.n = 0

    def _name(self, kind: str) -> str:
        self.n += 1
        return f"{kind}{self.n}"

    def rand(self, *shape: int, scale: float = 0.3) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen) * scale

    def input(self, *shape: int) -> Value:
        return self.g.add_input("x", TensorType(shape))

    def conv(self, x: Value, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
             bias: bool = False) -> Value:
        name = self._name("conv")
        cin = x.shape[1]
        fan_in = cin // groups * k * k
        w = self.g.add_constant(self.rand(cout, cin // groups, k, k, scale=fan_in ** -0.5),
                                f"{name}.weight")
        ops = [x, w]
        if bias:
            ops.append(self.g.add_constant(self.rand(cout), f"{name}.bias"))
        return self.g.add("conv2d", ops, dict(stride=[stride] * 2, padding=[k // 2] * 2,
                                              dilation=[1, 1], groups=groups), name=name)

    def bn(self, x: Value) -> Value:
        name = self._name("bn")
        c = x.shape[1]
        consts = [self.g.add_constant(self.rand(c, scale=0.1), f"{name}.running_mean"),
                  self.g.add_constant(torch.rand(c, generator=self.gen) + 0.5,
                                      f"{name}.running_var"),
                  self.g.add_constant(torch.rand(c, generator=self.gen) + 0.5, f"{name}.weight"),
                  self.g.add_constant(self.rand(c, scale=0.1), f"{name}.bias")]
        return self.g.add("batch_norm", [x, *consts], dict(eps=1e-5), name=name)

    def act(self, x: Value, op: str = "relu") -> Value:
        return self.g.add(op, [x], name=self._name(op))

    def cbr(self, x: Value, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
            act: str | None = "relu") -> Value:
        y = self.bn(self.conv(x, cout, k, stride, groups))
        return self.act(y, act) if act else y

    def add(self, a: Value, b: Value) -> Value:
        return self.g.add("add", [a, b], name=self._name("add"))

    def cat(self, xs: list[Value], axis: int = 1) -> Value:
        return self.g.add("cat", xs, dict(axis=axis), name=self._name("cat"))

    def linear(self, x: Value, out: int, bias: bool = True) -> Value:
        name = self._name("fc")
        w = self.g.add_constant(self.rand(out, x.shape[-1], scale=x.shape[-1] ** -0.5),
                                f"{name}.weight")
        ops = [x, w] + ([self.g.add_constant(self.rand(out), f"{name}.bias")] if bias else [])
        return self.g.add("linear", ops, name=name)

    def op(self, op: str, xs: list[Value], **attrs: object) -> Value:
        return self.g.add(op, xs, attrs, name=self._name(op))

    def head(self, x: Value, classes: int = 10) -> Value:
        y = self.op("adaptive_avg_pool2d", [x], output_size=[1, 1])
        y = self.op("reshape", [y], shape=[x.shape[0], -1])
        return self.linear(y, classes)

    def done(self, *outs: Value) -> Graph:
        self.g.set_outputs(list(outs))
        self.g.verify()
        return self.g


def resnet18_like(seed: int = 0, width: int = 16) -> Graph:
    """Stem, two stages of two basic blocks (the second with a strided 1x1 downsample), fc."""
    n = Net(seed)
    x = n.cbr(n.input(2, 3, 16, 16), width, 3)
    x = n.op("max_pool2d", [x], kernel=[2, 2], stride=[2, 2], padding=[0, 0], dilation=[1, 1])
    for stage, c in enumerate((width, 2 * width)):
        for block in range(2):
            stride = 2 if stage and not block else 1
            y = n.cbr(n.cbr(x, c, 3, stride), c, 3, act=None)
            sc = n.cbr(x, c, 1, stride, act=None) if x.shape[1] != c or stride != 1 else x
            x = n.act(n.add(y, sc))
    return n.done(n.head(x))


def resnet50_like(seed: int = 0, width: int = 8) -> Graph:
    """Bottleneck blocks (1x1 reduce, 3x3, 1x1 expand x4) with projection shortcuts."""
    n = Net(seed)
    x = n.cbr(n.input(2, 3, 16, 16), 2 * width, 3, 2)
    for stage, c in enumerate((width, 2 * width)):
        for block in range(2):
            stride = 2 if stage and not block else 1
            y = n.cbr(n.cbr(n.cbr(x, c, 1), c, 3, stride), 4 * c, 1, act=None)
            sc = n.cbr(x, 4 * c, 1, stride, act=None) if block == 0 else x
            x = n.act(n.add(y, sc))
    return n.done(n.head(x))


def mobilenetv2_like(seed: int = 0) -> Graph:
    """Inverted residuals: 1x1 expand, depthwise 3x3 (relu6), 1x1 project, residual add."""
    n = Net(seed)
    x = n.cbr(n.input(2, 3, 16, 16), 16, 3, 2, act="relu6")
    for cout, stride, t in ((16, 1, 4), (24, 2, 4), (24, 1, 4)):
        cin = x.shape[1]
        y = n.cbr(x, cin * t, 1, act="relu6")
        y = n.cbr(y, cin * t, 3, stride, groups=cin * t, act="relu6")
        y = n.cbr(y, cout, 1, act=None)
        x = n.add(y, x) if stride == 1 and cin == cout else y
    x = n.cbr(x, 64, 1, act="relu6")
    return n.done(n.head(x))


def densenet_like(seed: int = 0, growth: int = 8) -> Graph:
    """Two dense blocks of three layers (BN-ReLU-conv, concat), a transition in between."""
    n = Net(seed)
    x = n.conv(n.input(2, 3, 16, 16), 16, 3)
    for block in range(2):
        feats = [x]
        for _ in range(3):
            inp = n.cat(feats) if len(feats) > 1 else feats[0]
            y = n.conv(n.act(n.bn(inp)), 2 * growth, 1)
            y = n.conv(n.act(n.bn(y)), growth, 3)
            feats.append(y)
        x = n.cat(feats)
        if block == 0:
            x = n.conv(n.act(n.bn(x)), x.shape[1] // 2, 1)
            x = n.op("avg_pool2d", [x], kernel=[2, 2], stride=[2, 2], padding=[0, 0])
    return n.done(n.head(n.act(n.bn(x))))


def flatten_cnn(seed: int = 0) -> Graph:
    """Conv-BN-ReLU x2 with pooling, then flatten (channel x spatial) into two linears."""
    n = Net(seed)
    x = n.cbr(n.input(2, 1, 12, 12), 16, 3)
    x = n.op("max_pool2d", [x], kernel=[2, 2], stride=[2, 2], padding=[0, 0], dilation=[1, 1])
    x = n.cbr(x, 32, 3)
    x = n.op("max_pool2d", [x], kernel=[2, 2], stride=[2, 2], padding=[0, 0], dilation=[1, 1])
    x = n.op("reshape", [x], shape=[2, -1])
    x = n.act(n.linear(x, 64))
    return n.done(n.linear(x, 10))


def split_groupnorm_net(seed: int = 0) -> Graph:
    """A conv whose output is split in two branches (sizes 24/8), group norm, concat back."""
    n = Net(seed)
    x = n.cbr(n.input(2, 3, 8, 8), 32, 3)
    a, b = n.g.create("split", [x], dict(axis=1, sizes=[24, 8]), name="split").outputs
    a = n.conv(a, 16, 3)
    gw = n.g.add_constant(torch.rand(16, generator=n.gen) + 0.5, "gn.weight")
    gb = n.g.add_constant(n.rand(16), "gn.bias")
    a = n.act(n.op("group_norm", [a, gw, gb], num_groups=4, eps=1e-5), "silu")
    b = n.conv(b, 16, 1)
    x = n.cat([a, b])
    x = n.op("slice", [x], axis=1, start=4, end=28)
    x = n.cbr(x, 24, 3)
    return n.done(n.head(x))


def transformer_block(seed: int = 0, heads: int = 4, head_dim: int = 8, ffn: int = 64,
                      layers: int = 1) -> Graph:
    """Pre-norm encoder blocks: LN, q/k/v, heads reshape, sdpa, out proj, residual, FFN."""
    n = Net(seed)
    e, b, t = heads * head_dim, 2, 5
    x = n.input(b, t, e)

    def ln(v: Value) -> Value:
        w = n.g.add_constant(torch.rand(e, generator=n.gen) + 0.5, n._name("ln") + ".weight")
        bias = n.g.add_constant(n.rand(e), w.name.replace("weight", "bias"))
        return n.op("layer_norm", [v, w, bias], normalized_shape=[e], eps=1e-5)

    for _ in range(layers):
        h = ln(x)
        q, k, v = (n.op("permute", [n.op("reshape", [n.linear(h, e)], shape=[b, t, heads, head_dim])],
                        dims=[0, 2, 1, 3]) for _ in range(3))
        a = n.op("sdpa", [q, k, v])
        a = n.op("reshape", [n.op("permute", [a], dims=[0, 2, 1, 3])], shape=[b, t, e])
        x = n.add(x, n.linear(a, e))
        y = n.linear(n.op("gelu", [n.linear(ln(x), ffn)]), e)
        x = n.add(x, y)
    return n.done(ln(x))


def run(graph: Graph, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return to_torch(graph)(x)


def prune_and_check(graph: Graph, ratio: float, x: torch.Tensor | None = None,
                    **kwargs: object) -> tuple[Graph, Graph]:
    """Plans and applies a pruning; checks verify() and equality with the masked original."""
    plan = plan_channel_pruning(graph, ratio, **kwargs)  # type: ignore[arg-type]
    pruned = apply_channel_plan(graph, plan)
    pruned.verify()
    masked = mask_channel_plan(graph, plan)
    if x is None:
        inp = graph.inputs[0]
        x = torch.randn(inp.shape) if inp.type.is_float else torch.zeros(inp.shape, dtype=torch.long)
    want, got = run(masked, x), run(pruned, x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    return pruned, masked


__all__ = ["Net", "PruningError", "resnet18_like", "resnet50_like", "mobilenetv2_like",
           "densenet_like", "flatten_cnn", "split_groupnorm_net", "transformer_block", "run",
           "prune_and_check"]
