"""Suite-wide test setup.

- the repository root is importable (``from tests.passes.pass_helpers import ...``);
- ``SLIMFX_VERIFY=1``: every PassContext verifies the graph after each pass, so any
  pass that leaves invalid IR fails the test that ran it, naming the pass.
- hypothesis: a ``ci`` profile (few examples, no deadline: CI has 2 slow cores);
  ``HYPOTHESIS_PROFILE=dev`` runs more examples locally.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("SLIMFX_VERIFY", "1")

# Test helpers are imported as ``tests.<dir>.<module>``; the bare ``pytest`` command
# (unlike ``python -m pytest``) does not put the repository root on sys.path.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is a dev dependency
    pass
else:
    # CI: the same examples every run (a fixed seed set); HYPOTHESIS_PROFILE=dev explores
    settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("dev", max_examples=300, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _verify_after_each_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keeps SLIMFX_VERIFY=1 for each test even if a test or library code changed it."""
    monkeypatch.setenv("SLIMFX_VERIFY", "1")


@pytest.fixture(autouse=True)
def _isolate_registries() -> Iterator[None]:
    """Ops, passes, pipelines and TVM lowerings a test registers do not outlive it.

    Built-ins are loaded first (the registries load lazily), so the snapshot holds them
    all and restoring it only drops what the test added. Without this, a test's toy op
    would show up in another test's "every op has a lowering" check on the same worker.
    """
    from slimfx.ir import ops
    from slimfx.passes import registry

    ops.all_ops()
    registry.known_passes()
    tables: list[dict] = [ops._REGISTRY, registry._PASSES, registry._PIPELINES]
    lower = sys.modules.get("slimfx.backends.tvm.lower")
    if lower is not None:
        lower.has_lowering("relu")  # loads the built-in lowerings
        tables += [lower._LOWERINGS, lower._FUSIONS]
    saved = [dict(t) for t in tables]
    yield
    for table, before in zip(tables, saved, strict=True):
        table.clear()
        table.update(before)
