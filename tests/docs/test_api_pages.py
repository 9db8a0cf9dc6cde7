"""The API reference (``docs/api``) is generated from the docstrings and kept up to date."""

from __future__ import annotations

import importlib.util
import inspect
import shutil
from pathlib import Path

import pytest

import slimfx
from slimfx import _docs

API = Path(__file__).resolve().parents[2] / "docs" / "api"
# slimfx.compile and slimfx.load live in the TVM backend: their pages need it importable
needs_tvm = pytest.mark.skipif(importlib.util.find_spec("tvm") is None,
                               reason="the pages of slimfx.compile / slimfx.load import apache-tvm")


@needs_tvm
def test_checked_in_pages_are_up_to_date() -> None:
    stale = _docs.stale_pages(API)
    assert stale == [], f"docs/api is out of date ({stale}): run python -m slimfx._docs"


@needs_tvm
def test_every_public_name_has_a_page_with_its_parameters() -> None:
    names = _docs.api_names()
    assert set(names) == set(slimfx.__all__) - {"__version__"}
    index = (API / "index.md").read_text()
    for name in names:
        page = (API / f"{name}.md").read_text()
        assert page.splitlines()[2] == f"# slimfx.{name}"
        assert f"[`{name}`]({name}.md)" in index
        obj = getattr(slimfx, name)
        if inspect.isfunction(obj):
            for p in inspect.signature(obj).parameters:
                assert p in page, f"{name}.md does not show parameter {p!r}"
            assert "**Args**" in page or not inspect.signature(obj).parameters


@needs_tvm
def test_check_mode_finds_edited_missing_and_extra_pages(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "api"
    assert _docs.main(["--out", str(out)]) == 0
    assert _docs.main(["--out", str(out), "--check"]) == 0
    (out / "trace.md").write_text((out / "trace.md").read_text() + "edited\n")
    (out / "compile.md").unlink()
    shutil.copy(out / "load.md", out / "old_name.md")
    capsys.readouterr()
    assert _docs.main(["--out", str(out), "--check"]) == 1
    err = capsys.readouterr().err
    assert "compile.md" in err and "trace.md" in err and "old_name.md" in err
    assert _docs.main(["--out", str(out)]) == 0  # regenerating fixes all three
    assert _docs.stale_pages(out) == []


def test_docstring_sections_become_markdown() -> None:
    doc = '''Does a thing.

    Text with :class:`~slimfx.ir.Graph` and :func:`slimfx.trace`::

        x = 1
        y = 2

    Args:
        graph: the graph, described
            on two lines.
        a, b: two at once.

    Returns:
        The result.

    Raises:
        PassError: when it fails.
    '''
    md = _docs.docstring_markdown(doc)
    assert "`slimfx.ir.Graph`" in md and "`slimfx.trace`" in md and ":class:" not in md
    assert "```python\nx = 1\ny = 2\n```" in md
    assert "- `graph`: the graph, described\n  on two lines." in md
    assert "- `a`, `b`: two at once." in md
    assert "**Returns**\n\nThe result." in md
    assert "- `PassError`: when it fails." in md


def test_signature_text() -> None:
    def f(a: int, /, b: str = "x", *args: int, c: float = 1.0, **kw: object) -> None: ...

    assert _docs.signature(f, "f") == ("f(a: int, /, b: str = 'x', *args: int, c: float = 1.0, "
                                       "**kw: object) -> None")

    def g(x: int, *, y: int = 0) -> int: ...

    assert _docs.signature(g, "g") == "g(x: int, *, y: int = 0) -> int"
