"""Property test: random CNNs with residuals, concats, splits and depthwise convs, pruned at
random ratios, stay valid and compute what the masked original computes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimfx.errors import PruningError
from slimfx.ir import Graph
from tests.passes.prune.prune_nets import Net, prune_and_check

BLOCKS = ("cbr", "residual", "concat", "depthwise", "split", "pool")


def build(blocks: list[tuple[str, int]], flatten: bool, seed: int) -> Graph:
    n = Net(seed)
    x = n.cbr(n.input(1, 3, 8, 8), 8)
    for kind, width in blocks:
        c = x.shape[1]
        if kind == "cbr":
            x = n.cbr(x, width, 3)
        elif kind == "residual":
            x = n.act(n.add(n.cbr(n.cbr(x, width, 1), c, 3, act=None), x))
        elif kind == "concat":
            x = n.cat([n.cbr(x, width, 1), n.cbr(x, 4, 3), x])
        elif kind == "depthwise":
            x = n.cbr(x, c, 3, groups=c, act="relu6")
        elif kind == "split" and c >= 4:
            a, b = n.g.create("split", [x], dict(axis=1, sizes=[c // 2, c - c // 2])).outputs
            x = n.cat([n.cbr(b, width, 1), a])
        elif kind == "pool" and x.shape[-1] >= 4:
            x = n.op("max_pool2d", [x], kernel=[2, 2], stride=[2, 2], padding=[0, 0],
                     dilation=[1, 1])
    if flatten:
        x = n.linear(n.op("reshape", [x], shape=[1, -1]), 6)
        return n.done(n.linear(n.act(x), 3))
    return n.done(n.head(x, 3))


CASES = dict(blocks=st.lists(st.tuples(st.sampled_from(BLOCKS), st.sampled_from([4, 6, 8])),
                       min_size=1, max_size=5),
       flatten=st.booleans(), seed=st.integers(0, 1000),
       ratio=st.floats(0.0, 0.9), scope=st.sampled_from(["global", "uniform"]),
       round_to=st.sampled_from([1, 2, 4]), importance=st.sampled_from(["l1", "l2", "bn-scale"]))


def check(blocks, flatten, seed, ratio, scope, round_to, importance) -> None:
    g = build(blocks, flatten, seed)
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    try:
        pruned, _ = prune_and_check(g, ratio, x, scope=scope, round_to=round_to,
                                    importance=importance)
    except PruningError as e:  # only when nothing at all may be pruned
        assert "every channel is protected" in str(e)
        return
    assert len(pruned) == len(g)
    for v in pruned.values():
        assert all(d > 0 for d in v.type.shape)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**CASES)
def test_random_graphs_prune_to_the_masked_original(**case) -> None:
    check(**case)


@pytest.mark.slow
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**CASES)
def test_random_graphs_prune_to_the_masked_original_many(**case) -> None:
    check(**case)
