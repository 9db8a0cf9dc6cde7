"""Relax lowerings of ``lstm`` and ``gru``, unrolled over the (static) time steps.

Weights come in torch's flat order, per layer and direction: ``w_ih, w_hh[, b_ih, b_hh]``.
The input projection of all time steps is one matmul; each step then adds ``h @ w_hh^T``:

- LSTM (gates i, f, g, o): ``c' = sigmoid(f) * c + sigmoid(i) * tanh(g)``,
  ``h' = sigmoid(o) * tanh(c')``.
- GRU (gates r, z, n): ``r, z = sigmoid(x_r + h_r), sigmoid(x_z + h_z)``,
  ``n = tanh(x_n + r * h_n)`` (``h_n`` includes ``b_hn``), ``h' = (1 - z) * n + z * h``.

The reverse direction walks the steps backwards and its outputs are written back in
forward order; layers stack, and bidirectional outputs concatenate on the feature axis.
"""

from __future__ import annotations

from collections.abc import Callable

from tvm import relax
from tvm.relax import Expr

from slimfx.backends.tvm.lower import LowerContext, register_lowering
from slimfx.ir.core import Node

__all__ = ["rnn"]

R = relax.op
# project(x, i) = x @ weights[i]^T (no bias): a float matmul, or dynamic int8 for dynamic_*.
Project = Callable[[Expr, int], Expr]


def _linear(ctx: LowerContext, x: Expr, project: Project, i: int, b: Expr | None) -> Expr:
    """``x @ weights[i]^T + b``."""
    y = project(x, i)
    return y if b is None else ctx.emit(R.add(y, b))


def _float_project(ctx: LowerContext, weights: tuple[Expr, ...]) -> Project:
    transposed: dict[int, Expr] = {}

    def project(x: Expr, i: int) -> Expr:
        if i not in transposed:
            transposed[i] = ctx.permute(weights[i], [1, 0])
        return ctx.emit(R.matmul(x, transposed[i]))
    return project


def _chunks(ctx: LowerContext, x: Expr, n: int) -> list[Expr]:
    shape = ctx.shape_of(x)
    size = shape[-1] // n
    axis = len(shape) - 1
    return [ctx.emit(R.strided_slice(x, [axis], [i * size], [(i + 1) * size])) for i in range(n)]


def _step_input(ctx: LowerContext, xs: Expr, t: int) -> Expr:
    shape = ctx.shape_of(xs)
    part = ctx.emit(R.strided_slice(xs, [0], [t], [t + 1]))
    return ctx.emit(R.reshape(part, list(shape[1:])))


def _state(ctx: LowerContext, s: Expr, index: int) -> Expr:
    return _step_input(ctx, s, index)


def _lstm_cell(ctx: LowerContext, gi: Expr, h: Expr, c: Expr, project: Project, i_hh: int,
               b_hh: Expr | None) -> tuple[Expr, Expr]:
    g = ctx.emit(R.add(gi, _linear(ctx, h, project, i_hh, b_hh)))
    i, f, gg, o = _chunks(ctx, g, 4)
    c = ctx.emit(R.add(R.multiply(R.sigmoid(f), c), R.multiply(R.sigmoid(i), R.tanh(gg))))
    h = ctx.emit(R.multiply(R.sigmoid(o), R.tanh(c)))
    return h, c


def _gru_cell(ctx: LowerContext, gi: Expr, h: Expr, project: Project, i_hh: int,
              b_hh: Expr | None) -> Expr:
    gh = _linear(ctx, h, project, i_hh, b_hh)
    xr, xz, xn = _chunks(ctx, gi, 3)
    hr, hz, hn = _chunks(ctx, gh, 3)
    r = ctx.emit(R.sigmoid(R.add(xr, hr)))
    z = ctx.emit(R.sigmoid(R.add(xz, hz)))
    n = ctx.emit(R.tanh(R.add(xn, R.multiply(r, hn))))
    one = ctx.scalar(1.0, ctx.dtype_of(h))
    return ctx.emit(R.add(R.multiply(R.subtract(one, z), n), R.multiply(z, h)))


def rnn(kind: str, ctx: LowerContext, node: Node, x: Expr, h0: Expr, c0: Expr | None,
        weights: tuple[Expr, ...], project: Project | None = None) -> list[Expr]:
    """Unrolls an LSTM/GRU; ``project`` computes the weight products (float by default).

    With a custom ``project`` (dynamic int8), the 2-D weights are left as they are and only
    the biases are cast to the input dtype.
    """
    a = node.attrs
    dirs = 2 if a["bidirectional"] else 1
    per = 4 if a["has_biases"] else 2
    dt = ctx.dtype_of(x)
    if project is None:
        weights = tuple(ctx.cast(w, dt) for w in weights)
        project = _float_project(ctx, weights)
    else:
        weights = tuple(w if len(ctx.shape_of(w)) == 2 else ctx.cast(w, dt) for w in weights)
    if a["batch_first"]:
        x = ctx.emit(R.permute_dims(x, [1, 0, 2]))
    steps = ctx.shape_of(x)[0]
    layer_in = x
    h_out: list[Expr] = []
    c_out: list[Expr] = []
    for layer in range(a["num_layers"]):
        outs = []
        for d in range(dirs):
            idx = (layer * dirs + d) * per
            b_ih = weights[idx + 2] if a["has_biases"] else None
            b_hh = weights[idx + 3] if a["has_biases"] else None
            xi_all = _linear(ctx, layer_in, project, idx, b_ih)  # [T, B, G*H]
            h = _state(ctx, h0, layer * dirs + d)
            c = _state(ctx, c0, layer * dirs + d) if c0 is not None else None
            seq: list[Expr] = []
            order = range(steps - 1, -1, -1) if d == 1 else range(steps)
            for t in order:
                gi = _step_input(ctx, xi_all, t)
                if kind == "lstm":
                    assert c is not None
                    h, c = _lstm_cell(ctx, gi, h, c, project, idx + 1, b_hh)
                else:
                    h = _gru_cell(ctx, gi, h, project, idx + 1, b_hh)
                seq.append(h)
            if d == 1:
                seq.reverse()
            outs.append(ctx.emit(R.stack(seq, 0)))
            h_out.append(h)
            if c is not None:
                c_out.append(c)
        layer_in = ctx.emit(R.concat(outs, 2)) if dirs == 2 else outs[0]
    out = ctx.emit(R.permute_dims(layer_in, [1, 0, 2])) if a["batch_first"] else layer_in
    results = [out, ctx.emit(R.stack(h_out, 0))]
    if kind == "lstm":
        results.append(ctx.emit(R.stack(c_out, 0)))
    return results


@register_lowering("lstm")
def _lstm(ctx: LowerContext, node: Node, x: Expr, h0: Expr, c0: Expr, *weights: Expr) -> list:
    return rnn("lstm", ctx, node, x, h0, c0, weights)


@register_lowering("gru")
def _gru(ctx: LowerContext, node: Node, x: Expr, h0: Expr, *weights: Expr) -> list:
    return rnn("gru", ctx, node, x, h0, None, weights)
