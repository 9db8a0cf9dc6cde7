"""Per-construct frontend tests, for both methods: trace -> verify -> equals eager -> round trip.

Each case is a small module, its inputs, and the IR ops it must produce; every
case must map without any ``opaque`` node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.frontends.frontend_helpers import check, ops

torch.manual_seed(0)


class Fn(nn.Module):
    """Wraps a function of the inputs (and of optional submodules) as a module."""

    def __init__(self, fn: Callable[..., Any], **mods: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        for k, m in mods.items():
            self.add_module(k, m)

    def forward(self, x: torch.Tensor) -> Any:
        return self.fn(self, x)


def img(c: int = 4, s: int = 8) -> torch.Tensor:
    return torch.randn(2, c, s, s)


def bn(c: int) -> nn.BatchNorm2d:
    m = nn.BatchNorm2d(c)
    m.running_mean.uniform_(-1, 1)
    m.running_var.uniform_(0.5, 2)
    m.weight.data.uniform_(0.5, 2)
    return m


CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[], Any], set[str]]] = {
    "conv_bn_relu": (lambda: nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), bn(8), nn.ReLU()),
                     img, {"conv2d", "batch_norm", "relu"}),
    "conv_groups_dilation": (lambda: nn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=2,
                                               bias=False), img, {"conv2d"}),
    "conv_stride": (lambda: nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4), img, {"conv2d"}),
    "conv_reflect": (lambda: nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), img,
                     {"pad", "conv2d"}),
    "conv_replicate": (lambda: nn.Conv2d(4, 4, 3, padding=1, padding_mode="replicate"), img,
                       {"pad", "conv2d"}),
    "conv_circular": (lambda: nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"), img,
                      {"pad", "conv2d"}),
    "conv_same_even_kernel": (lambda: nn.Conv2d(4, 4, 4, padding="same"), img, {"pad", "conv2d"}),
    "conv_same_odd_kernel": (lambda: nn.Conv2d(4, 4, 3, padding="same"), img, {"conv2d"}),
    "conv1d": (lambda: nn.Sequential(nn.Conv1d(4, 6, 3, padding=1), nn.BatchNorm1d(6),
                                     nn.MaxPool1d(2), nn.AvgPool1d(2),
                                     nn.AdaptiveAvgPool1d(1)),
               lambda: torch.randn(2, 4, 16),
               {"conv1d", "batch_norm", "max_pool1d", "avg_pool1d", "adaptive_avg_pool1d"}),
    "conv_transpose": (lambda: nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1),
                       img, {"conv_transpose2d"}),
    "pools": (lambda: nn.Sequential(nn.MaxPool2d(3, 2, 1), nn.AvgPool2d(2, ceil_mode=True),
                                    nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten()),
              lambda: img(4, 12), {"max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "reshape"}),
    "adaptive_max": (lambda: nn.AdaptiveMaxPool2d(2), img, {"adaptive_max_pool2d"}),
    "activations": (lambda: Fn(lambda s, x: [F.gelu(x), F.gelu(x, approximate="tanh"), F.silu(x),
                                             F.hardswish(x), F.hardsigmoid(x), F.relu6(x),
                                             F.leaky_relu(x, 0.2), F.elu(x), F.softplus(x),
                                             F.mish(x), torch.sigmoid(x), torch.tanh(x),
                                             F.hardtanh(x, -0.5, 0.5), x.clamp(min=0.1)]),
                    img, {"gelu", "silu", "hardswish", "hardsigmoid", "relu6", "leaky_relu",
                          "elu", "softplus", "mish", "sigmoid", "tanh", "clamp"}),
    "softmax": (lambda: Fn(lambda s, x: (F.softmax(x, -1), F.log_softmax(x, 1))), img,
                {"softmax", "log_softmax"}),
    "arithmetic": (lambda: Fn(lambda s, x: [torch.add(x, x, alpha=2), x - 1.5, 2 * x, x / 3,
                                            x ** 2, torch.sub(x, x, alpha=3), 1 - x,
                                            torch.maximum(x, -x), x // 2]),
                   img, {"add", "sub", "mul", "div", "pow", "maximum"}),
    "compare_where": (lambda: Fn(lambda s, x: [torch.where(x > 0, x, 0.0), x == x, x < 0.5,
                                               (x > 0) & (x < 1), x.masked_fill(x > 1, -1.0)]),
                      img, {"gt", "where", "eq", "lt", "logical_and"}),
    "linear_stack": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Dropout(0.3),
                                           nn.GELU(), nn.LayerNorm(16), nn.Linear(16, 4)),
                     lambda: torch.randn(3, 4, 4, 4), {"reshape", "linear", "dropout", "gelu",
                                                       "layer_norm"}),
    "norms": (lambda: Fn(lambda s, x: [s.gn(x), s.rms(x)], gn=nn.GroupNorm(2, 4),
                         rms=nn.RMSNorm(8, eps=1e-6)), img, {"group_norm", "rms_norm"}),
    "shapes": (lambda: Fn(lambda s, x: [x.view(2, 4, 64), x.flatten(1), x.unsqueeze(1).squeeze(1),
                                        x.permute(0, 2, 3, 1), x.transpose(1, 3),
                                        x.reshape(16, 32).t(), x[:1].expand(2, 4, 8, 8),
                                        x.contiguous(), x.clone().detach()]),
               img, {"reshape", "permute", "expand", "slice"}),
    "split_cat": (lambda: Fn(lambda s, x: [x.split([1, 3], 1)[1], x.chunk(2, 2)[0], x.unbind(1)[2],
                                           torch.cat([x, x], 1), torch.stack([x, x], 0)]),
                  img, {"split", "reshape", "cat"}),
    "slice_select": (lambda: Fn(lambda s, x: [x[:, 1], x[..., ::2], x[:, -2:], x[0, :, 1:3],
                                              x.narrow(2, 1, 3), x.select(3, -1)]),
                     img, {"select", "slice"}),
    "reductions": (lambda: Fn(lambda s, x: [x.mean((2, 3)), x.sum(1, keepdim=True), x.amax(-1),
                                            x.amin((1, 2)), x.mean(), x.max()]),
                   img, {"mean", "sum", "amax", "amin"}),
    "embedding": (lambda: Fn(lambda s, x: s.emb(x).sum(-1), emb=nn.Embedding(10, 8)),
                  lambda: torch.randint(0, 10, (2, 5)), {"embedding", "sum"}),
    "cast": (lambda: Fn(lambda s, x: [x.to(torch.float16), x.half().float(), x.int(),
                                      x.type_as(x)]), img, {"cast"}),
    "sdpa": (lambda: Fn(lambda s, x: F.scaled_dot_product_attention(x, x, x, is_causal=True)),
             lambda: torch.randn(2, 2, 6, 8), {"sdpa"}),
    "sdpa_mask": (lambda: Fn(lambda s, x: F.scaled_dot_product_attention(
        x, x, x, attn_mask=x[..., :6] > 0)),
        lambda: torch.randn(2, 2, 6, 8), {"sdpa"}),
    "lstm": (lambda: nn.LSTM(8, 6, num_layers=2, batch_first=True), lambda: torch.randn(2, 5, 8),
             {"lstm"}),
    "lstm_bidirectional": (lambda: nn.LSTM(8, 6, bidirectional=True), lambda: torch.randn(5, 2, 8),
                           {"lstm"}),
    "gru": (lambda: nn.GRU(8, 6, batch_first=True), lambda: torch.randn(2, 5, 8), {"gru"}),
    "pad": (lambda: Fn(lambda s, x: [F.pad(x, (1, 2)), F.pad(x, (1, 1, 2, 0), value=3.0),
                                     F.pad(x, (2, 2, 2, 2), mode="reflect"),
                                     F.pad(x, (1, 1, 1, 1), mode="replicate")]),
            img, {"pad"}),
    "interpolate": (lambda: Fn(lambda s, x: [F.interpolate(x, scale_factor=2),
                                             F.interpolate(x, size=(5, 7), mode="bilinear"),
                                             F.interpolate(x, size=(12, 12), mode="bilinear",
                                                           align_corners=True),
                                             s.up(x)], up=nn.Upsample(scale_factor=2)),
                    img, {"interpolate"}),
    "factories": (lambda: Fn(lambda s, x: x + torch.arange(8) + torch.ones(8, 8) * 2
                             + torch.zeros_like(x) + torch.full((1, 8), 0.5)),
                  img, {"add"}),
    "inplace": (lambda: Fn(lambda s, x: s.relu(x + 1).add_(1).mul_(2), relu=nn.ReLU(inplace=True)),
                img, {"relu", "add", "mul"}),
}


@pytest.mark.parametrize("method", ["export", "fx"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_construct_maps_and_matches_eager(case: str, method: str) -> None:
    make_model, make_inputs, expected = CASES[case]
    torch.manual_seed(0)
    model = make_model()
    g = check(model, make_inputs(), method)
    got = set(ops(g))
    assert expected <= got, f"missing {expected - got} in {sorted(got)}"
    assert "opaque" not in got, str(g)
