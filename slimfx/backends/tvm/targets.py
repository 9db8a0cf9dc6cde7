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

from slimfx.errors import DeviceError, SlimfxError

__all__ = ["KNOWN_TARGETS", "resolve_target", "host_cpu", "target_kind", "can_run_here",
           "use_cpu_threads", "target_cpu_features", "host_cpu_features",
           "missing_cpu_features", "check_cpu_features", "target_has_feature"]

KNOWN_TARGETS = ("x86", "arm", "cuda", "cuda:sm_80", "cuda:sm_90")

# Flags -> an LLVM cpu with those features, most capable first.
_CPU_BY_FLAGS = (
    ({"avx512_vnni", "avx512_bf16", "avx512f"}, "cooperlake"),
    ({"avx512_vnni", "avx512f"}, "cascadelake"),
    ({"avx512f"}, "skylake-avx512"),
    ({"avx2"}, "haswell"),
)


# Instruction-set features that generated code may use, as LLVM names them, mapped to the
# flag Linux shows for them in /proc/cpuinfo ("flags" on x86, "Features" on aarch64). LLVM's
# feature lists also hold tuning hints ("fast-gather", "prefer-256-bit") and system
# instructions that kernels never emit (movdiri, ...): those are not checked.
_X86_ISA = {
    "sse": "sse", "sse2": "sse2", "sse3": "pni", "ssse3": "ssse3", "sse4.1": "sse4_1",
    "sse4.2": "sse4_2", "sse4a": "sse4a", "avx": "avx", "avx2": "avx2", "fma": "fma",
    "fma4": "fma4", "xop": "xop", "f16c": "f16c", "bmi": "bmi1", "bmi2": "bmi2",
    "lzcnt": "abm", "popcnt": "popcnt", "movbe": "movbe", "aes": "aes", "pclmul": "pclmulqdq",
    "sha": "sha_ni", "gfni": "gfni", "vaes": "vaes", "vpclmulqdq": "vpclmulqdq", "adx": "adx",
    "avx512f": "avx512f", "avx512cd": "avx512cd", "avx512bw": "avx512bw",
    "avx512dq": "avx512dq", "avx512vl": "avx512vl", "avx512ifma": "avx512ifma",
    "avx512vbmi": "avx512vbmi", "avx512vbmi2": "avx512_vbmi2", "avx512vnni": "avx512_vnni",
    "avx512bitalg": "avx512_bitalg", "avx512vpopcntdq": "avx512_vpopcntdq",
    "avx512bf16": "avx512_bf16", "avx512fp16": "avx512_fp16",
    "avx512vp2intersect": "avx512_vp2intersect", "avxvnni": "avx_vnni",
    "avxvnniint8": "avx_vnni_int8", "avxifma": "avx_ifma", "avxneconvert": "avx_ne_convert",
    "amx-tile": "amx_tile", "amx-int8": "amx_int8", "amx-bf16": "amx_bf16",
    "amx-fp16": "amx_fp16",
}
_ARM_ISA = {
    "fp-armv8": "fp", "neon": "asimd", "dotprod": "asimddp", "i8mm": "i8mm",
    "fullfp16": "asimdhp", "bf16": "bf16", "rdm": "asimdrdm", "sve": "sve", "sve2": "sve2",
    "crc": "crc32", "aes": "aes", "sha2": "sha2",
}


def _cpu_flags() -> set[str]:
    """The CPU flags of /proc/cpuinfo (``flags`` on x86, ``Features`` on ARM); empty if unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _isa_table(kind: str) -> dict[str, str]:
    return {"x86": _X86_ISA, "arm": _ARM_ISA}.get(kind, {})


def target_cpu_features(spec: Mapping[str, Any]) -> list[str]:
    """The instruction-set features (LLVM names) that code built for ``spec`` may use.

    Computed by LLVM from the target's ``mtriple``, ``mcpu`` and ``mattr``; only the
    features of the table above (the ones a host can be checked for) are listed. Empty for
    targets that are not LLVM CPU targets.
    """
    table = _isa_table(target_kind(spec))
    if not table or spec.get("kind") != "llvm":
        return []
    import tvm

    feats = tvm.target.codegen.llvm_get_cpu_features(tvm.target.Target(dict(spec)))
    return sorted(str(f) for f in feats if str(f) in table)


def target_has_feature(target: Any, feature: str) -> bool:
    """Whether the TVM ``target`` (a ``tvm.target.Target``) is an LLVM CPU with ``feature``.

    ``feature`` is an LLVM name (``"avx2"``, ``"avx512vnni"``, ``"fma"``); ``False`` for
    other kinds of targets, and for an LLVM built without that architecture.
    """
    if target is None or target.kind.name != "llvm":
        return False
    from tvm.target.codegen import target_has_features

    try:
        return bool(target_has_features(feature, target))
    except Exception:  # noqa: BLE001 - an LLVM without x86 support: no such feature
        return False


def host_cpu_features(kind: str = "x86") -> set[str] | None:
    """The features of ``target_cpu_features``' table that this host has, ``None`` if unknown.

    Read from the flags of /proc/cpuinfo, i.e. what the kernel lets programs use (a virtual
    machine may hide features that the CPU model has).
    """
    machine = platform.machine().lower()
    here = "x86" if machine in ("x86_64", "amd64") else "arm" if machine in (
        "aarch64", "arm64") else machine
    flags = _cpu_flags() if kind == here else set()
    table = _isa_table(kind)
    if not flags or not table:
        return None
    return {feat for feat, flag in table.items() if flag in flags}


def missing_cpu_features(spec: Mapping[str, Any],
                         features: list[str] | None = None) -> list[str]:
    """Features code for ``spec`` may use that this host lacks (empty when it has them all).

    Args:
        spec: the target dict.
        features: the target's features when already known (an artifact records them);
            computed with :func:`target_cpu_features` otherwise.
    """
    kind = target_kind(spec)
    host = host_cpu_features(kind)
    if host is None:  # not Linux, or another architecture: nothing to check against
        return []
    wanted = target_cpu_features(spec) if features is None else features
    table = _isa_table(kind)
    return sorted(f for f in wanted if f in table and f not in host)


def check_cpu_features(spec: Mapping[str, Any], features: list[str] | None = None,
                       what: str = "this compiled model") -> None:
    """Raises :class:`DeviceError` when code for ``spec`` needs CPU features the host lacks.

    Running such code dies with SIGILL (illegal instruction) at the first kernel that uses
    one of them; this check turns that into an error that says what to do.
    """
    missing = missing_cpu_features(spec, features)
    if missing:
        cpu = spec.get("mcpu", "the default CPU")
        raise DeviceError(
            f"{what} was built for {cpu!r} and uses CPU features this host ({host_cpu()}) "
            f"lacks: {', '.join(missing)}; running it would crash with an illegal "
            "instruction. Compile it on this host for target \"x86\", or for an 'mcpu' this "
            "host supports")


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


def machine_is_x86() -> bool:
    """Whether this host is x86-64."""
    return platform.machine().lower() in ("x86_64", "amd64")


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
        spec = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": host_cpu(),
                "num-cores": _num_cores()}
        # LLVM names the CPU model; a virtual machine may hide some of its features
        hidden = missing_cpu_features(spec) if machine_is_x86() else []
        if hidden:
            spec["mattr"] = [f"-{f}" for f in hidden]
        return spec
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
