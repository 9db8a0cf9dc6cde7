"""Saving and loading compiled models: the exported library plus JSON metadata, never pickles.

Layout (a directory, or the same two files in an uncompressed tar when the path has a
suffix such as ``.slim`` or ``.tar``)::

    model.so     ex.export_library(...) output (cross-linked for aarch64 targets)
    meta.json    {"format": "slimfx-compiled", "format_version": 1, "slimfx_version": ...,
                  "tvm_version": ..., "target": {...}, "entry": "main",
                  "inputs": [{"name", "shape", "dtype", "qparams"}], "outputs": [...],
                  "library": "model.so", "library_sha256": "..."}

:func:`load` validates everything before the library is opened: readable JSON of the
right format, the same slimfx and TVM versions, the library checksum, and a target this
host can run. Any failure is an :class:`ArtifactError` saying what to do.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimfx.errors import ArtifactError

if TYPE_CHECKING:
    from slimfx.backends.tvm.compiled import Compiled

__all__ = ["save", "load", "FORMAT", "FORMAT_VERSION"]

logger = logging.getLogger(__name__)

FORMAT = "slimfx-compiled"
FORMAT_VERSION = 1
_LIB = "model.so"
_META = "meta.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions() -> tuple[str, str]:
    import tvm

    import slimfx

    return slimfx.__version__, str(tvm.__version__)


def _export(compiled: Compiled, lib_path: Path) -> None:
    from slimfx.backends.tvm.targets import target_kind

    ex = compiled._executable if compiled._executable is not None else compiled._library
    if compiled._executable is None:
        raise ArtifactError("this model was loaded from an artifact; copy that artifact instead "
                            "of saving it again")
    if target_kind(compiled.target) == "arm":
        from slimfx.backends.tvm.arm import export_arm_library

        export_arm_library(ex, lib_path)
    else:
        ex.export_library(str(lib_path))


def save(compiled: Compiled, path: str | os.PathLike[str]) -> Path:
    """Writes ``compiled`` to ``path`` (a directory, or one tar file if ``path`` has a suffix).

    Returns:
        ``path`` as a :class:`Path`.
    """
    path = Path(path)
    slimfx_version, tvm_version = _versions()
    with tempfile.TemporaryDirectory(prefix="slimfx-save-") as tmp:
        lib = Path(tmp) / _LIB
        _export(compiled, lib)
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "slimfx_version": slimfx_version, "tvm_version": tvm_version,
            "target": compiled.target, "entry": compiled.entry,
            "inputs": [s.to_json() for s in compiled.inputs],
            "outputs": [s.to_json() for s in compiled.outputs],
            "library": _LIB, "library_sha256": _sha256(lib),
        }
        text = json.dumps(meta, indent=2, sort_keys=True)
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tarfile.open(path, "w") as tar:
                tar.add(lib, arcname=_LIB)
                data = text.encode()
                info = tarfile.TarInfo(_META)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        else:
            path.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(lib, path / _LIB)
            (path / _META).write_text(text, encoding="utf-8")
    logger.info("saved compiled model to %s", path)
    return path


def _read_meta(text: str, where: Path) -> dict[str, Any]:
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{where}: {_META} is not valid JSON ({e}); the artifact is corrupt, "
                            "save the model again") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtifactError(f"{where} is not a slimfx compiled model (format "
                            f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{where}: artifact format version {meta.get('format_version')!r}, "
                            f"this slimfx reads {FORMAT_VERSION}; recompile the model")
    return meta


def _check_meta(meta: dict[str, Any], where: Path) -> None:
    slimfx_version, tvm_version = _versions()
    if meta.get("slimfx_version") != slimfx_version:
        raise ArtifactError(f"{where} was built by slimfx {meta.get('slimfx_version')!r}, this is "
                            f"{slimfx_version}; recompile the model with this version")
    if meta.get("tvm_version") != tvm_version:
        raise ArtifactError(f"{where} was built with TVM {meta.get('tvm_version')!r}, this is "
                            f"{tvm_version}; recompile the model with this TVM")
    target = meta.get("target")
    if not isinstance(target, dict):
        raise ArtifactError(f"{where}: metadata has no target dict; the artifact is corrupt")
    from slimfx.backends.tvm.targets import can_run_here

    reason = can_run_here(target)
    if reason is not None:
        raise ArtifactError(f"{where} cannot be loaded on this host: {reason}")


def _specs(meta: dict[str, Any], key: str, where: Path) -> list[Any]:
    from slimfx.backends.tvm.compiled import TensorSpec

    items = meta.get(key)
    if not isinstance(items, list):
        raise ArtifactError(f"{where}: metadata field {key!r} is missing; the artifact is corrupt")
    try:
        return [TensorSpec.from_json(o) for o in items]
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{where}: bad {key} signature in metadata ({e}); the artifact is "
                            "corrupt") from e


def _extract(path: Path, dest: Path) -> None:
    try:
        with tarfile.open(path, "r") as tar:
            members = {m.name: m for m in tar.getmembers()}
            for name in (_META, _LIB):
                m = members.get(name)
                if m is None or not m.isfile():
                    raise ArtifactError(f"{path}: the archive has no file {name!r}; it is not a "
                                        "slimfx compiled model or it is corrupt")
                src = tar.extractfile(m)
                assert src is not None
                with open(dest / name, "wb") as out:
                    shutil.copyfileobj(src, out)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ArtifactError(f"{path}: cannot read the archive ({e}); it is corrupt") from e


def load(path: str | os.PathLike[str]) -> Compiled:
    """Loads a model written by :meth:`Compiled.save` after validating its metadata.

    Raises:
        ArtifactError: missing/corrupt files, checksum mismatch, other slimfx or TVM
            version, or a target this host cannot run.
    """
    from slimfx.backends.tvm.compiled import Compiled

    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path} does not exist")
    with tempfile.TemporaryDirectory(prefix="slimfx-load-") as tmp:
        if path.is_dir():
            root = path
        else:
            root = Path(tmp)
            _extract(path, root)
        meta_path, lib_path = root / _META, root / _LIB
        if not meta_path.is_file() or not lib_path.is_file():
            raise ArtifactError(f"{path}: expected {_META} and {_LIB}; it is not a slimfx "
                                "compiled model")
        try:
            text = meta_path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ArtifactError(f"{path}: {_META} is not text; the artifact is corrupt") from e
        meta = _read_meta(text, path)
        _check_meta(meta, path)
        if meta.get("library") != _LIB or _sha256(lib_path) != meta.get("library_sha256"):
            raise ArtifactError(f"{path}: the library checksum does not match the metadata; the "
                                "artifact is corrupt or was modified, save the model again")
        inputs, outputs = _specs(meta, "inputs", path), _specs(meta, "outputs", path)
        entry = meta.get("entry", "main")
        if not isinstance(entry, str):
            raise ArtifactError(f"{path}: bad entry {entry!r}")
        import tvm

        try:
            lib = tvm.runtime.load_module(str(lib_path))
        except Exception as e:  # TVM raises its own error types
            raise ArtifactError(f"{path}: TVM cannot load the library: {e}") from e
    return Compiled(lib, inputs, outputs, meta["target"], entry=entry)
