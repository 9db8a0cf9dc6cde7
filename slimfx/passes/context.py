"""The pass context: instruments, the analysis manager and the run history.

One :class:`PassContext` accompanies a pipeline run. Instruments (see
``instruments.py``) are its only hooks. ``SLIMFX_VERIFY=1`` in the environment
adds a :class:`~slimfx.passes.instruments.VerifyAfterEach` instrument to every
context that has none (the test suite turns it on).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

from slimfx.ir.core import Graph
from slimfx.passes.analysis import AnalysisManager
from slimfx.passes.instruments import Instrument, VerifyAfterEach

if TYPE_CHECKING:
    from slimfx.passes.rewriter import Refusal

__all__ = ["PassContext", "verify_from_env"]

A = TypeVar("A")


def verify_from_env() -> bool:
    """Whether ``SLIMFX_VERIFY`` asks for verification after every pass."""
    return os.environ.get("SLIMFX_VERIFY", "").strip().lower() in ("1", "true", "yes", "on")


class PassContext:
    """State shared by the passes of one run.

    Args:
        instruments: hooks called around every pass, in order.
        verify: add a verify-after-each instrument; ``None`` follows ``SLIMFX_VERIFY``.

    Attributes:
        analyses: the :class:`AnalysisManager`.
        history: names of the passes run so far, in order.
        refusals: rewrite rules that matched but refused, with their reasons.
    """

    def __init__(self, instruments: Sequence[Instrument] = (), *,
                 verify: bool | None = None) -> None:
        self.instruments: list[Instrument] = list(instruments)
        if verify is None:
            verify = verify_from_env()
        if verify and not any(isinstance(i, VerifyAfterEach) for i in self.instruments):
            self.instruments.append(VerifyAfterEach())
        self.analyses = AnalysisManager()
        self.history: list[str] = []
        self.refusals: list[Refusal] = []

    def analysis(self, graph: Graph, cls: type[A]) -> A:
        """The (cached) result of analysis ``cls`` on ``graph``."""
        return self.analyses.get(graph, cls, self)

    def instrument(self, cls: type[A]) -> A | None:
        """The first instrument of type ``cls``, if any."""
        for i in self.instruments:
            if isinstance(i, cls):
                return i
        return None

    def __repr__(self) -> str:
        names = ", ".join(type(i).__name__ for i in self.instruments)
        return f"PassContext([{names}], {len(self.history)} passes run)"
