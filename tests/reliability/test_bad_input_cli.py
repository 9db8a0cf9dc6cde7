"""The ``slimfx`` command on bad input: one line on stderr, exit status 2, no traceback.

``-v`` adds the traceback. Exercised through :func:`slimfx.cli.main` (and once as a
real process, so that the interpreter's own reporting is covered too).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from slimfx import cli
from slimfx.errors import ArtifactError

DEEP = "[" * 3000 + "]" * 3000


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("argv, why", [
    (["pipelines", "nonexistent"], "unknown pass 'nonexistent'"),
    (["pipelines", "fold-bm"], "did you mean 'fold-bn'?"),
    (["pipelines", 'prune-channels{importance="\\q"}'], "bad string"),
    (["pipelines", "prune-channels{ratio=" + DEEP + "}"], "nested deeper than 32 levels"),
    (["pipelines", "fold-bn{"], "expected an option name"),
    (["pipelines", "prune-channels{ratio=2.5}"], "prune-channels"),
    (["bogus"], "invalid choice: 'bogus'"),
    ([], "the following arguments are required: command"),
    (["demo", "--threads", "x"], "argument --threads: invalid int value: 'x'"),
])
def test_bad_input_prints_one_line_and_exits_2(capsys: pytest.CaptureFixture[str],
                                               argv: list[str], why: str) -> None:
    rc, out, err = _run(capsys, *argv)
    assert rc == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(("slimfx: error: ", "slimfx demo: error: ")), err
    assert why in lines[0], err
    assert "Traceback" not in err and out == ""
    assert len(lines[0]) < 400  # a 6,000-character argument is not echoed whole


def test_slimfx_error_escaping_a_command_is_one_line(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> int:
        raise ArtifactError("zoo index is corrupt\n  details on a second line")

    monkeypatch.setattr(cli, "_models", broken)
    rc, _, err = _run(capsys, "models")
    assert rc == 2
    assert err == "slimfx: error: zoo index is corrupt (run with -v for details)\n"


def test_verbose_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(capsys, "-v", "pipelines", "nonexistent")
    assert rc == 2
    assert "Traceback (most recent call last)" in err and "PipelineError" in err
    assert err.splitlines()[-1].startswith("slimfx: error: pipeline 'nonexistent'")


def test_good_input_still_works(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(capsys, "pipelines", "cleanup")
    assert rc == 0 and err == ""
    assert "remove-identity" in out


def test_the_installed_command_reports_in_one_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "slimfx.cli", "pipelines", "nonexistent"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("slimfx: error: "), proc.stderr
    assert proc.stdout == ""
