"""Hypothesis strategies for every op of the registry that has a TVM lowering.

One strategy per op family, keyed by op name in :data:`STRATEGIES`; :func:`coverage`
compares that table with the op registry so a newly registered op with a lowering but
no strategy is reported (``tests/reliability/test_fuzz_ci.py`` asserts there is none,
:data:`EXCLUDED` lists the deliberate exceptions with a reason).

What the strategies aim at (the reliability issue): shapes with reduction length 1, 1x1
spatial, one channel, odd channel counts, batch 1, large and tiny extents; stride,
padding, dilation, groups (depthwise included), kernels 1..7, ceil_mode; zero points at
the range ends (-128, 0, 127; u8 0/255), scales from 1e-6 to 1e3, per-tensor and
per-channel; float inputs with NaN/Inf/denormals/extremes (:data:`fuzz_cases.SPECIALS`).
Tensor values are not drawn element by element: a case holds a seed per operand and
:func:`fuzz_cases.materialize` makes the values, so a case stays small for hypothesis.

:func:`draw_cases` collects ``n`` cases with a fixed seed (deterministic for a given
hypothesis version) without running anything: the runner batches them into few
compiles.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from tests.reliability.fuzz_cases import EXACT, FuzzCase, Operand, Tol

__all__ = [
    "FuzzConfig",
    "STRATEGIES",
    "EXCLUDED",
    "INTEGER_OPS",
    "coverage",
    "case_strategy",
    "draw_cases",
]


@dataclass(frozen=True)
class FuzzConfig:
    """What the strategies may draw.

    Attributes:
        specials: the kinds of special float values inputs may hold (keys of
            ``fuzz_cases.SPECIALS``); empty: finite, normal inputs only.
        fp16: whether float cases may be fp16.
        bf16: whether float cases may be bf16.
    """

    specials: tuple[str, ...] = ("nonfinite", "denormal", "extreme", "mixed")
    fp16: bool = True
    bf16: bool = True


FINITE = FuzzConfig(specials=(), fp16=True)

Draw = Callable[[st.SearchStrategy[Any]], Any]
SEEDS = st.integers(0, 2**32 - 1)
SMALL_DIM = st.one_of(st.just(1), st.integers(2, 9), st.sampled_from([3, 5, 7, 16, 17, 31]))
MAX_NUMEL = 6000


def _dims(draw: Draw, rank: int, max_numel: int = MAX_NUMEL) -> tuple[int, ...]:
    dims = []
    for _ in range(rank):
        d = draw(st.one_of(SMALL_DIM, st.sampled_from([64, 127, 257, 1000])))
        dims.append(d)
    while math.prod(dims) > max_numel:
        i = dims.index(max(dims))
        dims[i] = max(1, dims[i] // 4)
    return tuple(dims)


def _floats(draw: Draw, cfg: FuzzConfig, shape: Sequence[int], *, kind: str = "in",
            dtype: str = "f32", lo: float | None = None, hi: float | None = None,
            specials: Sequence[str] | None = None, fill: str = "uniform") -> Operand:
    """A float operand: magnitude, optional special values, seed."""
    if lo is None or hi is None:
        mag = draw(st.sampled_from([1e-3, 1.0, 1.0, 4.0, 100.0]))
        lo, hi = -mag, mag
    allowed = [s for s in (specials if specials is not None else cfg.specials)
               if s in cfg.specials]
    if dtype == "bf16":  # 3e38 is finite in bf16, but the fp32 steps of torch's and TVM's
        # formulas overflow at different places (gelu(3e38): inf in torch, 3e38 in TVM)
        allowed = [s for s in allowed if s not in ("extreme", "mixed")]
    special = draw(st.sampled_from([None, None, *allowed])) if allowed else None
    p = draw(st.sampled_from([0.02, 0.2, 0.5])) if special else 0.0
    return Operand(kind, tuple(shape), dtype, fill, lo, hi, special, p, draw(SEEDS))


def _ints(draw: Draw, shape: Sequence[int], dtype: str, *, kind: str = "in",
          lo: int | None = None, hi: int | None = None) -> Operand:
    rng = {"i8": (-128, 127), "u8": (0, 255), "i32": (-(2**31), 2**31 - 1),
           "i64": (-(2**40), 2**40)}[dtype]
    if lo is None or hi is None:
        lo, hi = draw(st.sampled_from([rng, rng, (rng[0], rng[0] + 3), (rng[1] - 3, rng[1])]))
    return Operand(kind, tuple(shape), dtype, "int", lo, hi, None, 0.0, draw(SEEDS))


def _fdtype(draw: Draw, cfg: FuzzConfig) -> str:
    """f32 mostly; fp16 and bf16 (each one case in six) when the config allows them."""
    return draw(st.sampled_from(["f32"] * 4 + ["f16"] * cfg.fp16 + ["bf16"] * cfg.bf16))


def _tensor_tol(rel: float, dtype: str) -> Tol:
    """The ``tensor`` bound of an op computed in fp32 and rounded to ``dtype`` once."""
    return Tol("tensor", rel={"f16": max(rel, 4e-3), "bf16": max(rel, 3e-2)}.get(dtype, rel))


def _act(draw: Draw) -> dict[str, Any]:
    act = draw(st.sampled_from([None, None, (0.0, None), (0.0, 6.0), (-1.0, 1.0)]))
    return {} if act is None else {"act_min": act[0], "act_max": act[1]}


# ----------------------------------------------------------------------- elementwise
# op -> (tolerance, (lo, hi) of the inputs or None for the default magnitudes)
UNARY: dict[str, tuple[Tol, tuple[float, float] | None]] = {
    "relu": (EXACT, None), "relu6": (EXACT, (-10.0, 10.0)), "neg": (EXACT, None),
    "abs": (EXACT, None), "floor": (EXACT, (-50.0, 50.0)), "ceil": (EXACT, (-50.0, 50.0)),
    "round": (EXACT, (-50.0, 50.0)), "sign": (EXACT, None), "identity": (EXACT, None),
    "dropout": (EXACT, None),
    "exp": (Tol("ulp", 2), (-90.0, 90.0)), "log": (Tol("ulp", 2), (-1.0, 100.0)),
    "sqrt": (Tol("ulp", 1), (-1.0, 100.0)), "rsqrt": (Tol("ulp", 2), (-1.0, 100.0)),
    "reciprocal": (Tol("ulp", 1), None),
    "sigmoid": (Tol("ulp", 4, 4.0), (-30.0, 30.0)), "tanh": (Tol("ulp", 4, 4.0), (-12.0, 12.0)),
    "silu": (Tol("ulp", 4, 4.0), (-30.0, 30.0)), "erf": (Tol("ulp", 4, 4.0), (-5.0, 5.0)),
    "sin": (Tol("ulp", 4, 4.0), (-100.0, 100.0)), "cos": (Tol("ulp", 4, 4.0), (-100.0, 100.0)),
    "mish": (Tol("ulp", 8, 8.0), (-30.0, 30.0)),
    "hardswish": (Tol("ulp", 4, 4.0), (-8.0, 8.0)),
    "hardsigmoid": (Tol("ulp", 2, 2.0), (-8.0, 8.0)),
}
BINARY_EXACT = ("add", "sub", "mul", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge")
# NaN through max/min/clamp: the ops whose NaN handling is max/min based (defect 3 family)
CLAMPING = frozenset({"relu", "relu6", "clamp", "hardsigmoid", "hardswish", "maximum",
                      "minimum", "max_pool1d", "max_pool2d", "adaptive_max_pool1d",
                      "adaptive_max_pool2d", "amax", "amin", "leaky_relu", "elu"})


def _shape(draw: Draw, max_rank: int = 4, max_numel: int = MAX_NUMEL) -> tuple[int, ...]:
    return _dims(draw, draw(st.integers(0, max_rank)), max_numel)


def _unary(op: str) -> Callable[[FuzzConfig, str], st.SearchStrategy[FuzzCase]]:
    tol, dom = UNARY[op]

    def make(cfg: FuzzConfig, _op: str) -> st.SearchStrategy[FuzzCase]:
        @st.composite
        def s(draw: Draw) -> FuzzCase:
            shape = _shape(draw)
            lo, hi = dom if dom is not None and draw(st.booleans()) else (None, None)
            x = _floats(draw, cfg, shape, dtype=_fdtype(draw, cfg), lo=lo, hi=hi)
            t = tol if x.dtype == "f32" else _half_tol(tol)
            return FuzzCase(op, [x], {}, t)
        return s()
    return make


def _half_tol(tol: Tol) -> Tol:
    """fp16/bf16 results: the same bound in their ulps, widened for rounding fp32 internals."""
    if tol.family == "exact":
        return tol
    return replace(tol, ulps=tol.ulps + 1, floor=tol.floor + 1)


def _param_unary(cfg: FuzzConfig, op: str) -> st.SearchStrategy[FuzzCase]:
    @st.composite
    def s(draw: Draw) -> FuzzCase:
        x = _floats(draw, cfg, _shape(draw), dtype=_fdtype(draw, cfg))
        if op == "gelu":
            attrs: dict[str, Any] = {"approximate": draw(st.sampled_from(["none", "tanh"]))}
            tol = Tol("ulp", 8, 8.0)
        elif op == "leaky_relu":
            attrs = {"negative_slope": draw(st.sampled_from([0.0, 0.01, 0.2, 1.0, 3.5]))}
            tol = EXACT
        elif op == "elu":
            attrs = {"alpha": draw(st.sampled_from([0.1, 1.0, 2.5]))}
            tol = Tol("ulp", 4, 4.0)
        elif op == "softplus":
            attrs = {"beta": draw(st.sampled_from([0.5, 1.0, 2.0])),
                     "threshold": draw(st.sampled_from([1.0, 5.0, 20.0]))}
            tol = Tol("ulp", 4, 4.0)
        else:
            lo = draw(st.sampled_from([None, -1.0, 0.0, 0.25]))
            hi = draw(st.sampled_from([None, 0.5, 6.0]))
            if lo is None and hi is None:
                lo = 0.0
            if lo is not None and hi is not None and hi < lo:
                lo, hi = hi, lo
            attrs, tol = {"min": lo, "max": hi}, EXACT
        return FuzzCase(op, [x], attrs, tol if x.dtype == "f32" else _half_tol(tol))
    return s()


def _logical_not(cfg: FuzzConfig, op: str) -> st.SearchStrategy[FuzzCase]:
    @st.composite
    def s(draw: Draw) -> FuzzCase:
        return FuzzCase("logical_not", [Operand("in", _shape(draw), "bool", "bool",
                                                seed=draw(SEEDS))])
    return s()


def _cast(cfg: FuzzConfig, op: str) -> st.SearchStrategy[FuzzCase]:
    @st.composite
    def s(draw: Draw) -> FuzzCase:
        shape = _shape(draw)
        src = draw(st.sampled_from(["f32", "f16", "bf16", "i8", "u8", "i32", "bool"]))
        dst = draw(st.sampled_from(["f32", "f16", "bf16", "i8", "u8", "i32", "i64", "bool"]))
        if src in ("f32", "f16", "bf16"):
            # float -> int of NaN/Inf/out-of-range values is undefined in C and in torch
            specials = () if dst not in ("f32", "f16", "bf16") else None
            lo, hi = (-100.0, 100.0) if dst in ("i32", "i64") else (-0.9, 120.0)
            if dst == "i8":
                lo, hi = -120.0, 120.0
            x = _floats(draw, cfg, shape, dtype=src, lo=lo, hi=hi, specials=specials)
        elif src == "bool":
            x = Operand("in", shape, "bool", "bool", seed=draw(SEEDS))
        else:
            x = _ints(draw, shape, src)
            if dst in ("i8", "u8") or (src == "i32" and dst in ("f16", "bf16")):
                x = replace(x, lo=0, hi=100)
        tol = EXACT
        return FuzzCase("cast", [x], {"dtype": dst}, tol)
    return s()


def _broadcast_pair(draw: Draw) -> tuple[tuple[int, ...], tuple[int, ...]]:
    a = _shape(draw, 4, 3000)
    b = list(a)
    for i in range(len(b)):
        if draw(st.integers(0, 3)) == 0:
            b[i] = 1
    drop = draw(st.integers(0, len(b)))
    b = b[drop:]
    return (a, tuple(b)) if draw(st.booleans()) else (tuple(b), a)


def _binary(cfg: FuzzConfig, op: str) -> st.SearchStrategy[FuzzCase]:
    @st.composite
    def s(draw: Draw) -> FuzzCase:
        sa, sb = _broadcast_pair(draw)
        if op in ("logical_and", "logical_or"):
            return FuzzCase(op, [Operand("in", sa, "bool", "bool", seed=draw(SEEDS)),
                                 Operand(draw(st.sampled_from(["in", "const"])), sb, "bool",
                                         "bool", seed=draw(SEEDS))])
        dtype = _fdtype(draw, cfg)
        a = _floats(draw, cfg, sa, dtype=dtype)
        b = _floats(draw, cfg, sb, dtype=dtype, kind=draw(st.sampled_from(["in", "const"])))
        attrs: dict[str, Any] = {}
        tol = EXACT
        if op == "div":
            attrs["rounding_mode"] = draw(st.sampled_from([None, "floor", "trunc"]))
        if op == "pow":
            b = replace(b, fill="uniform", lo=-3.0, hi=3.0)
            a = replace(a, lo=0.0, hi=a.hi) if draw(st.booleans()) else a
            tol = Tol("ulp", 4, 0.0)
        if op == "maximum" and draw(st.booleans()):  # max(x, 0): the ReLU of defect 3
            b = Operand("const", (), dtype, "uniform", 0.0, 0.0)
        return FuzzCase(op, [a, b], attrs, tol if dtype == "f32" else _half_tol(tol))
    return s()


def _where(cfg: FuzzConfig, op: str) -> st.SearchStrategy[FuzzCase]:
    @st.composite
    def s(draw: Draw) -> FuzzCase:
        sa, sb = _broadcast_pair(draw)
        cond = Operand("in", draw(st.sampled_from([sa, sb])), "bool", "bool", seed=draw(SEEDS))
        dtype = _fdtype(draw, cfg)
        return FuzzCase("where", [cond, _floats(draw, cfg, sa, dtype=dtype),
                                  _floats(draw, cfg, sb, dtype=dtype, kind="const")])
    return s()


def _softmax(cfg: FuzzConfig, op: str) -> st.SearchStrategy[FuzzCase]:
    @st.composite
    def s(draw: Draw) -> FuzzCase:
        shape = _dims(draw, draw(st.integers(1, 4)))
        axis = draw(st.integers(-len(shape), len(shape) - 1))
        dtype = _fdtype(draw, cfg)
        x = _floats(draw, cfg, shape, dtype=dtype, specials=("nonfinite",))
        return FuzzCase(op, [x], {"axis": axis}, _tensor_tol(1e-5, dtype))
    return s()


# ----------------------------------------------------------------------- conv / linear
def _reduce_specials(cfg: FuzzConfig) -> tuple[str, ...]:
    # no "extreme": summing huge finite values overflows in an order-dependent way
    return tuple(s for s in ("nonfinite", "denormal") if s in cfg.specials)


@st.composite
def _conv_geometry(draw: Draw, nd: int) -> dict[str, Any]:
    k = [draw(st.integers(1, 7)) for _ in range(nd)]
    stride = [draw(st.sampled_from([1, 1, 2, 3])) for _ in range(nd)]
    dil = [draw(st.sampled_from([1, 1, 2, 3])) for _ in range(nd)]
    pad = [draw(st.integers(0, 3)) for _ in range(nd)]
    size = []
    for i in range(nd):
        need = dil[i] * (k[i] - 1) + 1 - 2 * pad[i]
        size.append(max(1, need) + draw(st.sampled_from([0, 0, 1, 2, 5, 9])))
    return {"kernel": k, "stride": stride, "dilation": dil, "padding": pad, "size": size}


@st.composite
def _channels(draw: Draw) -> tuple[int, int, int]:
    """(groups, in channels per group, out channels per group)."""
    g = draw(st.sampled_from([1, 1, 1, 2, 3]))
    cin = draw(st.sampled_from([1, 1, 2, 3, 4, 5]))
    cout = draw(st.sampled_from([1, 2, 3, 4, 16]))
    if draw(st.integers(0, 4)) == 0:  # depthwise
        c = draw(st.sampled_from([1, 3, 4, 8]))
        return c, 1, draw(st.sampled_from([1, 1, 2]))
    return g, cin, cout


def _conv(nd: int) -> Callable[[FuzzConfig, str], st.SearchStrategy[FuzzCase]]:
    op = f"conv{nd}d"

    def make(cfg: FuzzConfig, _op: str) -> st.SearchStrategy[FuzzCase]:
        @st.composite
        def s(draw: Draw) -> FuzzCase:
            geo = draw(_conv_geometry(nd))
            g, cin, cout = draw(_channels())
            n = draw(st.sampled_from([1, 1, 2, 3]))
            dtype = _fdtype(draw, cfg)
            sp = _reduce_specials(cfg)
            x = _floats(draw, cfg, (n, g * cin, *geo["size"]), dtype=dtype, specials=sp)
            w = _floats(draw, cfg, (g * cout, cin, *geo["kernel"]), dtype=dtype, lo=-1.0,
                        hi=1.0, kind=draw(st.sampled_from(["const", "const", "in"])),
                        specials=())
            ops = [x, w]
            if draw(st.booleans()):
                ops.append(_floats(draw, cfg, (g * cout,), dtype=dtype, kind="const",
                                   specials=()))
            attrs = {"stride": geo["stride"], "padding": geo["padding"],
                     "dilation": geo["dilation"], "groups": g, **_act(draw)}
            k = cin * math.prod(geo["kernel"]) + 1
            return FuzzCase(op, ops, attrs, Tol("reduce", 1, reduction=k))
        return s()
    return make


def _conv_transpose(cfg: FuzzConfig, op: str) -> st.SearchStrategy[FuzzCase]:
    @st.composite
    def s(draw: Draw) -> FuzzCase:
        k = [draw(st.integers(1, 5)) for _ in range(2)]
        stride = [draw(st.sampled_from([1, 2, 3])) for _ in range(2)]
        dil = [draw(st.sampled_from([1, 1, 2])) for _ in range(2)]
        pad = [draw(st.integers(0, (dil[i] * (k[i] - 1)) // 2)) for i in range(2)]
        opad = [draw(st.integers(0, max(stride[i], dil[i]) - 1)) for i in range(2)]
        g = draw(st.sampled_from([1, 1, 2]))
        cin, cout = draw(st.sampled_from([1, 2, 3])), draw(st.sampled_from([1, 2, 5]))
        size = [draw(st.integers(1, 6)) for _ in range(2)]
        dtype = _fdtype(draw, cfg)
        x = _floats(draw, cfg, (draw(st.sampled_from([1, 2])), g * cin, *size), dtype=dtype,
                    specials=_reduce_specials(cfg))
        w = _floats(draw, cfg, (g * cin, cout, *k), dtype=dtype, lo=-1.0, hi=1.0, kind="const",
                    specials=())
        ops = [x, w]
        if draw(st.booleans()):
            ops.append(_floats(draw, cfg, (g * cout,), dtype=dtype, kind="const", specials=()))
        attrs = {"stride": stride, "padding": pad, "output_padding": opad, "dilation": dil,
                 "groups": g, **_act(draw)}
        return FuzzCase("conv_transpose2d", ops, attrs,
                        Tol("reduce", 1, reduction=cin * k[0] * k[1] + 1))
    return s()


K_SIZES = st.sampled_from([1, 1, 2, 3, 4, 8, 17, 64, 257])
N_SIZES = st.sampled_from([1, 2, 3, 8, 16, 17, 32])


def _linear(cfg: FuzzConfig, op: str) -> st.SearchStrategy[FuzzCase]:
    @st.composite
    def s(draw: Draw) -> FuzzCase:
        k, n = draw(K_SIZES), draw(N_SIZES)
        batch = _dims(draw, draw(st.integers(0, 2)), 200)
        dtype = _fdtype(draw, cfg)
        x = _floats(draw, cfg, (*batch, k), dtype=dtype, specials=_reduce_specials(cfg))
        w = _floats(draw, cfg, (n, k), dtype=dtype, lo=-1.0, hi=1.0,
                    kind=draw(st.sampled_from(["const", "const", "in"])), specials=())
        ops = [x, w]
        if draw(st.booleans()):
            ops.append(_floats(draw, cfg, (n,), dtype=dtype, kind="const", specials=()))
        return FuzzCase("linear", ops, _act(draw), Tol("reduce", 1, reduction=k + 1))
    return s()


def _matmul(cfg: FuzzConfig, op: str) -> st.SearchStrategy[FuzzCase]:
    @st.composite
    def s(draw: Draw) -> FuzzCase:
        m, k, n = draw(N_SIZES), draw(K_SIZES), draw(N_SIZES)
        batch = _dims(draw, draw(st.integers(0, 2)), 12)
        bb = tuple(1 if draw(st.booleans()) else d for d in batch)
        sa, sb = (*batch, m, k), (*bb[draw(st.integers(0, len(bb))):], k, n)
        form = draw(st.sampled_from(["mm", "mm", "vec_a", "vec_b"]))
        if form == "vec_a":
            sa = (k,)
        elif form == "vec_b":
            sb = (k,)
        dtype = _fdtype(draw, cfg)
        sp = _reduce_specials(cfg)
        a = _floats(draw, cfg, sa, dtype=dtype, specials=sp)
        b = _floats(draw, cfg, sb, dtype=dtype, specials=sp,
                    kind=draw(st.sampled_from(["in", "const"])))
        return FuzzCase("matmul", [a, b], {}, Tol("reduce", 1, reduction=k))
    return s()


# ----------------------------------------------------------------------- normalization
def _norms(cfg: FuzzConfig, op: str) -> st.SearchStrategy[FuzzCase]:
    @st.composite
    def s(draw: Draw) -> FuzzCase:
        sp = ("nonfinite",)
        dt = _fdtype(draw, cfg)
        tol = _tensor_tol(2e-5, dt)
        if op == "batch_norm":
            c = draw(SMALL_DIM)
            shape = (draw(st.sampled_from([1, 2])), c, *_dims(draw, draw(st.integers(0, 2)), 300))
            ops = [_floats(draw, cfg, shape, dtype=dt, specials=sp),
                   _floats(draw, cfg, (c,), dtype=dt, kind="const", specials=()),
                   Operand("const", (c,), dt, "var", 0.0, 2.0, seed=draw(SEEDS))]
            if draw(st.booleans()):
                ops += [_floats(draw, cfg, (c,), dtype=dt, kind="const", specials=()),
                        _floats(draw, cfg, (c,), dtype=dt, kind="const", specials=())]
            return FuzzCase(op, ops, {"eps": draw(st.sampled_from([1e-5, 1e-3]))}, tol)
        if op == "instance_norm":
            c = draw(SMALL_DIM)
            shape = (draw(st.sampled_from([1, 2])), c, *_dims(draw, draw(st.integers(1, 2)), 300))
            ops = [_floats(draw, cfg, shape, dtype=dt, specials=sp)]
            if draw(st.booleans()):
                ops += [_floats(draw, cfg, (c,), dtype=dt, kind="const", specials=()),
                        _floats(draw, cfg, (c,), dtype=dt, kind="const", specials=())]
            return FuzzCase(op, ops, {"eps": draw(st.sampled_from([1e-5, 1e-3]))}, tol)
        if op == "group_norm":
            groups = draw(st.sampled_from([1, 2, 3]))
            c = groups * draw(st.sampled_from([1, 2, 3]))
            shape = (draw(st.sampled_from([1, 2])), c, *_dims(draw, draw(st.integers(0, 2)), 300))
            ops = [_floats(draw, cfg, shape, dtype=dt, specials=sp)]
            if draw(st.booleans()):
                ops += [_floats(draw, cfg, (c,), dtype=dt, kind="const", specials=()),
                        _floats(draw, cfg, (c,), dtype=dt, kind="const", specials=())]
            return FuzzCase(op, ops, {"num_groups": groups, "eps": 1e-5}, tol)
        shape = _dims(draw, draw(st.integers(1, 4)), 3000)
        nd = draw(st.integers(1, min(2, len(shape))))
        norm = list(shape[-nd:])
        ops = [_floats(draw, cfg, shape, dtype=dt, specials=sp)]
        if draw(st.booleans()):
            ops.append(_floats(draw, cfg, norm, dtype=dt, kind="const", specials=()))
            if op == "layer_norm" and draw(st.booleans()):
                ops.append(_floats(draw, cfg, norm, dtype=dt, kind="const", specials=()))
        eps = draw(st.sampled_from([1e-5, 1e-6])) if op == "layer_norm" else \
            draw(st.sampled_from([None, 1e-6]))
        return FuzzCase(op, ops, {"normalized_shape": norm, "eps": eps}, tol)
    return s()


# ----------------------------------------------------------------------- pools
def _pool(kind: str, nd: int) -> Callable[[FuzzConfig, str], st.SearchStrategy[FuzzCase]]:
    op = f"{kind}_pool{nd}d"

    def make(cfg: FuzzConfig, _op: str) -> st.SearchStrategy[FuzzCase]:
        @st.composite
        def s(draw: Draw) -> FuzzCase:
            k = [draw(st.integers(1, 7)) for _ in range(nd)]
            stride = [draw(st.sampled_from([1, 2, 3, k[i]])) for i in range(nd)]
            pad = [draw(st.integers(0, k[i] // 2)) for i in range(nd)]
            dil = [draw(st.sampled_from([1, 1, 2])) if kind == "max" else 1 for _ in range(nd)]
            size = [max(1, dil[i] * (k[i] - 1) + 1 - 2 * pad[i])
                    + draw(st.sampled_from([0, 0, 1, 2, 5])) for i in range(nd)]
            shape = (draw(st.sampled_from([1, 2])), draw(SMALL_DIM), *size)
            x = _floats(draw, cfg, shape, specials=_reduce_specials(cfg),
                        dtype=_fdtype(draw, cfg))
            attrs: dict[str, Any] = {"kernel": k, "stride": stride, "padding": pad,
                                     "ceil_mode": draw(st.booleans())}
            if kind == "max":
                attrs["dilation"] = dil
                return FuzzCase(op, [x], attrs, EXACT)
            attrs["count_include_pad"] = draw(st.booleans())
            if draw(st.integers(0, 3)) == 0:
                attrs["divisor_override"] = draw(st.integers(1, 9))
            tol = Tol("reduce", 2, reduction=math.prod(k))
            return FuzzCase(op, [x], attrs, tol)
        return s()
    return make


def _adaptive(kind: str, nd: int) -> Callable[[FuzzConfig, str], st.SearchStrategy[FuzzCase]]:
    op = f"adaptive_{kind}_pool{nd}d"

    def make(cfg: FuzzConfig, _op: str) -> st.SearchStrategy[FuzzCase]:
        @st.composite
        def s(draw: Draw) -> FuzzCase:
            size = [draw(st.sampled_from([1, 2, 3, 5, 7, 13])) for _ in range(nd)]
            out = [draw(st.integers(1, size[i] + 2)) for i in range(nd)]
            shape = (draw(st.sampled_from([1, 2])), draw(SMALL_DIM), *size)
            x = _floats(draw, cfg, shape, dtype=_fdtype(draw, cfg),
                        specials=_reduce_specials(cfg))
            window = math.prod(-(-size[i] // out[i]) + 1 for i in range(nd))
            tol = EXACT if kind == "max" else Tol("reduce", 2, reduction=window)
            return FuzzCase(op, [x], {"output_size": out}, tol)
        return s()
    return make


# ----------------------------------------------------------------------- shape ops
def _shape_ops(cfg: FuzzConfig, op: str) -> st.SearchStrategy[FuzzCase]:
    @st.composite
    def s(draw: Draw) -> FuzzCase:
        dtype = draw(st.sampled_from(["f32", "f32", "i8", "f16"]))
        rank = draw(st.integers(1, 4))
        shape = _dims(draw, rank, 3000)

        def val(sh: Sequence[int], kind: str = "in") -> Operand:
            if dtype == "i8":
                return _ints(draw, sh, "i8", kind=kind)
            return _floats(draw, cfg, sh, dtype=dtype, kind=kind)

        if op == "reshape":
            numel = math.prod(shape)
            divs = [d for d in range(1, numel + 1) if numel % d == 0][:40]
            a = draw(st.sampled_from(divs))
            new = [a, -1] if draw(st.booleans()) else [a, numel // a, 1]
            return FuzzCase(op, [val(shape)], {"shape": new})
        if op == "permute":
            dims = draw(st.permutations(range(rank)))
            return FuzzCase(op, [val(shape)], {"dims": list(dims)})
        if op == "expand":
            src = tuple(1 if draw(st.booleans()) else d for d in shape)
            target = [(-1 if s_ != 1 or draw(st.booleans()) else draw(st.integers(1, 5)))
                      for s_ in src]
            target = [draw(st.integers(1, 3)) for _ in range(draw(st.integers(0, 1)))] + target
            return FuzzCase(op, [val(src)], {"shape": target})
        axis = draw(st.integers(-rank, rank - 1))
        ax = axis % rank
        if op == "cat":
            parts = []
            for _ in range(draw(st.integers(1, 4))):
                sh = list(shape)
                sh[ax] = draw(st.integers(1, 4))
                parts.append(val(sh, draw(st.sampled_from(["in", "const"]))))
            return FuzzCase(op, parts, {"axis": axis})
        if op == "split":
            n = shape[ax]
            sizes: list[int] = []
            while sum(sizes) < n:
                sizes.append(min(n - sum(sizes), draw(st.integers(1, max(1, n)))))
            return FuzzCase(op, [val(shape)], {"axis": axis, "sizes": sizes})
        if op == "slice":
            n = shape[ax]
            start = draw(st.integers(-n - 2, n + 1))
            end = draw(st.integers(-n - 2, n + 3))
            if len(range(*slice(start, end, 1).indices(n))) == 0:
                start, end = 0, n
            step = draw(st.integers(1, 3))
            return FuzzCase(op, [val(shape)], {"axis": axis, "start": start, "end": end,
                                              "step": step})
        index = draw(st.integers(-shape[ax], shape[ax] - 1))
        return FuzzCase(op, [val(shape)], {"axis": axis, "index": index})
    return s()


def _reductions(cfg: FuzzConfig, op: str) -> st.SearchStrategy[FuzzCase]:
    @st.composite
    def s(draw: Draw) -> FuzzCase:
        shape = _dims(draw, draw(st.integers(1, 4)))
        rank = len(shape)
        axes = sorted(draw(st.sets(st.integers(0, rank - 1), max_size=rank)))
        if axes and draw(st.booleans()):
            axes = [a - rank for a in axes]
        keep = draw(st.booleans())
        x = _floats(draw, cfg, shape, dtype=_fdtype(draw, cfg), specials=_reduce_specials(cfg))
        k = math.prod(shape[a] for a in axes) if axes else math.prod(shape)
        tol = EXACT if op in ("amax", "amin") else Tol("reduce", 2, reduction=max(k, 1))
        return FuzzCase(op, [x], {"axes": axes, "keepdim": keep}, tol)
    return s()


def _embedding(cfg: FuzzConfig, op: str) -> st.SearchStrategy[FuzzCase]:
    @st.composite
    def s(draw: Draw) -> FuzzCase:
        v, d = draw(st.integers(1, 40)), draw(SMALL_DIM)
        idx = _dims(draw, draw(st.integers(1, 3)), 200)
        return FuzzCase("embedding", [
            Operand("in", idx, "i64", "int", 0, v - 1, seed=draw(SEEDS)),
            _floats(draw, cfg, (v, d), kind="const")])
    return s()


def _pad(cfg: FuzzConfig, op: str) -> st.SearchStrategy[FuzzCase]:
    @st.composite
    def s(draw: Draw) -> FuzzCase:
        mode = draw(st.sampled_from(["constant", "reflect", "replicate", "circular"]))
        rank = draw(st.integers(3, 4)) if mode != "constant" else draw(st.integers(1, 4))
        shape = _dims(draw, rank, 2000)
        npad = draw(st.integers(1, min(rank, 3) if mode == "constant" else rank - 2))
        pads = []
        for i in range(npad):
            n = shape[-1 - i]
            hi = n - 1 if mode == "reflect" else n if mode == "circular" else 4
            pads += [draw(st.integers(0, max(0, hi))), draw(st.integers(0, max(0, hi)))]
        value = draw(st.sampled_from([0.0, 0.5, -3.0]))
        return FuzzCase("pad", [_floats(draw, cfg, shape, dtype=_fdtype(draw, cfg))],
                        {"pads": pads, "mode": mode, "value": value})
    return s()


def _interpolate(cfg: FuzzConfig, op: str) -> st.SearchStrategy[FuzzCase]:
    @st.composite
    def s(draw: Draw) -> FuzzCase:
        mode = draw(st.sampled_from(["nearest", "nearest-exact", "bilinear", "bicubic"]))
        size_in = [draw(st.sampled_from([1, 2, 3, 5, 8])) for _ in range(2)]
        size = [draw(st.integers(1, 2 * size_in[i] + 3)) for i in range(2)]
        shape = (draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 3])), *size_in)
        x = _floats(draw, cfg, shape, specials=())
        attrs: dict[str, Any] = {"size": size, "mode": mode}
        tol = EXACT
        if mode in ("bilinear", "bicubic"):
            attrs["align_corners"] = draw(st.booleans())
            tol = Tol("reduce", 4, reduction=4) if mode == "bilinear" else \
                Tol("tensor", rel=1e-5)
        return FuzzCase("interpolate", [x], attrs, tol)
    return s()


def _sdpa(cfg: FuzzConfig, op: str) -> st.SearchStrategy[FuzzCase]:
    @st.composite
    def s(draw: Draw) -> FuzzCase:
        b, hkv = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2]))
        gqa = draw(st.booleans())
        h = hkv * (draw(st.sampled_from([1, 2])) if gqa else 1)
        length, src = draw(st.sampled_from([1, 2, 5, 9])), draw(st.sampled_from([1, 3, 7]))
        e, ev = draw(st.sampled_from([1, 4, 8, 16])), draw(st.sampled_from([1, 4, 6]))
        causal = draw(st.booleans())
        if causal:
            src = length
        ops = [_floats(draw, cfg, (b, h, length, e), specials=()),
               _floats(draw, cfg, (b, hkv, src, e), specials=()),
               _floats(draw, cfg, (b, hkv, src, ev), specials=())]
        mask = None if causal else draw(st.sampled_from([None, "bool", "float"]))
        if mask == "bool":
            ops.append(Operand("in", (length, src), "bool", "bool", seed=draw(SEEDS)))
        elif mask == "float":
            ops.append(_floats(draw, cfg, (1, h, length, src), kind="const", specials=()))
        attrs = {"is_causal": causal, "scale": draw(st.sampled_from([None, 0.3, 2.0])),
                 "enable_gqa": gqa}
        return FuzzCase("sdpa", ops, attrs, Tol("tensor", rel=2e-5))
    return s()


def _rnn_ops(kind: str, dynamic: bool) -> Callable[[FuzzConfig, str], st.SearchStrategy[FuzzCase]]:
    op = f"dynamic_{kind}" if dynamic else kind

    def make(cfg: FuzzConfig, _op: str) -> st.SearchStrategy[FuzzCase]:
        @st.composite
        def s(draw: Draw) -> FuzzCase:
            layers, bidir = draw(st.sampled_from([1, 1, 2])), draw(st.booleans())
            bf, bias = draw(st.booleans()), draw(st.booleans())
            t, b = draw(st.integers(1, 3)), draw(st.sampled_from([1, 2]))
            inp, hid = draw(st.sampled_from([1, 3])), draw(st.sampled_from([1, 2, 5]))
            dirs = 2 if bidir else 1
            gates = 4 if kind == "lstm" else 3
            x = _floats(draw, cfg, (b, t, inp) if bf else (t, b, inp), specials=())
            states = [_floats(draw, cfg, (layers * dirs, b, hid), lo=-1.0, hi=1.0, specials=())]
            if kind == "lstm":
                states.append(_floats(draw, cfg, (layers * dirs, b, hid), lo=-1.0, hi=1.0,
                                      specials=()))
            ws: list[Operand] = []
            scales: list[float] = []
            for layer in range(layers):
                for _ in range(dirs):
                    size_in = inp if layer == 0 else hid * dirs
                    for cols in (size_in, hid):
                        if dynamic:
                            ws.append(Operand("const", (gates * hid, cols), "i8", "int", -127,
                                              127, seed=draw(SEEDS)))
                            scales += [0.01] * (gates * hid)
                        else:
                            ws.append(_floats(draw, cfg, (gates * hid, cols), kind="const",
                                              lo=-0.5, hi=0.5, specials=()))
                    if bias:
                        ws += [_floats(draw, cfg, (gates * hid,), kind="const", lo=-0.5,
                                       hi=0.5, specials=()) for _ in range(2)]
            attrs: dict[str, Any] = {"hidden_size": hid, "num_layers": layers,
                                     "bidirectional": bidir, "batch_first": bf,
                                     "has_biases": bias}
            if dynamic:
                attrs.update(w_scales=scales, per_token=draw(st.booleans()))
            return FuzzCase(op, [x, *states, *ws], attrs, Tol("tensor", rel=2e-5))
        return s()
    return make


# ----------------------------------------------------------------------- integer ops
ZP8 = st.one_of(st.sampled_from([-128, 0, 127]), st.integers(-128, 127))
ZPU8 = st.one_of(st.sampled_from([0, 255]), st.integers(0, 255))
SCALE = st.one_of(st.sampled_from([1e-6, 1e-3, 1.0, 1e3]),
                  st.floats(-6.0, 3.0).map(lambda e: float(10.0 ** e)))
M0 = st.one_of(st.sampled_from([2**30, 2**31 - 1, 1518500250]), st.integers(2**30, 2**31 - 1))


@st.composite
def _qrange(draw: Draw) -> dict[str, Any]:
    """An output dtype with its clamp range (full, restricted, or a fused ReLU)."""
    dtype = draw(st.sampled_from(["i8", "i8", "u8"]))
    zp = draw(ZP8 if dtype == "i8" else ZPU8)
    lo, hi = (-128, 127) if dtype == "i8" else (0, 255)
    form = draw(st.sampled_from(["full", "full", "relu", "narrow"]))
    if form == "relu":
        lo = zp
    elif form == "narrow":
        lo, hi = lo + 1, hi
    return {"out_dtype": dtype, "out_zero_point": zp, "qmin": lo, "qmax": hi}


def _qin(draw: Draw, shape: Sequence[int], kind: str = "in") -> tuple[Operand, int]:
    """An int8 or uint8 activation and a zero point of its dtype."""
    dtype = draw(st.sampled_from(["i8", "i8", "u8"]))
    return _ints(draw, shape, dtype, kind=kind), draw(ZP8 if dtype == "i8" else ZPU8)


def _quantize(cfg: FuzzConfig, op: str) -> st.SearchStrategy[FuzzCase]:
    @st.composite
    def s(draw: Draw) -> FuzzCase:
        shape = _dims(draw, draw(st.integers(1, 4)), 3000)
        dtype = draw(st.sampled_from(["i8", "i8", "u8"]))
        axis = draw(st.sampled_from([None, *range(len(shape))]))
        n = 1 if axis is None else shape[axis]
        scales = [draw(SCALE) for _ in range(n)]
        zps = [draw(ZP8 if dtype == "i8" else ZPU8) for _ in range(n)]
        lo, hi = (-128, 127) if dtype == "i8" else (0, 255)
        if draw(st.integers(0, 3)) == 0:
            lo, hi = (-127, 127) if dtype == "i8" else (0, 127)
        if draw(st.booleans()) and axis is None:
            x = Operand("in", shape, "f32", "ties", 300, scales[0], seed=draw(SEEDS))
        else:
            span = max(scales) * 300
            x = _floats(draw, cfg, shape, lo=-span, hi=span)
        attrs = {"dtype": dtype, "scale": scales, "zero_point": zps, "axis": axis,
                 "qmin": lo, "qmax": hi}
        return FuzzCase("quantize", [x], attrs, EXACT)
    return s()


def _dequantize(cfg: FuzzConfig, op: str) -> st.SearchStrategy[FuzzCase]:
    @st.composite
    def s(draw: Draw) -> FuzzCase:
        shape = _dims(draw, draw(st.integers(1, 4)), 3000)
        q, _ = _qin(draw, shape)
        axis = draw(st.sampled_from([None, *range(len(shape))]))
        n = 1 if axis is None else shape[axis]
        zp = ZP8 if q.dtype == "i8" else ZPU8
        attrs = {"dtype": q.dtype, "scale": [draw(SCALE) for _ in range(n)],
                 "zero_point": [draw(zp) for _ in range(n)], "axis": axis,
                 "qmin": -128 if q.dtype == "i8" else 0, "qmax": 127 if q.dtype == "i8" else 255}
        return FuzzCase("dequantize", [q], attrs, EXACT)
    return s()


def _requantize(cfg: FuzzConfig, op: str) -> st.SearchStrategy[FuzzCase]:
    @st.composite
    def s(draw: Draw) -> FuzzCase:
        shape = _dims(draw, draw(st.integers(1, 4)), 3000)
        bits = draw(st.sampled_from([8, 16, 24, 31]))
        x = _ints(draw, shape, "i32", lo=-(2**bits) + 1, hi=2**bits - 1)
        axis = draw(st.sampled_from([None, *range(len(shape))]))
        n = 1 if axis is None else shape[axis]
        shifts = [draw(st.one_of(st.sampled_from([0, 1, 31, 40, 50]), st.integers(20, 52)))
                  for _ in range(n)]
        attrs = {"in_zero_point": draw(ZP8), "multiplier": [draw(M0) for _ in range(n)],
                 "shift": shifts, "axis": axis, **draw(_qrange())}
        return FuzzCase("requantize", [x], attrs, EXACT)
    return s()


def _qconv(nd: int) -> Callable[[FuzzConfig, str], st.SearchStrategy[FuzzCase]]:
    op = f"qconv{nd}d"

    def make(cfg: FuzzConfig, _op: str) -> st.SearchStrategy[FuzzCase]:
        @st.composite
        def s(draw: Draw) -> FuzzCase:
            geo = draw(_conv_geometry(nd))
            g, cin, cout = draw(_channels())
            n = draw(st.sampled_from([1, 1, 2]))
            x, zp = _qin(draw, (n, g * cin, *geo["size"]))
            wkind = draw(st.sampled_from(["const", "const", "const", "in"]))
            w = _ints(draw, (g * cout, cin, *geo["kernel"]), "i8", kind=wkind, lo=-127, hi=127)
            ops = [x, w]
            if draw(st.booleans()):
                ops.append(_ints(draw, (g * cout,), "i32", kind="const", lo=-(2**24),
                                 hi=2**24))
            attrs = {"stride": geo["stride"], "padding": geo["padding"],
                     "dilation": geo["dilation"], "groups": g, "x_zero_point": zp}
            return FuzzCase(op, ops, attrs, EXACT)
        return s()
    return make


def _qlinear(cfg: FuzzConfig, op: str) -> st.SearchStrategy[FuzzCase]:
    @st.composite
    def s(draw: Draw) -> FuzzCase:
        k = draw(st.sampled_from([1, 2, 3, 4, 8, 17, 64, 256]))
        n = draw(st.sampled_from([1, 3, 8, 16, 17, 32, 48]))
        batch = _dims(draw, draw(st.integers(0, 2)), 100)
        x, zp = _qin(draw, (*batch, k))
        w = _ints(draw, (n, k), "i8", kind=draw(st.sampled_from(["const", "const", "in"])),
                  lo=-127, hi=127)
        ops = [x, w]
        if draw(st.booleans()):
            ops.append(_ints(draw, (n,), "i32", kind="const", lo=-(2**24), hi=2**24))
        return FuzzCase("qlinear", ops, {"x_zero_point": zp}, EXACT)
    return s()


def _qmatmul(cfg: FuzzConfig, op: str) -> st.SearchStrategy[FuzzCase]:
    @st.composite
    def s(draw: Draw) -> FuzzCase:
        m, k, n = draw(N_SIZES), draw(K_SIZES), draw(N_SIZES)
        batch = _dims(draw, draw(st.integers(0, 2)), 8)
        a, za = _qin(draw, (*batch, m, k))
        b, zb = _qin(draw, (*batch, k, n), kind=draw(st.sampled_from(["in", "const"])))
        return FuzzCase("qmatmul", [a, b], {"a_zero_point": za, "b_zero_point": zb}, EXACT)
    return s()


def _qbinary(cfg: FuzzConfig, op: str) -> st.SearchStrategy[FuzzCase]:
    @st.composite
    def s(draw: Draw) -> FuzzCase:
        sa, sb = _broadcast_pair(draw)
        a, za = _qin(draw, sa)
        b, zb = _qin(draw, sb, kind=draw(st.sampled_from(["in", "const"])))
        attrs: dict[str, Any] = {"a_zero_point": za, "b_zero_point": zb, **draw(_qrange())}
        if op == "qadd":
            shift = draw(st.sampled_from([0, 1, 10, 20, 30, 31]))
            top = 2**min(shift + 8, 31)
            attrs.update(a_multiplier=draw(st.integers(0, top)),
                         b_multiplier=draw(st.integers(0, top)), shift=shift)
        else:
            attrs.update(multiplier=draw(M0), shift=draw(st.integers(20, 50)))
        return FuzzCase(op, [a, b], attrs, EXACT)
    return s()


def _qcat(cfg: FuzzConfig, op: str) -> st.SearchStrategy[FuzzCase]:
    @st.composite
    def s(draw: Draw) -> FuzzCase:
        rank = draw(st.integers(1, 4))
        shape = _dims(draw, rank, 2000)
        axis = draw(st.integers(-rank, rank - 1))
        ops, zps, ms, ns = [], [], [], []
        for _ in range(draw(st.integers(1, 4))):
            sh = list(shape)
            sh[axis % rank] = draw(st.integers(1, 4))
            x, zp = _qin(draw, sh, kind=draw(st.sampled_from(["in", "in", "const"])))
            ops.append(x)
            zps.append(zp)
            ms.append(draw(M0))
            ns.append(draw(st.integers(25, 40)))
        attrs = {"axis": axis, "zero_points": zps, "multipliers": ms, "shifts": ns,
                 **draw(_qrange())}
        return FuzzCase("qcat", ops, attrs, EXACT)
    return s()


def _qavg_pool(cfg: FuzzConfig, op: str) -> st.SearchStrategy[FuzzCase]:
    @st.composite
    def s(draw: Draw) -> FuzzCase:
        k = [draw(st.integers(1, 7)) for _ in range(2)]
        stride = [draw(st.sampled_from([1, 2, 3, k[i]])) for i in range(2)]
        pad = [draw(st.integers(0, k[i] // 2)) for i in range(2)]
        size = [max(1, k[i] - 2 * pad[i]) + draw(st.sampled_from([0, 0, 1, 3])) for i in range(2)]
        x, zp = _qin(draw, (draw(st.sampled_from([1, 2])), draw(SMALL_DIM), *size))
        window = k[0] * k[1]
        m, shift = draw(M0), draw(st.integers(28, 40))
        attrs = {"kernel": k, "stride": stride, "padding": pad, "in_zero_point": zp,
                 "multiplier": m, "shift": shift + int(math.log2(window)), **draw(_qrange())}
        return FuzzCase("qavg_pool2d", [x], attrs, EXACT)
    return s()


def _observer(cfg: FuzzConfig, op: str) -> st.SearchStrategy[FuzzCase]:
    @st.composite
    def s(draw: Draw) -> FuzzCase:
        return FuzzCase("observer", [_floats(draw, cfg, _shape(draw))], {}, EXACT)
    return s()


def _dynamic_linear(cfg: FuzzConfig, op: str) -> st.SearchStrategy[FuzzCase]:
    @st.composite
    def s(draw: Draw) -> FuzzCase:
        k, n = draw(K_SIZES), draw(N_SIZES)
        batch = _dims(draw, draw(st.integers(0, 2)), 100)
        x = _floats(draw, cfg, (*batch, k), specials=())
        w = Operand("const", (n, k), "i8", "int", -127, 127, seed=draw(SEEDS))
        ops = [x, w]
        if draw(st.booleans()):
            ops.append(_floats(draw, cfg, (n,), kind="const", specials=()))
        attrs = {"w_scale": [draw(SCALE) for _ in range(n)],
                 "per_token": draw(st.booleans()), **_act(draw)}
        return FuzzCase("dynamic_linear", ops, attrs, Tol("tensor", rel=1e-6))
    return s()


# ----------------------------------------------------------------------- the table
Strategy = Callable[[FuzzConfig, str], st.SearchStrategy[FuzzCase]]
STRATEGIES: dict[str, Strategy] = {op: _unary(op) for op in UNARY}
STRATEGIES.update({op: _param_unary for op in ("gelu", "leaky_relu", "elu", "softplus",
                                                "clamp")})
STRATEGIES.update({op: _binary for op in (*BINARY_EXACT, "div", "pow", "logical_and",
                                          "logical_or")})
STRATEGIES.update({
    "logical_not": _logical_not, "cast": _cast, "where": _where,
    "softmax": _softmax, "log_softmax": _softmax,
    "conv1d": _conv(1), "conv2d": _conv(2), "conv_transpose2d": _conv_transpose,
    "linear": _linear, "matmul": _matmul,
    "batch_norm": _norms, "layer_norm": _norms, "group_norm": _norms, "rms_norm": _norms,
    "instance_norm": _norms,
    "max_pool1d": _pool("max", 1), "max_pool2d": _pool("max", 2),
    "avg_pool1d": _pool("avg", 1), "avg_pool2d": _pool("avg", 2),
    "adaptive_avg_pool1d": _adaptive("avg", 1), "adaptive_avg_pool2d": _adaptive("avg", 2),
    "adaptive_max_pool1d": _adaptive("max", 1), "adaptive_max_pool2d": _adaptive("max", 2),
    "mean": _reductions, "sum": _reductions, "amax": _reductions, "amin": _reductions,
    "embedding": _embedding, "pad": _pad, "interpolate": _interpolate, "sdpa": _sdpa,
    "lstm": _rnn_ops("lstm", False), "gru": _rnn_ops("gru", False),
    "observer": _observer, "quantize": _quantize, "dequantize": _dequantize,
    "requantize": _requantize, "qconv1d": _qconv(1), "qconv2d": _qconv(2),
    "qlinear": _qlinear, "qmatmul": _qmatmul, "qadd": _qbinary, "qmul": _qbinary,
    "qcat": _qcat, "qavg_pool2d": _qavg_pool, "dynamic_linear": _dynamic_linear,
    "dynamic_lstm": _rnn_ops("lstm", True), "dynamic_gru": _rnn_ops("gru", True),
})
for _name in ("reshape", "permute", "expand", "cat", "split", "slice", "select"):
    STRATEGIES[_name] = _shape_ops

EXCLUDED: dict[str, str] = {
    "opaque": "an opaque node keeps an arbitrary torch callable; the TVM backend lowers only "
              "allowlisted targets (tests/backends/tvm/test_opaque_lowering.py) and reports "
              "the rest by name: there is no generic op semantics to fuzz",
}

# Ops whose results the integer contract fixes (DESIGN.md §4): the ARM batch runs these.
INTEGER_OPS = ("quantize", "requantize", "qconv1d", "qconv2d", "qlinear", "qmatmul", "qadd",
               "qmul", "qcat", "qavg_pool2d", "dequantize")


def coverage() -> tuple[list[str], list[str]]:
    """(lowered ops without a strategy or exclusion, strategies of unknown ops)."""
    from slimfx.backends.tvm.lower import has_lowering
    from slimfx.ir import (
        all_ops,
        opset_quant,  # noqa: F401  (registers the quantization ops)
    )

    lowered = {name for name in all_ops() if has_lowering(name)}
    missing = sorted(lowered - set(STRATEGIES) - set(EXCLUDED))
    unknown = sorted(set(STRATEGIES) - set(all_ops()))
    return missing, unknown


def case_strategy(ops: Sequence[str] | None = None,
                  cfg: FuzzConfig = FuzzConfig()) -> st.SearchStrategy[FuzzCase]:
    """One case of one of ``ops`` (default: every op with a strategy), ops equally likely.

    """
    names = sorted(STRATEGIES if ops is None else ops)
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        raise KeyError(f"no fuzz strategy for {unknown}; known: {sorted(STRATEGIES)}")

    return st.one_of([STRATEGIES[op](cfg, op) for op in names])


def draw_cases(n: int, seed_value: int, ops: Sequence[str] | None = None,
               cfg: FuzzConfig = FuzzConfig(), prefix: str = "c",
               per_op: bool = False) -> list[FuzzCase]:
    """``n`` cases drawn by hypothesis with a fixed seed (no shrinking, no database).

    With ``per_op``, ``n`` cases of EACH op (every op covered, in name order); else ``n``
    cases in all, ops drawn by hypothesis. Case ids are ``{prefix}{i}_{op}``: give
    batches that run together distinct prefixes.
    """
    if per_op:
        names = sorted(STRATEGIES if ops is None else ops)
        out = [c for i, op in enumerate(names)
               for c in _collect(STRATEGIES[op](cfg, op), n, seed_value + i)]
        for i, case in enumerate(out):
            case.id = f"{prefix}{i}_{case.op}"
        return out
    out = _collect(case_strategy(ops, cfg), n, seed_value)
    for i, case in enumerate(out):
        case.id = f"{prefix}{i}_{case.op}"
    return out


def _collect(strategy: st.SearchStrategy[FuzzCase], n: int, seed_value: int
             ) -> list[FuzzCase]:
    out: list[FuzzCase] = []

    @seed(seed_value)
    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), derandomize=False)
    @given(strategy)
    def collect(case: FuzzCase) -> None:
        out.append(case)

    while len(out) < n:  # hypothesis may stop early when it sees few distinct examples
        before = len(out)
        collect()
        if len(out) == before:
            break
        seed_value += 1
        collect = seed(seed_value)(collect)  # type: ignore[assignment]
    return out[:n]
