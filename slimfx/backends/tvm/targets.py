"""Named compilation targets: ``x86``, ``arm``, ``cuda`` (``cuda:sm_90``) or a TVM target dict.

TVM 0.27 only accepts targets as dicts. ``x86`` is LLVM for this host's CPU: ``mcpu`` comes
from LLVM's host detection (e.g. ``znver4``, ``cascadelake``) or, failing that, from the
``/proc/cpuinfo`` flags, so meta-schedule sees AVX-512/VNNI when the CPU has it;
``num-cores`` is the number of usable cores. ``arm`` is aarch64 Linux with NEON, dot product
(and i8mm, fp16: see ``slimfx.backends.tvm.arm``); ``cuda`` is ``sm_80`` unless another
architecture is named.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from typing import Any

from slimfx.errors import SlimfxError

__all__ = ["KNOWN_TARGETS", "resolve_target", "host_cpu", "target_kind", "can_run_here",
           "use_cpu_threads"]

KNOWN_TARGETS = ("x86", "arm", "cuda", "cuda:sm_80", "cuda:sm_90")

# Flags -> an LLVM cpu with those features, most capable first.
_CPU_BY_FLAGS = (
    ({"avx512_vnni", "avx512_bf16", "avx512f"}, "cooperlake"),
    ({"avx512_vnni", "avx512f"}, "cascadelake"),
    ({"avx512f"}, "skylake-avx512"),
    ({"avx2"}, "haswell"),
)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def host_cpu() -> str:
    """The LLVM ``mcpu`` of this machine (``znver4``, ``cascadelake``, ``generic``, ...)."""
    try:
        import tvm

        cpu = str(tvm.target.codegen.llvm_get_system_cpu())
        if cpu and cpu != "generic":
            return cpu
    except (ImportError, AttributeError, RuntimeError):
        pass
    flags = _cpu_flags()
    for needed, cpu in _CPU_BY_FLAGS:
        if needed <= flags:
            return cpu
    return "generic"


def _num_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def use_cpu_threads(spec: dict[str, Any]) -> None:
    """Lets TVM's CPU thread pool use the target's ``num-cores`` threads.

    TVM sizes its pool from ``TVM_NUM_THREADS`` when the pool starts (the first parallel
    kernel of a thread); without it, on x86 it takes half of the logical CPUs (it assumes
    hyper-threading), i.e. one thread on a 2-core machine. This sets the variable to the
    target's ``num-cores`` unless the user set it; it has no effect once a pool is running.
    """
    cores = spec.get("num-cores")
    if spec.get("kind") == "llvm" and cores and "TVM_NUM_THREADS" not in os.environ:
        os.environ["TVM_NUM_THREADS"] = str(min(int(cores), _num_cores()))


def _named(name: str) -> dict[str, Any]:
    if name == "x86":
        return {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": host_cpu(),
                "num-cores": _num_cores()}
    if name == "arm":
        from slimfx.backends.tvm.arm import ARM_MATTR

        return {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": list(ARM_MATTR)}
    if name == "cuda" or name.startswith("cuda:"):
        arch = name.split(":", 1)[1] if ":" in name else "sm_80"
        if not arch.startswith("sm_") or not arch[3:].isdigit():
            raise SlimfxError(f"unknown CUDA architecture {arch!r}: write e.g. 'cuda:sm_90'")
        return {"kind": "cuda", "arch": arch, "host": {"kind": "llvm"}}
    raise SlimfxError(f"unknown target {name!r}; known targets: {', '.join(KNOWN_TARGETS)}, "
                      "or a TVM target dict such as {'kind': 'llvm', 'mcpu': 'znver4'}")


def resolve_target(target: str | Mapping[str, Any]) -> dict[str, Any]:
    """The TVM target dict for a name (``x86``, ``arm``, ``cuda``, ``cuda:sm_90``) or a dict.

    Raises:
        SlimfxError: an unknown name, or a dict that TVM rejects.
    """
    if isinstance(target, str):
        spec = _named(target)
    elif isinstance(target, Mapping):
        spec = dict(target)
        if "kind" not in spec:
            raise SlimfxError(f"a target dict needs a 'kind' (llvm, cuda, ...), got {spec}")
    else:
        raise SlimfxError(f"target must be a name ({', '.join(KNOWN_TARGETS)}) or a dict, got "
                          f"{type(target).__name__}")
    import tvm

    try:
        tvm.target.Target(spec)
    except Exception as e:  # TVM raises its own error types for bad target keys
        raise SlimfxError(f"TVM rejects the target {spec}: {e}") from e
    return spec


def target_kind(spec: Mapping[str, Any]) -> str:
    """``x86``, ``arm``, ``cuda`` or the TVM kind for other targets."""
    kind = spec.get("kind")
    if kind == "cuda":
        return "cuda"
    if kind == "llvm":
        triple = str(spec.get("mtriple", ""))
        if triple.startswith(("aarch64", "arm64")):
            return "arm"
        if triple == "" or triple.startswith("x86_64"):
            return "x86"
    return str(kind)


def can_run_here(spec: Mapping[str, Any]) -> str | None:
    """``None`` when this host can run code built for ``spec``, else the reason why not."""
    kind = target_kind(spec)
    machine = platform.machine().lower()
    if kind == "x86":
        if machine not in ("x86_64", "amd64"):
            return f"the artifact is x86-64 code and this host is {machine}"
        return None
    if kind == "arm":
        if machine not in ("aarch64", "arm64"):
            return (f"the artifact is aarch64 code and this host is {machine}; run it on an ARM "
                    "board (RPC) or under qemu with slimfx.backends.tvm.arm.run_arm")
        return None
    if kind == "cuda":
        try:
            import tvm

            if tvm.cuda(0).exist:
                return None
        except Exception:  # noqa: BLE001 - no CUDA runtime at all
            pass
        return "the artifact is CUDA code and this host has no CUDA device"
    return f"targets of kind {kind!r} cannot be run by slimfx.load"
