"""Array files of the CLI: calibration data, inputs and outputs.

Files are ``.npy`` (one array; read with ``allow_pickle=False``), ``.npz`` (several, by
name) or ``.safetensors`` (several, by name). Together the files given must hold one array
per model input: arrays named after the inputs are matched by name; otherwise (``.npy``
files, ``np.savez(path, a, b)``) they are taken in order, which a ``.safetensors`` file
(whose tensors are not kept in order) allows only for a single array. Calibration arrays
are split into batches along dimension 0. Nothing here unpickles anything.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slimfx.errors import SlimfxError

__all__ = ["NamedArray", "read_arrays", "match_inputs", "split_batches", "write_arrays",
           "SUFFIXES"]

SUFFIXES = (".npy", ".npz", ".safetensors")
_POSITIONAL = re.compile(r"arr_\d+")
_NUMERIC_KINDS = "biufc"

NamedArray = tuple[str | None, np.ndarray]
"""An array and its name in the file (``None`` for ``.npy`` files and ``np.savez`` arrays)."""


def _read_one(path: str, what: str, error: type[SlimfxError]) -> list[NamedArray]:
    p = Path(path)
    if not p.is_file():
        raise error(f"{what} file {path!r} does not exist" if not p.exists()
                    else f"{what} file {path!r} is not a file")
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise error(f"{what} file {path!r}: unknown format {p.suffix or '(no suffix)'!r}; use "
                    f"{', '.join(SUFFIXES)}")
    try:
        if suffix == ".npy":
            out: list[NamedArray] = [(None, np.load(p, allow_pickle=False))]
        elif suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                out = [(None if _POSITIONAL.fullmatch(k) else k, z[k]) for k in z.files]
        else:
            from safetensors.numpy import load_file

            out = list(load_file(str(p)).items())
    except Exception as e:  # noqa: BLE001 - numpy/zipfile/safetensors raise many types
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "allow_pickle" in msg:
            msg = "it holds Python objects (an object array), which are never unpickled"
        raise error(f"cannot read {what} file {path!r}: {msg}") from e
    if not out:
        raise error(f"{what} file {path!r} holds no arrays")
    for name, a in out:
        if not isinstance(a, np.ndarray) or a.dtype.kind not in _NUMERIC_KINDS:
            label = f" {name!r}" if name else ""
            raise error(f"{what} file {path!r}: array{label} has dtype {a.dtype}; only numeric "
                        "(bool, int, float) arrays are model inputs")
    return out


def read_arrays(paths: Sequence[str], what: str,
                error: type[SlimfxError] = SlimfxError) -> list[NamedArray]:
    """Every array of ``paths`` in order, checked to be numeric.

    Args:
        paths: ``.npy`` / ``.npz`` / ``.safetensors`` files.
        what: what the files are, for messages (``"calibration"``, ``"input"``).
        error: the error class to raise.

    Raises:
        SlimfxError: (``error``) a missing or unreadable file, an unknown format, an object
            or other non-numeric array.
    """
    out: list[NamedArray] = []
    for path in paths:
        out.extend(_read_one(path, what, error))
    return out


def match_inputs(arrays: Sequence[NamedArray], names: Sequence[str], paths: Sequence[str],
                 what: str, error: type[SlimfxError] = SlimfxError) -> list[np.ndarray]:
    """The arrays in the order of the model inputs ``names`` (see the module docstring).

    Raises:
        SlimfxError: (``error``) a wrong number of arrays, or names that do not match.
    """
    files = ", ".join(paths)
    expected = ", ".join(names)
    if len(arrays) != len(names):
        raise error(f"{what} data ({files}) holds {len(arrays)} array(s), the model takes "
                    f"{len(names)} input(s) ({expected}): give one array per input")
    given = [n for n, _ in arrays]
    if all(n is not None for n in given) and sorted(given) == sorted(names):  # type: ignore[type-var]
        by_name = dict(arrays)
        return [by_name[n] for n in names]
    if len(arrays) > 1 and any(n is not None for n in given):
        shown = ", ".join(repr(n) for n in given if n is not None)
        raise error(f"{what} data ({files}) names its arrays {shown}, which are not the model's "
                    f"inputs ({expected}): name them after the inputs")
    return [a for _, a in arrays]


def split_batches(arrays: Sequence[np.ndarray], names: Sequence[str], batch_size: int,
                  what: str, error: type[SlimfxError] = SlimfxError, *,
                  keep_rest: bool = False) -> list[tuple[Any, ...]]:
    """Splits the arrays (one per input) along dimension 0 into batches of torch tensors.

    A remainder smaller than ``batch_size`` is dropped (and logged), or with ``keep_rest``
    (a graph with a dynamic batch) is a last, smaller batch.

    Raises:
        SlimfxError: (``error``) a 0-d array, arrays of different lengths, or fewer samples
            than one batch.
    """
    import logging

    import torch

    lengths = []
    for name, a in zip(names, arrays, strict=True):
        if a.ndim == 0:
            raise error(f"{what} array for input {name!r} is a scalar; it needs a batch "
                        "dimension (dimension 0) to split into batches")
        lengths.append(a.shape[0])
    if len(set(lengths)) != 1:
        sizes = ", ".join(f"{n}: {k}" for n, k in zip(names, lengths, strict=True))
        raise error(f"{what} arrays have different lengths along dimension 0 ({sizes})")
    n = lengths[0]
    tensors = [torch.from_numpy(np.ascontiguousarray(_native(a))) for a in arrays]
    if keep_rest:
        return [tuple(t[i:i + batch_size] for t in tensors) for i in range(0, n, batch_size)]
    if n < batch_size:
        raise error(f"{what} data has {n} sample(s), fewer than one batch of {batch_size}; "
                    "give more samples or a smaller --batch-size")
    if n % batch_size:
        logging.getLogger(__name__).warning(
            "%s data: %d sample(s) do not fill a batch of %d and are left out", what,
            n % batch_size, batch_size)
    return [tuple(t[i:i + batch_size] for t in tensors)
            for i in range(0, n - batch_size + 1, batch_size)]


def _native(a: np.ndarray) -> np.ndarray:
    """``a`` in native byte order (torch cannot take big-endian arrays)."""
    return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))


def write_arrays(paths: Sequence[str], names: Sequence[str], arrays: Sequence[np.ndarray],
                 what: str = "output") -> list[Path]:
    """Writes the model's outputs: one ``.npz``/``.safetensors`` for all, or one ``.npy`` each.

    Raises:
        SlimfxError: a count of ``.npy`` files that is not the number of outputs, an unknown
            suffix, or a file that cannot be written.
    """
    from slimfx._cli.common import output_path

    ps = [output_path(p, SUFFIXES, f"{what} file") for p in paths]
    arrays = [np.ascontiguousarray(_native(np.asarray(a))) for a in arrays]
    listing = ", ".join(names)
    try:
        if len(ps) == 1 and ps[0].suffix.lower() in (".npz", ".safetensors"):
            data = dict(zip(names, arrays, strict=True))
            if ps[0].suffix.lower() == ".npz":
                _savez(ps[0], data)
            else:
                from safetensors.numpy import save_file

                save_file(data, str(ps[0]))
            return ps
        if any(p.suffix.lower() != ".npy" for p in ps) or len(ps) != len(arrays):
            raise SlimfxError(f"the model has {len(arrays)} {what}(s) ({listing}): give one .npy "
                              "file per output, or one .npz or .safetensors file for all")
        for p, a in zip(ps, arrays, strict=True):
            np.save(p, a, allow_pickle=False)
    except OSError as e:
        raise SlimfxError(f"cannot write {what}: {e}") from e
    return ps


def _savez(path: Path, data: dict[str, np.ndarray]) -> None:
    """``np.savez(path, **data)``, for any array names (``file``, ``allow_pickle``...)."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, a in data.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, a, allow_pickle=False)
