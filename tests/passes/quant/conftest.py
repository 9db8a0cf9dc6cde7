"""Shared fixtures: a small CNN trained on sklearn's 8x8 digits, as a module and an IR graph."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimfx.ir import Graph, TensorType

BATCH = 60


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = nn.functional.max_pool2d(x, 2)
        x = torch.relu(self.conv2(x))
        return self.fc(x.flatten(1))


def digits_graph(m: DigitsCNN, batch: int = BATCH) -> Graph:
    """The IR of DigitsCNN built by hand (the frontend is tested elsewhere)."""
    g = Graph("digits")
    x = g.add_input("x", TensorType((batch, 1, 8, 8)))

    def c(t: torch.Tensor, name: str):
        return g.add_constant(t.detach().clone(), name)

    conv = dict(stride=[1, 1], padding=[1, 1], dilation=[1, 1])
    y = g.add("conv2d", [x, c(m.conv1.weight, "conv1.weight"), c(m.conv1.bias, "conv1.bias")],
              conv, name="conv1")
    bn = m.bn1
    y = g.add("batch_norm", [y, c(bn.running_mean, "bn1.running_mean"),
                             c(bn.running_var, "bn1.running_var"), c(bn.weight, "bn1.weight"),
                             c(bn.bias, "bn1.bias")], dict(eps=bn.eps), name="bn1")
    y = g.add("relu", [y], name="relu1")
    y = g.add("max_pool2d", [y], dict(kernel=[2, 2], stride=[2, 2], padding=[0, 0],
                                      dilation=[1, 1]), name="pool")
    y = g.add("conv2d", [y, c(m.conv2.weight, "conv2.weight"), c(m.conv2.bias, "conv2.bias")],
              conv, name="conv2")
    y = g.add("relu", [y], name="relu2")
    y = g.add("reshape", [y], dict(shape=[batch, 256]), name="flatten")
    y = g.add("linear", [y, c(m.fc.weight, "fc.weight"), c(m.fc.bias, "fc.bias")], name="fc")
    g.set_outputs([y])
    g.verify()
    return g


@pytest.fixture(scope="session")
def digits():
    """(model, graph, train batches, test batches, test labels) - trains in ~2 s."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    xtr, ytr, xte, yte = x[:1257], y[:1257], x[1257:], y[1257:]
    m = DigitsCNN()
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread avoids oversubscription on busy CI
    for _ in range(10):
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(m(xtr[idx]), ytr[idx]).backward()
            opt.step()
    torch.set_num_threads(threads)
    m.eval()
    train = [xtr[i:i + BATCH] for i in range(0, 1200, BATCH)]
    test = [xte[i:i + BATCH] for i in range(0, 540, BATCH)]
    return m, digits_graph(m), train, test, yte[:540]


def accuracy(fn, batches, labels) -> float:
    with torch.no_grad():
        pred = torch.cat([fn(b).argmax(1) for b in batches])
    return float((pred == labels).float().mean()) * 100
