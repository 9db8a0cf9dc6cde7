"""Quantization configuration: which nodes are quantized, and how.

A :class:`QScheme` says how one tensor is quantized (dtype and range,
symmetric or affine, per tensor or per channel, which observer picks the range).
An :class:`OpQConfig` pairs the activation and weight schemes of one node. A
:class:`QConfig` maps nodes to an ``OpQConfig`` (or to ``None``: kept float):

1. ``exclude`` (regexes on node names / module paths) and ``exclude_ops`` win;
2. then the first ``by_name`` regex that matches the node;
3. then ``by_op`` (op name);
4. then ``default``.

Regexes are ``re.fullmatch``-ed against the node name (``%name``) and its source
module path (``layer1.0.conv1``). A name regex that matches no node is an error:
it is almost always a typo.

Presets (:meth:`QConfig.preset`): ``x86`` and ``arm`` both use symmetric int8
weights per output channel in ``[-127, 127]`` and affine int8 activations per
tensor in ``[-128, 127]`` (what TVM consumes directly); the slimfx integer program
accumulates in int32 exactly, so x86 needs no ``reduce_range`` trick and both
presets are currently the same.

``weight_bits=b`` (2..8) narrows the weights to the symmetric range
``[-(2**(b-1) - 1), 2**(b-1) - 1]``, zero point 0, still per output channel: W4A8 is
``preset("x86", weight_bits=4)``, weights in ``[-7, 7]`` (symmetric, so ``-8`` is never
used: the same contract as int8's ``[-127, 127]``), activations int8. The integer program
is the int8 one with narrower weight values; 4-bit weights are stored packed two per byte
(``slimfx/ir/int4.py``).
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from slimfx.errors import QuantizationError
from slimfx.ir.core import Graph, Node
from slimfx.ir.ops import has_op

__all__ = ["QScheme", "OpQConfig", "QConfig", "INTEGER_OPS", "PASSTHROUGH_OPS"]

ObserverKind = Literal["minmax", "moving_average", "histogram"]
RangeMethod = Literal["minmax", "percentile", "entropy", "mse"]
_OBSERVERS = ("minmax", "moving_average", "histogram")
_METHODS = ("minmax", "percentile", "entropy", "mse")

# Ops that convert-int8 can turn into integer ops.
INTEGER_OPS = frozenset({"conv1d", "conv2d", "linear", "matmul", "add", "mul", "cat",
                         "avg_pool2d", "adaptive_avg_pool2d"})
# Ops that commute with a per-tensor dequantize: they run on int8 directly and
# share the quantization parameters of their input.
PASSTHROUGH_OPS = frozenset({"max_pool1d", "max_pool2d", "reshape", "permute", "slice",
                             "select", "expand", "identity", "dropout"})


@dataclass(frozen=True)
class QScheme:
    """How one tensor is quantized.

    Attributes:
        dtype: integer dtype name (``i8`` or ``u8``).
        qmin, qmax: the integer range.
        symmetric: zero point fixed at the middle of the range (0 for int8).
        per_channel: one scale per channel of ``axis`` (weights: output channels).
        observer: how statistics are gathered.
        method: range choice of a histogram observer; for weights (constants, min/max
            observer) ``mse`` searches the per-channel clipping with least squared error.
        percentile: for ``method="percentile"``, the upper percentile kept (the
            lower one is ``100 - percentile``).
        averaging_constant: weight of a new batch for the moving-average observer.
        bins: histogram bins (a multiple of 4).
    """

    dtype: str = "i8"
    qmin: int = -128
    qmax: int = 127
    symmetric: bool = False
    per_channel: bool = False
    observer: ObserverKind = "minmax"
    method: RangeMethod = "minmax"
    percentile: float = 99.99
    averaging_constant: float = 0.01
    bins: int = 2048

    def __post_init__(self) -> None:
        for name in ("qmin", "qmax", "bins"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise QuantizationError(f"QScheme: {name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))  # numpy integers too
        for name in ("symmetric", "per_channel"):
            value = getattr(self, name)
            if not isinstance(value, bool | np.bool_):
                raise QuantizationError(f"QScheme: {name} must be True or False, got "
                                        f"{value!r}")
            object.__setattr__(self, name, bool(value))
        for name in ("percentile", "averaging_constant"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                    or not math.isfinite(value):
                raise QuantizationError(f"QScheme: {name} must be a finite number, got "
                                        f"{value!r}")
            object.__setattr__(self, name, float(value))
        for name, allowed in (("observer", _OBSERVERS), ("method", _METHODS)):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in allowed:
                raise QuantizationError(f"QScheme: {name}={value!r} is not known; choose one "
                                        f"of {', '.join(allowed)}")
        if not 0.0 < self.averaging_constant <= 1.0:
            raise QuantizationError(f"QScheme: averaging_constant must lie in (0, 1], got "
                                    f"{self.averaging_constant}")
        if not isinstance(self.dtype, str) or self.dtype not in ("i8", "u8"):
            raise QuantizationError(f"QScheme: dtype {self.dtype!r} is not supported; use i8 "
                                    "or u8")
        if self.qmin >= self.qmax:
            raise QuantizationError(f"QScheme: qmin {self.qmin} must be below qmax {self.qmax}")
        lo, hi = (-128, 127) if self.dtype == "i8" else (0, 255)
        if not lo <= self.qmin < self.qmax <= hi:
            raise QuantizationError(
                f"QScheme: the range [{self.qmin}, {self.qmax}] does not fit {self.dtype} "
                f"([{lo}, {hi}]); narrower ranges give fewer bits (4-bit: qmin=-8, qmax=7)")
        if self.observer == "histogram" and self.method == "minmax":
            object.__setattr__(self, "method", "percentile")
        if self.observer != "histogram" and self.method not in ("minmax", "mse"):
            raise QuantizationError(f"QScheme: method {self.method!r} needs "
                                    "observer='histogram' (or method='mse' for weights)")
        if self.observer == "histogram" and self.per_channel:
            raise QuantizationError("QScheme: histogram observers are per tensor; use "
                                    "observer='minmax' for per-channel tensors")
        if self.bins % 4 or self.bins < 16:
            raise QuantizationError(f"QScheme: bins must be a multiple of 4 >= 16, got "
                                    f"{self.bins}")
        if not 50.0 < self.percentile <= 100.0:
            raise QuantizationError(f"QScheme: percentile must lie in (50, 100], got "
                                    f"{self.percentile}")


ACT_INT8 = QScheme()
WEIGHT_INT8 = QScheme(qmin=-127, qmax=127, symmetric=True, per_channel=True)


@dataclass(frozen=True)
class OpQConfig:
    """The schemes of one node: its activations (inputs and output) and its weight."""

    activation: QScheme = ACT_INT8
    weight: QScheme = WEIGHT_INT8

    def __post_init__(self) -> None:
        for name in ("activation", "weight"):
            value = getattr(self, name)
            if not isinstance(value, QScheme):
                raise QuantizationError(
                    f"OpQConfig: {name} must be a QScheme, got {type(value).__name__} "
                    f"{value!r:.80}; e.g. OpQConfig(activation=QScheme(), "
                    "weight=QScheme(qmin=-127, qmax=127, symmetric=True, per_channel=True))")


def _check_config(where: str, value: object) -> None:
    if value is not None and not isinstance(value, OpQConfig):
        raise QuantizationError(f"QConfig: {where} must be an OpQConfig or None (kept float), "
                                f"got {type(value).__name__} {value!r:.80}")


def _pairs(attr: str, value: object) -> tuple[tuple[str, OpQConfig | None], ...]:
    """``by_op`` / ``by_name`` as (key, config) pairs, checked."""
    if isinstance(value, Mapping):
        value = tuple(value.items())
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise QuantizationError(f"QConfig: {attr} must map names to OpQConfig (a dict or "
                                f"(name, config) pairs), got {type(value).__name__}")
    out = []
    for item in value:
        if not isinstance(item, tuple | list) or len(item) != 2 or not isinstance(item[0], str):
            raise QuantizationError(f"QConfig: {attr} entry {item!r:.80} is not a (name, "
                                    "OpQConfig | None) pair")
        _check_config(f"{attr}[{item[0]!r}]", item[1])
        out.append((item[0], item[1]))
    return tuple(out)


def _names(attr: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, Iterable) or isinstance(value, bytes):
        raise QuantizationError(f"QConfig: {attr} must be a string or a list of strings, got "
                                f"{type(value).__name__}")
    out = tuple(value)
    for v in out:
        if not isinstance(v, str):
            raise QuantizationError(f"QConfig: {attr} entry {v!r:.80} is not a string")
    return out


@dataclass(frozen=True)
class QConfig:
    """Maps graph nodes to an :class:`OpQConfig` or ``None`` (kept float).

    Args:
        default: the config of every quantizable node not matched otherwise
            (``None``: only nodes named in ``by_op``/``by_name`` are quantized).
        by_op: op name -> config (``None`` keeps that op float).
        by_name: regex on node name or module path -> config (``None``: float).
        exclude: regexes of nodes kept float.
        exclude_ops: op names kept float.
    """

    default: OpQConfig | None = field(default_factory=OpQConfig)
    by_op: tuple[tuple[str, OpQConfig | None], ...] = ()
    by_name: tuple[tuple[str, OpQConfig | None], ...] = ()
    exclude: tuple[str, ...] = ()
    exclude_ops: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_config("default", self.default)
        for attr in ("by_op", "by_name"):
            object.__setattr__(self, attr, _pairs(attr, getattr(self, attr)))
        for attr in ("exclude", "exclude_ops"):
            object.__setattr__(self, attr, _names(attr, getattr(self, attr)))
        for op in [o for o, _ in self.by_op] + list(self.exclude_ops):
            if not has_op(op):
                raise QuantizationError(f"QConfig names op {op!r}, which is not a registered "
                                        "op; check the spelling (e.g. 'conv2d', 'linear')")
        for pattern in [p for p, _ in self.by_name] + list(self.exclude):
            try:
                re.compile(pattern)
            except re.error as e:
                raise QuantizationError(f"QConfig: bad name regex {pattern!r}: {e}") from e

    @classmethod
    def preset(cls, name: str = "x86", *, symmetric_activations: bool = False,
               activation_observer: ObserverKind = "minmax",
               method: RangeMethod = "minmax", per_channel_weights: bool = True,
               weight_method: Literal["minmax", "mse"] = "minmax", weight_bits: int = 8,
               exclude: Iterable[str] = (), exclude_ops: Iterable[str] = ()) -> QConfig:
        """The ``x86`` / ``arm`` presets (see the module docstring).

        Args:
            name: ``x86`` or ``arm``.
            symmetric_activations: symmetric int8 activations (zero point 0).
            activation_observer: observer kind of activations.
            method: histogram range choice (``percentile``, ``entropy``, ``mse``).
            per_channel_weights: per-output-channel weight scales (else per tensor).
            weight_method: weight range: ``minmax``, or ``mse`` (per-channel clipping
                with least squared error).
            weight_bits: bits of the weights, 2..8 (4: W4A8, weights in ``[-7, 7]``).
            exclude, exclude_ops: kept float.

        Raises:
            QuantizationError: an unknown preset, or ``weight_bits`` outside 2..8.
        """
        if name not in ("x86", "arm"):
            raise QuantizationError(f"unknown QConfig preset {name!r}; known: x86, arm")
        if isinstance(weight_bits, bool) or not isinstance(weight_bits, int) \
                or not 2 <= weight_bits <= 8:
            raise QuantizationError(f"QConfig.preset: weight_bits={weight_bits!r} is not "
                                    "supported; choose an integer from 2 to 8 (4 gives W4A8)")
        act = QScheme(symmetric=symmetric_activations, observer=activation_observer,
                      method=method)
        top = 2 ** (weight_bits - 1) - 1
        weight = replace(WEIGHT_INT8, qmin=-top, qmax=top, per_channel=per_channel_weights,
                         method=weight_method)
        return cls(OpQConfig(act, weight), exclude=tuple(exclude), exclude_ops=tuple(exclude_ops))

    # ------------------------------------------------------------------ resolution
    def resolve(self, graph: Graph) -> dict[Node, OpQConfig]:
        """The config of every node that will be quantized (integer-capable ops only).

        Raises:
            QuantizationError: a name regex matches no node of the graph.
        """
        nodes = list(graph.nodes)
        for pattern in [p for p, _ in self.by_name] + list(self.exclude):
            if not any(_matches(pattern, n) for n in nodes):
                known = ", ".join(sorted({n.name for n in nodes if n.op.name in INTEGER_OPS}))
                raise QuantizationError(
                    f"QConfig names {pattern!r}, which matches no node of graph @{graph.name}; "
                    f"quantizable nodes are: {known}")
        out: dict[Node, OpQConfig] = {}
        for n in nodes:
            cfg = self.config_of(n)
            if cfg is not None and n.op.name in INTEGER_OPS:
                out[n] = cfg
        return out

    def config_of(self, node: Node) -> OpQConfig | None:
        """The config of one node by the precedence rules of the module docstring."""
        if node.op.name in self.exclude_ops or any(_matches(p, node) for p in self.exclude):
            return None
        for pattern, cfg in self.by_name:
            if _matches(pattern, node):
                return cfg
        for op, cfg in self.by_op:
            if op == node.op.name:
                return cfg
        return self.default


def _matches(pattern: str, node: Node) -> bool:
    names = [o.name for o in node.outputs] + ([node.source.module] if node.source.module else [])
    return any(re.fullmatch(pattern, s) for s in names)
