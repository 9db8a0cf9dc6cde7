"""How much time slimfx itself spends: import, trace, and the standard pass pipeline.

Run: ``python benchmarks/pass_overhead.py`` (``make bench-overhead``).

Models: ResNet-50 (``slimfx.models.resnet50``) and stacks of 1/4/16/64 bottleneck
blocks at 256 channels, to check that pass time grows linearly with node count.
Prints one table; the target is < 1 s of slimfx work (trace conversion + pipeline)
on ResNet-50. When ``slimfx.trace`` is not available (the frontend is being
written), graphs come from a small torch.fx-based converter in this file and the
trace columns say so.
"""

from __future__ import annotations

import argparse
import operator
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch import fx, nn

PIPELINE = "fold-bn,fuse-activation,cleanup"


def import_time(module: str) -> float:
    """Seconds to import ``module`` in a fresh interpreter (best of 3)."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True).stdout) for _ in range(3)]
    return min(runs)


def block_stack(n: int) -> nn.Module:
    """A 7x7 stem followed by ``n`` bottleneck blocks (256 -> 64 -> 256 channels)."""
    from slimfx.models.resnet import Bottleneck

    stem = nn.Sequential(nn.Conv2d(3, 256, 7, stride=4, padding=3, bias=False),
                         nn.BatchNorm2d(256), nn.ReLU())
    return nn.Sequential(stem, *[Bottleneck(256, 64) for _ in range(n)]).eval()


# ---------------------------------------------------------------- fallback converter
def fx_to_ir(model: nn.Module, x: torch.Tensor):  # noqa: ANN201
    """torch.fx -> slimfx IR for conv/bn/relu/pool/add/flatten/linear models."""
    from slimfx.ir import Graph, TensorType

    gm = fx.symbolic_trace(model)
    g = Graph()
    env: dict[str, object] = {}
    mods = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node.name] = g.add_input(node.name, TensorType.of(x))
            continue
        if node.op == "output":
            g.set_outputs([env[node.args[0].name]])
            continue
        args = [env[a.name] if isinstance(a, fx.Node) else a for a in node.args]
        if node.op == "call_module":
            m = mods[node.target]

            def const(attr: str, m: nn.Module = m, path: str = node.target):  # noqa: ANN202
                return g.add_constant(getattr(m, attr).detach(), f"{path}.{attr}")

            if isinstance(m, nn.Conv2d):
                ins = [args[0], const("weight")] + ([const("bias")] if m.bias is not None else [])
                v = g.add("conv2d", ins, dict(stride=m.stride, padding=m.padding,
                                              dilation=m.dilation, groups=m.groups))
            elif isinstance(m, nn.BatchNorm2d):
                v = g.add("batch_norm", [args[0], const("running_mean"), const("running_var"),
                                         const("weight"), const("bias")], dict(eps=m.eps))
            elif isinstance(m, nn.ReLU):
                v = g.add("relu", [args[0]])
            elif isinstance(m, nn.MaxPool2d):
                v = g.add("max_pool2d", [args[0]], dict(kernel=[m.kernel_size] * 2,
                                                        stride=[m.stride] * 2,
                                                        padding=[m.padding] * 2,
                                                        dilation=[1, 1]))
            elif isinstance(m, nn.AdaptiveAvgPool2d):
                v = g.add("adaptive_avg_pool2d", [args[0]], dict(output_size=m.output_size))
            elif isinstance(m, nn.Linear):
                v = g.add("linear", [args[0], const("weight"), const("bias")])
            else:
                raise NotImplementedError(type(m).__name__)
        elif node.target in (operator.add, torch.add, operator.iadd):
            v = g.add("add", args[:2])
        elif node.target is torch.flatten:
            src = args[0]
            v = g.add("reshape", [src], dict(shape=[src.shape[0], -1]))
        else:
            raise NotImplementedError(str(node.target))
        env[node.name] = v
    return g


def trace(model: nn.Module, x: torch.Tensor) -> tuple[object, float, float | None, str]:
    """(graph, seconds, torch.export seconds or None, how)."""
    import slimfx

    try:
        slimfx_trace = slimfx.trace
    except (AttributeError, ImportError):
        start = time.perf_counter()
        g = fx_to_ir(model, x)
        return g, time.perf_counter() - start, None, "fallback fx converter"
    torch.export.export(model, (x,))  # warm-up: the first export of a model pays extra
    start = time.perf_counter()
    g = slimfx_trace(model, (x,))
    total = time.perf_counter() - start
    start = time.perf_counter()
    torch.export.export(model, (x,))
    return g, total, time.perf_counter() - start, "slimfx.trace (torch.export)"


def tensor_floor(g) -> float:  # noqa: ANN001
    """Seconds torch alone needs for fold-bn's new weights: ``w * s``, results kept alive.

    Folding allocates a new tensor per folded weight (constants are shared with
    the user's model, so they are never edited in place); on a busy machine the
    page faults of that fresh memory dominate fold-bn on large models.
    """
    weights = [n.inputs[0].producer.inputs[1].const for n in g.nodes
               if n.op.name == "batch_norm" and n.inputs[0].producer is not None
               and n.inputs[0].producer.op.name in ("conv2d", "linear")]
    kept = []
    start = time.perf_counter()
    for w in weights:
        kept.append(w * torch.ones(w.shape[0]).reshape(-1, *([1] * (w.dim() - 1))))
    return time.perf_counter() - start


def chain(n: int):  # noqa: ANN201
    """``n`` x (1x1 conv, batch_norm, relu, identity) on 2 channels: tensor math is negligible."""
    from slimfx.ir import Graph, TensorType

    g = Graph()
    v = g.add_input("x", TensorType((1, 2, 4, 4)))
    for i in range(n):
        w = g.add_constant(torch.randn(2, 2, 1, 1), f"c{i}.weight")
        v = g.add("conv2d", [v, w], dict(stride=[1, 1], padding=[0, 0], dilation=[1, 1]))
        stats = [g.add_constant(torch.zeros(2), "mean"), g.add_constant(torch.ones(2), "var")]
        v = g.add("identity", [g.add("relu", [g.add("batch_norm", [v, *stats])])])
        if i % 3 == 0:
            v = g.add("add", [v, g.add("exp", [g.add_constant(torch.ones(1), "k")])])
    g.set_outputs([v])
    return g


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--stacks", default="1,4,16,64")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (0: torch's default). Passes run small "
                             "tensor ops, where thread wake-ups on a busy machine dominate")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import slimfx
    from slimfx.models import resnet50
    from slimfx.passes import PassContext, Pipeline, Timing

    print(f"import slimfx          {import_time('slimfx') * 1e3:8.1f} ms  (lazy: no torch)")
    print(f"import slimfx.passes   {import_time('slimfx.passes') * 1e3:8.1f} ms  (imports torch)")
    print(f"import torch           {import_time('torch') * 1e3:8.1f} ms")
    torch.manual_seed(0)
    models = [("resnet50", resnet50().eval(), (1, 3, 224, 224))]
    models += [(f"stack x{n}", block_stack(n), (1, 3, 64, 64))
               for n in (int(s) for s in args.stacks.split(","))]
    pipeline = Pipeline(PIPELINE)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\npipeline: {pipeline}  ({len(pipeline)} passes), best of {args.repeat}, "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} cpus, load {load:.1f}")
    header = (f"{'model':<11} {'nodes':>6} {'trace ms':>9} {'export ms':>9} {'pipeline ms':>11} "
              f"{'torch w*s ms':>12} {'slimfx ms':>9} {'us/node':>8} {'nodes after':>11}")
    print(header)
    print("-" * len(header))
    per_node: list[float] = []
    resnet_work = 0.0
    how = ""
    with torch.no_grad():
        for name, model, shape in models:
            x = torch.randn(shape)
            g, t_trace, t_export, how = trace(model, x)
            nodes = len(g)
            t_clone = best(g.clone, args.repeat)
            t_pipe = best(lambda g=g: pipeline.run(g.clone(), PassContext(verify=False)),
                          args.repeat) - t_clone
            t_floor = min(tensor_floor(g) for _ in range(args.repeat))
            own_pipe = max(t_pipe - t_floor, 0.0)
            out = pipeline(g, PassContext(verify=False))
            us = own_pipe / nodes * 1e6
            if name.startswith("stack"):
                per_node.append(us)
            export = "-" if t_export is None else f"{t_export * 1e3:9.1f}"
            print(f"{name:<11} {nodes:>6} {t_trace * 1e3:>9.1f} {export:>9} {t_pipe * 1e3:>11.1f} "
                  f"{t_floor * 1e3:>12.1f} {own_pipe * 1e3:>9.1f} {us:>8.1f} {len(out):>11}")
            if name == "resnet50":
                own = t_trace - (t_export or 0.0)
                resnet_work = own + own_pipe
                y = slimfx.to_torch(out, trainable=False)(x)
                err = (y - model(x)).abs().max().item()
                timing = Timing()
                pipeline(g, PassContext([timing], verify=False))
    print("\ninfrastructure alone (2-channel chains, tensor math negligible):")
    chain_us = []
    for n in (100, 400, 1600):
        g = chain(n)
        t = best(lambda g=g: pipeline.run(g.clone(), PassContext(verify=False)), args.repeat)
        t -= best(g.clone, args.repeat)
        chain_us.append(t / len(g) * 1e6)
        print(f"  chain x{n:<5} {len(g):>6} nodes {t * 1e3:>8.1f} ms {chain_us[-1]:>7.1f} us/node")
    print(f"  linearity: max/min us/node = {max(chain_us) / min(chain_us):.2f}")
    print(f"\ngraphs from: {how}")
    print("ResNet-50 per-pass breakdown:\n" + timing.table())
    print(f"ResNet-50 max |slimfx - torch| after the pipeline: {err:.2e}")
    spread = max(per_node) / min(per_node)
    print("slimfx ms = pipeline ms - torch w*s ms (the new folded weights, timed alone); "
          "us/node = slimfx ms / nodes")
    print(f"linearity: us/node over the stacks {', '.join(f'{u:.1f}' for u in per_node)} "
          f"(max/min {spread:.2f}, median {statistics.median(per_node):.1f})")
    verdict = "OK" if resnet_work < 1.0 else "OVER TARGET"
    print(f"slimfx's own work on ResNet-50 (conversion without torch.export + pipeline without "
          f"torch w*s): {resnet_work * 1e3:.0f} ms "
          f"(target < 1000 ms): {verdict}")


if __name__ == "__main__":
    main()
