"""Random models through every pass pipeline and through ``slimfx.compile``.

:func:`random_model` builds a small CNN / attention ``nn.Module`` from a hypothesis-drawn
:class:`ModelSpec`: conv-bn-activation stacks, residual adds, channel concats, depthwise
separable blocks, pooling, and an attention block over the spatial positions
(q/k/v projections, ``softmax(q k^T / sqrt(d)) v``, residual, layer norm). Channel counts
are odd as often as even; batch is 1 or 2.

Many models are packed into one :class:`Bundle` module (one input and one output per
model) so that one trace, one pipeline run and one compile serve all of them (a TVM build
costs seconds; the models are independent, so each is still compared on its own).

Per bundle and pipeline (:data:`PIPELINES`):

- ``float``: ``remove-identity,fold-bn,fuse-activation,cleanup``; the pipelined graph on
  the torch backend vs eager PyTorch and vs the x86 build (fp32 bound below);
- ``prune``: ``prune-channels{ratio=0.5},cleanup``; x86 build vs torch backend;
- ``fp16``: x86 build vs the torch backend of the fp16 graph;
- ``dynamic-int8``: x86 build vs torch backend;
- ``ptq-int8``: ``slimfx.quantize`` (calibrated on random batches) -> the integer program;
  x86 build vs torch backend BIT-EXACT when the model has no float island (attention's
  softmax/layer norm run in float between dequantize/quantize, where one rounding step
  may move an int8 value by one: those models get a bound of a few output steps).

Float bound: ``|got - ref| <= rel * max(1, max |ref|)`` (fp32: 1e-4, fp16: 2e-2).

:func:`run_bundle_isolated` (what the campaign uses) runs a bundle in a
:class:`~tests.reliability.fuzz_worker.Worker` process; when the worker crashes, every
model of the bundle is re-run alone per pipeline to pin the crash (confirmed alone in a
fresh worker), counted as ``crashed`` for that pipeline with the signal and the side.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from torch import nn

from tests.reliability.fuzz_worker import Crash, Worker, phase

__all__ = ["ModelSpec", "Bundle", "random_model", "model_specs", "draw_specs",
           "run_bundle", "run_bundle_isolated", "GraphReport", "PIPELINES"]

PIPELINES = ("float", "prune", "fp16", "dynamic-int8", "ptq-int8")
FLOAT_REL = {"float": 1e-4, "prune": 1e-4, "fp16": 2e-2, "dynamic-int8": 1e-4}


@dataclass(frozen=True)
class ModelSpec:
    """A random model: input geometry and a list of blocks ``(kind, params)``."""

    batch: int
    channels: int
    size: int
    blocks: tuple[tuple[str, tuple[int, ...]], ...]
    head: str  # "linear" | "attention"
    seed: int

    def describe(self) -> str:
        return (f"x[{self.batch},{self.channels},{self.size},{self.size}] "
                f"{' '.join(k + str(list(p)) for k, p in self.blocks)} head={self.head} "
                f"seed={self.seed}")


BLOCKS = ("conv", "residual", "concat", "depthwise", "pool")


@st.composite
def model_specs(draw: Any) -> ModelSpec:
    """A hypothesis strategy of :class:`ModelSpec`."""
    blocks = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(BLOCKS))
        if kind == "conv":
            params: tuple[int, ...] = (draw(st.sampled_from([1, 3, 4, 5, 8, 16])),
                                       draw(st.sampled_from([1, 3, 5])),
                                       draw(st.sampled_from([1, 1, 2])),
                                       draw(st.integers(0, 3)))  # out, kernel, stride, act
        elif kind in ("residual", "depthwise"):
            params = (draw(st.sampled_from([1, 3])), draw(st.integers(0, 3)))
        elif kind == "concat":
            params = (draw(st.sampled_from([1, 2, 3, 5])), draw(st.sampled_from([1, 2, 4])))
        else:
            params = (draw(st.sampled_from([0, 1])), draw(st.sampled_from([1, 2, 3])))
        blocks.append((kind, params))
    return ModelSpec(draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 3, 4, 7])),
                     draw(st.sampled_from([1, 4, 5, 8])), tuple(blocks),
                     draw(st.sampled_from(["linear", "linear", "attention"])),
                     draw(st.integers(0, 2**31 - 1)))


_ACTS: tuple[type[nn.Module], ...] = (nn.Identity, nn.ReLU, nn.ReLU6, nn.Hardswish)


class _ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, stride: int, act: int,
                 groups: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups,
                                   bias=bool(act % 2)),
                         nn.BatchNorm2d(cout), _ACTS[act]())


class _Residual(nn.Module):
    def __init__(self, c: int, k: int, act: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_ConvBN(c, c, k, 1, act), nn.Conv2d(c, c, k, 1, k // 2),
                                  nn.BatchNorm2d(c))
        self.act = _ACTS[act]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + x)


class _Concat(nn.Module):
    def __init__(self, c: int, a: int, b: int) -> None:
        super().__init__()
        self.a = _ConvBN(c, a, 1, 1, 1)
        self.b = _ConvBN(c, b, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x), x], dim=1)


class _Attention(nn.Module):
    """Single-head attention over the spatial positions of an NCHW map, then mean + linear."""

    def __init__(self, c: int, d: int, classes: int) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(c, d), nn.Linear(c, d), nn.Linear(c, c)
        self.norm = nn.LayerNorm(c)
        self.fc = nn.Linear(c, classes)
        self.scale = 1.0 / math.sqrt(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.flatten(x, 2).transpose(1, 2)  # [N, HW, C]
        att = torch.softmax(torch.matmul(self.q(t), self.k(t).transpose(1, 2)) * self.scale,
                            dim=-1)
        t = self.norm(t + torch.matmul(att, self.v(t)))
        return self.fc(t.mean(dim=1))


class _Head(nn.Module):
    def __init__(self, c: int, classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))


def random_model(spec: ModelSpec) -> nn.Module:
    """The eval-mode model of ``spec`` with random weights and BN statistics."""
    torch.manual_seed(spec.seed)
    layers: list[nn.Module] = []
    c, size = spec.channels, spec.size
    for kind, p in spec.blocks:
        if kind == "conv":
            out, k, stride, act = p
            layers.append(_ConvBN(c, out, k, stride, act))
            c, size = out, (size + 2 * (k // 2) - k) // stride + 1
        elif kind == "residual":
            layers.append(_Residual(c, p[0], p[1]))
        elif kind == "depthwise":
            layers += [_ConvBN(c, c, p[0], 1, p[1], groups=c), _ConvBN(c, c + 1, 1, 1, 1)]
            c += 1
        elif kind == "concat":
            layers.append(_Concat(c, p[0], p[1]))
            c += p[0] + p[1]
        else:
            k = min(p[1], size)
            layers.append(nn.MaxPool2d(k, k) if p[0] == 0 else nn.AvgPool2d(k, k))
            size = size // k
    head: nn.Module = _Attention(c, 4, 3) if spec.head == "attention" else _Head(c, 3)
    model = nn.Sequential(*layers, head).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


class Bundle(nn.Module):
    """Several independent models; input i feeds model i, output i is its result."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        self.models = nn.ModuleList(models)

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(m(x) for m, x in zip(self.models, xs, strict=True))


def draw_specs(n: int, seed_value: int) -> list[ModelSpec]:
    """``n`` model specs drawn by hypothesis with a fixed seed."""
    out: list[ModelSpec] = []

    @seed(seed_value)
    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(model_specs())
    def collect(spec: ModelSpec) -> None:
        out.append(spec)

    collect()
    return out[:n]


def _inputs(spec: ModelSpec, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(spec.batch, spec.channels, spec.size, spec.size, generator=gen) * 2


@dataclass
class GraphReport:
    """Per pipeline: models checked, passed, mismatched, rejected; and the details."""

    counts: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    details: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timings: Counter[str] = field(default_factory=Counter)  # seconds per pipeline

    def merge(self, other: GraphReport) -> None:
        """Adds ``other``'s counts, details and times to this report."""
        for p, c in other.counts.items():
            self.counts[p].update(c)
        self.details += other.details
        self.seconds += other.seconds
        self.timings.update(other.timings)

    def table(self) -> str:
        rows = [("pipeline", "graphs", "passed", "mismatched", "rejected", "crashed")]
        for p, c in sorted(self.counts.items()):
            rows.append((p, str(sum(c.values())), str(c["passed"]), str(c["mismatch"]),
                         str(c["rejected"]), str(c["crashed"])))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                                   for i, (v, w) in enumerate(zip(r, widths, strict=True)))
                         for r in rows)

    @property
    def mismatches(self) -> int:
        return sum(c["mismatch"] for c in self.counts.values())

    @property
    def crashes(self) -> int:
        return sum(c["crashed"] for c in self.counts.values())


def _as_list(out: Any) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _close(ref: torch.Tensor, got: Any, rel: float) -> str:
    got = torch.as_tensor(got)
    if tuple(got.shape) != tuple(ref.shape):
        return f"shape {tuple(got.shape)} vs {tuple(ref.shape)}"
    r, g = ref.double(), got.double()
    if not torch.equal(torch.isnan(r), torch.isnan(g)):
        return "NaN positions differ"
    err = (r - g).abs().nan_to_num(0.0).max().item() if r.numel() else 0.0
    tol = rel * max(1.0, r.abs().nan_to_num(0.0).max().item() if r.numel() else 1.0)
    return "" if err <= tol else f"max abs error {err:.3g} > {tol:.3g}"


def _with_quantizer_inputs(gp: Any) -> tuple[Any, list[Any]]:
    """``gp`` with the float input of every run-time quantizer (``dynamic_linear``) as an
    extra output (a copy; ``gp`` itself if it has none); returns it and those values."""
    if not any(n.op.name == "dynamic_linear" for n in gp.nodes):
        return gp, []
    g = gp.clone()
    taps: list[Any] = []
    for n in g.nodes:
        v = n.inputs[0] if n.op.name == "dynamic_linear" else None
        if v is not None and v.producer is not None and all(v is not t for t in taps):
            taps.append(v)
    g.outputs = [*g.outputs, *taps]
    g.output_names = None
    return g, taps


def _explain_by_flips(gq: Any, taps: list[Any], tapped: list[Any],
                      xs: tuple[torch.Tensor, ...], i: int, got: Any, msg: str,
                      report: GraphReport, where: str) -> str:
    """Whether model ``i``'s end-to-end mismatch ``msg`` is a dynamic quantizer's rounding
    step, not an error of the build; returns ``""`` if so (noting it), else ``msg``.

    ``dynamic_linear`` rounds ``x / s`` (``s = max|x| / 127``): where ``x / s`` lies within
    the float noise of the producer of ``x`` (a few fp32 ulps, e.g. a conv's accumulation
    order) of a half-integer, the build and torch may round it to neighbouring integers,
    and one step of the input changes the linear's output by ``s * w_scale * |w_q|``
    (~``max|x| |w| / 127``, 1e-3..1e-2 here, not a 1e-4 fp32 effect), which attention's
    softmax / layer norm then carry to every output. That is no defect, so the check is
    split where the quantizers are: the torch reference is run with its ``dynamic_linear``
    kernels fed the BUILD's quantizer inputs (the same integer program on the same
    inputs), and (a) every quantizer input of the model from the build must lie within the
    fp32 bound of that reference's (each float segment checked on equal inputs) and (b) the
    build's outputs within the fp32 bound of its outputs.
    """
    from torch import fx

    import slimfx
    from slimfx.backends.torch.kernels import KERNELS
    from slimfx.backends.torch.kernels_quant import dynamic_quantize

    prefix = f"models.{i}."
    own = [k for k, v in enumerate(taps) if v.name.startswith(prefix)]
    if not own:
        return msg
    module = slimfx.to_torch(gq)
    kernel = KERNELS["dynamic_linear"]
    fed = {v.name: torch.as_tensor(t) for v, t in zip(taps, tapped, strict=True)}
    ir_nodes = [n for n in gq.nodes if n.op.name == "dynamic_linear"]
    fx_nodes = [n for n in module.graph.nodes if n.target is kernel]
    forced = {f: fed.get(n.inputs[0].name) for f, n in zip(fx_nodes, ir_nodes, strict=True)}

    class _Fed(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            if forced.get(n) is None:
                return super().run_node(n)
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            return kernel(forced[n], *args[1:], **kwargs)

    with torch.no_grad():
        fed_out = [t.detach() for t in _as_list(_Fed(module).run(*xs))]
    fed_taps = fed_out[len(gq.outputs) - len(taps):]
    for k in own:  # each float segment on the same inputs as the build's
        bad = _close(fed_taps[k], tapped[k], FLOAT_REL["float"])
        if bad:
            return f"{msg}; quantizer input %{taps[k].name} (fed reference): {bad}"
    bad = _close(fed_out[i], got, FLOAT_REL["dynamic-int8"])
    if bad:
        return f"{msg}; vs the reference fed the build's quantizer inputs: {bad}"
    per_token = {n.inputs[0].name: n.attrs["per_token"] for n in ir_nodes}
    flips = sum(int((dynamic_quantize(fed_taps[k], per_token[taps[k].name])[0]
                     != dynamic_quantize(fed[taps[k].name], per_token[taps[k].name])[0]).sum())
                for k in own)
    report.details.append(f"{where}: {msg} end to end, explained: {flips} element(s) of "
                          "the quantizer inputs round to the neighbouring int8 step (inputs "
                          "within the fp32 bound); matches the reference fed the build's "
                          "quantizer inputs")
    return ""


def _has_float_island(graph: Any) -> bool:
    """Whether an int8 graph computes in float between a dequantize and a quantize."""
    for n in graph.nodes:
        if n.op.name in ("quantize", "dequantize", "observer"):
            continue
        if any(v.dtype in ("f32", "f16") for v in n.outputs) and \
                any(v.dtype in ("f32", "f16") for v in n.inputs) and \
                not n.op.has(_trait("SHAPE_ONLY")):
            return True
    return False


def _trait(name: str) -> Any:
    from slimfx.ir import Trait

    return getattr(Trait, name)


def _graph_for(pipeline: str, g: Any, calib: list[tuple[torch.Tensor, ...]]) -> Any:
    import slimfx

    if pipeline == "float":
        return slimfx.Pipeline("remove-identity,fold-bn,fuse-activation,cleanup")(g)
    if pipeline == "prune":
        return slimfx.Pipeline("fold-bn,prune-channels{ratio=0.5},cleanup")(g)
    if pipeline == "ptq-int8":
        return slimfx.quantize(g, calib)
    return slimfx.quantize(g, pipeline=pipeline)


def run_bundle(specs: Sequence[ModelSpec], pipelines: Sequence[str] = PIPELINES,
               report: GraphReport | None = None, *, target: str = "x86") -> GraphReport:
    """Traces one bundle of ``specs``, runs each pipeline on it, compiles and compares."""
    import slimfx
    from slimfx.errors import SlimfxError

    report = report if report is not None else GraphReport()
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(specs[0].seed if specs else 0)
    models = [random_model(s) for s in specs]
    bundle = Bundle(models).eval()
    xs = tuple(_inputs(s, gen) for s in specs)
    calib = [tuple(_inputs(s, gen) for s in specs) for _ in range(3)]
    ids = [str(s.seed) for s in specs]
    phase("torch reference", ids)
    with torch.no_grad():
        eager = _as_list(bundle(*xs))
    try:
        phase("trace", ids)
        g = slimfx.trace(bundle, xs)
    except SlimfxError as e:
        for p in pipelines:
            report.counts[p]["rejected"] += len(specs)
        report.details.append(f"trace rejected the bundle: {e}")
        return report
    for p in pipelines:
        try:
            t0 = time.perf_counter()
            phase(f"pipeline {p}", ids)
            gp = _graph_for(p, g, calib)
            phase("torch reference", ids)
            ref = _as_list(slimfx.to_torch(gp)(*xs))
            t1 = time.perf_counter()
            phase("TVM compile", ids)
            gq, taps = _with_quantizer_inputs(gp)  # the same program, more outputs
            compiled = slimfx.compile(gq, target)
            t2 = time.perf_counter()
            phase("TVM run", ids)
            out = _as_list(compiled(*xs))
            out, tapped = out[:len(ref)], out[len(ref):]
            report.timings[p] += t2 - t1
            report.timings[p + ":prepare"] += t1 - t0
        except SlimfxError as e:
            report.counts[p]["rejected"] += len(specs)
            report.details.append(f"{p}: bundle rejected: {type(e).__name__}: {str(e)[:500]}")
            continue
        island = p == "ptq-int8" and _has_float_island(gp)
        for i, spec in enumerate(specs):
            r = ref[i].detach().float() if p == "fp16" else ref[i].detach()
            got = torch.as_tensor(out[i]).float() if p == "fp16" else out[i]
            if p == "ptq-int8" and not island:
                msg = "" if torch.equal(torch.as_tensor(got), r) else \
                    f"{int((torch.as_tensor(got) != r).sum())} elements differ (bit-exact)"
            else:
                msg = _close(r, got, 0.1 if p == "ptq-int8" else FLOAT_REL[p])
            if msg and taps:
                msg = _explain_by_flips(gq, taps, tapped, xs, i, got, msg, report,
                                        f"{p}: model {i} {spec.describe()}")
            if not msg and p == "float":  # the pipelined graph still matches eager torch
                msg = _close(eager[i], r, 1e-4)
                msg = f"torch backend vs eager: {msg}" if msg else ""
            if msg:
                report.counts[p]["mismatch"] += 1
                report.details.append(f"{p}: model {i} {spec.describe()}: {msg}")
            else:
                report.counts[p]["passed"] += 1
    report.seconds += time.perf_counter() - start
    return report


def run_bundle_isolated(specs: Sequence[ModelSpec], pipelines: Sequence[str],
                        report: GraphReport, worker: Worker, *, target: str = "x86") -> None:
    """:func:`run_bundle` in ``worker``; after a crash each model alone per pipeline.

    A model whose run crashes again alone in a fresh worker counts as ``crashed`` for that
    pipeline (the detail names the signal and the side); the test-only crash hook of
    ``worker`` is keyed by ``str(spec.seed)``.
    """
    got = worker.call(run_bundle, specs, pipelines, target=target)
    if not isinstance(got, Crash):
        report.merge(got)
        return
    report.details.append(f"a bundle of {len(specs)} models {got.describe()}; "
                          "re-running each model alone per pipeline")
    for spec in specs:
        for p in pipelines:
            one = worker.call(run_bundle, [spec], [p], target=target)
            if isinstance(one, Crash):  # confirm alone, in a fresh worker
                one = worker.call(run_bundle, [spec], [p], target=target)
            if isinstance(one, Crash):
                report.counts[p]["crashed"] += 1
                report.details.append(f"{p}: model {spec.describe()}: {one.describe()}")
            else:
                report.merge(one)
