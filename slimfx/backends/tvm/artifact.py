"""Saving and loading compiled models: the exported library plus JSON metadata, never pickles.

Layout (a directory, or the same two files in an uncompressed tar when the path has a
suffix such as ``.slim`` or ``.tar``)::

    model.so     ex.export_library(...) output (cross-linked for aarch64 targets)
    meta.json    {"format": "slimfx-compiled", "format_version": 1, "slimfx_version": ...,
                  "tvm_version": ..., "target": {...}, "entry": "main",
                  "inputs": [{"name", "shape", "dtype", "qparams"}], "outputs": [...],
                  "target_features": ["avx2", ...], "library": "model.so",
                  "library_sha256": "...",
                  "symbols": {"N": [1, 64], "S": [1, null]}, "batch": "N",
                  "batch_buckets": {"8": "main_b8"}, "load_fn": "slimfx_load_weights"}

A symbolic dimension of a signature is its text (``"shape": ["N", 3, 32, 32]``);
``symbols`` declares every symbol with its range (``null``: no upper bound) and ``batch``
names the batch symbol whose samples run one at a time (see :mod:`.specialize`), and
``batch_buckets`` the library functions compiled for chunks of that many samples. Artifacts
written before symbols existed have neither field and load as static models. ``load_fn``
(only when the model has load-time weights, e.g. 4-bit ones: see :mod:`.lower`) names the
library function that computes them; its results follow the inputs in every call.

**A ``.slim`` holds native code.** Loading one runs that code in this process, exactly like
importing a shared library or a Python extension module: load only artifacts from a source
you trust. The ``library_sha256`` inside the archive only detects accidental corruption; it
proves nothing against tampering, because whoever edits the library can edit the metadata
too. To check that a file is the one its publisher built, get its SHA-256 from them by a
separate channel (:func:`sha256_file` on their side, or ``sha256sum``) and pass it to
``load(path, sha256=...)``: the whole file is compared to it before anything is extracted.

:func:`load` validates everything before the library is opened: the optional digest, a tar
holding exactly ``meta.json`` and ``model.so`` as regular files (no links, no other paths),
readable JSON of the right format, the same slimfx and TVM versions, the library checksum,
a target this host can run, and its CPU features (:class:`DeviceError` when the host lacks
some), and symbols that are declared with valid ranges (a batch symbol exactly dim 0 of
its inputs and of every output). After opening it checks the metadata against the library:
the entry function, its number of parameters and their names, and, by one call on inputs
of the declared types (every symbol at the smallest size of its range, at least 1), the
inputs, number of outputs and the output shapes and dtypes the VM reports. Any other
failure is an :class:`ArtifactError` saying what to do.
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

import numpy as np

from slimfx.backends.tvm.native_log import native_log_to_logging
from slimfx.errors import ArtifactError, DeviceError
from slimfx.ir.symbolic import SymbolRange, check_symbol_name, eval_dim

if TYPE_CHECKING:
    from slimfx.backends.tvm.compiled import Compiled

__all__ = ["save", "load", "sha256_file", "FORMAT", "FORMAT_VERSION"]

logger = logging.getLogger(__name__)

FORMAT = "slimfx-compiled"
FORMAT_VERSION = 1
_LIB = "model.so"
_META = "meta.json"
_MAX_META_BYTES = 16 << 20  # a real meta.json is a few kB
_MAX_JSON_DEPTH = 64  # a real meta.json nests 5 deep


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 (hex) of a saved ``.slim`` file: publish it and load with ``sha256=``.

    Raises:
        ArtifactError: ``path`` is not a readable file (a directory artifact has no single
            digest: save with a ``.slim`` suffix).
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} is not a file; a digest covers one .slim file (save the "
                            "model to a path with a suffix such as .slim)")
    try:
        return _sha256(path)
    except OSError as e:
        raise ArtifactError(f"cannot read {path}: {e}") from e


def _versions() -> tuple[str, str]:
    import tvm

    import slimfx

    return slimfx.__version__, str(tvm.__version__)


@native_log_to_logging()  # TVM prints "Scope Saving" per function: logged at DEBUG
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

    For a single file, its SHA-256 is stored in ``compiled.saved_sha256`` (and logged):
    give it to whoever loads the file, by a channel other than the file itself.

    Returns:
        ``path`` as a :class:`Path`.

    Raises:
        ArtifactError: the path cannot be written (e.g. a parent is a file).
    """
    path = Path(path)
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise ArtifactError(f"cannot save to {path}: {parent} is a file, not a directory")
    if path.exists() and (path.is_dir() == bool(path.suffix)):
        kind = "directory" if path.is_dir() else "file"
        raise ArtifactError(f"cannot save to {path}: a {kind} is already there; remove it or "
                            "choose another path")
    from slimfx.backends.tvm.targets import target_cpu_features

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
            "target_features": target_cpu_features(compiled.target),
            "library": _LIB, "library_sha256": _sha256(lib),
        }
        if compiled._kernels is not None:
            meta["kernels"] = [list(k) for k in compiled._kernels]
        if compiled.symbols:
            meta["symbols"] = {k: [r.min, r.max] for k, r in sorted(compiled.symbols.items())}
            meta["batch"] = compiled.batch
            if compiled.buckets:
                meta["batch_buckets"] = {str(k): v for k, v in compiled.buckets.items()}
        if compiled.load_fn is not None:
            meta["load_fn"] = compiled.load_fn
        text = json.dumps(meta, indent=2, sort_keys=True)
        try:
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
        except OSError as e:
            raise ArtifactError(f"cannot save to {path}: {e}") from e
    if path.is_file():
        compiled.saved_sha256 = _sha256(path)
        logger.info("saved compiled model to %s (sha256 %s)", path, compiled.saved_sha256)
    else:
        logger.info("saved compiled model to %s", path)
    return path


def _json_depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` in JSON text (brackets inside strings ignored)."""
    depth = deepest = 0
    in_str = escaped = False
    for ch in text:
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _read_meta(text: str, where: Path) -> dict[str, Any]:
    depth = _json_depth(text)
    if depth > _MAX_JSON_DEPTH:
        raise ArtifactError(f"{where}: {_META} nests {depth} levels deep (a slimfx artifact "
                            f"nests at most {_MAX_JSON_DEPTH}); the artifact is corrupt or "
                            "malicious, do not use it")
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
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
    from slimfx.backends.tvm.targets import can_run_here, check_cpu_features

    reason = can_run_here(target)
    if reason is not None:
        raise ArtifactError(f"{where} cannot be loaded on this host: {reason}")
    features = meta.get("target_features")
    if features is not None and (not isinstance(features, list)
                                 or not all(isinstance(f, str) for f in features)):
        raise ArtifactError(f"{where}: bad target_features {features!r} in metadata; the "
                            "artifact is corrupt")
    try:
        check_cpu_features(target, features, what=str(where))
    except DeviceError:
        raise
    except Exception as e:  # TVM rejects the target dict
        raise ArtifactError(f"{where}: bad target {target!r} in metadata ({e}); the artifact "
                            "is corrupt") from e


def _symbols(meta: dict[str, Any], where: Path) -> tuple[dict[str, SymbolRange], str | None]:
    """The declared symbols and the batch symbol; ``{}, None`` for artifacts without them."""
    raw = meta.get("symbols", {})
    batch = meta.get("batch")
    if not isinstance(raw, dict) or not (batch is None or isinstance(batch, str)):
        raise ArtifactError(f"{where}: bad symbols {raw!r} / batch {batch!r} in metadata; the "
                            "artifact is corrupt")
    symbols: dict[str, SymbolRange] = {}
    for name, rng in raw.items():
        ok = (isinstance(rng, list) and len(rng) == 2
              and all(type(b) is int or (i == 1 and b is None) for i, b in enumerate(rng)))
        problem = check_symbol_name(name) or (
            SymbolRange(*rng).problem() if ok else f"range {rng!r} is not [min, max]")
        if problem:
            raise ArtifactError(f"{where}: bad symbol {name!r} in metadata ({problem}); the "
                                "artifact is corrupt")
        symbols[name] = SymbolRange(*rng)
    if batch is not None and batch not in symbols:
        raise ArtifactError(f"{where}: batch symbol {batch!r} is not among the declared "
                            f"symbols ({', '.join(symbols) or 'none'}); the artifact is corrupt")
    return symbols, batch


def _buckets(meta: dict[str, Any], where: Path) -> dict[int, str]:
    raw = meta.get("batch_buckets", {})
    if not isinstance(raw, dict) or not all(
            isinstance(k, str) and k.isdigit() and isinstance(v, str) for k, v in raw.items()):
        raise ArtifactError(f"{where}: bad batch_buckets {raw!r} in metadata; the artifact is "
                            "corrupt")
    return {int(k): v for k, v in raw.items()}


def _kernels(meta: dict[str, Any], where: Path) -> list[tuple[str, str]] | None:
    """The ``(function, kernel path)`` record, or None for an artifact saved without one."""
    raw = meta.get("kernels")
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(
            isinstance(k, list) and len(k) == 2 and all(isinstance(p, str) for p in k)
            for k in raw):
        raise ArtifactError(f"{where}: bad kernels {raw!r} in metadata; the artifact is "
                            "corrupt")
    return [(k[0], k[1]) for k in raw]


def _specs(meta: dict[str, Any], key: str, where: Path,
           symbols: dict[str, SymbolRange] | None = None) -> list[Any]:
    from slimfx.backends.tvm.compiled import TensorSpec

    items = meta.get(key)
    if not isinstance(items, list):
        raise ArtifactError(f"{where}: metadata field {key!r} is missing; the artifact is corrupt")
    try:
        return [TensorSpec.from_json(o, symbols if symbols else None) for o in items]
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{where}: bad {key} signature in metadata ({e}); the artifact is "
                            "corrupt") from e


def _extract(path: Path, dest: Path, where: Path | None = None) -> None:
    """Copies ``meta.json`` and ``model.so`` out of the tar ``path`` into ``dest``.

    Nothing is extracted by name from the archive: the two files are read from their
    members and written under fixed names in ``dest``. An archive with any other member
    (a path with ``..``, an absolute path, a link, a device, a duplicate) is refused.
    """
    where = where or path
    try:
        with tarfile.open(path, "r:") as tar:
            members = tar.getmembers()
            names = [m.name for m in members]
            bad = [m.name for m in members if m.name not in (_META, _LIB) or not m.isfile()]
            if bad or len(set(names)) != len(names):
                what = (f"unexpected member(s) {', '.join(map(repr, bad[:5]))}" if bad
                        else "duplicate members")
                raise ArtifactError(f"{where}: the archive has {what} (a slimfx artifact holds "
                                    f"only the regular files {_META} and {_LIB}); it is corrupt "
                                    "or malicious, nothing was extracted")
            by_name = {m.name: m for m in members}
            for name in (_META, _LIB):
                m = by_name.get(name)
                if m is None:
                    raise ArtifactError(f"{where}: the archive has no file {name!r}; it is not "
                                        "a slimfx compiled model or it is corrupt")
                if name == _META and m.size > _MAX_META_BYTES:
                    raise ArtifactError(f"{where}: {_META} is {m.size} bytes; the artifact is "
                                        "corrupt")
                src = tar.extractfile(m)
                if src is None:
                    raise ArtifactError(f"{where}: cannot read {name!r} from the archive")
                with open(dest / name, "wb") as out:
                    shutil.copyfileobj(src, out)
                if (dest / name).stat().st_size != m.size:
                    raise ArtifactError(f"{where}: {name!r} is truncated; the archive is "
                                        "corrupt")
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise ArtifactError(f"{where}: cannot read the archive ({e}); it is corrupt") from e


def _copy_checked(path: Path, dest: Path, sha256: str) -> None:
    """Copies ``path`` to ``dest`` while hashing it; raises unless the digest is ``sha256``.

    The digest is taken of the bytes that are then used (the private copy), so the file
    cannot change between the check and the extraction.
    """
    want = sha256.strip().lower()
    if len(want) != 64 or any(c not in "0123456789abcdef" for c in want):
        raise ArtifactError(f"sha256 must be 64 hex digits, got {sha256!r}")
    if not path.is_file():
        raise ArtifactError(f"{path}: sha256= checks one .slim file, and this is a directory; "
                            "save the model to a path with a suffix such as .slim")
    h = hashlib.sha256()
    try:
        with open(path, "rb") as src, open(dest, "wb") as out:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                h.update(chunk)
                out.write(chunk)
    except OSError as e:
        raise ArtifactError(f"cannot read {path}: {e}") from e
    got = h.hexdigest()
    if got != want:
        raise ArtifactError(f"{path}: SHA-256 mismatch: expected {want}, the file has {got}; "
                            "it is not the artifact you were given (modified, truncated or "
                            "another file): do not load it")


def _last_line(e: BaseException) -> str:
    """The last line of an exception's message (TVM's messages end with the check)."""
    lines = str(e).strip().splitlines()
    return lines[-1] if lines else type(e).__name__


def _check_library(compiled: Compiled, lib: Any, where: Path) -> None:
    """Refuses a library that does not match its metadata (entry, parameters, outputs)."""
    import re

    from slimfx.backends.tvm.compiled import _flatten, _numpy_dtype

    try:
        vm_exec = lib["vm_load_executable"]()
        arity = int(vm_exec["get_function_arity"](compiled.entry))
        params = [str(vm_exec["get_function_param_name"](compiled.entry, i))
                  for i in range(arity)]
    except Exception as e:  # TVM: no such function, or not a Relax VM library
        raise ArtifactError(f"{where}: the library has no Relax function "
                            f"{compiled.entry!r} ({e}); the metadata does not match it") from e
    names = [s.name for s in compiled.inputs]
    # the lowering names each parameter after its graph input ("." becomes "_"), then the
    # load-time weights slimfx_w0, slimfx_w1, ... (only with a load_fn)
    extra = params[len(names):]
    if (arity < len(names) or [re.sub(r"\W", "_", p) for p in params[:len(names)]] != [
            re.sub(r"\W", "_", n) for n in names]
            or extra != [f"slimfx_w{i}" for i in range(len(extra))]
            or bool(extra) != (compiled.load_fn is not None)):
        weights = f" and the results of {compiled.load_fn!r}" if compiled.load_fn else ""
        raise ArtifactError(f"{where}: the library's {compiled.entry!r} takes "
                            f"{arity} input(s) ({', '.join(params)}), the metadata declares "
                            f"{len(names)} ({', '.join(names)}){weights}; the artifact is "
                            "corrupt or was modified")
    sizes = {k: max(r.min, 1) for k, r in compiled.symbols.items()}
    args = [np.ones([eval_dim(d, sizes) for d in s.type.shape], dtype=_numpy_dtype(s.type.dtype))
            for s in compiled.inputs]
    try:
        vm = compiled._ensure_vm()  # calls the load_fn
        if len(compiled._weights or ()) != len(extra):
            raise ArtifactError(f"{where}: the library's {compiled.load_fn!r} returns "
                                f"{len(compiled._weights or ())} tensor(s), its "
                                f"{compiled.entry!r} takes {len(extra)}; the artifact is "
                                "corrupt or was modified")
        fn, first = compiled._samples(args)[0]
        outs = _flatten(vm[fn](*compiled._device_args(first)))
        for name in compiled.buckets.values():  # every bucket function is in the library
            if int(vm_exec["get_function_arity"](name)) != arity:
                raise ArtifactError(f"{where}: the library's bucket function {name!r} does "
                                    f"not take {arity} input(s)")
    except (ArtifactError, DeviceError):
        raise
    except Exception as e:  # TVM's checks of the declared input types
        raise ArtifactError(f"{where}: the library refuses inputs of the types in its "
                            f"metadata ({_last_line(e)}); the artifact is "
                            "corrupt or was modified") from e
    if compiled.batch is not None:
        sizes[compiled.batch] = 1  # the library's one-sample program
    want = [(tuple(eval_dim(d, sizes) for d in s.type.shape),
             np.dtype(_numpy_dtype(s.type.dtype))) for s in compiled.outputs]
    got = [(tuple(o.shape), o.dtype) for o in outs]
    if got != want:
        def show(sig: list[tuple[tuple[int, ...], Any]]) -> str:
            return ", ".join(f"{np.dtype(d).name}{list(sh)}" for sh, d in sig)

        raise ArtifactError(f"{where}: the library returns {len(got)} output(s) ({show(got)}), "
                            f"the metadata declares {len(want)} ({show(want)}); the artifact "
                            "is corrupt or was modified")


@native_log_to_logging()  # and "Scope Loaded" per function
def load(path: str | os.PathLike[str], *, sha256: str | None = None) -> Compiled:
    """Loads a model written by :meth:`Compiled.save` after validating its metadata.

    **Security:** a ``.slim`` file holds native code, and loading it runs that code in
    this process, like importing a shared library: load only files from a source you trust.
    The checksum stored inside the archive does not protect against tampering (it is in
    the same file). Pass ``sha256``, the digest the publisher gave you by another channel
    (``slimfx.backends.tvm.sha256_file`` or ``sha256sum`` on their side), to have the
    whole file checked before anything is extracted or loaded.

    Loading also runs the model once on inputs of the declared types (ones), to check the
    library against the metadata.

    Args:
        path: a ``.slim``/``.tar`` file or a directory written by ``save``.
        sha256: the expected SHA-256 of the file (64 hex digits); files only.

    Raises:
        ArtifactError: missing/corrupt/unsafe files, digest or checksum mismatch, other
            slimfx or TVM version, a target this host cannot run, or metadata that does
            not match the library.
        DeviceError: the library uses CPU features this host lacks.
    """
    from slimfx.backends.tvm.compiled import Compiled

    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path} does not exist")
    with tempfile.TemporaryDirectory(prefix="slimfx-load-") as tmp:
        root = Path(tmp)
        if sha256 is not None:
            copy = root / "artifact.tar"
            _copy_checked(path, copy, sha256)
            (root / "x").mkdir()
            _extract(copy, root / "x", where=path)
            root = root / "x"
        elif path.is_dir():
            root = path
            if any((path / n).is_symlink() for n in (_META, _LIB)):
                raise ArtifactError(f"{path}: {_META} and {_LIB} must be regular files, not "
                                    "links")
        else:
            _extract(path, root)
        meta_path, lib_path = root / _META, root / _LIB
        if not meta_path.is_file() or not lib_path.is_file():
            raise ArtifactError(f"{path}: expected {_META} and {_LIB}; it is not a slimfx "
                                "compiled model")
        if meta_path.stat().st_size > _MAX_META_BYTES:
            raise ArtifactError(f"{path}: {_META} is {meta_path.stat().st_size} bytes; the "
                                "artifact is corrupt")
        try:
            text = meta_path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ArtifactError(f"{path}: {_META} is not text; the artifact is corrupt") from e
        except OSError as e:
            raise ArtifactError(f"{path}: cannot read {_META}: {e}") from e
        meta = _read_meta(text, path)
        _check_meta(meta, path)
        if meta.get("library") != _LIB or _sha256(lib_path) != meta.get("library_sha256"):
            raise ArtifactError(f"{path}: the library checksum does not match the metadata; the "
                                "artifact is corrupt or was modified, save the model again")
        symbols, batch = _symbols(meta, path)
        buckets = _buckets(meta, path)
        inputs = _specs(meta, "inputs", path, symbols)
        outputs = _specs(meta, "outputs", path, symbols)
        entry = meta.get("entry", "main")
        if not isinstance(entry, str):
            raise ArtifactError(f"{path}: bad entry {entry!r}")
        load_fn = meta.get("load_fn")
        if not (load_fn is None or isinstance(load_fn, str)):
            raise ArtifactError(f"{path}: bad load_fn {load_fn!r} in metadata; the artifact is "
                                "corrupt")
        import tvm

        try:
            lib = tvm.runtime.load_module(str(lib_path))
        except Exception as e:  # TVM raises its own error types
            raise ArtifactError(f"{path}: TVM cannot load the library: {e}") from e
        try:
            compiled = Compiled(lib, inputs, outputs, meta["target"], entry=entry,
                                symbols=symbols, batch=batch, buckets=buckets, load_fn=load_fn,
                                kernels=_kernels(meta, path))
        except ValueError as e:
            raise ArtifactError(f"{path}: the signature does not fit its symbols ({e}); the "
                                "artifact is corrupt") from e
        compiled.target_features = meta.get("target_features")
        _check_library(compiled, lib, path)
    return compiled
