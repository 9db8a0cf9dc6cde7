"""prune-magnitude: masks in the IR, global vs layer thresholds, overrides, sparse export."""

from __future__ import annotations

import pytest
import torch

from slimfx.errors import PruningError
from slimfx.passes import Pipeline
from slimfx.passes.prune import (
    PolynomialSchedule,
    count_nonzero,
    export_sparse,
    load_sparse,
    magnitude_masks,
    magnitude_prune,
    sparsity_table,
)
from slimfx.passes.prune.magnitude import eligible_weights
from tests.passes.prune.prune_nets import Net, flatten_cnn, resnet18_like, run


def _sparsity(t: torch.Tensor) -> float:
    return float((t == 0).float().mean())


def test_layer_scope_hits_the_target_in_every_weight() -> None:
    g = resnet18_like()
    out = Pipeline.parse("prune-magnitude{sparsity=0.6,scope=layer}")(g)
    for w in eligible_weights(out):
        assert w.mask is not None and w.mask.dtype == torch.bool and w.mask.shape == w.const.shape
        assert _sparsity(w.const) == pytest.approx(0.6, abs=1 / w.const.numel())
        # the mask removed the smallest magnitudes of the original weight
        orig = g.constants[w.name].const.abs()
        assert orig[~w.mask].max() <= orig[w.mask].min()
    assert all(g.constants[w.name].mask is None for w in eligible_weights(g))  # input untouched


def test_global_scope_uses_one_threshold() -> None:
    g = resnet18_like()
    orig = {w.name: w.const.abs() for w in eligible_weights(g)}
    magnitude_prune(g, 0.5, scope="global")
    ws = eligible_weights(g)
    total = sum(w.const.numel() for w in ws)
    zeros = sum(int((w.const == 0).sum()) for w in ws)
    assert zeros == round(0.5 * total)
    kept_min = min(float(orig[w.name][w.mask].min()) for w in ws)
    pruned_max = max(float(orig[w.name][~w.mask].max()) for w in ws if (~w.mask).any())
    assert pruned_max <= kept_min
    assert all(not w.const[~w.mask].any() for w in ws)
    per_layer = {round(_sparsity(w.const), 2) for w in ws}
    assert len(per_layer) > 1 and kept_min > 0  # layers differ under one threshold


def test_overrides_and_exclusions() -> None:
    g = resnet18_like()
    magnitude_prune(g, 0.5, scope="global", overrides=["^conv1\\.weight$=0.2"],
                    exclude=["fc"])
    assert _sparsity(g.constants["conv1.weight"].const) == pytest.approx(0.2, abs=0.01)
    assert g.constants["fc37.weight"].mask is None
    assert _sparsity(g.constants["fc37.weight"].const) == 0


def test_masks_are_monotone_and_output_matches_masked_weights() -> None:
    g = flatten_cnn()
    magnitude_prune(g, 0.3)
    first = {w.name: w.mask.clone() for w in eligible_weights(g)}
    magnitude_prune(g, 0.7)
    for w in eligible_weights(g):
        assert not (w.mask & ~first[w.name]).any()  # nothing pruned comes back
    x = torch.randn(2, 1, 12, 12)
    ref = g.clone()
    for w in eligible_weights(ref):
        w.const = w.const * w.mask
    torch.testing.assert_close(run(g, x), run(ref, x))


def test_bad_inputs() -> None:
    g = resnet18_like()
    with pytest.raises(PruningError, match=r"sparsity=1.0 must lie in \[0, 1\)"):
        magnitude_prune(g, 1.0)
    with pytest.raises(PruningError, match="matches no weight"):
        magnitude_prune(g, 0.5, overrides={"nonexistent": 0.1})
    with pytest.raises(PruningError, match="not 'regex=sparsity'"):
        magnitude_prune(g, 0.5, overrides=["conv1"])
    with pytest.raises(PruningError, match="no weight to prune"):
        magnitude_prune(g, 0.5, exclude=[".*"])


def test_schedule_is_cubic_and_monotone() -> None:
    s = PolynomialSchedule(final=0.8, end_step=100, initial=0.0, begin_step=0, frequency=10)
    assert s.sparsity(0) == 0.0 and s.sparsity(100) == 0.8 and s.sparsity(500) == 0.8
    assert s.sparsity(50) == pytest.approx(0.8 + (0.0 - 0.8) * 0.5 ** 3)
    vals = [s.sparsity(t) for t in range(0, 101, 10)]
    assert vals == sorted(vals)
    assert s.updates_at(20) and not s.updates_at(25) and not s.updates_at(110)
    with pytest.raises(PruningError):
        PolynomialSchedule(final=1.2, end_step=10)
    with pytest.raises(PruningError):
        PolynomialSchedule(final=0.5, end_step=0)


def test_sparse_export_counts_real_nonzeros(tmp_path) -> None:
    g = resnet18_like()
    magnitude_prune(g, 0.8, scope="global")
    rep = export_sparse(g, tmp_path / "w.safetensors")
    assert rep.sparse_bytes < 0.35 * rep.dense_bytes
    assert rep.file_bytes < 0.45 * rep.dense_bytes  # header included
    back = load_sparse(rep.path)
    assert set(back) == set(g.constants)
    for name, v in g.constants.items():
        torch.testing.assert_close(back[name], v.const, rtol=0, atol=0)
    dense = export_sparse(resnet18_like(), tmp_path / "d.safetensors")
    assert dense.sparse_bytes == dense.dense_bytes


def test_sparsity_table_and_counts() -> None:
    n = Net()
    y = n.linear(n.input(1, 4), 4, bias=False)
    g = n.done(y)
    w = g.constants["fc1.weight"]
    w.const = torch.tensor([[1.0, 0, 0, 0]] * 4)
    table = sparsity_table(g)
    assert "fc1.weight" in table and "75.0%" in table.splitlines()[2]
    assert count_nonzero(g) == 4


def test_magnitude_masks_exact_counts() -> None:
    ws = {"a": torch.arange(10.0), "b": torch.arange(10.0, 20.0)}
    m = magnitude_masks(ws, 0.5, scope="global")
    assert not m["a"].any() and m["b"].all()
    m = magnitude_masks(ws, 0.5, scope="layer")
    assert int(m["a"].sum()) == 5 and int(m["b"].sum()) == 5
