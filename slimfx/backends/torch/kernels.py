"""PyTorch kernels for IR ops: the reference semantics of every op.

``KERNELS[op_name](*operands, **attrs)`` returns a tensor, or a tuple for
multi-result ops. Register kernels for your own ops with :func:`register_kernel`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from slimfx.ir.opaque import decode_spec, resolve_target
from slimfx.ir.types import DTYPES

__all__ = ["KERNELS", "register_kernel"]

Kernel = Callable[..., Any]
KERNELS: dict[str, Kernel] = {}


def register_kernel(op: str, *, override: bool = False) -> Callable[[Kernel], Kernel]:
    """Decorator registering the torch kernel of op ``op``."""
    def deco(fn: Kernel) -> Kernel:
        if op in KERNELS and not override:
            raise ValueError(f"a torch kernel for {op!r} is already registered")
        KERNELS[op] = fn
        fn.__name__ = f"slimfx_{op}"
        fn.__qualname__ = fn.__name__
        return fn
    return deco


def _act(y: torch.Tensor, act_min: float | None, act_max: float | None) -> torch.Tensor:
    if act_min is None and act_max is None:
        return y
    if act_min == 0.0 and act_max is None:
        return torch.relu(y)
    return torch.clamp(y, act_min, act_max)


_HALF = (torch.float16, torch.bfloat16)


def _wide(fn: Callable[..., torch.Tensor], *ts: torch.Tensor | None) -> torch.Tensor:
    """``fn(*ts)``; for fp16/bf16 operands computed in fp32 and rounded once (DESIGN.md §4).

    torch's own 16-bit CPU kernels differ by host (oneDNN on AMX hosts rounds partial
    sums to bf16: a tiny wav2vec2 in bf16 is 33% off fp32 there, 0.8% elsewhere); the
    reference, and the TVM lowerings, accumulate in fp32 on every host.
    """
    x = ts[0]
    if x.dtype not in _HALF:
        return fn(*ts)
    return fn(*(t.float() if t is not None else None for t in ts)).to(x.dtype)


@register_kernel("conv1d")
def _conv1d(x, w, b=None, *, stride, padding, dilation, groups, act_min, act_max):
    y = _wide(lambda x, w, b: F.conv1d(x, w, b, stride, padding, dilation, groups), x, w, b)
    return _act(y, act_min, act_max)


@register_kernel("conv2d")
def _conv2d(x, w, b=None, *, stride, padding, dilation, groups, act_min, act_max):
    y = _wide(lambda x, w, b: F.conv2d(x, w, b, stride, padding, dilation, groups), x, w, b)
    return _act(y, act_min, act_max)


@register_kernel("conv_transpose2d")
def _conv_t2d(x, w, b=None, *, stride, padding, output_padding, dilation, groups, act_min, act_max):
    y = _wide(lambda x, w, b: F.conv_transpose2d(x, w, b, stride, padding, output_padding,
                                                 groups, dilation), x, w, b)
    return _act(y, act_min, act_max)


@register_kernel("linear")
def _linear(x, w, b=None, *, act_min, act_max):
    return _act(_wide(F.linear, x, w, b), act_min, act_max)


@register_kernel("matmul")
def _matmul(a, b):
    return _wide(torch.matmul, a, b)


@register_kernel("batch_norm")
def _batch_norm(x, mean, var, weight=None, bias=None, *, eps):
    # running statistics are never trained (to_torch may make them Parameters)
    return F.batch_norm(x, mean.detach(), var.detach(), weight, bias, False, 0.0, eps)


@register_kernel("layer_norm")
def _layer_norm(x, weight=None, bias=None, *, normalized_shape, eps):
    return F.layer_norm(x, list(normalized_shape), weight, bias, eps)


@register_kernel("group_norm")
def _group_norm(x, weight=None, bias=None, *, num_groups, eps):
    return F.group_norm(x, num_groups, weight, bias, eps)


@register_kernel("instance_norm")
def _instance_norm(x, weight=None, bias=None, *, eps):
    return F.instance_norm(x, None, None, weight, bias, True, 0.0, eps)


@register_kernel("rms_norm")
def _rms_norm(x, weight=None, *, normalized_shape, eps):
    return F.rms_norm(x, list(normalized_shape), weight, eps)


_UNARY: dict[str, Kernel] = {
    "relu": torch.relu, "relu6": F.relu6, "silu": F.silu, "sigmoid": torch.sigmoid,
    "tanh": torch.tanh, "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid, "mish": F.mish,
    "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt, "rsqrt": torch.rsqrt, "neg": torch.neg,
    "abs": torch.abs, "erf": torch.erf, "sin": torch.sin, "cos": torch.cos,
    "reciprocal": torch.reciprocal, "floor": torch.floor, "ceil": torch.ceil, "round": torch.round,
    "sign": torch.sign, "logical_not": torch.logical_not,
}


def _unary(fn: Kernel) -> Kernel:
    def k(x):
        return fn(x)
    return k


for _name, _fn in _UNARY.items():
    register_kernel(_name)(_unary(_fn))


@register_kernel("gelu")
def _gelu(x, *, approximate):
    y = F.gelu(x, approximate=approximate)
    if approximate == "none" and x.is_floating_point():
        # torch's vectorised erf gives NaN at +-inf (fp32, bf16, and fp16 on AVX512-FP16
        # hosts), but its fp16 kernel elsewhere gives +inf for +inf: the host decides. slimfx
        # fixes NaN for both infinities on every host and backend (DESIGN 4, non-finite values)
        y = torch.where(torch.isinf(x), torch.full_like(y, float("nan")), y)
    return y


@register_kernel("leaky_relu")
def _leaky_relu(x, *, negative_slope):
    return F.leaky_relu(x, negative_slope)


@register_kernel("elu")
def _elu(x, *, alpha):
    return F.elu(x, alpha)


@register_kernel("softplus")
def _softplus(x, *, beta, threshold):
    return F.softplus(x, beta, threshold)


@register_kernel("clamp")
def _clamp(x, *, min, max):  # noqa: A002
    return torch.clamp(x, min, max)


@register_kernel("softmax")
def _softmax(x, *, axis):
    return torch.softmax(x, axis)


@register_kernel("log_softmax")
def _log_softmax(x, *, axis):
    return torch.log_softmax(x, axis)


@register_kernel("cast")
def _cast(x, *, dtype):
    return x.to(DTYPES[dtype])


@register_kernel("identity")
def _identity(x):
    return x


@register_kernel("dropout")
def _dropout(x, *, p):
    return x


_BINARY: dict[str, Kernel] = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "pow": torch.pow,
    "maximum": torch.maximum, "minimum": torch.minimum, "eq": torch.eq, "ne": torch.ne,
    "lt": torch.lt, "le": torch.le, "gt": torch.gt, "ge": torch.ge,
    "logical_and": torch.logical_and, "logical_or": torch.logical_or,
}


def _binary(fn: Kernel) -> Kernel:
    def k(a, b):
        return fn(a, b)
    return k


for _name, _fn in _BINARY.items():
    register_kernel(_name)(_binary(_fn))


@register_kernel("div")
def _div(a, b, *, rounding_mode):
    out = torch.result_type(a, b)
    if rounding_mode is not None and out in (torch.float16, torch.bfloat16):
        # torch's own 16-bit trunc/floor division rounds a / b to 16 bits first on some
        # kernel paths (vectorized, contiguous) and not on others (scalars, tails): the
        # result depends on the shape. slimfx defines it once, as torch's scalar path
        # does: computed in fp32, the integer result rounded to the 16-bit type.
        return torch.div(a.float(), b.float(), rounding_mode=rounding_mode).to(out)
    return torch.div(a, b, rounding_mode=rounding_mode)


@register_kernel("where")
def _where(cond, a, b):
    return torch.where(cond, a, b)


@register_kernel("max_pool1d")
def _max_pool1d(x, *, kernel, stride, padding, dilation, ceil_mode):
    return F.max_pool1d(x, kernel, stride, padding, dilation, ceil_mode)


@register_kernel("max_pool2d")
def _max_pool2d(x, *, kernel, stride, padding, dilation, ceil_mode):
    return F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)


@register_kernel("avg_pool1d")
def _avg_pool1d(x, *, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    if divisor_override is None:
        return F.avg_pool1d(x, kernel, stride, padding, ceil_mode, count_include_pad)
    # F.avg_pool1d has no divisor_override (it was ignored here): the 2-d pool over [.., 1, L]
    y = F.avg_pool2d(x.unsqueeze(-2), [1, *kernel], [1, *stride], [0, *padding], ceil_mode,
                     count_include_pad, divisor_override)
    return y.squeeze(-2)


@register_kernel("avg_pool2d")
def _avg_pool2d(x, *, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    return F.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)


@register_kernel("adaptive_avg_pool1d")
def _aap1d(x, *, output_size):
    return F.adaptive_avg_pool1d(x, output_size)


@register_kernel("adaptive_avg_pool2d")
def _aap2d(x, *, output_size):
    return F.adaptive_avg_pool2d(x, output_size)


@register_kernel("adaptive_max_pool1d")
def _amp1d(x, *, output_size):
    return F.adaptive_max_pool1d(x, output_size)


@register_kernel("adaptive_max_pool2d")
def _amp2d(x, *, output_size):
    return F.adaptive_max_pool2d(x, output_size)


@register_kernel("reshape")
def _reshape(x, *, shape):
    return torch.reshape(x, shape)


@register_kernel("permute")
def _permute(x, *, dims):
    return torch.permute(x, dims)


@register_kernel("expand")
def _expand(x, *, shape):
    return x.expand(shape)


@register_kernel("cat")
def _cat(*xs, axis):
    return torch.cat(xs, axis)


@register_kernel("split")
def _split(x, *, axis, sizes):
    return tuple(torch.split(x, list(sizes), axis))


@register_kernel("slice")
def _slice(x, *, axis, start, end, step):
    return torch.ops.aten.slice.Tensor(x, axis, start, end, step)


@register_kernel("select")
def _select(x, *, axis, index):
    return torch.select(x, axis, index)


def _reducer(fn: Kernel) -> Kernel:
    def k(x, *, axes, keepdim):
        dims = list(axes) if axes else list(range(x.dim()))
        return fn(x, dims, keepdim=keepdim)
    return k


register_kernel("mean")(_reducer(torch.mean))
register_kernel("sum")(_reducer(torch.sum))
register_kernel("amax")(_reducer(torch.amax))
register_kernel("amin")(_reducer(torch.amin))


@register_kernel("embedding")
def _embedding(indices, weight):
    return F.embedding(indices, weight)


@register_kernel("pad")
def _pad(x, *, pads, mode, value):
    if mode == "constant":
        return F.pad(x, list(pads), mode, value)
    return F.pad(x, list(pads), mode)


@register_kernel("interpolate")
def _interpolate(x, *, size, mode, align_corners):
    return F.interpolate(x, size=list(size), mode=mode, align_corners=align_corners)


@register_kernel("sdpa")
def _sdpa(q, k, v, mask=None, *, is_causal, scale, enable_gqa):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                          scale=scale, enable_gqa=enable_gqa)


@register_kernel("lstm")
def _lstm(x, h0, c0, *weights, hidden_size, num_layers, bidirectional, batch_first, has_biases):
    out, h, c = torch.ops.aten.lstm.input(x, [h0, c0], list(weights), has_biases, num_layers,
                                          0.0, False, bidirectional, batch_first)
    return out, h, c


@register_kernel("gru")
def _gru(x, h0, *weights, hidden_size, num_layers, bidirectional, batch_first, has_biases):
    out, h = torch.ops.aten.gru.input(x, h0, list(weights), has_biases, num_layers, 0.0, False,
                                      bidirectional, batch_first)
    return out, h


@register_kernel("opaque")
def _opaque(*xs, target, spec):
    fn = resolve_target(target)
    args, kwargs = decode_spec(spec, list(xs))
    return fn(*args, **kwargs)
