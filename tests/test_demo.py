"""``python -m slimfx.demo`` run in-process, on a cheaper training recipe and a private cache."""

from __future__ import annotations

import importlib.util

import pytest

import slimfx
from slimfx.demo import run_demo
from slimfx.errors import TraceError
from slimfx.models.digits import TrainConfig

CHEAP = TrainConfig(width=8, epochs=4)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("slimfx-cache")


@pytest.fixture
def private_cache(cache, monkeypatch):
    monkeypatch.setenv("SLIMFX_CACHE_DIR", str(cache))
    return cache


@pytest.mark.slow
def test_demo_runs_every_step_end_to_end(private_cache, tmp_path, capsys):
    if importlib.util.find_spec("tvm") is None:
        pytest.skip("apache-tvm is not installed")
    r = run_demo(config=CHEAP, out_dir=tmp_path)
    out = capsys.readouterr().out
    assert r.skipped is None, r.skipped
    for title in ("1. model", "2. trace", "3. passes", "4. int8", "5. compile"):
        assert f"== {title}" in out
    assert "graph @" in out and "conv2d(" in out  # the IR is printed
    assert r.fp32_accuracy > 0.95
    assert r.graph_max_abs_err is not None and r.graph_max_abs_err < 1e-4
    assert r.graph_accuracy == r.fp32_accuracy
    assert r.int8_accuracy is not None and r.int8_accuracy >= r.fp32_accuracy - 0.02
    assert r.int8_on_grid and r.compiled_bit_exact and r.reloaded_bit_exact
    assert r.compiled_latency_ms and r.eager_latency_ms
    assert (tmp_path / "digits_int8.slim").exists()


def test_demo_reports_a_missing_module_and_stops_cleanly(private_cache, monkeypatch, capsys):
    import slimfx.frontends

    monkeypatch.delattr(slimfx.frontends, "trace")
    monkeypatch.delitem(vars(slimfx), "trace", raising=False)  # the lazy import's cache
    r = run_demo(config=CHEAP, compile_target=None)
    out = capsys.readouterr().out
    assert "trace: not available yet (slimfx.frontends.trace is not defined)" in out
    assert r.skipped == {"trace": "slimfx.frontends.trace is not defined"}
    assert r.fp32_accuracy > 0.95 and r.graph_accuracy is None
    # the second run loads the weights the first one cached
    assert any(p.suffix == ".safetensors" for p in private_cache.iterdir())
    assert run_demo(config=CHEAP, compile_target=None).cached


def test_demo_fails_loudly_on_real_errors(private_cache, monkeypatch):
    def broken_trace(model, inputs):
        raise TraceError("unsupported op foo at model.py:3")

    monkeypatch.setitem(vars(slimfx), "trace", broken_trace)
    with pytest.raises(TraceError, match="unsupported op foo"):
        run_demo(config=CHEAP, compile_target=None)
