"""Small raw-Relax models with torch references, shared by the device tests.

Each builder returns a :class:`Case`: the Relax module, its inputs and the
reference outputs computed with torch (integer math for the int8 cases, so
equality is the check).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tvm import relax


@dataclass(frozen=True)
class Case:
    """A Relax module, its inputs and its torch reference outputs."""

    name: str
    mod: object
    inputs: tuple[np.ndarray, ...]
    expected: tuple[np.ndarray, ...]


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def int8_matmul(m: int = 8, k: int = 64, n: int = 32, seed: int = 0) -> Case:
    """``int8 [m,k] x int8 [k,n] -> int32``, full int8 range."""
    a = _rng(seed).integers(-128, 128, (m, k), dtype=np.int8)
    b = _rng(seed + 1).integers(-128, 128, (k, n), dtype=np.int8)
    bb = relax.BlockBuilder()
    va = relax.Var("a", relax.TensorType((m, k), "int8"))
    vb = relax.Var("b", relax.TensorType((k, n), "int8"))
    with bb.function("main", [va, vb]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(va, vb, out_dtype="int32"))
        bb.emit_func_output(out)
    ref = (torch.from_numpy(a).long() @ torch.from_numpy(b).long()).int().numpy()
    return Case("int8_matmul", bb.get(), (a, b), (ref,))


def int8_conv_requant(seed: int = 2) -> Case:
    """int8 conv2d + int32 bias, requantized to int8 with a fixed-point multiplier.

    ``y = clamp(((acc * M0 + 2^(shift-1)) >> shift) + zp, -128, 127)`` in int64,
    the integer contract of DESIGN §4; the output is a tuple (int32 acc, int8 y).
    """
    rng = _rng(seed)
    x = rng.integers(-128, 128, (1, 8, 10, 10), dtype=np.int8)
    w = rng.integers(-128, 128, (16, 8, 3, 3), dtype=np.int8)
    bias = rng.integers(-5000, 5000, (16,), dtype=np.int32)
    m0, shift, zp = 1_431_655_765, 38, -3  # M ~ 0.0052 = M0 * 2^-38
    bb = relax.BlockBuilder()
    vx = relax.Var("x", relax.TensorType(x.shape, "int8"))
    with bb.function("main", [vx]):
        with bb.dataflow():
            acc = bb.emit(relax.op.nn.conv2d(vx, relax.const(w), padding=[1, 1],
                                             out_dtype="int32"))
            acc = bb.emit(relax.op.add(acc, relax.const(bias.reshape(1, 16, 1, 1))))
            wide = bb.emit(relax.op.astype(acc, "int64"))
            wide = bb.emit(relax.op.multiply(wide, relax.const(m0, "int64")))
            wide = bb.emit(relax.op.add(wide, relax.const(1 << (shift - 1), "int64")))
            wide = bb.emit(relax.op.right_shift(wide, relax.const(shift, "int64")))
            wide = bb.emit(relax.op.add(wide, relax.const(zp, "int64")))
            wide = bb.emit(relax.op.clip(wide, -128, 127))
            y = bb.emit(relax.op.astype(wide, "int8"))
            out = bb.emit_output(relax.Tuple([acc, y]))
        bb.emit_func_output(out)
    tacc = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(),
                                      padding=1).long() + torch.from_numpy(bias).long().view(1, -1, 1, 1)
    ty = ((tacc * m0 + (1 << (shift - 1))) >> shift) + zp
    ty = ty.clamp(-128, 127).to(torch.int8)
    return Case("int8_conv_requant", bb.get(), (x,), (tacc.int().numpy(), ty.numpy()))


def fp_conv_matmul(dtype: str = "float32", seed: int = 3) -> Case:
    """conv2d -> relu -> flatten -> matmul, in ``dtype``."""
    rng = _rng(seed)
    x = rng.standard_normal((2, 4, 8, 8)).astype(dtype)
    w = (rng.standard_normal((8, 4, 3, 3)) * 0.2).astype(dtype)
    fc = (rng.standard_normal((8 * 8 * 8, 10)) * 0.05).astype(dtype)
    bb = relax.BlockBuilder()
    vx = relax.Var("x", relax.TensorType(x.shape, dtype))
    with bb.function("main", [vx]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(vx, relax.const(w), padding=[1, 1]))
            y = bb.emit(relax.op.nn.relu(y))
            y = bb.emit(relax.op.reshape(y, (2, 8 * 8 * 8)))
            out = bb.emit_output(relax.op.matmul(y, relax.const(fc)))
        bb.emit_func_output(out)
    t = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x).double(),
                                              torch.from_numpy(w).double(), padding=1))
    ref = (t.reshape(2, -1) @ torch.from_numpy(fc).double()).numpy().astype(dtype)
    return Case(f"{dtype}_conv_matmul", bb.get(), (x,), (ref,))


def fp16_matmul(m: int = 128, k: int = 256, n: int = 128, seed: int = 4) -> Case:
    """``fp16 [m,k] x fp16 [k,n] -> fp16`` (a GEMM that dlight maps to tensor cores)."""
    rng = _rng(seed)
    a = rng.standard_normal((m, k)).astype(np.float16)
    b = (rng.standard_normal((k, n)) * 0.1).astype(np.float16)
    bb = relax.BlockBuilder()
    va = relax.Var("a", relax.TensorType((m, k), "float16"))
    vb = relax.Var("b", relax.TensorType((k, n), "float16"))
    with bb.function("main", [va, vb]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(va, vb))
        bb.emit_func_output(out)
    ref = (torch.from_numpy(a).double() @ torch.from_numpy(b).double()).numpy().astype(np.float16)
    return Case("fp16_matmul", bb.get(), (a, b), (ref,))
