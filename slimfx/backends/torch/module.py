"""IR -> ``torch.fx.GraphModule``: the reference executor.

Each IR node becomes one ``call_function`` of its kernel (see ``kernels.py``);
constants become parameters (floating point, rank >= 1) or buffers under their
IR names, nested like the original module tree (``layer1.0.conv1.weight``).
The module is differentiable, so calibration and QAT train through it. A kernel
registered as an ``nn.Module`` class (``conv2d_bn``, which behaves by train / eval
mode) becomes one submodule per node, called with ``call_module``.

Calling the module checks its inputs first, as compiled models do (see
:mod:`slimfx.ir.signature`): by position or by input name, each a tensor of the
graph input's shape and dtype, else a :class:`~slimfx.errors.RuntimeInputError`
naming the input. The check reads shapes and dtypes only (no tensor op), so it
costs microseconds and leaves autograd alone.

Symbolic graphs (``f32[N,3,224,224]``) run at every size in their declared ranges:
the call binds the symbols from the input shapes (:func:`~slimfx.ir.symbolic.bind_shapes`:
range and consistency checks, a RuntimeInputError naming the input, its symbolic
type and the given shape), and the module reads each symbol from the shape of an
input at run time (``x.shape[0]``); an attribute that holds symbolic dimensions
(``reshape {shape=[N,512]}``) is evaluated from those sizes before its kernel runs,
so nothing is frozen to the example size.
"""

from __future__ import annotations

import copy
import operator
import re
from typing import Any

import torch
import torch.fx as fx
from torch.utils._pytree import tree_leaves

from slimfx.backends.torch.kernels import KERNELS
from slimfx.errors import QuantizationError, RuntimeInputError, UnsupportedOpError
from slimfx.ir.core import Graph, Value
from slimfx.ir.ops import Trait
from slimfx.ir.signature import bind_inputs, shape_matches, type_mismatch
from slimfx.ir.symbolic import bind_shapes, dim_symbols
from slimfx.ir.types import TensorType, dtype_from_torch

__all__ = ["to_torch", "SlimfxModule"]


class SlimfxModule(fx.GraphModule):
    """A GraphModule built from a slimfx Graph.

    ``value_names`` maps IR constant names to attribute paths in this module, so
    trained parameters can be written back (see :func:`sync_constants`).
    """

    value_names: dict[str, str]
    source_graph: Graph
    input_types: tuple[tuple[str, TensorType, torch.dtype], ...]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Runs the graph on inputs given by position or by input name.

        Raises:
            RuntimeInputError: wrong number or names of inputs, or an input that is not a
                tensor of the graph input's shape and dtype.
        """
        types = self.__dict__.get("input_types")
        if types is None:  # built by hand (fx.GraphModule APIs): nothing to check against
            return super().__call__(*args, **kwargs)
        if kwargs or len(args) != len(types):
            args = tuple(bind_inputs([t[0] for t in types], args, kwargs,
                                     who="the torch module of the graph",
                                     is_tensor=lambda a: isinstance(a, torch.Tensor)))
        for (name, want, dtype), arg in zip(types, args, strict=True):
            if not isinstance(arg, torch.Tensor):
                raise RuntimeInputError(f"input {name!r}: expected a torch tensor {want}, got "
                                        f"{type(arg).__name__}; convert it with torch.as_tensor")
            if arg.dtype != dtype or not shape_matches(want.shape, arg.shape):
                raise type_mismatch(name, want, tuple(arg.shape), _dtype_name(arg.dtype),
                                    remedy="retrace the model with inputs of this shape "
                                    "and dtype")
        graph = self.__dict__.get("source_graph")
        if isinstance(graph, Graph) and graph.symbols:
            _check_symbols(graph, types, args)
        return super().__call__(*args)

    def __deepcopy__(self, memo: dict[int, Any]) -> SlimfxModule:
        # GraphModule.__deepcopy__ keeps only what the fx graph references; the slimfx
        # attributes are copied here (the IR graph by clone(): deepcopy would recurse along
        # its node list).
        graph = self.__dict__.get("source_graph")
        if isinstance(graph, Graph):
            memo.setdefault(id(graph), graph.clone())
        res = super().__deepcopy__(memo)
        for attr in ("value_names", "source_graph", "input_types"):
            if attr in self.__dict__:
                setattr(res, attr, copy.deepcopy(self.__dict__[attr], memo))
        return res  # type: ignore[return-value]

    def train(self, mode: bool = True) -> SlimfxModule:
        """``nn.Module.train``; refuses training mode for a quantized (converted) graph."""
        graph = self.__dict__.get("source_graph")
        if mode and isinstance(graph, Graph):
            done = [n for n in graph.nodes if n.op.has(Trait.QUANT) and n.op.name not in
                    _TRAINABLE_QUANT_OPS]
            if done:
                raise QuantizationError(
                    f"this module runs graph @{graph.name}, which is already quantized "
                    f"({done[0].describe()} is a {done[0].op.name} node: slimfx.convert or "
                    "slimfx.quantize made it) and cannot be trained; train the module of "
                    "slimfx.prepare_qat(float_graph, data), then call slimfx.convert(module) "
                    "once, after training")
        return super().train(mode)


def _check_symbols(graph: Graph, types: tuple[tuple[str, TensorType, torch.dtype], ...],
                   args: tuple[Any, ...]) -> None:
    """Binds the graph's symbols from the inputs' shapes (ranges, equal sizes)."""
    shapes = {name: tuple(arg.shape) for (name, want, _), arg in zip(types, args, strict=True)
              if not want.is_static}
    try:
        bind_shapes(graph, shapes)
    except RuntimeInputError as e:
        given = "; ".join(f"input {name!r} is {want}, given shape {list(shapes[name])}"
                          for name, want, _ in types if name in shapes)
        raise RuntimeInputError(f"{e} ({given})") from e


def _dtype_name(dtype: torch.dtype) -> str:
    try:
        return dtype_from_torch(dtype)
    except KeyError:
        return str(dtype).removeprefix("torch.")


# Quantization ops that train (QAT); any other quantization op means a converted graph.
_TRAINABLE_QUANT_OPS = frozenset({"fake_quantize", "fold_bn", "conv2d_bn", "observer"})
# Operands that are running statistics (state updated in training, never trained).
_STATE_OPERANDS: dict[str, tuple[int, ...]] = {"batch_norm": (1, 2), "fold_bn": (2, 3),
                                               "conv2d_bn": (4, 5)}


def _flatten_outputs(result: Any, n: int) -> tuple[Any, ...]:
    leaves = tree_leaves(result)
    if len(leaves) != n:
        raise UnsupportedOpError(f"a multi-result node produced {len(leaves)} values, expected {n}")
    return tuple(leaves)


def _size(x: torch.Tensor, axis: int) -> int:
    """``x.shape[axis]``: where a symbolic module reads the value of a symbol."""
    return x.shape[axis]


class _DimAttr:
    """Evaluates an attribute holding symbolic dims from the symbols' run-time values.

    ``template`` is the attribute (a dim, or a tuple/list of dims and ints); calling
    it with the values of ``names`` (in order) gives the attribute with ints only.
    """

    def __init__(self, template: Any, names: list[str]) -> None:
        import sympy

        self.template = template
        self.names = names
        symbols = [sympy.Symbol(n, integer=True, nonnegative=True) for n in names]
        self._fns: dict[int, Any] = {}
        for d in _leaves(template):
            if isinstance(d, sympy.Expr) and id(d) not in self._fns:
                self._fns[id(d)] = sympy.lambdify(symbols, d, modules="math")
        self.__name__ = "slimfx_dims"

    def __call__(self, *values: int) -> Any:
        def one(d: Any) -> Any:
            if isinstance(d, (tuple, list)):
                return type(d)(one(e) for e in d)
            fn = self._fns.get(id(d))
            return d if fn is None else int(fn(*values))
        return one(self.template)


def _leaves(x: Any) -> list[Any]:
    if isinstance(x, (tuple, list)):
        return [leaf for e in x for leaf in _leaves(e)]
    return [x]


def _symbolic_attrs(node_attrs: Any) -> dict[str, set[str]]:
    """Attribute name -> the symbols it uses, for attributes holding symbolic dims."""
    import sympy

    out: dict[str, set[str]] = {}
    for k, v in dict(node_attrs).items():
        used: set[str] = set()
        for leaf in _leaves(v):
            if isinstance(leaf, sympy.Expr) and not leaf.is_Integer:
                used |= dim_symbols(leaf)
        if used:
            out[k] = used
    return out


def _fx_name(name: str) -> str:
    name = re.sub(r"\W", "_", name)
    return name if name[:1].isalpha() or name[:1] == "_" else f"v_{name}"


def _attach(root: torch.nn.Module, path: str, tensor: torch.Tensor, trainable: bool) -> str | None:
    parts = path.split(".")
    mod = root
    for p in parts[:-1]:
        if not p.isidentifier() and not p.isdigit():
            return None
        child = mod._modules.get(p)
        if child is None:
            if hasattr(mod, p):
                return None
            child = torch.nn.Module()
            mod.add_module(p, child)
        mod = child
    leaf = parts[-1]
    if leaf in mod._modules or hasattr(mod, leaf) or not (leaf.isidentifier() or leaf.isdigit()):
        return None
    if trainable and tensor.is_floating_point() and tensor.dim() > 0:
        mod.register_parameter(leaf, torch.nn.Parameter(tensor.clone()))
    else:
        mod.register_buffer(leaf, tensor.clone())
    return path


def to_torch(graph: Graph, *, trainable: bool = True) -> SlimfxModule:
    """Builds a runnable, differentiable ``torch.fx.GraphModule`` from ``graph``.

    Args:
        graph: the IR graph.
        trainable: floating-point constants of rank >= 1 become ``nn.Parameter``.

    Raises:
        UnsupportedOpError: an op has no torch kernel (names every such node).
    """
    missing = [n for n in graph.nodes if n.op.name not in KERNELS]
    if missing:
        lines = "\n  ".join(n.describe() for n in missing)
        raise UnsupportedOpError(
            f"no torch kernel for {len(missing)} node(s):\n  {lines}\n"
            "register one with slimfx.backends.torch.register_kernel(op_name)")
    root = torch.nn.Module()
    g = fx.Graph()
    env: dict[int, fx.Node] = {}
    names: dict[str, str] = {}
    for v in graph.inputs:
        env[id(v)] = g.placeholder(_fx_name(v.name))
    sizes: dict[str, tuple[fx.Node, int]] = {}  # symbol -> (input placeholder, axis)
    for v in graph.inputs:
        for i, d in enumerate(v.type.shape):
            if not isinstance(d, int) and d.is_Symbol:
                sizes.setdefault(d.name, (env[id(v)], i))
    size_nodes: dict[str, fx.Node] = {}
    # Running statistics of batch norm are state, not parameters to train.
    stats = {id(n.inputs[i]) for n in graph.nodes for i in _STATE_OPERANDS.get(n.op.name, ())}
    # So are the scale / zero point a fake_quantize does not learn (QAT).
    stats |= {id(n.inputs[i]) for n in graph.nodes if n.op.name == "fake_quantize"
              for i, learn in ((1, "learn_scale"), (2, "learn_zero_point")) if not n.attrs[learn]}
    for v in graph.constants.values():
        assert v.const is not None
        train = trainable and id(v) not in stats
        path = _attach(root, v.name, v.const, train)
        if path is None:
            path = "_c_" + re.sub(r"\W", "_", v.name)
            while hasattr(root, path):
                path += "_"
            _attach(root, path, v.const, train)
        names[v.name] = path
        env[id(v)] = g.get_attr(path)
    for node in graph.nodes:
        args = tuple(env[id(v)] for v in node.inputs)
        attrs = dict(node.attrs)
        for key, used in _symbolic_attrs(node.attrs).items():
            unknown = sorted(used - set(sizes))
            if unknown:
                raise UnsupportedOpError(
                    f"{node.describe()}: attribute {key} uses symbol(s) {', '.join(unknown)}, "
                    "which no graph input has as a dimension of its own, so the torch "
                    "module cannot read their values; give the graph an input with that "
                    "dimension or make it static")
            names_used = sorted(used)
            for n in names_used:
                if n not in size_nodes:
                    size_nodes[n] = g.call_function(_size, sizes[n])
            attrs[key] = g.call_function(_DimAttr(attrs[key], names_used),
                                         tuple(size_nodes[n] for n in names_used))
        kernel = KERNELS[node.op.name]
        if isinstance(kernel, type) and issubclass(kernel, torch.nn.Module):
            # a stateful kernel (behaves by train / eval mode): one submodule per node
            target = "_k_" + _fx_name(node.name)
            while hasattr(root, target):
                target += "_"
            root.add_module(target, kernel())
            call = g.create_node("call_module", target, args, attrs,
                                 name=_fx_name(node.name))
        else:
            call = g.create_node("call_function", kernel, args, attrs,
                                 name=_fx_name(node.name))
        if len(node.outputs) == 1 and node.op.num_results == 1:
            env[id(node.outputs[0])] = call
        elif len(node.outputs) == 1 and node.op.name == "opaque":
            env[id(node.outputs[0])] = call
        else:
            flat = g.call_function(_flatten_outputs, (call, len(node.outputs)))
            for i, o in enumerate(node.outputs):
                env[id(o)] = g.call_function(operator.getitem, (flat, i))
    outs = [env[id(v)] for v in graph.outputs]
    g.output(outs[0] if len(outs) == 1 else tuple(outs))
    # SlimfxModule itself, not a class swapped in afterwards: fx gives every GraphModule
    # its own subclass, and a swapped-in class made deepcopy's forward recurse forever.
    module = SlimfxModule(root, g, class_name="SlimfxModule")
    module.value_names = names
    module.input_types = tuple((v.name, v.type, v.type.torch_dtype) for v in graph.inputs)
    module.source_graph = graph  # what slimfx.convert writes the trained constants into
    module.eval()
    return module


def sync_constants(graph: Graph, module: SlimfxModule) -> None:
    """Writes the module's (trained) parameters and buffers back into the graph constants."""
    state: dict[str, torch.Tensor] = dict(module.named_parameters())
    state.update(dict(module.named_buffers()))
    for name, path in module.value_names.items():
        v: Value = graph.constants[name]
        v.const = state[path].detach().clone()
