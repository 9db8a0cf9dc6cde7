"""Gradual sparsity schedules for pruning during fine-tuning.

Zhu & Gupta 2017 ("To prune, or not to prune"): from step ``t0`` the sparsity
rises from ``s_i`` to ``s_f`` over ``n`` pruning steps ``dt`` apart,

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3,

fast at first (many redundant weights) and slowly near the end. Before ``t0``
the sparsity is ``s_i``; after ``t0 + n*dt`` it stays ``s_f``.
"""

from __future__ import annotations

from dataclasses import dataclass

from slimfx.errors import PruningError

__all__ = ["PolynomialSchedule"]


@dataclass(frozen=True)
class PolynomialSchedule:
    """The cubic (``power=3``) schedule of Zhu & Gupta; ``end_step = t0 + n*dt``.

    Attributes:
        final: target sparsity ``s_f`` in [0, 1).
        end_step: the step at which ``final`` is reached.
        initial: starting sparsity ``s_i``.
        begin_step: ``t0``, the first pruning step.
        frequency: ``dt``, steps between mask updates.
        power: the exponent (3 in the paper).
    """

    final: float
    end_step: int
    initial: float = 0.0
    begin_step: int = 0
    frequency: int = 1
    power: int = 3

    def __post_init__(self) -> None:
        for name in ("initial", "final"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise PruningError(f"PolynomialSchedule: {name}={v} must lie in [0, 1)")
        if self.end_step <= self.begin_step or self.frequency < 1:
            raise PruningError(f"PolynomialSchedule: need begin_step < end_step and frequency "
                               f">= 1, got {self.begin_step}, {self.end_step}, {self.frequency}")

    def sparsity(self, step: int) -> float:
        """``s_t`` at optimizer step ``step``."""
        if step <= self.begin_step:
            return self.initial
        if step >= self.end_step:
            return self.final
        frac = (step - self.begin_step) / (self.end_step - self.begin_step)
        return self.final + (self.initial - self.final) * (1.0 - frac) ** self.power

    def updates_at(self, step: int) -> bool:
        """Whether masks are recomputed at ``step`` (every ``frequency`` steps in range)."""
        return (self.begin_step <= step <= self.end_step
                and ((step - self.begin_step) % self.frequency == 0 or step == self.end_step))
