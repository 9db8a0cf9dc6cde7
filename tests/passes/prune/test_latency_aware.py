"""prune-channels latency_target: widths from a latency table, greedy choice, cache, options.

Most tests inject a deterministic cost model (``latency_fn``) so that nothing is timed;
one slow test measures the real compiled latency of a small CNN on this host.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from torch import nn

import slimfx
from slimfx.errors import PipelineError, PruningError
from slimfx.ir import Graph
from slimfx.passes import Pipeline
from slimfx.passes.prune import (
    LatencyReport,
    analyze_channels,
    apply_channel_plan,
    count_macs,
    mask_channel_plan,
    plan_for_latency,
    prune_channels,
    prune_for_latency,
)
from slimfx.passes.prune import latency as latency_mod
from slimfx.passes.prune.latency import graph_fingerprint, vector_width
from tests.passes.prune.prune_nets import flatten_cnn, resnet18_like, run


def mac_model(graph: Graph) -> float:
    """A cost model: one nanosecond per MAC plus a fixed 10 us."""
    return 1e-9 * count_macs(graph) + 1e-5


def out_channels(graph: Graph, const: str) -> int:
    return graph.constants[const].type.shape[0]


def weighted_widths(weights: dict[str, float]):
    """A separable cost model: ``sum(weight * out_channels(const))`` microseconds."""
    def fn(graph: Graph) -> float:
        return 1e-6 * sum(w * out_channels(graph, c) for c, w in weights.items())
    return fn


class Counting:
    """Wraps a cost model and counts the graphs it was asked about."""

    def __init__(self, fn) -> None:
        self.fn, self.calls = fn, 0
        self.__qualname__ = "Counting"

    def __call__(self, graph: Graph) -> float:
        self.calls += 1
        return self.fn(graph)


def test_widths_are_multiples_of_the_vector_width_and_meet_the_target() -> None:
    g = resnet18_like(width=32)  # groups of 32 and 64 channels
    pruned, rep = prune_for_latency(g, 0.5, latency_fn=mac_model, round_to=8)
    assert rep.kept, "nothing pruned"
    for gid, (k, n) in rep.kept.items():
        assert k % 8 == 0 and 0 < k < n and k >= n // 2, (gid, k, n)  # ratio=0.5 caps
    for node in pruned.find("conv2d"):
        assert node.inputs[1].type.shape[0] % 8 == 0
    assert rep.predicted <= 0.5 * rep.base
    assert rep.measured == pytest.approx(mac_model(pruned))
    assert rep.measured <= 0.5 * rep.base * 1.02  # met after the model's optimism is corrected
    for t in rep.tables:
        assert t.kept[-1] == t.full and t.seconds[-1] == rep.base
        assert all(k % 8 == 0 for k in t.kept[:-1]) and list(t.kept) == sorted(t.kept)


def test_default_round_to_uses_the_targets_vector_width() -> None:
    from slimfx.backends.tvm.targets import resolve_target

    vw = vector_width(resolve_target("x86"))
    assert vw in (4, 8, 16)
    _, rep = plan_for_latency(resnet18_like(width=32), 0.6, latency_fn=mac_model)
    assert rep.kept and all(k % vw == 0 for k, _ in rep.kept.values())
    assert vector_width({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver4"}) == 16
    assert vector_width({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}) == 8


def test_additive_model_predicts_a_separable_cost_exactly() -> None:
    g = flatten_cnn()
    fn = weighted_widths({"conv1.weight": 1.0, "conv5.weight": 2.0, "fc10.weight": 1.0})
    _, rep = prune_for_latency(g, 0.75, latency_fn=fn, round_to=8)
    assert rep.predicted == pytest.approx(rep.measured)
    assert rep.measured <= 0.75 * rep.base and rep.rounds == 1


def kept_group_sources(g: Graph, rep: LatencyReport) -> list[str]:
    """The first member (the source layer) of every group the report shrinks."""
    groups = analyze_channels(g).groups
    return [groups[gid].members[0] for gid in sorted(rep.kept)]


@pytest.mark.parametrize("heavy", ["conv5.weight", "fc10.weight"])
def test_greedy_shrinks_the_group_whose_latency_drops_most(heavy: str) -> None:
    """Cost 100 us per output channel of the heavy layer, 1 us for the others: the target
    is met by halving the heavy layer's group alone, and no other group is touched."""
    g = flatten_cnn()  # conv1 16, conv5 32, fc10 64 output channels
    weights = {"conv1.weight": 1.0, "conv5.weight": 1.0, "fc10.weight": 1.0, heavy: 100.0}
    fn = weighted_widths(weights)
    base = fn(g)
    target = (base - 1e-6 * 100 * out_channels(g, heavy) / 2) / base  # exactly half of heavy
    pruned, rep = prune_for_latency(g, target, latency_fn=fn, round_to=8)
    full = {c: out_channels(g, c) for c in weights}
    assert {c: out_channels(pruned, c) for c in weights} == {**full, heavy: full[heavy] // 2}
    assert kept_group_sources(g, rep) == [heavy.split(".")[0] + "[out]"]
    assert rep.measured == pytest.approx(target * base)


@pytest.mark.parametrize("weak", ["conv1", "conv5"])
def test_equal_latency_savings_go_to_the_less_important_group(weak: str) -> None:
    """conv1 16->8 and conv5 32->16 save the same 16 us; the group whose batch-norm scales
    are tiny for half its channels (bn-scale importance) is the one that shrinks."""
    g = flatten_cnn()
    bn = {"conv1": "bn2", "conv5": "bn6"}[weak]
    gamma = g.constants[f"{bn}.weight"]
    t = gamma.const.clone()
    t[::2] = 1e-4
    gamma.const = t
    fn = weighted_widths({"conv1.weight": 2.0, "conv5.weight": 1.0})
    base = fn(g)
    _, rep = plan_for_latency(g, (base - 16e-6) / base, latency_fn=fn, round_to=8,
                              importance="bn-scale")
    assert kept_group_sources(g, rep) == [f"{weak}[out]"]
    assert rep.predicted == pytest.approx(base - 16e-6)


def test_pruned_graph_equals_masked_original() -> None:
    g = resnet18_like(width=32)
    plan, rep = plan_for_latency(g, 0.5, latency_fn=mac_model, round_to=8)
    x = torch.randn(g.inputs[0].shape)
    pruned = apply_channel_plan(g, plan)
    pruned.verify()
    torch.testing.assert_close(run(pruned, x), run(mask_channel_plan(g, plan), x),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.tvm
def test_pruned_graph_runs_through_tvm_like_its_torch_module() -> None:
    g = flatten_cnn()
    pruned = prune_channels(g, latency_target=0.6, latency_fn=mac_model, round_to=8)
    assert count_macs(pruned) < count_macs(g)
    x = torch.randn(g.inputs[0].shape)
    compiled = slimfx.compile(pruned, "x86", progress=False)
    torch.testing.assert_close(torch.as_tensor(compiled(x.numpy())), run(pruned, x),
                               rtol=1e-4, atol=1e-4)


def test_dict_cache_makes_a_rerun_measure_nothing() -> None:
    g = resnet18_like(width=32)
    cache: dict[str, float] = {}
    fn = Counting(mac_model)
    _, first = plan_for_latency(g, 0.5, latency_fn=fn, latency_cache=cache, round_to=8)
    assert fn.calls == first.measurements == len(cache) > 0 and first.cached == 0
    fn.calls = 0
    g2 = g.clone()  # other weight values, same structure: same fingerprint
    for v in g2.constants.values():
        v.const = v.const + 0.01
    assert graph_fingerprint(g2) == graph_fingerprint(g)
    _, second = plan_for_latency(g2, 0.5, latency_fn=fn, latency_cache=cache, round_to=8)
    assert fn.calls == 0 and second.measurements == 0 and second.cached > 0
    assert second.base == first.base
    haswell = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}
    _, third = plan_for_latency(g, 0.5, latency_fn=fn, latency_cache=cache, round_to=8,
                                target=haswell)  # another target: nothing is reused
    assert fn.calls == first.measurements and third.cached == 0


def test_json_cache_file_persists_across_runs(tmp_path) -> None:
    g, path = flatten_cnn(), tmp_path / "latency.json"
    fn = Counting(mac_model)
    plan_a, _ = plan_for_latency(g, 0.6, latency_fn=fn, latency_cache=str(path), round_to=8)
    doc = json.loads(path.read_text())
    assert doc["version"] == 1 and len(doc["latency_s"]) == fn.calls > 0
    fn.calls = 0
    plan_b, rep = plan_for_latency(g, 0.6, latency_fn=fn, latency_cache=path, round_to=8)
    assert fn.calls == 0 and rep.measurements == 0 and plan_b.pruned == plan_a.pruned
    assert graph_fingerprint(g) in next(iter(doc["latency_s"]))


def test_unreachable_target_warns_and_keeps_the_cap(caplog) -> None:
    g = flatten_cnn()
    with caplog.at_level(logging.WARNING, logger="slimfx.passes.prune.latency"):
        _, rep = plan_for_latency(g, 0.1, latency_fn=mac_model, ratio=0.5, round_to=8)
    assert "latency_target=0.1 not reached" in caplog.text and "raise ratio" in caplog.text
    assert rep.measured > 0.1 * rep.base
    assert all(k >= n // 2 for k, n in rep.kept.values())


def test_pass_in_a_pipeline_uses_the_latency_model(monkeypatch, caplog) -> None:
    """The pass measures through ``measure_latency``; a cost model stands in for TVM here."""
    seen: list[str] = []

    def fake(graph: Graph, target: object, **_: object) -> float:
        seen.append(str(target))
        return mac_model(graph)

    monkeypatch.setattr(latency_mod, "measure_latency", fake)
    g = resnet18_like(width=32)
    pipe = Pipeline.parse("prune-channels{latency_target=0.5,round_to=8}")
    assert str(pipe) == "prune-channels{round_to=8,latency_target=0.5}"
    with caplog.at_level(logging.INFO, logger="slimfx.passes.prune.latency"):
        out = pipe(g)
    assert set(seen) == {"x86"} and "predicted" in caplog.text and "measured" in caplog.text
    assert mac_model(out) <= 0.5 * mac_model(g) * 1.02
    assert all(n.inputs[1].type.shape[0] % 8 == 0 for n in out.find("conv2d"))


@pytest.mark.parametrize("kwargs,match", [
    (dict(latency_target=0.0), "latency_target=0.0 must lie in"),
    (dict(latency_target=1.5), "latency_target=1.5 must lie in"),
    (dict(latency_target=True), "latency_target=True"),
    (dict(latency_target=0.5, target="riscv"), "unknown target 'riscv'"),
    (dict(latency_target=0.5, target=3), "target must be a target name"),
    (dict(latency_target=0.5, scope="uniform"), "scope=uniform contradict"),
    (dict(latency_target=0.5, ratio=0.0), "ratio=0.0 with latency_target"),
    (dict(latency_target=0.5, latency_fn=42), "latency_fn must be a callable"),
    (dict(latency_target=0.5, latency_fn=lambda g: -1.0), "returned -1.0"),
    (dict(latency_target=0.5, latency_fn=lambda g: float("nan")), "returned nan"),
    (dict(latency_target=0.5, latency_fn=mac_model, latency_cache=[]),
     "latency_cache must be a dict or the path"),
    (dict(latency_fn=mac_model), "only apply with latency_target"),
    (dict(latency_cache={}), "only apply with latency_target"),
])
def test_bad_options_raise(kwargs, match) -> None:
    with pytest.raises(PruningError, match=match):
        prune_channels(flatten_cnn(), round_to=8, **kwargs)


def test_corrupt_cache_file_names_the_file(tmp_path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(PruningError, match="bad.json.*is not a latency cache"):
        plan_for_latency(flatten_cnn(), 0.5, latency_fn=mac_model, latency_cache=path)


@pytest.mark.parametrize("text,match", [
    ("prune-channels{latency_target=2}", "latency_target=2.0 must lie in"),
    ("prune-channels{latency_target=0.5,scope=uniform}", "contradict"),
    ("prune-channels{latency_target=0.5,target=tpu}", "unknown target 'tpu'"),
    ("prune-channels{target=arm}", "only apply with latency_target"),
    ("prune-channels{latency_cache=x.json}", "only apply with latency_target"),
])
def test_bad_pipeline_options_raise_when_parsed(text: str, match: str) -> None:
    with pytest.raises(PipelineError, match=match):
        Pipeline.parse(text)


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()


@pytest.mark.tvm
@pytest.mark.slow
def test_real_measured_latency_on_a_small_cnn(tmp_path, monkeypatch) -> None:
    """Measured with slimfx.compile on this host; the rerun from the JSON cache times nothing."""
    model, x = small_cnn(), torch.randn(1, 3, 32, 32)
    g = slimfx.trace(model, (x,))
    path = tmp_path / "lat.json"
    pruned, rep = prune_for_latency(g, 0.6, round_to=16, latency_cache=path, repeat=5,
                                    number=10)
    assert isinstance(rep, LatencyReport) and rep.kept
    assert all(k % 16 == 0 for k, _ in rep.kept.values())
    # real timings on a shared host are noisy (a base 1.7 ms was once too fast for 0.6 of it to
    # be reachable within the ratio cap): only what holds whatever the timings is asserted
    assert rep.predicted <= rep.base
    compiled = slimfx.compile(pruned, "x86", progress=False)
    torch.testing.assert_close(torch.as_tensor(compiled(x.numpy())), run(pruned, x),
                               rtol=1e-4, atol=1e-4)

    def no_timing(*_: object, **__: object) -> float:
        raise AssertionError("measured again despite the cache")

    monkeypatch.setattr(latency_mod, "measure_latency", no_timing)
    again = Pipeline.parse(f"prune-channels{{latency_target=0.6,round_to=16,"
                           f"latency_cache={json.dumps(str(path))}}}")(g)
    assert graph_fingerprint(again) == graph_fingerprint(pruned)
