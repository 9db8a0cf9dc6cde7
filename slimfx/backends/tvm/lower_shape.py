"""Relax lowerings of data movement and reductions: reshape, permute, expand, cat, split,
slice, select, mean/sum/amax/amin, embedding (``take``), pad and interpolate (``resize2d``).

Shapes are static, so ``-1`` in a reshape and clipped slice bounds are resolved from the
IR types before they reach TVM. torch's interpolation modes map to ``resize2d`` as:
``nearest`` -> asymmetric coordinates, floor rounding; ``nearest-exact`` -> half-pixel,
round-prefer-ceil; ``bilinear``/``bicubic`` -> half-pixel (``align_corners``: align-corners)
with torch's cubic coefficient -0.75.
"""

from __future__ import annotations

from tvm import relax
from tvm.relax import Expr

from slimfx.backends.tvm.lower import LowerContext, register_lowering, to_tvm_dtype
from slimfx.backends.tvm.lower_elementwise import propagate_nan
from slimfx.errors import LoweringError
from slimfx.ir.core import Node
from slimfx.ir.shapes import norm_axis

__all__: list[str] = []  # registers lowerings on import; nothing to call directly

R = relax.op


@register_lowering("reshape")
def _reshape(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    return R.reshape(x, ctx.relax_shape(node.outputs[0].shape))


@register_lowering("permute")
def _permute(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    return R.permute_dims(x, list(node.attrs["dims"]))


@register_lowering("expand")
def _expand(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    return R.broadcast_to(x, ctx.relax_shape(node.outputs[0].shape))


@register_lowering("cat")
def _cat(ctx: LowerContext, node: Node, *xs: Expr) -> Expr:
    dt = to_tvm_dtype(node.outputs[0].dtype)
    axis = norm_axis(node.attrs["axis"], len(node.outputs[0].shape))
    return R.concat([ctx.cast(x, dt) for x in xs], axis)


@register_lowering("split")
def _split(ctx: LowerContext, node: Node, x: Expr) -> list[Expr]:
    axis = norm_axis(node.attrs["axis"], ctx.rank_of(x))
    sizes = list(node.attrs["sizes"])
    outs = []
    start = 0
    for s in sizes:  # strided slices: split() needs >1 section and drops empty ones
        outs.append(ctx.emit(R.strided_slice(x, [axis], [start], [start + s])))
        start += s
    return outs


@register_lowering("slice")
def _slice(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    a = node.attrs
    axis = norm_axis(a["axis"], ctx.rank_of(x))
    if type(a["start"]) is not int or type(a["end"]) is not int:
        # a symbolic bound (``arange(n)[:B]``, ``position_ids[:, :S]``) on a static axis:
        # type inference took 0 <= start <= end <= size, and the frontend checked it
        size = ctx.static_dim(x, axis)
        end = size if type(a["end"]) is int and a["end"] >= size else a["end"]
        if a["step"] <= 0 or (type(a["start"]) is int and a["start"] < 0):
            raise LoweringError(f"a slice with a symbolic bound needs start >= 0 and step >= 1, "
                                f"got start={a['start']}, step={a['step']}")
        return R.strided_slice(x, [axis], [ctx.dim(a["start"])], [ctx.dim(end)], [a["step"]],
                               assume_inbound=True)
    start, end, step = slice(a["start"], a["end"], a["step"]).indices(ctx.static_dim(x, axis))
    if step <= 0:
        raise LoweringError(f"slice step must be positive, got {a['step']}")
    if len(range(start, end, step)) == 0:
        raise LoweringError("an empty slice cannot be lowered to TVM")
    return R.strided_slice(x, [axis], [start], [end], [step], assume_inbound=True)


@register_lowering("select")
def _select(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    axis = norm_axis(node.attrs["axis"], ctx.rank_of(x))
    index = node.attrs["index"] % ctx.static_dim(x, axis)
    part = ctx.emit(R.strided_slice(x, [axis], [index], [index + 1]))
    return R.reshape(part, ctx.relax_shape(node.outputs[0].shape))


def _reducer(fn):
    def lower(ctx: LowerContext, node: Node, x: Expr) -> Expr:
        axes = list(node.attrs["axes"]) or None
        keep = node.attrs["keepdim"]
        dt = to_tvm_dtype(node.outputs[0].dtype)
        return ctx.cast(ctx.emit(fn(x, axes, keep)), dt)
    return lower


register_lowering("mean")(_reducer(R.mean))
register_lowering("sum")(_reducer(R.sum))
def _nan_reducer(fn):
    """``amax``/``amin``: NaN when the reduced elements hold a NaN, -inf (amin: +inf) when they
    are all -inf (+inf), as torch (TVM drops NaN and starts from the lowest finite value)."""
    def lower(ctx: LowerContext, node: Node, x: Expr) -> Expr:
        axes = list(node.attrs["axes"]) or None
        keep = node.attrs["keepdim"]
        dt = to_tvm_dtype(node.outputs[0].dtype)
        y = propagate_nan(ctx, x, ctx.emit(fn(x, axes, keep)), lambda t: R.max(t, axes, keep),
                          minimum=fn is R.min)
        return ctx.cast(y, dt)
    return lower


register_lowering("amax")(_nan_reducer(R.max))
register_lowering("amin")(_nan_reducer(R.min))


@register_lowering("embedding")
def _embedding(ctx: LowerContext, node: Node, indices: Expr, weight: Expr) -> Expr:
    return R.take(weight, indices, axis=0)


@register_lowering("pad")
def _pad(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    a = node.attrs
    rank = ctx.rank_of(x)
    pads = list(a["pads"])
    width = [0] * (2 * rank)
    for i in range(len(pads) // 2):  # torch order: last axis first, (before, after)
        axis = rank - 1 - i
        width[2 * axis], width[2 * axis + 1] = pads[2 * i], pads[2 * i + 1]
    if any(p < 0 for p in width):
        raise LoweringError("negative padding (cropping) is not supported by the TVM lowering")
    mode = a["mode"]
    if mode not in ("constant", "reflect", "replicate", "circular"):
        raise LoweringError(f"pad mode {mode!r} is not supported; use constant, reflect, "
                            "replicate or circular")
    if mode == "circular":
        return _circular_pad(ctx, x, width)
    return R.nn.pad(x, width, mode, a["value"])


def _circular_pad(ctx: LowerContext, x: Expr, width: list[int]) -> Expr:
    shape = ctx.shape_of(x)
    for axis in range(len(shape)):
        lo, hi = width[2 * axis], width[2 * axis + 1]
        if lo == 0 and hi == 0:
            continue
        n = shape[axis]
        parts = []
        if lo:
            parts.append(R.strided_slice(x, [axis], [n - lo], [n]))
        parts.append(x)
        if hi:
            parts.append(R.strided_slice(x, [axis], [0], [hi]))
        x = ctx.emit(R.concat([ctx.emit(p) if p is not x else p for p in parts], axis))
    return x


_RESIZE = {
    "nearest": ("nearest_neighbor", "asymmetric", "floor"),
    "nearest-exact": ("nearest_neighbor", "half_pixel", "round_prefer_ceil"),
    "bilinear": ("linear", "half_pixel", ""),
    "bicubic": ("cubic", "half_pixel", ""),
}


@register_lowering("interpolate")
def _interpolate(ctx: LowerContext, node: Node, x: Expr) -> Expr:
    a = node.attrs
    if ctx.rank_of(x) != 4:
        raise LoweringError("interpolate is lowered for 4-D (NCHW) inputs only")
    if a["mode"] not in _RESIZE:
        raise LoweringError(f"interpolate mode {a['mode']!r} is not supported; known: "
                            f"{sorted(_RESIZE)}")
    method, coord, rounding = _RESIZE[a["mode"]]
    size = tuple(a["size"])
    if a["align_corners"] and method != "nearest_neighbor":
        coord = "align_corners"
        if 1 in size:
            return _align_corners_to_one(ctx, x, size, method)
    return R.image.resize2d(x, size, method=method,
                            coordinate_transformation_mode=coord, rounding_method=rounding,
                            cubic_alpha=-0.75, cubic_exclude=0)


def _align_corners_to_one(ctx: LowerContext, x: Expr, size: tuple[int, ...],
                          method: str) -> Expr:
    """align_corners resize where an output extent is 1: torch reads input index 0 there.

    TVM's ``align_corners`` mode divides by ``out - 1`` (a build-time division by zero).
    Each such axis is sliced to its first element; if another axis still needs resizing,
    the sliced axes are doubled (2 -> 2 under align_corners is the identity), resized and
    sliced back.
    """
    ones = [ax for ax in (2, 3) if size[ax - 2] == 1]
    for ax in ones:
        x = ctx.emit(R.strided_slice(x, [ax], [0], [1]))
    if tuple(ctx.shape_of(x)[2:]) == size:
        return x
    for ax in ones:
        x = ctx.emit(R.concat([x, x], ax))
    tmp = tuple(2 if s == 1 else s for s in size)
    x = ctx.emit(R.image.resize2d(x, tmp, method=method,
                                  coordinate_transformation_mode="align_corners",
                                  cubic_alpha=-0.75, cubic_exclude=0))
    for ax in ones:
        x = ctx.emit(R.strided_slice(x, [ax], [0], [1]))
    return x
