"""The torch kernel of ``fake_quantize``: simulated quantization that trains (QAT).

Forward, bit for bit what ``dequantize(quantize(x))`` computes in this backend
(``kernels_quant.py``), with ``s = float32(scale)`` and
``z = clamp(round_half_even(zero_point), qmin, qmax)`` broadcast along ``axis``::

    r = round_half_even(float32(x) / s) + z
    q = clamp(r, qmin, qmax)                 (q = z where x is NaN)
    y = (q - z) * s                          (float32; q - z is an exact small integer)

Backward (a :class:`torch.autograd.Function`), with ``inside = qmin <= r <= qmax``
(the rounded value, as :func:`torch.fake_quantize_per_tensor_affine` uses):

- input, straight-through estimator: ``dy/dx = 1`` inside the range, ``0`` outside;
- scale, LSQ (Esser et al. 2019, "Learned Step Size Quantization")::

      dy/ds = (r - z) - x / s     inside     (round(x/s) - x/s)
            = qmin - z            r < qmin
            = qmax - z            r > qmax

  summed over the elements sharing the scale and multiplied by the gradient scale
  ``g = 1 / sqrt(n * qmax)``, ``n`` the number of elements per scale (all of ``x``
  per tensor, one channel per channel; ``qmax`` at least 1);
- zero point (LSQ+ style, as :func:`torch._fake_quantize_learnable_per_tensor_affine`):
  ``dy/dz = 0`` inside, ``-s`` outside, summed and scaled by the same ``g``.

Scale and zero point get gradients only when they require them (``to_torch`` makes
them parameters when the node has ``learn_scale`` / ``learn_zero_point``; buffers
otherwise). Gradients are returned in the dtype of each operand (scales are float64
constants in the IR so the fixed-point multipliers of ``convert`` see the same
values as post-training quantization).

Conv + batch norm trained with batch statistics (``fold_bn`` and ``conv2d_bn``; the
formulas and the choice of scheme are in ``slimfx/passes/quant/qat_bn.py``):
``fold_bn`` is :func:`slimfx.passes.fold_batchnorm.fold_bn_weights` itself, so the
folded weight fake-quantized in training is bit for bit the one ``slimfx.convert``
quantizes; :class:`ConvBn2dKernel` is a module (one per node, ``to_torch`` calls it
with ``call_module``) because it behaves by ``self.training`` and
``self.freeze_bn``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from slimfx.backends.torch.kernels import _act, register_kernel

__all__ = ["ConvBn2dKernel", "fake_quantize", "lsq_grad_scale"]


def lsq_grad_scale(numel_per_scale: int, qmax: int) -> float:
    """The LSQ gradient scale ``g = 1 / sqrt(n * qmax)`` (``qmax`` at least 1)."""
    return 1.0 / math.sqrt(max(numel_per_scale, 1) * max(qmax, 1))


def _view(t: torch.Tensor, axis: int | None, rank: int) -> torch.Tensor:
    if axis is None:
        return t.reshape(())
    shape = [1] * rank
    shape[axis] = -1
    return t.reshape(shape)


def _zero_point(zp: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """The integer zero point as float32: ``clamp(round_half_even(zp), qmin, qmax)``."""
    z = zp.detach()
    if z.is_floating_point():
        z = torch.round(z)
    return z.clamp(qmin, qmax).to(torch.float32)


class _FakeQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                qmin: int, qmax: int, axis: int | None) -> torch.Tensor:
        rank = x.dim()
        ax = None if axis is None else axis % max(rank, 1)
        s = _view(scale.detach().to(torch.float32), ax, rank)
        z = _view(_zero_point(zero_point, qmin, qmax), ax, rank)
        x32 = x.detach().to(torch.float32)
        xs = x32 / s
        r = torch.round(xs) + z
        q = torch.where(torch.isnan(x32), z, torch.clamp(r, qmin, qmax))
        ctx.save_for_backward(xs, r, s, z)
        ctx.meta = (qmin, qmax, ax, scale.dtype, zero_point.dtype, x.dtype,
                    tuple(scale.shape), tuple(zero_point.shape))
        return (q - z) * s

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        xs, r, s, z = ctx.saved_tensors
        qmin, qmax, ax, s_dtype, z_dtype, x_dtype, s_shape, z_shape = ctx.meta
        g32 = grad.to(torch.float32)
        inside = (r >= qmin) & (r <= qmax)
        dx = (g32 * inside).to(x_dtype) if ctx.needs_input_grad[0] else None
        dims = tuple(d for d in range(xs.dim()) if d != ax)
        n = xs.numel() if ax is None else xs.numel() // max(xs.shape[ax], 1)
        g = lsq_grad_scale(n, qmax)
        ds = dz = None
        if ctx.needs_input_grad[1]:
            outside = torch.where(r < qmin, qmin - z, qmax - z)
            d = torch.where(inside, (r - z) - xs, outside)
            ds = ((g32 * d).sum(dims) * g).reshape(s_shape).to(s_dtype)
        if ctx.needs_input_grad[2]:
            d = torch.where(inside, torch.zeros_like(r), -s.expand_as(r))
            dz = ((g32 * d).sum(dims) * g).reshape(z_shape).to(z_dtype)
        return dx, ds, dz, None, None, None


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, *,
                  qmin: int = -128, qmax: int = 127, axis: int | None = None) -> torch.Tensor:
    """``dequantize(quantize(x))`` with STE / LSQ gradients (see the module docstring).

    Args:
        x: the tensor to fake-quantize.
        scale: one scale (per tensor) or one per channel of ``axis``.
        zero_point: like ``scale``; an integer tensor, or a float one (rounded half to even).
        qmin, qmax: the integer range (int8 ``[-128, 127]``, int4 ``[-8, 7]``, ...).
        axis: the channel axis, ``None`` for per tensor.
    """
    return _FakeQuantize.apply(x, scale, zero_point, qmin, qmax, axis)


@register_kernel("fake_quantize")
def _fake_quantize_kernel(x, scale, zero_point, *, dtype, qmin, qmax, axis, learn_scale,
                          learn_zero_point):
    return fake_quantize(x, scale, zero_point, qmin=qmin, qmax=qmax, axis=axis)


@register_kernel("fold_bn")
def _fold_bn_kernel(weight, bias, mean, var, gamma, beta, *, eps):
    from slimfx.passes.fold_batchnorm import fold_bn_weights

    return fold_bn_weights("conv2d", weight, bias, 1, mean.detach(), var.detach(), gamma, beta,
                           eps)


def bn_scale(gamma: torch.Tensor, var: torch.Tensor, eps: float,
             dtype: torch.dtype) -> torch.Tensor:
    """``s = gamma / sqrt(var + eps)`` as ``fold_bn_weights`` computes it (float64, then
    ``dtype``), differentiable in ``gamma``."""
    return (torch.rsqrt(var.detach().to(torch.float64) + eps) * gamma.to(torch.float64)).to(dtype)


@register_kernel("conv2d_bn")
class ConvBn2dKernel(torch.nn.Module):
    """The torch kernel of ``conv2d_bn``: batch statistics in training, folded otherwise.

    Eval mode, or ``freeze_bn`` set (:func:`slimfx.passes.quant.qat.freeze_bn_stats`):
    ``act(conv2d(x, weight, bias))``, ``weight`` / ``bias`` being the folded (and
    fake-quantized) ``fold_bn`` results, exactly the converted program. Training: with
    ``s = gamma / sqrt(running_var + eps)`` (``s = 1`` where ``gamma = 0``, whose
    channel is ``beta`` anyway)::

        c = conv2d(x, weight)                      # weight = fq(W * s)
        y = act(batch_norm_train(c / s + conv_bias, running_mean, running_var, gamma, beta))

    which updates the running statistics in place (``momentum``) and back-propagates
    through the batch mean and variance, as ``nn.BatchNorm2d`` does.
    """

    def __init__(self) -> None:
        super().__init__()
        self.freeze_bn = False

    def forward(self, x, weight, bias, conv_bias, mean, var, gamma, beta, *, stride, padding,
                dilation, groups, act_min, act_max, eps, momentum):
        if not self.training or self.freeze_bn:
            return _act(F.conv2d(x, weight, bias, stride, padding, dilation, groups),
                        act_min, act_max)
        s = bn_scale(gamma, var, eps, weight.dtype)
        s = torch.where(s == 0, torch.ones_like(s), s).reshape(1, -1, 1, 1)
        c = F.conv2d(x, weight, None, stride, padding, dilation, groups)
        y = F.batch_norm(c / s + conv_bias.reshape(1, -1, 1, 1), mean, var, gamma, beta, True,
                         momentum, eps)
        return _act(y, act_min, act_max)
