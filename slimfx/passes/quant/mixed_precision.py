"""Mixed precision under an accuracy budget: which layers stay float so that int8 is good enough.

A :class:`Budget` says how much a metric may drop from the float graph: ``max_drop`` on
``metric(module) -> float`` (a user function on the :func:`slimfx.to_torch` module, e.g.
accuracy on held-out data; higher is better unless ``higher_is_better=False``), or, with
no metric, on the *output cosine* against the float graph over the calibration batches::

    cos = sum(y_float * y_int8) / sqrt(sum(y_float**2) * sum(y_int8**2))   (float: 1.0)

:func:`mixed_precision` (and ``slimfx.quantize(graph, data, budget=...)``) then:

1. measures every quantizable layer with :func:`slimfx.sensitivity` under that metric:
   the metric with every layer but that one quantized (its *recovery* over everything
   quantized) and with only that one quantized;
2. tries everything quantized; if the budget holds, that is the answer (nothing float);
3. otherwise keeps layers float one at a time, the largest recovery first (ties: the worst
   *only* score first), each step a fresh calibrated int8 program, until the budget holds.

With ``Budget(precisions=("w4a8", "int8"))`` every layer starts at w4a8 (4-bit weights,
int8 activations) and moves up one precision per step: first w4a8 -> int8, in the order of
the w4a8 recovery (keeping it float over everything w4a8), then int8 -> float in the order
of the int8 recovery.

With ``target="x86"`` (any :func:`slimfx.compile` target runnable here), every step's
program is also compiled and its median latency measured on this machine
(``Compiled.benchmark``), next to the float graph's. Every step is kept (layers float,
metric, drop, constant bytes, latency) and printed as a table;
the first step that meets the budget is the answer, so it quantizes the most layers that
this greedy order reaches. Its :class:`~slimfx.passes.quant.qconfig.QConfig` (the base
config with the float layers in ``exclude``) is readable and reusable, and
``float_layers`` says why each layer stayed float. If no step with at least one layer
quantized meets the budget, :class:`~slimfx.errors.QuantizationError` reports the best
reachable point. The cost is ``2 * layers + 1`` calibrations for the sensitivity, plus one
per step.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from slimfx.backends.torch import to_torch
from slimfx.errors import QuantizationError, SlimfxError
from slimfx.ir.core import Graph
from slimfx.passes.pipeline import Pipeline
from slimfx.passes.quant.api import _PREPARE_FLOAT
from slimfx.passes.quant.arguments import (
    batch_args,
    check_data,
    check_num_batches,
    expect_graph,
    no_data_error,
)
from slimfx.passes.quant.qconfig import QConfig
from slimfx.passes.quant.report import compiled_latency_ms, constant_bytes
from slimfx.passes.quant.report_islands import FloatIsland, float_islands, format_islands
from slimfx.passes.quant.sensitivity import (
    SensitivityReport,
    at_precision,
    int8_program,
    op_at_precision,
    sensitivity,
)

__all__ = ["Budget", "MixedPrecisionResult", "PrecisionStep", "mixed_precision", "LADDER"]

logger = logging.getLogger(__name__)

Metric = Callable[[torch.nn.Module], float]

_DEFAULT_METRIC = "output cosine to float"

LADDER = ("w4a8", "int8")
"""Quantized precisions from the lowest up; above the last comes float."""


@dataclass(frozen=True)
class Budget:
    """How much quantization may cost: ``max_drop`` of ``metric`` below the float graph.

    Args:
        max_drop: the largest allowed drop (>= 0), in the metric's units (default metric:
            output cosine, so ``max_drop=1e-3`` asks for a cosine of at least 0.999).
        metric: ``metric(module) -> float`` on a :func:`slimfx.to_torch` module; None: the
            output cosine against the float graph on the calibration data.
        higher_is_better: the direction of ``metric``.
        precisions: the quantized precisions a layer may take, besides float: ``int8``,
            and ``w4a8`` (4-bit weights, int8 activations); the lowest is tried first.

    Raises:
        QuantizationError: a negative or non-finite ``max_drop``, a metric that is not
            callable, an unknown precision.
    """

    max_drop: float
    metric: Metric | None = None
    higher_is_better: bool = True
    precisions: tuple[str, ...] = ("int8",)

    def __post_init__(self) -> None:
        if isinstance(self.max_drop, bool) or not isinstance(self.max_drop, int | float) or \
                not math.isfinite(self.max_drop) or self.max_drop < 0:
            raise QuantizationError(f"Budget: max_drop must be a finite number >= 0, got "
                                    f"{self.max_drop!r} (e.g. Budget(max_drop=0.005))")
        if self.metric is not None and not callable(self.metric):
            raise QuantizationError(f"Budget: metric must be a callable metric(module) -> "
                                    f"float, got {type(self.metric).__name__}")
        given = (self.precisions,) if isinstance(self.precisions, str) else tuple(self.precisions)
        bad = [p for p in given if p not in LADDER]
        if bad or not given:
            raise QuantizationError(f"Budget: precisions {given!r} must be taken from "
                                    f"{', '.join(LADDER)}")
        object.__setattr__(self, "precisions", tuple(p for p in LADDER if p in given))

    @property
    def metric_name(self) -> str:
        if self.metric is None:
            return _DEFAULT_METRIC
        return getattr(self.metric, "__name__", type(self.metric).__name__)

    def drop(self, float_value: float, value: float) -> float:
        """How far ``value`` is below ``float_value`` (negative: better than float)."""
        return float_value - value if self.higher_is_better else value - float_value


@dataclass(frozen=True)
class PrecisionStep:
    """One configuration tried by the search.

    Attributes:
        float_layers: the layers kept float (none: everything quantized).
        raised: ``(layer, precision)`` of the layers above the lowest precision but not
            float (``w4a8`` budgets: the layers at int8).
        value: the metric of the int8 program.
        drop: the metric's drop from float.
        meets: whether the drop is within the budget.
        constant_bytes: bytes of the program's constants (4-bit weights are stored one
            per byte).
        change: what this step changed (``layer: w4a8 -> int8``, ``layer: int8 -> float``).
        latency_ms: the compiled program's median latency (with ``target=``).
    """

    float_layers: tuple[str, ...]
    raised: tuple[tuple[str, str], ...]
    value: float
    drop: float
    meets: bool
    constant_bytes: int
    change: str = "-"
    latency_ms: float | None = None


@dataclass(frozen=True)
class MixedPrecisionResult:
    """The outcome of :func:`mixed_precision`.

    Attributes:
        graph: the chosen int8 program.
        qconfig: its configuration (the base QConfig, the float layers excluded).
        budget: the budget met.
        float_value: the metric of the float graph.
        steps: every configuration tried, in order (the last one is the answer).
        float_layers: layer name -> why it stayed float.
        quantized_layers: the layers quantized, in graph order.
        precisions: quantized layer -> its precision.
        sensitivity: the per-layer sensitivity the order came from.
    """

    graph: Graph
    qconfig: QConfig
    budget: Budget
    float_value: float
    steps: tuple[PrecisionStep, ...]
    float_layers: dict[str, str] = field(default_factory=dict)
    quantized_layers: tuple[str, ...] = ()
    sensitivity: SensitivityReport | None = None
    precisions: dict[str, str] = field(default_factory=dict)
    float_latency_ms: float | None = None

    @property
    def chosen(self) -> PrecisionStep:
        return self.steps[-1]

    def islands(self) -> list[FloatIsland]:
        """Every op that stays float in :attr:`graph`, with the reason (budget included)."""
        return float_islands(self.graph, self.qconfig, self.float_layers)

    def __str__(self) -> str:
        b = self.budget
        counts = {p: sum(1 for v in self.precisions.values() if v == p) for p in b.precisions}
        lines = [f"mixed precision: {b.metric_name}, float {self.float_value:.6g}, max drop "
                 f"{b.max_drop:g}; " + ", ".join(f"{c} layers {p}" for p, c in counts.items())
                 + f", {len(self.float_layers)} float",
                 f"{'step':>4}  {'float layers':>12}  {'metric':>12}  {'drop':>11}  "
                 f"{'bytes':>12}  {'latency ms':>10}  meets  change"]
        if self.float_latency_ms is not None:
            lines.append(f"{'fp32':>4}  {'all':>12}  {self.float_value:>12.6g}  {0:>11}  "
                         f"{'':>12}  {self.float_latency_ms:>10.4g}")
        for i, s in enumerate(self.steps):
            lat = "-" if s.latency_ms is None else f"{s.latency_ms:.4g}"
            lines.append(f"{i:>4}  {len(s.float_layers):>12}  {s.value:>12.6g}  "
                         f"{s.drop:>11.4g}  {s.constant_bytes:>12,}  {lat:>10}  "
                         f"{'yes' if s.meets else 'no':<5}  {s.change}")
        lines.append(format_islands(self.islands()))
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike[str]) -> None:
        """Writes the metric and size of every step (PNG, SVG, PDF: by the file suffix).

        Raises:
            SlimfxError: matplotlib is not installed.
        """
        try:
            from matplotlib.figure import Figure
        except ImportError as e:
            raise SlimfxError("MixedPrecisionResult.plot needs matplotlib: pip install "
                              "matplotlib") from e
        fig = Figure(figsize=(7, 4))
        ax = fig.subplots()
        xs = list(range(len(self.steps)))
        ax.plot(xs, [s.value for s in self.steps], "o-", color="tab:blue")
        limit = self.float_value - self.budget.max_drop if self.budget.higher_is_better \
            else self.float_value + self.budget.max_drop
        ax.axhline(limit, color="tab:red", linestyle="--", label="budget")
        ax.set_xlabel("step (one layer up one precision per step)")
        ax.set_ylabel(self.budget.metric_name)
        right = ax.twinx()
        latencies = [s.latency_ms for s in self.steps if s.latency_ms is not None]
        if len(latencies) == len(self.steps):
            right.plot(xs, latencies, "s:", color="tab:gray")
            right.set_ylabel("compiled latency (ms)")
        else:
            right.plot(xs, [s.constant_bytes / 1024 for s in self.steps], "s:", color="tab:gray")
            right.set_ylabel("constants (KiB)")
        ax.legend(loc="lower right")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.fspath(path))


def _outputs(module: torch.nn.Module, args: tuple[Any, ...]) -> list[torch.Tensor]:
    out = module(*args)
    return list(out) if isinstance(out, tuple | list) else [out]


class _OutputCosine:
    """The default metric: cosine of all outputs over all batches against the float graph."""

    __name__ = _DEFAULT_METRIC

    def __init__(self, reference: torch.nn.Module, batches: Sequence[tuple[Any, ...]]) -> None:
        self.batches = batches
        with torch.no_grad():
            self.ref = [[o.to(torch.float64) for o in _outputs(reference, b)] for b in batches]

    def __call__(self, module: torch.nn.Module) -> float:
        dot = rr = oo = 0.0
        with torch.no_grad():
            for args, ref in zip(self.batches, self.ref, strict=True):
                for r, o in zip(ref, _outputs(module, args), strict=True):
                    o = o.to(torch.float64)
                    dot += float((r * o).sum())
                    rr += float((r * r).sum())
                    oo += float((o * o).sum())
        if rr == 0 and oo == 0:
            return 1.0
        return dot / math.sqrt(rr * oo) if rr > 0 and oo > 0 else 0.0


class _Checked:
    """Calls the user's metric and turns its failures into a QuantizationError."""

    def __init__(self, metric: Metric, name: str) -> None:
        self.metric, self.__name__ = metric, name

    def __call__(self, module: torch.nn.Module) -> float:
        try:
            value = self.metric(module)
        except SlimfxError:
            raise
        except Exception as e:
            raise QuantizationError(f"budget metric {self.__name__!r} raised {type(e).__name__}: "
                                    f"{e}; it must accept the torch.fx.GraphModule of a "
                                    "quantized program and return a float") from e
        try:
            value = float(value)
        except (TypeError, ValueError) as e:
            raise QuantizationError(f"budget metric {self.__name__!r} returned "
                                    f"{type(value).__name__}, not a number") from e
        if math.isnan(value):
            raise QuantizationError(f"budget metric {self.__name__!r} returned nan")
        return value


def mixed_precision(graph: Graph, data: Iterable[Any] | None, budget: Budget, *,
                    qconfig: QConfig | None = None, num_batches: int | None = None,
                    target: str | None = None, progress: bool = False) -> MixedPrecisionResult:
    """Static int8 with the fewest float layers this search finds within ``budget``.

    Args:
        graph: the float graph (left untouched).
        data: calibration batches (also the data of the default metric).
        budget: the allowed metric drop.
        qconfig: the base configuration (default: the x86 preset).
        num_batches: use at most this many batches.
        target: also compile every step for this target and measure its latency here.
        progress: show tqdm progress bars.

    Raises:
        QuantizationError: not a float graph, not a Budget, a metric that raises, or a
            budget no configuration with a quantized layer meets (the message gives the
            best reachable point).
        CalibrationError: no data, or batches that do not fit the graph inputs.
    """
    graph = expect_graph(graph, "slimfx.mixed_precision", QuantizationError)
    if not isinstance(budget, Budget):
        raise QuantizationError(f"budget must be a slimfx.Budget (e.g. slimfx.Budget("
                                f"max_drop=0.005)), got {type(budget).__name__}")
    if data is None:
        what = "the default metric (output cosine) and calibration" if budget.metric is None \
            else "calibration"
        raise QuantizationError(f"a budget needs data for {what}: slimfx.quantize(graph, "
                                "batches, budget=...)")
    data = check_data(data, "slimfx.quantize(budget=...)")
    check_num_batches(num_batches, "slimfx.quantize(budget=...)")
    if qconfig is not None and not isinstance(qconfig, QConfig):
        raise QuantizationError(f"qconfig must be a QConfig, got {type(qconfig).__name__}")
    base = qconfig if qconfig is not None else QConfig.preset("x86")
    raw = list(data)[:num_batches]
    if not raw:
        raise no_data_error(graph, data, "slimfx.quantize(budget=...)")
    batches = [batch_args(graph, b, i) for i, b in enumerate(raw)]
    prepared = Pipeline(_PREPARE_FLOAT)(graph)
    float_module = to_torch(prepared, trainable=False)
    score: Metric = (_OutputCosine(float_module, batches) if budget.metric is None
                     else _Checked(budget.metric, budget.metric_name))
    float_value = float(score(float_module))
    ladder = budget.precisions
    report = sensitivity(graph, batches, score, ladder, qconfig=base,
                         higher_is_better=budget.higher_is_better, progress=progress)
    layers = report.ranked()
    if not layers:
        raise QuantizationError(f"slimfx.quantize(budget=...): the qconfig selects no layer of "
                                f"graph @{graph.name} to quantize")
    entry = {(s.layer, s.precision): s for s in report.layers}
    moves: list[tuple[str, str]] = []  # (layer, new precision), in the order they are tried
    for i, p in enumerate(ladder):
        up = ladder[i + 1] if i + 1 < len(ladder) else "float"

        def gain(n: str, p: str = p) -> tuple[float, int]:
            return -report.recovery(entry[n, p]), layers.index(n)

        moves += [(n, up) for n in sorted(layers, key=gain)]
    moves = moves[:-1]  # everything float is not a quantization
    level = dict.fromkeys(layers, ladder[0])
    steps: list[PrecisionStep] = []
    chosen: tuple[Graph, QConfig] | None = None
    with tqdm(total=len(moves) + 1, desc="mixed precision", disable=not progress) as bar:
        for k in range(len(moves) + 1):
            change = "-"
            if k:
                name, up = moves[k - 1]
                change = f"{name}: {level[name]} -> {up}"
                level[name] = up
            cfg = _config(base, ladder[0], level, prepared)
            program = int8_program(prepared, cfg, batches)
            value = float(score(to_torch(program, trainable=False)))
            drop = budget.drop(float_value, value)
            meets = drop <= budget.max_drop
            kept = tuple(n for n in layers if level[n] == "float")
            raised = tuple((n, p) for n, p in level.items() if p not in ("float", ladder[0]))
            lat = None if target is None else compiled_latency_ms(program, target)
            steps.append(PrecisionStep(kept, raised, value, drop, meets,
                                       constant_bytes(program), change, lat))
            logger.info("mixed precision: step %d (%s), %s %.6g (drop %.4g)", k, change,
                        budget.metric_name, value, drop)
            bar.update()
            if meets:
                chosen = (program, cfg)
                break
    if chosen is None:
        best = min(steps, key=lambda s: s.drop)
        raise QuantizationError(
            f"slimfx.quantize(budget=...): no configuration with a layer quantized keeps "
            f"{budget.metric_name} within max_drop={budget.max_drop:g} of float "
            f"({float_value:.6g}); best reachable: drop {best.drop:.4g} with "
            f"{len(best.float_layers)} of {len(layers)} layers float "
            f"({', '.join(best.float_layers) or 'none'}). Raise max_drop, or improve int8 "
            "first (smooth-quant, ptq-int8-cle, bias_correction, a histogram observer)")
    program, cfg = chosen
    kept = steps[-1].float_layers
    top = ladder[-1]
    reasons = {}
    for n in kept:
        s = entry[n, top]
        reasons[n] = (f"budget: kept float by the mixed-precision search; {budget.metric_name} "
                      f"with only this layer {top} {s.only:.6g}, with all but it "
                      f"{s.all_but:.6g} (recovery {report.recovery(s):.4g} over everything "
                      f"{top}, {dict(report.quantized_values)[top]:.6g})")
    quantized = tuple(n.name for n in prepared.nodes if n.name in level and n.name not in kept)
    logger.info("mixed precision of @%s: %d layers float (%s), drop %.4g <= %g", graph.name,
                len(kept), ", ".join(kept) or "none", steps[-1].drop, budget.max_drop)
    precisions = {n: level[n] for n in quantized}
    float_latency = None if target is None else compiled_latency_ms(prepared, target)
    return MixedPrecisionResult(program, cfg, budget, float_value, tuple(steps), reasons,
                                quantized, report, precisions, float_latency)


def _config(base: QConfig, lowest: str, level: dict[str, str], prepared: Graph) -> QConfig:
    """``base`` at precision ``lowest``, raised / excluded layer by layer as ``level`` says."""
    low = at_precision(base, lowest)
    raised = tuple((re.escape(n), op_at_precision(base.config_of(prepared.node(n)), p))
                   for n, p in level.items() if p not in ("float", lowest))
    floats = tuple(re.escape(n) for n, p in level.items() if p == "float")
    return replace(low, by_name=raised + low.by_name, exclude=low.exclude + floats)
