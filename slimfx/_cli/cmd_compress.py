"""``slimfx quantize``, ``slimfx prune`` and ``slimfx report``: graphs in, graphs (or a table) out.

- ``quantize MODEL --calib FILE [--pipeline P] [--qconfig x86|arm] -o GRAPH.safetensors``
  is ``slimfx.quantize(graph, batches, P, QConfig.preset(...))`` (``ptq-int8`` by default);
- ``prune MODEL --ratio R [--importance l1|l2|bn-scale] -o GRAPH.safetensors`` is
  ``slimfx.passes.prune.prune_channels``;
- ``report MODEL --calib FILE [--qconfig x86|arm] [--html FILE.html]`` prints ``slimfx.report``
  (a text table); ``--html`` also writes the one-file HTML report.

Calibration files hold one array per graph input (``.npy``, ``.npz``, ``.safetensors``),
split along dimension 0 into batches of ``--batch-size``. Default: for a graph with a
dynamic batch (dim 0 a symbol, as ``slimfx.trace`` gives by default) batches of
:data:`CALIB_BATCH` (or the symbol's maximum), the last one smaller; for a static graph,
the batch size it was traced with (a remainder is dropped).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from slimfx._cli.common import positive_int, show_progress
from slimfx.errors import CalibrationError, QuantizationError

if TYPE_CHECKING:  # the CLI imports torch only when a command runs
    from slimfx._cli.arrays import NamedArray
    from slimfx.ir.core import Graph

__all__ = ["CALIB_BATCH", "add_parsers", "run_quantize", "run_prune", "run_report",
           "read_calibration", "calibration_batches"]

_GRAPH_SUFFIX = (".safetensors",)

#: Samples per calibration batch for a graph with a dynamic batch, by default.
CALIB_BATCH = 32


def _calib_options(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--calib", metavar="FILE", nargs="+", required=required,
                   help="calibration data: .npy, .npz or .safetensors, one array per graph "
                   "input, split along dimension 0 into batches")
    p.add_argument("--batch-size", type=positive_int, metavar="N",
                   help="samples per batch (default: 32 for a graph with a dynamic batch, "
                   "else the traced batch size)")
    p.add_argument("--num-batches", type=positive_int, metavar="N",
                   help="use at most N batches")
    p.add_argument("--qconfig", choices=("x86", "arm"),
                   help="QConfig preset for ptq-int8 (default x86)")


_QAT = ("qat-int8", "qat-int8-bn")  # prepare training: slimfx.prepare_qat, not quantize


def pipeline_help() -> str:
    """The ``--pipeline`` help of ``quantize``, from the registry (read when help is shown,
    so that building the parser imports no pass module)."""
    from slimfx.passes.registry import known_pipelines

    names = [n for n in known_pipelines() if n not in _QAT and n != "ptq-int8"]
    return ("ptq-int8 (default), " + ", ".join(names) + " or any pipeline string "
            "('slimfx pipelines' shows what each runs); " + " and ".join(_QAT) + " prepare "
            "quantization-aware training, which needs a training loop: the Python API "
            "slimfx.prepare_qat / slimfx.convert")


class _RegistryHelp(argparse.HelpFormatter):
    """Fills in the ``--pipeline`` help from the pass registry."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.dest == "pipeline":
            return pipeline_help()
        return super()._get_help_string(action)


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from slimfx._cli.models import MODEL_HELP

    q = sub.add_parser("quantize", parents=[common], help="quantize a model, write the graph",
                       formatter_class=_RegistryHelp,
                       description="Quantizes MODEL with a pipeline (calibrating on --calib "
                       "when it inserts observers) and writes the graph (.safetensors).")
    q.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    _calib_options(q, required=False)
    q.add_argument("--pipeline", default="ptq-int8", metavar="P",
                   help="filled in from the pass registry (_RegistryHelp)")
    q.add_argument("--form", choices=("int8", "qdq"), default="int8",
                   help="static int8: exact integer ops (default) or simulated QDQ")
    q.add_argument("-o", "--output", required=True, metavar="GRAPH.safetensors",
                   help="where to write the quantized graph")
    q.set_defaults(run=run_quantize)

    p = sub.add_parser("prune", parents=[common], help="prune channels, write the graph",
                       description="Removes a share of the channels of MODEL (structured "
                       "pruning over dependency groups) and writes the graph (.safetensors).")
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--ratio", type=float, required=True, help="share of channels to remove, "
                   "in [0, 1)")
    p.add_argument("--importance", choices=("l1", "l2", "bn-scale"), default="l1",
                   help="channel importance (default l1)")
    p.add_argument("--scope", choices=("global", "uniform"), default="global",
                   help="one ranking over all groups (default) or per group")
    p.add_argument("--round-to", type=positive_int, default=1, metavar="N",
                   help="keep a multiple of N channels per group (default 1)")
    p.add_argument("--protect", nargs="+", default=(), metavar="NODE",
                   help="node names whose channels are kept")
    p.add_argument("-o", "--output", required=True, metavar="GRAPH.safetensors",
                   help="where to write the pruned graph")
    p.set_defaults(run=run_prune)

    r = sub.add_parser("report", parents=[common], help="per-layer int8 error table",
                       description="Calibrates MODEL on --calib and prints the per-layer SQNR "
                       "and max abs error of int8 against float, and the model sizes.")
    r.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    _calib_options(r, required=True)
    r.add_argument("--html", metavar="FILE.html", help="also write the HTML report (tables, "
                   "SQNR plot, graph picture) to this file")
    r.set_defaults(run=run_report)


def read_calibration(paths: list[str]) -> list[NamedArray]:
    """The arrays of the calibration files (read before the model: bad files fail fast)."""
    from slimfx._cli.arrays import read_arrays

    return read_arrays(paths, "calibration", CalibrationError)


def calibration_batches(graph: Graph, arrays: list[NamedArray], paths: list[str],
                        batch_size: int | None) -> list[tuple[Any, ...]]:
    """The batches of the calibration arrays (from ``paths``) for ``graph``.

    Raises:
        CalibrationError: the wrong number of arrays, or arrays that do not split into
            batches.
    """
    from slimfx._cli.arrays import match_inputs, split_batches

    names = [v.name for v in graph.inputs]
    matched = match_inputs(arrays, names, paths, "calibration", CalibrationError)
    for v, a in zip(graph.inputs, matched, strict=True):
        _check_array(v, a)
    first = graph.inputs[0].type.shape if graph.inputs else ()
    dynamic = bool(first) and type(first[0]) is not int
    if batch_size is None and dynamic:
        top = graph.symbols[str(first[0])].max if str(first[0]) in graph.symbols else None
        batch_size = min(CALIB_BATCH, top) if top is not None else CALIB_BATCH
    elif batch_size is None:
        batch_size = int(first[0]) if first else 1
    return split_batches(matched, names, batch_size, "calibration", CalibrationError,
                         keep_rest=dynamic)


def _check_array(v: Any, a: Any) -> None:
    """``a`` has the dtype of graph input ``v`` and its shape after dimension 0."""
    import torch

    try:
        want = torch.empty(0, dtype=v.type.torch_dtype).numpy().dtype
    except TypeError:  # bf16 has no numpy dtype
        want = None
    if want is None or a.dtype != want:
        hint = f" (a.astype(np.{want}))" if want is not None else ""
        raise CalibrationError(f"calibration array for input %{v.name} has dtype {a.dtype}, the "
                               f"graph takes {v.type}: save it as {want or v.type.dtype}{hint}")
    if a.ndim and tuple(a.shape[1:]) != v.type.shape[1:]:
        raise CalibrationError(f"calibration array for input %{v.name} holds samples of shape "
                               f"{tuple(a.shape[1:])}, the graph takes {v.type} (samples of "
                               f"shape {v.type.shape[1:]}, stacked along dimension 0)")


def _qconfig(args: argparse.Namespace) -> Any:
    if args.qconfig is None:
        return None
    from slimfx.passes.quant import QConfig

    return QConfig.preset(args.qconfig)


def _sizes(before: Graph, after: Graph) -> str:
    def nbytes(g: Graph) -> int:
        return sum(v.type.numel * v.type.torch_dtype.itemsize for v in g.constants.values())

    b, a = nbytes(before), nbytes(after)
    return f"constants {b:,} -> {a:,} bytes ({b / max(a, 1):.2f}x smaller)"


def run_quantize(args: argparse.Namespace) -> int:
    from slimfx._cli.common import output_path
    from slimfx._cli.models import load_model
    from slimfx.ir.serialize import save_graph
    from slimfx.passes import Pipeline
    from slimfx.passes.quant import quantize

    out = output_path(args.output, _GRAPH_SUFFIX, "output graph")
    Pipeline(args.pipeline)  # a bad pipeline string fails before the model is loaded
    if not args.calib and args.pipeline == "ptq-int8":
        raise QuantizationError("quantize --pipeline ptq-int8 calibrates: give calibration "
                                "data with --calib FILE (one array per graph input)")
    arrays = read_calibration(args.calib) if args.calib else None
    graph = load_model(args.model).graph
    data = None
    if arrays is not None:
        data = calibration_batches(graph, arrays, args.calib, args.batch_size)
    qgraph = quantize(graph, data, args.pipeline, _qconfig(args), num_batches=args.num_batches,
                      form=args.form, progress=show_progress(args))
    save_graph(qgraph, out)
    print(f"wrote {out}: {len(qgraph)} nodes, {_sizes(graph, qgraph)}")
    return 0


def run_prune(args: argparse.Namespace) -> int:
    from slimfx._cli.cmd_inspect import graph_macs
    from slimfx._cli.common import output_path
    from slimfx._cli.models import load_model
    from slimfx.ir.serialize import save_graph
    from slimfx.passes.prune import count_params, prune_channels

    out = output_path(args.output, _GRAPH_SUFFIX, "output graph")
    graph = load_model(args.model).graph
    pruned = prune_channels(graph, args.ratio, importance=args.importance, scope=args.scope,
                            round_to=args.round_to, protect=tuple(args.protect))
    save_graph(pruned, out)
    macs = [graph_macs(g) for g in (graph, pruned)]
    params = [count_params(g) for g in (graph, pruned)]
    print(f"wrote {out}: parameters {params[0]:,} -> {params[1]:,}, MACs {macs[0]:,} -> "
          f"{macs[1]:,}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from slimfx._cli.common import output_path
    from slimfx._cli.models import load_model
    from slimfx.passes.quant import report

    html = output_path(args.html, (".html", ".htm"), "HTML report") if args.html else None
    arrays = read_calibration(args.calib)
    graph = load_model(args.model).graph
    data = calibration_batches(graph, arrays, args.calib, args.batch_size)
    print(report(graph, data, _qconfig(args), num_batches=args.num_batches, html=html))
    if html is not None:
        print(f"wrote {html}")
    return 0
