"""Torch backend: IR -> runnable, differentiable ``torch.fx.GraphModule`` (the reference)."""

from __future__ import annotations

from slimfx.backends.torch import kernels_qat as _kernels_qat  # noqa: F401  (fake_quantize)
from slimfx.backends.torch import kernels_quant as _kernels_quant  # noqa: F401  (quant kernels)
from slimfx.backends.torch.kernels import KERNELS, register_kernel
from slimfx.backends.torch.module import SlimfxModule, sync_constants, to_torch

__all__ = ["KERNELS", "SlimfxModule", "register_kernel", "sync_constants", "to_torch"]
