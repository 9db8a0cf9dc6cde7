"""Static checks of CUDA code generation: emitted source -> cubin -> SASS.

No GPU is needed. A Relax module compiled for a cuda target holds CUDA C
source (JIT-compiled at load on the GPU host); here that source is compiled for
the exact architecture (``sm_80``, ``sm_90``) with nvcc or NVRTC and
disassembled with ``cuobjdump -sass``, so tests can check that the intended
instructions were emitted:

- int8 GEMM/conv -> ``IDP.4A`` (dp4a). dlight's int8 tensor-core rule fails in
  codegen on TVM 0.27, so :func:`cuda_pipeline` marks every PrimFunc that reads
  int8 with ``dlight.do_not_tensorize`` before dlight runs;
- fp16 GEMM -> ``HMMA`` (tensor cores), from dlight's default GPU schedules.

Tools: nvcc (``$CUDA_PATH/bin``, ``/usr/local/cuda/bin`` or ``PATH``), else
NVRTC (PyPI ``nvidia-cuda-nvrtc`` + ``cuda-bindings``); ``cuobjdump`` from PATH,
``$CUDA_PATH/bin`` or PyPI ``nvidia-cuda-cuobjdump``.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from slimfx.errors import DeviceError

__all__ = [
    "CUDA_ARCHS",
    "build_cuda",
    "compile_cubin",
    "cuda_pipeline",
    "cuda_sass_report",
    "cuda_source",
    "cuda_target",
    "disassemble",
    "find_cuobjdump",
    "find_nvcc",
    "mark_int8_no_tensorize",
    "parse_sass",
    "preload_tensor_intrinsics",
]

logger = logging.getLogger(__name__)

CUDA_ARCHS = ("sm_80", "sm_90")
_INT8 = {"int8", "uint8"}


def cuda_target(arch: str = "sm_80") -> Any:
    """The TVM target for an NVIDIA GPU of compute capability ``arch``."""
    from tvm.target import Target

    return Target({"kind": "cuda", "arch": arch})


def preload_tensor_intrinsics() -> None:
    """Import ``tvm.s_tir.tensor_intrin`` in ~8 s instead of 25-100 s.

    Registering TVM's tensor intrinsics parses TVMScript, which calls
    ``inspect.stack()`` thousands of times. For the frozen importlib frames on
    the stack during an import, ``inspect.getmodule`` finds no module by file
    name and scans all of ``sys.modules`` (~2,000 entries once torch is
    loaded) every time. Recording the (correct) module of each frozen file
    (``<frozen importlib._bootstrap>``, ``<frozen runpy>``, ...) in inspect's
    own cache avoids the scans, and importing in a fresh thread keeps the
    caller's frames (pytest, xdist's exec'd code) off the stack. dlight's GPU
    matmul rule imports the intrinsics on first use, so call this before the
    first CUDA compile.
    """
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    for name, module in list(sys.modules.items()):
        spec = getattr(module, "__spec__", None)
        if getattr(spec, "origin", None) == "frozen":  # importlib._bootstrap, runpy, ...
            key = os.path.normcase(os.path.abspath(f"<frozen {name}>"))
            inspect.modulesbyfile.setdefault(key, name)
    # Import in a fresh thread: its stack holds only the import frames, none of the caller's
    # (under pytest-xdist those include exec'd "<string>" frames that defeat the cache).
    errors: list[BaseException] = []

    def _import() -> None:
        try:
            import tvm.s_tir.tensor_intrin  # noqa: F401
        except BaseException as e:  # re-raised in the calling thread
            errors.append(e)

    worker = threading.Thread(target=_import, name="slimfx-tensor-intrin")
    worker.start()
    worker.join()
    if errors:
        raise errors[0]


def mark_int8_no_tensorize() -> Any:
    """A module pass: set ``dlight.do_not_tensorize`` on PrimFuncs with int8 operands."""
    import tvm
    from tvm import tirx

    @tvm.transform.module_pass(opt_level=0, name="MarkInt8NoTensorize")
    def _mark(mod: Any, _ctx: Any) -> Any:
        for gvar, func in list(mod.functions.items()):
            if not isinstance(func, tirx.PrimFunc):
                continue
            dtypes = {str(getattr(p, "dtype", "")) for p in func.params}
            if dtypes & _INT8:
                mod[gvar] = func.with_attr("dlight.do_not_tensorize", True)
        return mod

    return _mark


def cuda_pipeline(target: Any) -> Any:
    """TVM's default CUDA Relax pipeline, with int8 kernels kept off tensor cores.

    Same passes as ``tvm.relax.backend.cuda.get_default_pipeline``, plus
    :func:`mark_int8_no_tensorize` just before dlight's schedules, so int8
    GEMMs use dp4a instead of the int8 tensor-core rule that fails in codegen,
    and :func:`.unit_reduction.remove_unit_reductions` (dlight mis-schedules
    reductions of length 1).

    Args:
        target: A cuda ``tvm.target.Target``.

    Returns:
        A pass for ``tvm.compile(mod, target, relax_pipeline=...)``.
    """
    import tvm
    from tvm.relax.backend.cuda import pipeline as cuda

    from slimfx.backends.tvm.unit_reduction import remove_unit_reductions

    preload_tensor_intrinsics()

    @tvm.transform.module_pass(opt_level=0, name="SlimfxCudaPipeline")
    def _pipeline(mod: Any, _ctx: Any) -> Any:
        with target:
            legalize = cuda.legalize_passes(target)  # ends with dlight's ApplyDefaultSchedule
            passes = (cuda.library_dispatch_passes(target) + legalize[:-1]
                      + [remove_unit_reductions(), mark_int8_no_tensorize(), legalize[-1]]
                      + cuda.dataflow_lower_passes(target) + cuda.finalize_passes(target))
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def build_cuda(mod: Any, arch: str = "sm_80") -> Any:
    """Compile a Relax module for ``arch`` with :func:`cuda_pipeline` (no GPU needed)."""
    import tvm

    target = cuda_target(arch)
    return tvm.compile(mod, target=target, relax_pipeline=cuda_pipeline(target))


def _runtime_module(obj: Any) -> Any:
    """The ``tvm.runtime.Module`` behind a Compiled, an Executable or a module."""
    if hasattr(obj, "imports") and hasattr(obj, "kind"):  # tvm.runtime.Module
        return obj
    mod = getattr(obj, "mod", None)  # relax Executable
    if mod is not None and hasattr(mod, "imports"):
        return mod
    from slimfx.backends.tvm.compiled import Compiled

    if isinstance(obj, Compiled):  # freshly compiled (executable) or loaded (library)
        inner = obj._executable if obj._executable is not None else obj._library
        if inner is not None:
            return _runtime_module(inner)
    raise DeviceError(f"cuda_source: {type(obj).__name__} is not a compiled TVM module")


def cuda_source(compiled: Any) -> str:
    """The CUDA C source of every cuda module imported by ``compiled``.

    Args:
        compiled: A slimfx Compiled for a cuda target, a Relax Executable from
            ``tvm.compile``, or a ``tvm.runtime.Module`` (e.g. a loaded library).

    Raises:
        DeviceError: ``compiled`` holds no CUDA code.
    """
    root = _runtime_module(compiled)
    sources, seen, stack = [], set(), [root]
    while stack:
        mod = stack.pop()
        if id(mod) in seen:
            continue
        seen.add(id(mod))
        if mod.kind == "cuda":
            sources.append(mod.inspect_source())
        stack.extend(mod.imports)
    if not sources:
        raise DeviceError("cuda_source: the module holds no CUDA code; was it compiled for "
                          "a cuda target (e.g. slimfx.compile(graph, target='cuda'))?")
    return "\n".join(sources)


def find_nvcc() -> str | None:
    """The nvcc binary, from ``$CUDA_PATH``, ``/usr/local/cuda`` or ``PATH``."""
    for root in (os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and Path(root, "bin", "nvcc").is_file():
            return str(Path(root, "bin", "nvcc"))
    return shutil.which("nvcc")


def _has_nvrtc() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("cuda", "nvidia"))


def compile_cubin(source: str, arch: str = "sm_80", compiler: str = "auto") -> bytes:
    """Compile CUDA C source to a cubin for ``arch``.

    Args:
        source: CUDA C, e.g. from :func:`cuda_source`.
        arch: ``sm_XX``.
        compiler: ``"nvcc"``, ``"nvrtc"`` or ``"auto"`` (nvcc when found).

    Raises:
        DeviceError: No compiler, or the source does not compile.
    """
    if compiler == "auto":
        compiler = "nvcc" if find_nvcc() else "nvrtc" if _has_nvrtc() else ""
    if compiler == "nvcc":
        return _nvcc_cubin(source, arch)
    if compiler != "nvrtc":
        raise DeviceError("no CUDA compiler: install the CUDA toolkit (nvcc) or "
                          "`pip install nvidia-cuda-nvrtc cuda-bindings`")
    import tvm
    from tvm.support import nvcc as tvm_nvcc

    # TVM looks for the CUDA headers NVRTC needs in $CUDA_PATH, else next to `which nvcc`
    # (wrong for a wrapper script): point it at the real toolkit for this call.
    toolkit = _toolkit_root()
    saved = os.environ.get("CUDA_PATH")
    try:
        if saved is None and toolkit is not None:
            os.environ["CUDA_PATH"] = toolkit
        with tvm.target.Target({"kind": "cuda", "arch": arch}):
            cubin = tvm_nvcc.compile_cuda(source, target_format="cubin", compiler="nvrtc")
    except Exception as e:  # TVM raises RuntimeError with NVRTC's log
        raise DeviceError(f"NVRTC failed to compile the emitted CUDA for {arch}: {e}") from e
    finally:
        if saved is None:
            os.environ.pop("CUDA_PATH", None)
    return bytes(cubin)


def _toolkit_root() -> str | None:
    nvcc = find_nvcc()
    if nvcc is None:
        return None
    root = Path(nvcc).resolve().parent.parent
    return str(root) if (root / "include" / "cuda_runtime.h").is_file() else None


def _nvcc_cubin(source: str, arch: str) -> bytes:
    nvcc = find_nvcc()
    if nvcc is None:
        raise DeviceError("nvcc not found: set CUDA_PATH or use compiler='nvrtc'")
    with tempfile.TemporaryDirectory(prefix="slimfx-nvcc-") as tmp:
        src, out = Path(tmp, "kernels.cu"), Path(tmp, "kernels.cubin")
        src.write_text(source)
        argv = [nvcc, "--cubin", "-O3", f"-arch={arch}", "-o", str(out), str(src)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        if proc.returncode != 0:
            raise DeviceError(f"nvcc failed to compile the emitted CUDA for {arch} "
                              f"(exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        return out.read_bytes()


def _find_cuda_tool(name: str) -> str | None:
    """``name`` from PATH, ``$CUDA_PATH/bin`` or the PyPI ``nvidia-cuda-<name>`` wheel."""
    found = shutil.which(name)
    if found:
        return found
    candidates = [Path(os.environ.get("CUDA_PATH", "/usr/local/cuda"), "bin", name)]
    spec = importlib.util.find_spec("nvidia")
    for base in (spec.submodule_search_locations or []) if spec else []:
        candidates += sorted(Path(base).glob(f"cu*/bin/{name}"))
        candidates.append(Path(base, f"cuda_{name}", "bin", name))
    return next((str(c) for c in candidates if c.is_file()), None)


def find_cuobjdump() -> str | None:
    """``cuobjdump`` (PyPI ``nvidia-cuda-cuobjdump``); it needs ``nvdisasm`` for SASS."""
    return _find_cuda_tool("cuobjdump")


def disassemble(cubin: bytes) -> str:
    """``cuobjdump -sass`` of a cubin.

    Raises:
        DeviceError: cuobjdump or nvdisasm is missing, or cuobjdump failed.
    """
    tool, nvdisasm = find_cuobjdump(), _find_cuda_tool("nvdisasm")
    if tool is None or nvdisasm is None:
        raise DeviceError("cuobjdump/nvdisasm not found: "
                          "`pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm`")
    env = dict(os.environ, NVDISASM_PATH=str(Path(nvdisasm).parent))
    with tempfile.TemporaryDirectory(prefix="slimfx-sass-") as tmp:
        path = Path(tmp, "kernels.cubin")
        path.write_bytes(cubin)
        proc = subprocess.run([tool, "-sass", str(path)], capture_output=True, text=True,
                              env=env, timeout=120, check=False)
    if proc.returncode != 0:
        raise DeviceError(f"cuobjdump failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout


_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)")
# "/*0040*/   @!P0 IDP.4A.S8.S8 R4, R4, R5, R6 ;" -> "IDP"; opcode = text up to the first dot
_INSTRUCTION = re.compile(r"^\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)((?:\.\w+)*)")


def parse_sass(sass: str) -> dict[str, Counter[str]]:
    """Count instructions per kernel in ``cuobjdump -sass`` output.

    Each instruction is counted under its opcode (``IDP``) and its full name
    with modifiers (``IDP.4A.S8.S8``), so both ``counts["HMMA"]`` and
    ``counts["IDP.4A.S8.S8"]`` work.
    """
    kernels: dict[str, Counter[str]] = {}
    current: Counter[str] | None = None
    for line in sass.splitlines():
        if m := _FUNCTION.match(line):
            current = kernels.setdefault(m.group(1), Counter())
        elif current is not None and (m := _INSTRUCTION.match(line)):
            current[m.group(1)] += 1
            if m.group(2):
                current[m.group(1) + m.group(2)] += 1
    return kernels


def cuda_sass_report(compiled: Any, arch: str | None = None,
                     compiler: str = "auto") -> dict[str, dict[str, int]]:
    """Instruction counts per kernel of a model compiled for CUDA.

    Args:
        compiled: A slimfx Compiled, a Relax Executable or a runtime module.
        arch: ``sm_XX``; default the compiled target's arch, else ``sm_80``.
        compiler: ``"nvcc"``, ``"nvrtc"`` or ``"auto"``.

    Returns:
        ``{kernel name: {opcode or opcode.modifiers: count}}``; e.g. an int8
        GEMM kernel has ``counts["IDP.4A.S8.S8"] > 0``, an fp16 GEMM kernel
        ``counts["HMMA"] > 0``.
    """
    if arch is None:
        target = getattr(compiled, "target", None)  # a Compiled's target dict
        arch = str(target.get("arch", "sm_80")) if isinstance(target, dict) else "sm_80"
    sass = disassemble(compile_cubin(cuda_source(compiled), arch, compiler))
    return {name: dict(counts) for name, counts in parse_sass(sass).items()}
