"""The public surface: every module imports and declares ``__all__``; the top-level API resolves."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import subprocess
import sys

import pytest

import slimfx

MODULES = sorted(info.name for info in pkgutil.walk_packages(slimfx.__path__, "slimfx."))
HAS_TVM = importlib.util.find_spec("tvm") is not None


def _needs_tvm(name: str) -> bool:
    return name.startswith("slimfx.backends.tvm")


@pytest.mark.parametrize("name", MODULES)
def test_module_imports_and_declares_all(name):
    if _needs_tvm(name) and not HAS_TVM:
        pytest.skip("apache-tvm is not installed (pip install -e '.[tvm]')")
    module = importlib.import_module(name)
    short = name.rsplit(".", 1)[-1]
    exported = getattr(module, "__all__", None)
    if exported is None:
        # private helper modules (``_arm_runner``) are exempt; public ones are not
        assert short.startswith("_"), f"{name} has no __all__; list its public names"
        return
    assert isinstance(exported, list | tuple), f"{name}.__all__ is a {type(exported).__name__}"
    assert len(set(exported)) == len(exported), f"{name}.__all__ lists a name twice"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ lists names it does not define: {missing}"


def test_walk_found_the_package():
    # guards the parametrization above against an empty walk
    assert {"slimfx.ir.core", "slimfx.passes.pipeline", "slimfx.models.zoo", "slimfx.demo",
            "slimfx.cli"} <= set(MODULES)


API = ["trace", "Pipeline", "register_pass", "calibrate", "quantize", "report", "to_torch",
       "compile", "load"]


@pytest.mark.parametrize("name", API)
def test_top_level_api_resolves(name):
    module_name = slimfx._LAZY[name]
    if importlib.util.find_spec(module_name) is None:
        pytest.skip(f"{module_name} does not exist yet")
    if module_name.startswith("slimfx.backends.tvm") and not HAS_TVM:
        pytest.skip("apache-tvm is not installed")
    obj = getattr(slimfx, name)
    assert callable(obj)
    assert name in slimfx.__all__ and name in dir(slimfx)


def test_unknown_top_level_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'tarce'"):
        slimfx.tarce  # noqa: B018


def test_import_slimfx_is_lazy():
    # ``import slimfx`` must not pay for torch.fx tracing, TVM or sklearn.
    code = ("import sys, slimfx; heavy = [m for m in ('tvm', 'sklearn', 'slimfx.frontends', "
            "'slimfx.backends.tvm', 'slimfx.passes') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_cli_lists_pipelines_and_passes(capsys):
    from slimfx.cli import main

    assert main(["pipelines"]) == 0
    out = capsys.readouterr().out
    assert "cleanup:" in out and "= remove-identity,fold-constants,dce" in out
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    assert "fold-bn  [slimfx.passes.fold_batchnorm.FoldBatchNorm]" in out
    assert main(["models"]) == 0
    assert "resnet50" in capsys.readouterr().out
    assert main(["pipelines", "fold-bn,nope"]) == 2
    assert "unknown pass 'nope'" in capsys.readouterr().err
