"""``slimfx compile`` and ``slimfx run``: graphs to native code, and running it on files.

- ``compile MODEL_OR_GRAPH --target x86|arm|cuda|<json> [--tune N] [--shapes x=1,3,224,224]
  -o MODEL.slim`` is ``slimfx.compile(graph, target, tune=N, shapes={"x": (1, 3, 224,
  224)}).save(path)``; a JSON target is a TVM target dict, given inline (``'{"kind":
  "llvm", "mcpu": "znver3"}'``) or as a ``.json`` file. Without ``--shapes`` a graph with
  symbols (a dynamic batch ``N``) compiles to one model serving every size in range.
- ``run MODEL.slim --input X.npy [...] -o Y.npy [...]`` is ``slimfx.load(path)(*inputs)``.
  A ``.slim`` holds native code: loading it runs that code, like importing a shared
  library; ``--sha256`` checks the file against a digest obtained elsewhere first.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from slimfx._cli.common import non_negative_int, show_progress, steps
from slimfx.errors import RuntimeInputError, SlimfxError

__all__ = ["add_parsers", "run_compile", "run_run", "parse_shape", "parse_target",
           "load_compiled"]

_SLIM_SUFFIX = (".slim", ".tar")


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from slimfx._cli.models import MODEL_HELP

    c = sub.add_parser("compile", parents=[common], help="compile a model or graph with TVM",
                       description="Compiles MODEL_OR_GRAPH with TVM for a target and writes "
                       "the compiled model (.slim).")
    c.add_argument("model", metavar="MODEL_OR_GRAPH", help=MODEL_HELP)
    c.add_argument("--target", default="x86", help="x86 (default, this CPU), arm, cuda, "
                   "cuda:sm_80, cuda:sm_90, or a TVM target as JSON (inline or a .json file)")
    c.add_argument("--tune", type=non_negative_int, default=None, metavar="N",
                   help="meta-schedule trial budget (default: no tuning)")
    c.add_argument("--tuning-db", metavar="DIR", help="tuning database directory "
                   "(default ~/.cache/slimfx/tuning)")
    c.add_argument("--shapes", nargs="+", metavar="NAME=D,D,...", type=parse_shape,
                   help="compile for exactly these input shapes (e.g. x=1,3,224,224; one "
                   "per input to bind, binding the graph's symbols such as the batch N): the "
                   "fastest code, other sizes refused. Default: every size in the ranges "
                   "`slimfx inspect` prints")
    c.add_argument("-o", "--output", required=True, metavar="MODEL.slim",
                   help="where to write the compiled model")
    c.set_defaults(run=run_compile)

    r = sub.add_parser("run", parents=[common], help="run a compiled model on array files",
                       description="Runs a compiled model (.slim) on inputs from array files "
                       "and writes its outputs. Loading a .slim runs the native code in it: "
                       "load only files you trust.")
    r.add_argument("model", metavar="MODEL.slim", help="a compiled model (slimfx compile -o)")
    r.add_argument("--input", "-i", nargs="+", required=True, metavar="X",
                   help=".npy, .npz or .safetensors files: one array per model input")
    r.add_argument("-o", "--output", nargs="+", required=True, metavar="Y",
                   help="one .npy per output, or one .npz / .safetensors for all")
    r.add_argument("--sha256", metavar="DIGEST", help="verify the file against this digest "
                   "before loading it")
    r.set_defaults(run=run_run)


def parse_target(text: str) -> str | dict[str, Any]:
    """A target name, or the dict of a JSON target (inline, or a path to a ``.json`` file).

    Raises:
        SlimfxError: malformed JSON, a JSON value that is not an object, an unreadable file.
    """
    source = "--target"
    if text.endswith(".json") and not text.lstrip().startswith("{"):
        try:
            text, source = Path(text).read_text(), text
        except OSError as e:
            raise SlimfxError(f"cannot read target file {text!r}: {e.strerror or e}") from e
    elif not text.lstrip().startswith("{"):
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise SlimfxError(f"{source}: malformed JSON target ({e.msg} at line {e.lineno} "
                          f"column {e.colno})") from e
    if not isinstance(value, dict):
        raise SlimfxError(f"{source}: a JSON target is an object such as "
                          f'{{"kind": "llvm"}}, got {type(value).__name__}')
    return value


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``x=1,3,224,224`` -> ``("x", (1, 3, 224, 224))`` (argparse reports the error)."""
    name, eq, dims = text.partition("=")
    try:
        shape = tuple(int(d) for d in dims.split(",")) if dims.strip() else ()
    except ValueError:
        shape = ()
    if not eq or not name.strip() or not shape or any(d < 0 for d in shape):
        raise argparse.ArgumentTypeError(
            f"--shapes: {text!r} is not NAME=D,D,... with non-negative integer sizes "
            "(e.g. x=1,3,224,224)")
    return name.strip(), shape


def _shapes(items: list[tuple[str, tuple[int, ...]]] | None) -> dict[str, tuple[int, ...]] | None:
    if not items:
        return None
    out: dict[str, tuple[int, ...]] = {}
    for name, shape in items:
        if name in out and out[name] != shape:
            raise SlimfxError(f"--shapes gives input {name!r} twice ({out[name]} and {shape})")
        out[name] = shape
    return out


def run_compile(args: argparse.Namespace) -> int:
    import slimfx
    from slimfx._cli.common import output_path
    from slimfx._cli.models import load_model
    from slimfx.backends.tvm import resolve_target, sha256_file
    from slimfx.ir.symbolic import format_symbol

    out = output_path(args.output, _SLIM_SUFFIX, "compiled model")
    target = parse_target(args.target)
    resolve_target(target)  # an unknown target fails before the model is loaded
    with steps(args, "compile", ["load", "trace", "build", "save"]) as bar:
        bar.step("load")
        model = load_model(args.model)
        bar.step("trace")
        graph = model.graph
        bar.step("build")
        compiled = slimfx.compile(graph, target, tune=args.tune, tuning_db=args.tuning_db,
                                  progress=show_progress(args), shapes=_shapes(args.shapes))
        bar.step("save")
        compiled.save(out)
    name = target if isinstance(target, str) else target.get("kind", "custom")
    sig = ", ".join(f"{s.name} {s.type}" for s in compiled.inputs)
    if compiled.symbols:
        sig += " where " + ", ".join(format_symbol(k, r) for k, r in sorted(compiled.symbols.items()))
    print(f"wrote {out} (target {name}, {len(graph)} nodes, inputs {sig}; "
          f"sha256 {sha256_file(out)})")
    return 0


def load_compiled(path: str, sha256: str | None = None) -> Any:
    """``slimfx.load(path, sha256=...)`` after checking that the file exists."""
    import slimfx

    if not Path(path).exists():
        raise SlimfxError(f"compiled model {path!r} does not exist")
    if sha256 is None:
        return slimfx.load(path)
    return slimfx.load(path, sha256=sha256)


def _outputs(result: Any) -> list[Any]:
    return list(result) if isinstance(result, tuple) else [result]


def run_run(args: argparse.Namespace) -> int:
    from slimfx._cli.arrays import match_inputs, read_arrays, write_arrays

    compiled = load_compiled(args.model, args.sha256)
    names = [s.name for s in compiled.inputs]
    arrays = match_inputs(read_arrays(args.input, "input", RuntimeInputError), names,
                          args.input, "input", RuntimeInputError)
    outs = _outputs(compiled(*arrays))
    paths = write_arrays(args.output, [s.name for s in compiled.outputs], outs)
    shapes = ", ".join(f"{s.name} {s.type}" for s in compiled.outputs)
    print(f"wrote {', '.join(map(str, paths))}: {shapes}")
    return 0
