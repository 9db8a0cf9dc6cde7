"""Frozen value types of the IR: element dtypes, tensor types and quantization parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from slimfx.ir.symbolic import Dim, format_dim, from_torch_dim, normalize_dim

__all__ = ["DTYPES", "Dim", "TensorType", "QParams", "dtype_to_torch", "dtype_from_torch"]

# Short names used in the text form, mapped to torch dtypes.
DTYPES: dict[str, torch.dtype] = {
    "f64": torch.float64,
    "f32": torch.float32,
    "f16": torch.float16,
    "bf16": torch.bfloat16,
    "i64": torch.int64,
    "i32": torch.int32,
    "i16": torch.int16,
    "i8": torch.int8,
    "u8": torch.uint8,
    "bool": torch.bool,
    "c64": torch.complex64,
}
_FROM_TORCH = {v: k for k, v in DTYPES.items()}
FLOAT_DTYPES = frozenset({"f64", "f32", "f16", "bf16"})
INT_DTYPES = frozenset({"i64", "i32", "i16", "i8", "u8"})


def dtype_to_torch(dtype: str) -> torch.dtype:
    """Returns the torch dtype for a short dtype name such as ``"f32"``."""
    return DTYPES[dtype]


def dtype_from_torch(dtype: torch.dtype) -> str:
    """Returns the short name for a torch dtype.

    Raises:
        KeyError: the dtype has no IR name.
    """
    return _FROM_TORCH[dtype]


@dataclass(frozen=True, slots=True)
class TensorType:
    """A tensor type, e.g. ``f32[1,3,224,224]`` or ``f32[N,3,224,224]``.

    A dimension is an ``int`` or a sympy expression over symbols the graph
    declares (:mod:`slimfx.ir.symbolic`); static dimensions are always ``int``.
    """

    shape: tuple[Dim, ...]
    dtype: str = "f32"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; known: {sorted(DTYPES)}")
        object.__setattr__(self, "shape", tuple(
            d if type(d) is int else normalize_dim(d) for d in self.shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> Dim:
        """The element count: an ``int`` when static, else a sympy expression."""
        n = math.prod(self.shape)
        return n if type(n) is int else normalize_dim(n)

    @property
    def is_static(self) -> bool:
        """Whether every dimension is an ``int`` (no symbols)."""
        return all(type(d) is int for d in self.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def with_shape(self, shape: tuple[Dim, ...] | list[Dim]) -> TensorType:
        return TensorType(tuple(shape), self.dtype)

    def with_dtype(self, dtype: str) -> TensorType:
        return TensorType(self.shape, dtype)

    @classmethod
    def of(cls, tensor: torch.Tensor) -> TensorType:
        """The type of a concrete (or fake/meta) tensor."""
        shape = tuple(tensor.shape)
        if not all(type(d) is int for d in shape):  # SymInts of torch.export's fake tensors
            shape = tuple(from_torch_dim(d) for d in shape)
        return cls(shape, dtype_from_torch(tensor.dtype))

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(format_dim(d) for d in self.shape)}]"


@dataclass(frozen=True, slots=True)
class QParams:
    """Affine quantization parameters: ``real = scale * (q - zero_point)``.

    Per-tensor when ``axis`` is None (``scale``/``zero_point`` have one entry),
    per-channel along ``axis`` otherwise (one entry per channel).
    """

    dtype: str
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None
    qmin: int = -128
    qmax: int = 127

    def __post_init__(self) -> None:
        scale = tuple(float(s) for s in _as_tuple(self.scale))
        zp = tuple(int(z) for z in _as_tuple(self.zero_point))
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "zero_point", zp)
        if len(scale) != len(zp):
            raise ValueError(f"QParams: {len(scale)} scales but {len(zp)} zero points")
        if self.axis is None and len(scale) != 1:
            raise ValueError("QParams: per-tensor parameters need exactly one scale")
        if any(not (s > 0 and math.isfinite(s)) for s in scale):
            raise ValueError(f"QParams: scales must be finite and positive, got {scale[:4]}")
        if self.qmin >= self.qmax:
            raise ValueError(f"QParams: qmin {self.qmin} must be below qmax {self.qmax}")
        if any(not (self.qmin <= z <= self.qmax) for z in zp):
            raise ValueError(f"QParams: zero points must lie in [{self.qmin}, {self.qmax}]")

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    def scale_tensor(self) -> torch.Tensor:
        return torch.tensor(self.scale, dtype=torch.float32)

    def zero_point_tensor(self) -> torch.Tensor:
        return torch.tensor(self.zero_point, dtype=torch.int64)

    def __str__(self) -> str:
        def floats(xs: tuple[float, ...]) -> str:
            return repr(xs[0]) if len(xs) == 1 and self.axis is None else (
                "[" + ",".join(repr(x) for x in xs) + "]")

        def ints(xs: tuple[int, ...]) -> str:
            return str(xs[0]) if len(xs) == 1 and self.axis is None else (
                "[" + ",".join(str(x) for x in xs) + "]")

        axis = "" if self.axis is None else f", axis={self.axis}"
        return (f"q<{self.dtype}, scale={floats(self.scale)}, zp={ints(self.zero_point)}"
                f"{axis}, range=[{self.qmin},{self.qmax}]>")


def _as_tuple(x: object) -> tuple:
    if isinstance(x, torch.Tensor):
        return tuple(x.reshape(-1).tolist())
    if isinstance(x, (list, tuple)):
        return tuple(x)
    return (x,)
