"""Runs every ```python block of ``docs/tutorials/*.md``, page by page, as a user would.

The blocks of one page run in order in one namespace (a page is one session), in a fresh
working directory, so the files a tutorial writes stay in ``tmp_path``. A failing block's
traceback names the page and its line in the page.
"""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TUTORIALS = ROOT / "docs" / "tutorials"
BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)
# pages that compile with TVM (they need it installed), train or calibrate many times:
# several seconds each
NEEDS_TVM = {"quickstart.md", "custom_op.md", "dynamic_int8.md", "deploy_arm.md",
             "deploy_cuda.md", "rpc.md"}
SLOW = NEEDS_TVM | {"pruning.md", "report.md", "qat.md"}
# pages that need a package beyond slimfx's own dependencies: page -> (module, why)
NEEDS_MODULE = {"dynamic_int8.md": ("transformers", "this tutorial quantizes a transformers BERT")}


def code_blocks(path: Path) -> list[tuple[int, str]]:
    """``(first line, source)`` of each python block of a markdown page."""
    text = path.read_text()
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in BLOCK.finditer(text)]


def pages() -> list[Path]:
    return sorted(TUTORIALS.glob("*.md"))


def page_params() -> list[pytest.param]:
    params = []
    for page in pages():
        marks = [pytest.mark.slow] if page.name in SLOW else []
        if page.name in NEEDS_TVM:
            marks.append(pytest.mark.tvm)
        params.append(pytest.param(page, marks=marks, id=page.stem))
    return params


def test_every_tutorial_has_code() -> None:
    names = {p.name for p in pages()}
    assert {"quickstart.md", "custom_pass.md", "pruning.md", "report.md", "dynamic_int8.md",
            "rewrite.md"} <= names
    for page in pages():
        assert code_blocks(page), f"{page.name} has no ```python block"


def _missing_environment(page: str) -> str | None:
    """Why a deployment page cannot run here (the tools it needs are absent), or None."""
    if page == "deploy_arm.md":
        from slimfx.backends.tvm import arm_env

        if arm_env.find_env() is None:
            return f"aarch64 qemu environment not set up ({arm_env.missing_reason()}); " \
                   "run `make arm-env`"
    if page == "deploy_cuda.md":
        from slimfx.backends.tvm import cuda_check

        if cuda_check.find_nvcc() is None and not cuda_check._has_nvrtc():
            return "compiling for CUDA needs nvcc or NVRTC " \
                   "(`pip install nvidia-cuda-nvrtc cuda-bindings`)"
    return None


@pytest.fixture
def _restore_tables() -> Iterator[None]:
    """Tables conftest does not restore: torch kernels, opaque targets and their lowerings."""
    from slimfx.backends.torch import KERNELS
    from slimfx.ir import opaque

    tables: list[dict] = [KERNELS, opaque._USER]
    saved = [dict(t) for t in tables]
    yield
    for table, before in zip(tables, saved, strict=True):
        table.clear()
        table.update(before)
    lower_opaque = sys.modules.get("slimfx.backends.tvm.lower_opaque")
    if lower_opaque is not None:  # perhaps imported by the page itself: drop what it added
        for name, fn in list(lower_opaque._OPAQUE.items()):
            if getattr(fn, "__module__", "").startswith("tutorial_"):
                del lower_opaque._OPAQUE[name]


@pytest.mark.usefixtures("_restore_tables")
@pytest.mark.parametrize("page", page_params())
def test_tutorial_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if page.name in NEEDS_TVM:
        pytest.importorskip("tvm", reason="this tutorial compiles with TVM (apache-tvm)")
    if page.name in NEEDS_MODULE:
        pytest.importorskip(NEEDS_MODULE[page.name][0], reason=NEEDS_MODULE[page.name][1])
    missing = _missing_environment(page.name)
    if missing:
        pytest.skip(missing)
    monkeypatch.chdir(tmp_path)
    module = types.ModuleType(f"tutorial_{page.stem}")  # dataclasses look their module up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    threads = torch.get_num_threads()
    # the tutorials' models are tiny: on a loaded machine, more threads than one spin and
    # make each step tens of times slower
    torch.set_num_threads(1)
    try:
        for line, source in code_blocks(page):
            # padded so that tracebacks give the line numbers of the markdown page
            code = compile("\n" * (line - 1) + source, str(page.relative_to(ROOT)), "exec")
            exec(code, module.__dict__)  # noqa: S102
    finally:
        torch.set_num_threads(threads)
