"""Turning torch's tracing failures into short :class:`~slimfx.errors.TraceError` messages."""

from __future__ import annotations

import os
import traceback
from collections.abc import Sequence

import torch

from slimfx.errors import TraceError
from slimfx.frontends.builder import Refusal

__all__ = ["condensed", "raise_refusals", "failing_line"]

_TORCH_DIR = os.path.dirname(torch.__file__)
_MAX_LINES = 6


def failing_line(e: BaseException) -> str:
    """``file:line: code`` of the innermost frame of ``e`` outside torch, if any."""
    frames = list(traceback.extract_tb(e.__traceback__))
    cause = e.__cause__ or e.__context__
    if cause is not None and cause.__traceback__ is not None:
        frames += traceback.extract_tb(cause.__traceback__)
    here = os.path.dirname(os.path.dirname(__file__))
    for f in reversed(frames):
        if not f.filename.startswith((_TORCH_DIR, here)) and "<eval_with_key>" not in f.filename:
            return f"{f.filename}:{f.lineno}: {(f.line or '').strip()}"
    return ""


def condensed(e: BaseException, what: str, other: str) -> str:
    """A few lines of the exception message, the user's source line and what to try."""
    lines = [ln.rstrip() for ln in str(e).strip().splitlines() if ln.strip()]
    text = "\n  ".join(lines[:_MAX_LINES]) + ("\n  ..." if len(lines) > _MAX_LINES else "")
    where = failing_line(e)
    where = f"\n  at {where}" if where else ""
    return (f"{what} could not trace the model: {type(e).__name__}: {text}{where}\n"
            f"Try slimfx.trace(..., {other}), or make the failing construct static "
            "(no Python control flow on tensor values).")


def raise_refusals(refusals: Sequence[Refusal], other: str) -> None:
    """Raises one TraceError naming every refused construct, if there are any."""
    if not refusals:
        return
    lines = "\n  ".join(str(r) for r in refusals)
    raise TraceError(f"the model uses {len(refusals)} construct(s) slimfx cannot trace:\n"
                     f"  {lines}\nRemove them from forward(), or try slimfx.trace(..., {other}).")
