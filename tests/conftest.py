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
    settings.register_profile("ci", max_examples=25, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("dev", max_examples=300, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _verify_after_each_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keeps SLIMFX_VERIFY=1 for each test even if a test or library code changed it."""
    monkeypatch.setenv("SLIMFX_VERIFY", "1")
