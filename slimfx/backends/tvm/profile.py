"""Per-kernel time of a compiled model: :meth:`Compiled.profile` and its :class:`ProfileReport`.

TVM 0.27's Relax VM has no profiler (``VirtualMachine(..., profile=True)`` is gone), but it
calls an *instrument* (``vm.set_instrument(f)``) before and after every call instruction:
``f(func, symbol, before_run, ret, *args)``. A profile installs one on the calling thread's
VM for the measured calls only and removes it afterwards, so the normal call path never
pays for it.

What is measured, per model call:

- **kernel time**: for each call instruction, the wall time between the instrument's
  ``before`` and ``after`` callbacks (``time.perf_counter_ns``; on a GPU the device is
  synchronised before the clock is read), *exclusive* of calls nested inside it. A
  kernel's time per model call is the sum of its calls' times over ``repeat``
  instrumented model calls, divided by ``repeat`` (a mean, so the rows add up to the
  instrumented call). On a loaded machine a parallel kernel now and then waits
  milliseconds for a TVM worker thread that lost its core; those waits are real time of
  the model call and stay in the mean, while the *median* time of one call of the kernel
  (:attr:`ProfileRow.median_ms_per_call`) shows its typical cost without them. Calls of VM
  builtins (``vm.builtin.*``: allocation, reshape, shape checks) are not kernels: they are
  measured the same way and summed in one :data:`BUILTINS` row.
- **end-to-end time**: the same call *without* the instrument, timed like
  :meth:`Compiled.benchmark`. The two kinds of call alternate, so load changes on a shared
  machine hit both alike. The figure is the mean over ``repeat`` calls, like the kernels'
  (``ProfileReport.median_ms`` is the median, the figure :meth:`Compiled.benchmark` gives).
- **VM overhead / other** = end-to-end time - kernels - builtins: the VM's interpreter
  loop and the Python call. Clamped at 0 (the instrument slows each call down a little and
  the load varies, so the kernels can add up to more than the plain call);
  ``ProfileReport.instrumented_ms`` (the mean instrumented call: kernels + builtins + the
  instrument's own cost, exactly) shows what the instrument cost.

The share of a row is its time over ``max(end-to-end, kernels + builtins)``, so the shares
of all rows, builtins and remainder included, add up to 1.
"""

from __future__ import annotations

import re
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ProfileRow", "ProfileReport", "OTHER", "BUILTINS", "kernel_kind", "profile_vm"]

#: Name (and kind) of the row that holds the time spent outside kernels and builtins.
OTHER = "VM overhead / other"
#: Name (and kind) of the row that sums the VM builtins (``vm.builtin.*`` calls).
BUILTINS = "VM builtins (alloc, reshape, checks)"

_SHAPE_TOKEN = re.compile(r"\d+(x\d+)*")
_DTYPE_TOKEN = re.compile(r"(bf|[fiu])\d+")
# tokens whose trailing digits are part of the name, not TVM's de-duplication number
_KEEP = frozenset({"avx2", "avx512", "sse4", "log2", "log10", "exp2", "atan2", "log1p"})


def kernel_kind(name: str) -> str:
    """The kind of a kernel: its name without shapes and TVM's de-duplication numbers.

    ``qconv_vnni_dense_1024x144x16`` -> ``qconv_vnni_dense``,
    ``qdense_avx2_1x64x256`` -> ``qdense_avx2``;
    ``im2col_f32_1_16_32_32_3_3_1_1_1_1_1_1`` -> ``im2col_f32``;
    ``fused_reshape1_transpose_cast1_add3`` -> ``fused_reshape_transpose_cast_add``.
    """
    tokens = [t for t in name.split("_") if not _SHAPE_TOKEN.fullmatch(t)]
    tokens = [t if t in _KEEP or _DTYPE_TOKEN.fullmatch(t)
              else re.sub(r"(?<=[a-z])\d+$", "", t) for t in tokens]
    return "_".join(t for t in tokens if t) or name


@dataclass(frozen=True)
class ProfileRow:
    """One kernel (or kind of kernel) of a profile; times are per model call.

    Attributes:
        name: the kernel's symbol in the built module (or the kind, or :data:`OTHER`).
        kind: :func:`kernel_kind` of the name.
        calls: calls per model call.
        total_ms: time per model call, all its calls together (mean over the runs).
        ms_per_call: ``total_ms / calls``.
        share: fraction of the model's time (see the module docstring).
        median_ms_per_call: median time of one call (typical cost, without the rare long
            waits of a loaded machine); 0 for summary rows.
    """

    name: str
    kind: str
    calls: int
    total_ms: float
    ms_per_call: float
    share: float
    median_ms_per_call: float = 0.0


@dataclass(frozen=True)
class ProfileReport:
    """Per-kernel times of a compiled model; ``str(report)`` is a table.

    Attributes:
        rows: every kernel, the :data:`BUILTINS` and the :data:`OTHER` row, slowest first;
            shares add up to 1.
        total_ms: mean end-to-end time of a call without the instrument.
        kernel_ms: sum of the kernels' times.
        builtin_ms: time of the VM builtins.
        other_ms: ``total_ms - kernel_ms - builtin_ms``, clamped at 0.
        instrumented_ms: mean end-to-end time of an instrumented call.
        repeat: measured calls of each kind (plain, instrumented).
        median_ms: median end-to-end time of a call without the instrument.
    """

    rows: tuple[ProfileRow, ...]
    total_ms: float
    kernel_ms: float
    builtin_ms: float
    other_ms: float
    instrumented_ms: float
    repeat: int
    median_ms: float

    @property
    def kernel_rows(self) -> tuple[ProfileRow, ...]:
        """The rows of kernels (without the :data:`BUILTINS` and :data:`OTHER` rows)."""
        return tuple(r for r in self.rows if r.name not in (OTHER, BUILTINS))

    def by_kind(self) -> tuple[ProfileRow, ...]:
        """Rows summed by :attr:`ProfileRow.kind` (builtins and remainder kept), slowest first."""
        acc: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
        for r in self.rows:
            a = acc[r.kind]
            a[0] += r.calls
            a[1] += r.total_ms
            a[2] += r.share
        rows = [ProfileRow(k, k, int(c), ms, ms / c if c else 0.0, s)
                for k, (c, ms, s) in acc.items()]
        return tuple(sorted(rows, key=lambda r: -r.total_ms))

    def format(self, top: int | None = None, *, kinds: bool = True, width: int = 64) -> str:
        """The table of kernels (the ``top`` slowest, the rest summed in one line), then,
        with ``kinds``, the table by kind; names longer than ``width`` are cut."""
        head = (f"{self.total_ms:.3f} ms per call (mean of {self.repeat}, median "
                f"{self.median_ms:.3f}; kernels "
                f"{self.kernel_ms:.3f} ms, builtins {self.builtin_ms:.3f} ms, other "
                f"{self.other_ms:.3f} ms; instrumented call {self.instrumented_ms:.3f} ms)")
        parts = [head, _table("kernel", self.rows, top, width)]
        if kinds:
            parts.append(_table("kind", self.by_kind(), top, width))
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.format()


def _table(title: str, rows: Sequence[ProfileRow], top: int | None, width: int) -> str:
    shown = list(rows)
    if top is not None and len(shown) > top:
        rest = shown[top:]
        ms = sum(r.total_ms for r in rest)
        calls = sum(r.calls for r in rest)
        shown = shown[:top] + [ProfileRow(f"({len(rest)} more)", "", calls, ms,
                                          ms / calls if calls else 0.0,
                                          sum(r.share for r in rest))]

    def cut(s: str) -> str:
        return s if len(s) <= width else s[:width - 3] + "..."

    names = [cut(r.name) for r in shown]
    w = max([len(title), *map(len, names)])
    med = any(r.median_ms_per_call for r in shown)
    lines = [f"{title:<{w}}  {'calls':>5}  {'ms':>9}  {'ms/call':>9}  {'share':>6}"
             + ("  median ms/call" if med else "")]
    lines += [f"{n:<{w}}  {r.calls:>5}  {r.total_ms:>9.3f}  {r.ms_per_call:>9.4f}  "
              f"{r.share:>6.1%}" + (f"  {r.median_ms_per_call:>14.4f}"
                                    if med and r.median_ms_per_call else "")
              for n, r in zip(names, shown, strict=True)]
    return "\n".join(lines)


class _Recorder:
    """The VM instrument: the exclusive wall time of every call, by symbol."""

    def __init__(self, sync: Callable[[], None] | None) -> None:
        self.ns: dict[str, list[int]] = defaultdict(list)
        self._stack: list[list[Any]] = []  # [symbol, start ns, ns of nested calls]
        self._sync = sync

    def __call__(self, func: Any, symbol: str, before: bool, ret: Any, *args: Any) -> int:
        if before:
            self._stack.append([symbol, 0, 0])
            self._stack[-1][1] = time.perf_counter_ns()  # last: the call starts now
            return 0
        if self._sync is not None:
            self._sync()
        now = time.perf_counter_ns()
        if not self._stack:  # an `after` without its `before`: cannot happen; be safe
            return 0
        name, start, nested = self._stack.pop()
        elapsed = now - start
        self.ns[name].append(elapsed - nested)
        if self._stack:
            self._stack[-1][2] += elapsed
        return 0


def _is_kernel(symbol: str) -> bool:
    return not symbol.startswith("vm.")


def profile_vm(vm: Any, entry: str, args: Sequence[Any], device: Any, *, repeat: int = 10,
               warmup: int = 2) -> ProfileReport:
    """Profiles ``vm[entry](*args)`` (see the module docstring); the instrument is removed
    before returning, also on error.

    Args:
        vm: a ``relax.VirtualMachine`` used by this thread only.
        entry: the function to call.
        args: its arguments, already on ``device``.
        device: the VM's device (synchronised around timed calls).
        repeat: measured calls of each kind (plain and instrumented).
        warmup: untimed plain calls first.
    """
    fn = vm[entry]
    is_cpu = int(device.dlpack_device_type()) == 1  # kDLCPU
    recorder = _Recorder(None if is_cpu else device.sync)
    for _ in range(max(warmup, 0)):
        fn(*args)
    plain: list[float] = []
    instrumented: list[float] = []
    runs = max(repeat, 1)
    try:
        for _ in range(runs):
            device.sync()
            t0 = time.perf_counter_ns()
            fn(*args)
            device.sync()
            plain.append((time.perf_counter_ns() - t0) / 1e6)
            vm.set_instrument(recorder)
            try:
                t0 = time.perf_counter_ns()
                fn(*args)
                device.sync()
                instrumented.append((time.perf_counter_ns() - t0) / 1e6)
            finally:
                vm.set_instrument(None)
    finally:
        vm.set_instrument(None)
    calls = {n: len(v) // runs for n, v in recorder.ns.items()}
    ms = {n: sum(v) / runs / 1e6 for n, v in recorder.ns.items()}
    builtins = [n for n in ms if not _is_kernel(n)]
    total = statistics.fmean(plain)
    ksum = sum(ms[n] for n in ms if _is_kernel(n))
    bsum = sum(ms[n] for n in builtins)
    bcalls = sum(calls[n] for n in builtins)
    other = max(total - ksum - bsum, 0.0)
    denom = max(total, ksum + bsum) or 1.0
    rows = [ProfileRow(n, kernel_kind(n), calls[n], t, t / calls[n] if calls[n] else 0.0,
                       t / denom, statistics.median(recorder.ns[n]) / 1e6)
            for n, t in ms.items() if _is_kernel(n)]
    rows.append(ProfileRow(BUILTINS, BUILTINS, bcalls, bsum, bsum / bcalls if bcalls else 0.0,
                           bsum / denom))
    rows.append(ProfileRow(OTHER, OTHER, 0, other, 0.0, other / denom))
    rows.sort(key=lambda r: -r.total_ms)
    return ProfileReport(tuple(rows), total, ksum, bsum, other, statistics.fmean(instrumented),
                         runs, statistics.median(plain))
