"""``slimfx.sensitivity``: which layers lose the most when quantized.

For every node the :class:`~slimfx.passes.quant.qconfig.QConfig` quantizes (conv, linear,
matmul, add, ... that get observers in the static int8 flow), two int8 programs are built
from the prepared float graph (BN folded, activations fused) through the QConfig's
per-node overrides:

- *only*: that node alone is quantized (``QConfig(default=None, by_name={node: cfg})``);
- *all but*: every node but that one is quantized (the node added to ``exclude``).

Each is calibrated on ``data`` and scored with ``metric``. The default metric is the SQNR
of the graph outputs against the float graph on ``data``, over all batches::

    SQNR = 10 * log10(sum(y_float**2) / sum((y_float - y_int8)**2))   [dB]

A user ``metric(module) -> float`` (e.g. accuracy on held-out data) receives the
``torch.fx.GraphModule`` of each program (:func:`slimfx.to_torch`); higher is better
unless ``higher_is_better=False``. The *only* score says how much a layer hurts by
itself; the *all but* score, compared with everything quantized, says how much keeping
that layer float recovers (the usual mixed-precision question). Layers are ranked by
the *only* score, worst first (ties broken by the larger recovery).

Precisions: ``int8`` is the QConfig as given; ``w4a8`` is the same with every weight
scheme narrowed to symmetric 4-bit ``[-7, 7]`` (activations stay int8;
:func:`at_precision`). For ``w4a8``, *only* quantizes that layer alone at w4a8, and
*all but* compares with every layer at w4a8.

The cost is ``(2 * layers + 1) * precisions`` calibrations; ``progress=True`` shows a tqdm
bar.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from slimfx.backends.torch import to_torch
from slimfx.errors import QuantizationError, SlimfxError
from slimfx.ir.core import Graph, Node
from slimfx.passes.pipeline import Pipeline
from slimfx.passes.quant.api import _PREPARE_FLOAT, prepare_ptq
from slimfx.passes.quant.arguments import (
    batch_args,
    check_data,
    check_num_batches,
    expect_graph,
    no_data_error,
)
from slimfx.passes.quant.calibrate import calibrate
from slimfx.passes.quant.convert_int8 import convert_int8
from slimfx.passes.quant.qconfig import OpQConfig, QConfig
from slimfx.passes.quant.quantize_dequantize import to_qdq
from slimfx.passes.quant.report import sqnr

__all__ = ["LayerSensitivity", "SensitivityReport", "sensitivity", "int8_program", "at_precision",
           "op_at_precision", "PRECISIONS", "W4"]

logger = logging.getLogger(__name__)

PRECISIONS = ("int8", "w4a8")
"""The precisions :func:`sensitivity` can measure (see the module docstring)."""

W4 = (-7, 7)
"""The integer range of 4-bit weights (symmetric)."""


def op_at_precision(cfg: OpQConfig | None, precision: str) -> OpQConfig | None:
    """``cfg`` at ``precision``: unchanged for ``int8``, 4-bit weights for ``w4a8``."""
    if cfg is None or precision == "int8":
        return cfg
    return replace(cfg, weight=replace(cfg.weight, qmin=W4[0], qmax=W4[1]))


def at_precision(qconfig: QConfig, precision: str) -> QConfig:
    """``qconfig`` with every entry at ``precision`` (see :func:`op_at_precision`)."""
    if precision == "int8":
        return qconfig
    return replace(qconfig, default=op_at_precision(qconfig.default, precision),
                   by_op=tuple((o, op_at_precision(c, precision)) for o, c in qconfig.by_op),
                   by_name=tuple((p, op_at_precision(c, precision))
                                 for p, c in qconfig.by_name))

Metric = Callable[[torch.nn.Module], float]


@dataclass(frozen=True)
class LayerSensitivity:
    """The scores of one layer.

    Attributes:
        layer: the node name.
        op: its op.
        precision: the precision it was quantized to.
        only: the metric with only this layer quantized.
        all_but: the metric with every other layer quantized, this one float.
    """

    layer: str
    op: str
    precision: str
    only: float
    all_but: float


@dataclass(frozen=True)
class SensitivityReport:
    """Per-layer sensitivity to quantization, most sensitive first.

    Attributes:
        metric: what was measured (``"output SQNR (dB)"`` or the metric's name).
        higher_is_better: the direction of the metric.
        float_value: the metric of the float graph (``inf`` for SQNR).
        quantized_value: the metric with every layer quantized (at the first precision).
        layers: one entry per layer and precision, most sensitive first.
        quantized_values: precision -> the metric with every layer at that precision.
    """

    metric: str
    higher_is_better: bool
    float_value: float
    quantized_value: float
    layers: tuple[LayerSensitivity, ...]
    quantized_values: tuple[tuple[str, float], ...] = ()

    def ranked(self) -> list[str]:
        """Layer names, most sensitive first."""
        return list(dict.fromkeys(s.layer for s in self.layers))

    def recovery(self, entry: LayerSensitivity) -> float:
        """How much keeping ``entry``'s layer float improves on everything quantized (at
        the entry's precision)."""
        base = dict(self.quantized_values).get(entry.precision, self.quantized_value)
        gain = entry.all_but - base
        return gain if self.higher_is_better else -gain

    def loss(self, entry: LayerSensitivity) -> float:
        """How much quantizing only ``entry``'s layer costs against float (nan for SQNR,
        whose float value is infinite: read ``entry.only`` instead)."""
        if math.isinf(self.float_value):
            return math.nan
        drop = self.float_value - entry.only
        return drop if self.higher_is_better else -drop

    def __str__(self) -> str:
        width = max([len(s.layer) for s in self.layers] + [12])
        ow = max([len(s.op) for s in self.layers] + [8])
        head = (f"{'layer':<{width}}  {'op':<{ow}}  {'prec':<5}  {'only':>10}  {'loss':>9}  "
                f"{'all but':>10}  {'recovery':>9}")
        rule = "-" * len(head)
        lines = [f"sensitivity: {self.metric}; float {_fmt(self.float_value)}, all quantized "
                 f"{_fmt(self.quantized_value)}; most sensitive first", head, rule]
        for s in self.layers:
            lines.append(f"{s.layer:<{width}}  {s.op:<{ow}}  {s.precision:<5}  {_fmt(s.only):>10}  "
                         f"{_fmt(self.loss(s)):>9}  {_fmt(s.all_but):>10}  "
                         f"{_fmt(self.recovery(s)):>9}")
        lines.append(rule)
        lines.append("only: this layer quantized alone; all but: every other layer quantized; "
                     "loss vs float, recovery vs all quantized")
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike[str], *, top: int | None = None) -> None:
        """Writes a bar chart of the report (PNG, SVG, PDF: by the file suffix).

        Args:
            path: the file to write.
            top: only the ``top`` most sensitive entries.

        Raises:
            SlimfxError: matplotlib is not installed.
        """
        try:
            from matplotlib.figure import Figure
        except ImportError as e:
            raise SlimfxError("SensitivityReport.plot needs matplotlib: pip install matplotlib "
                              "(or the slimfx dev extra: pip install -e '.[dev]')") from e
        rows = list(self.layers[:top] if top is not None else self.layers)[::-1]
        several = len({s.precision for s in rows}) > 1
        labels = [f"{s.layer} ({s.precision})" if several else s.layer for s in rows]
        fig = Figure(figsize=(10, 1.5 + 0.3 * len(rows)))
        left, right = fig.subplots(1, 2, sharey=True)
        ys = list(range(len(rows)))
        left.barh(ys, [_finite(s.only) for s in rows], color="tab:red")
        left.set_title(f"only this layer quantized: {self.metric}")
        right.barh(ys, [_finite(self.recovery(s)) for s in rows], color="tab:blue")
        right.set_title("all but this layer: recovery vs all quantized")
        left.set_yticks(ys, labels)
        for ax in (left, right):
            ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.fspath(path))


def _fmt(v: float) -> str:
    """Two decimals, or four significant digits for small values (cosines, accuracy drops)."""
    if math.isnan(v):
        return "-"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.2f}" if abs(v) >= 10 or v == 0 else f"{v:.4g}"


def _finite(v: float) -> float:
    return 0.0 if not math.isfinite(v) else v


def _check_precisions(precisions: Any) -> tuple[str, ...]:
    if isinstance(precisions, str):
        precisions = (precisions,)
    out = tuple(precisions)
    bad = [p for p in out if p not in PRECISIONS]
    if bad or not out:
        raise QuantizationError(f"slimfx.sensitivity: precision(s) {', '.join(map(repr, bad))} "
                                f"not supported; valid precisions: {', '.join(PRECISIONS)}")
    return out


def int8_program(prepared: Graph, qconfig: QConfig, batches: Sequence[tuple[Any, ...]]) -> Graph:
    """The calibrated int8 program of a prepared float graph under ``qconfig``."""
    g = prepare_ptq(prepared, qconfig)
    calibrate(g, batches, progress=False)
    to_qdq(g)
    convert_int8(g)
    return Pipeline("dce")(g, inplace=True)


def _outputs(module: torch.nn.Module, args: tuple[Any, ...]) -> list[torch.Tensor]:
    out = module(*args)
    return list(out) if isinstance(out, tuple | list) else [out]


class _OutputSQNR:
    """The default metric: output SQNR against the float graph on the batches."""

    def __init__(self, reference: torch.nn.Module, batches: Sequence[tuple[Any, ...]]) -> None:
        self.batches = batches
        with torch.no_grad():
            self.ref = [[o.to(torch.float64) for o in _outputs(reference, b)] for b in batches]

    def __call__(self, module: torch.nn.Module) -> float:
        signal = noise = 0.0
        with torch.no_grad():
            for args, ref in zip(self.batches, self.ref, strict=True):
                for r, o in zip(ref, _outputs(module, args), strict=True):
                    signal += float((r ** 2).sum())
                    noise += float(((r - o.to(torch.float64)) ** 2).sum())
        return sqnr(signal, noise)


def _observed(graph: Graph, node: Node) -> bool:
    return any(u.node.op.name == "observer" for u in graph.node(node.name).outputs[0].uses())


def sensitivity(graph: Graph, data: Iterable[Any], metric: Metric | None = None,
                precisions: Sequence[str] = ("int8",), *, qconfig: QConfig | None = None,
                higher_is_better: bool = True, num_batches: int | None = None,
                progress: bool = False) -> SensitivityReport:
    """Measures each quantized layer's effect on ``metric`` (see the module docstring).

    Args:
        graph: the float graph (left untouched).
        data: batches, used to calibrate and (default metric) to measure.
        metric: ``metric(module) -> float`` on a :func:`slimfx.to_torch` module; default:
            output SQNR in dB against the float graph on ``data``.
        precisions: the precisions to try each layer at: ``int8``, ``w4a8``.
        qconfig: what is quantized and how (default: the x86 preset); per-tensor weights:
            ``QConfig.preset("x86", per_channel_weights=False)``.
        higher_is_better: the direction of ``metric`` (SQNR, accuracy: True).
        num_batches: use at most this many batches.
        progress: show a tqdm progress bar.

    Raises:
        QuantizationError: not a float slimfx graph, an unknown precision, a qconfig that
            is not a QConfig or selects nothing.
        CalibrationError: no data, or batches that do not fit the graph inputs.
    """
    graph = expect_graph(graph, "slimfx.sensitivity", QuantizationError)
    precisions = _check_precisions(precisions)
    data = check_data(data, "slimfx.sensitivity")
    check_num_batches(num_batches, "slimfx.sensitivity")
    if qconfig is not None and not isinstance(qconfig, QConfig):
        raise QuantizationError(f"slimfx.sensitivity: qconfig must be a QConfig (e.g. "
                                f"QConfig.preset('x86')), got {type(qconfig).__name__}")
    if metric is not None and not callable(metric):
        raise QuantizationError(f"slimfx.sensitivity: metric must be a callable "
                                f"metric(module) -> float, got {type(metric).__name__}")
    base = qconfig if qconfig is not None else QConfig.preset("x86")
    raw = list(data)[:num_batches]
    if not raw:
        raise no_data_error(graph, data, "slimfx.sensitivity")
    batches = [batch_args(graph, b, i) for i, b in enumerate(raw)]
    prepared = Pipeline(_PREPARE_FLOAT)(graph)
    observed = prepare_ptq(prepared, base)
    layers = [(n, cfg) for n, cfg in base.resolve(prepared).items() if _observed(observed, n)]
    float_module = to_torch(prepared, trainable=False)
    score: Metric = metric if metric is not None else _OutputSQNR(float_module, batches)
    name = "output SQNR (dB)" if metric is None else getattr(metric, "__name__", "metric")

    def measure(cfg: QConfig) -> float:
        value = float(score(to_torch(int8_program(prepared, cfg, batches), trainable=False)))
        bar.update()
        return value

    entries = []
    quantized: dict[str, float] = {}
    with tqdm(total=(1 + 2 * len(layers)) * len(precisions), desc="sensitivity",
              disable=not progress) as bar:
        float_value = math.inf if metric is None else float(score(float_module))
        for precision in precisions:
            at = at_precision(base, precision)
            quantized[precision] = measure(at)
            for node, cfg in layers:
                pattern = re.escape(node.name)
                only = QConfig(default=None,
                               by_name=((pattern, op_at_precision(cfg, precision)),))
                extra = [n.name for n in only.resolve(prepared) if n is not node]
                if extra:  # the name is also the module path of other nodes
                    logger.warning("sensitivity: quantizing %%%s alone also quantizes %s",
                                   node.name, ", ".join(f"%{e}" for e in extra))
                all_but = replace(at, exclude=at.exclude + (pattern,))
                entries.append(LayerSensitivity(node.name, node.op.name, precision,
                                                measure(only), measure(all_but)))
    sign = 1.0 if higher_is_better else -1.0
    entries.sort(key=lambda s: (sign * s.only, -sign * s.all_but))
    logger.info("sensitivity of @%s: most sensitive %s", graph.name,
                entries[0].layer if entries else "none")
    return SensitivityReport(name, higher_is_better, float_value, quantized[precisions[0]],
                             tuple(entries), tuple(quantized.items()))
