"""4-bit integer constants: which constants are 4-bit, and how they are packed.

A 4-bit weight is an ``i8`` constant whose quantization parameters give an integer
range inside ``[-8, 7]`` (the W4A8 preset uses the symmetric ``[-7, 7]``, zero point 0):
the IR, the torch backend and the TVM kernels compute on its int8 values, so the integer
contract of DESIGN.md §4 is unchanged. Storage is where the 4 bits pay off: graph files
(``serialize.py``), size reports and compiled artifacts hold such a constant *packed*,
two values per byte:

- the values are taken in C (row-major) order, ``v[0], v[1], ...``;
- byte ``i`` holds ``v[2i]`` in its low nibble and ``v[2i+1]`` in its high nibble, each as
  a 4-bit two's complement number (``v & 0xF``);
- an odd count leaves the high nibble of the last byte 0.

So ``n`` values take ``ceil(n / 2)`` bytes, and unpacking is
``lo = ((b << 4) as i8) >> 4``, ``hi = (b as i8) >> 4`` (arithmetic shifts).
"""

from __future__ import annotations

import torch

from slimfx.ir.core import Value

__all__ = ["INT4_RANGE", "is_int4", "pack_int4", "unpack_int4", "packed_nbytes",
           "stored_nbytes"]

INT4_RANGE = (-8, 7)
"""The integer range a 4-bit two's complement nibble holds."""


def is_int4(value: Value) -> bool:
    """Whether ``value`` is an ``i8`` constant whose qparams range fits in 4 bits."""
    qp = value.qparams
    return (value.is_const and value.dtype == "i8" and qp is not None
            and qp.qmin >= INT4_RANGE[0] and qp.qmax <= INT4_RANGE[1])


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """The ``uint8`` tensor of ``ceil(numel / 2)`` bytes holding ``values`` (module docstring).

    Raises:
        ValueError: ``values`` is not an integer tensor, or holds a value outside [-8, 7].
    """
    if values.dtype.is_floating_point or values.dtype in (torch.bool, torch.complex64):
        raise ValueError(f"pack_int4 needs an integer tensor, got {values.dtype}")
    flat = values.detach().reshape(-1).to(torch.int16)
    if flat.numel() and (int(flat.min()) < INT4_RANGE[0] or int(flat.max()) > INT4_RANGE[1]):
        raise ValueError(f"pack_int4: values must lie in [-8, 7], found [{int(flat.min())}, "
                         f"{int(flat.max())}]")
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    nibbles = flat & 0xF
    return (nibbles[0::2] | (nibbles[1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor, shape: tuple[int, ...] | list[int]) -> torch.Tensor:
    """The ``int8`` tensor of ``shape`` that :func:`pack_int4` packed into ``packed``.

    Raises:
        ValueError: ``packed`` is not ``uint8``, or its size does not match ``shape``.
    """
    numel = 1
    for d in shape:
        numel *= int(d)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != packed_nbytes(numel):
        raise ValueError(f"unpack_int4: expected uint8[{packed_nbytes(numel)}] for {numel} "
                         f"values of shape {list(shape)}, got {packed.dtype}"
                         f"{list(packed.shape)}")
    b = packed.to(torch.int16)
    lo = ((b & 0xF) ^ 0x8) - 0x8  # sign-extend the low nibble
    hi = ((b >> 4) ^ 0x8) - 0x8
    out = torch.stack([lo, hi], dim=1).reshape(-1)[:numel]
    return out.to(torch.int8).reshape(tuple(int(d) for d in shape))


def packed_nbytes(numel: int) -> int:
    """Bytes of ``numel`` packed 4-bit values."""
    return (numel + 1) // 2


def stored_nbytes(value: Value) -> int:
    """Bytes a constant takes in a graph file or an artifact (4-bit ones packed)."""
    assert value.const is not None
    n = value.const.numel()
    return packed_nbytes(n) if is_int4(value) else n * value.const.element_size()
