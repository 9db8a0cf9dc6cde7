"""IR -> TVM Relax: the lowering registry and the driver.

Every IR op is lowered by one function registered with :func:`register_lowering`:
it receives a :class:`LowerContext` (the ``BlockBuilder``, the node, helpers for
constants) and the Relax expressions of the node's operands, and returns the
Relax expression of the result (or a sequence, one per result of a multi-result
op). Users register lowerings for their own ops the same way::

    @register_lowering("my_op")
    def _my_op(ctx, node, x):
        return relax.op.multiply(x, ctx.scalar(2.0, node.outputs[0].dtype))

A pair of nodes can also be lowered as one (:func:`register_fusion`): when a node's single
result is used only by a node of the registered kind, the fused lowering gets both and may
return the consumer's result (``None`` declines: both are then lowered alone). The int8
convolutions take their ``requantize`` this way, into the epilogue of their kernel.

Graph inputs become the parameters of ``main`` (named like the inputs);
a symbolic dimension (``N``, ``S*2``) becomes a TIR expression over one ``int64`` TIR
variable per symbol (:meth:`LowerContext.dim`), so Relax infers and checks shapes
symbolically and the VM binds the variables from the argument shapes at each call.
Lowerings that need static shapes read them with :meth:`LowerContext.shape_of`, which
refuses a symbolic one with a :class:`LoweringError` naming the node;
constants become Relax constants, so TVM can fold and pre-pack weights; a
graph with several outputs returns a tuple. Every node without a lowering
(opaque nodes included) is reported at once in one :class:`LoweringError`.

**Load-time weights** (:meth:`LowerContext.load_time`): a lowering may ask for a tensor
computed once, when the compiled model is loaded, instead of on every call (4-bit weights:
stored packed, unpacked once; :mod:`.lower_int4`). The module then has one more Relax
function, :data:`LOAD_FN`, without parameters, that computes them all and returns them as
a tuple; every entry function (``main``, the batch buckets) takes them, in that order,
as parameters after the graph inputs. The runtime (:class:`.compiled.Compiled`, the
aarch64 runner) calls :data:`LOAD_FN` once per loaded library and passes its results to
every call. Equal requests (same key) from several functions share one tensor.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import tvm
from tvm import relax

from slimfx.errors import LoweringError
from slimfx.ir.core import Graph, Node, Value

__all__ = ["LOAD_FN", "LowerContext", "register_lowering", "register_fusion", "has_lowering",
           "lower_graph", "to_tvm_dtype"]

logger = logging.getLogger(__name__)

Lowering = Callable[..., Any]
LoadBuilder = Callable[[relax.BlockBuilder], relax.Expr]
LOAD_FN = "slimfx_load_weights"  # computes the load-time weights (module docstring)
_LOWERINGS: dict[str, Lowering] = {}
_FUSIONS: dict[tuple[str, str], Lowering] = {}

_TVM_DTYPES = {
    "f64": "float64", "f32": "float32", "f16": "float16", "bf16": "bfloat16", "i64": "int64",
    "i32": "int32", "i16": "int16", "i8": "int8", "u8": "uint8", "bool": "bool",
}


def to_tvm_dtype(dtype: str) -> str:
    """The TVM dtype string of an IR dtype such as ``"f32"``.

    Raises:
        LoweringError: the dtype has no TVM counterpart (complex numbers).
    """
    try:
        return _TVM_DTYPES[dtype]
    except KeyError:
        raise LoweringError(f"dtype {dtype!r} has no TVM lowering; known: "
                            f"{sorted(_TVM_DTYPES)}") from None


def register_lowering(op: str, *, override: bool = False) -> Callable[[Lowering], Lowering]:
    """Decorator registering the Relax lowering of IR op ``op``.

    The function is called as ``fn(ctx, node, *operands)`` where ``operands``
    are Relax expressions; it returns one Relax expression, or a sequence of
    them for a multi-result op. Attributes are read from ``node.attrs``.
    """
    def deco(fn: Lowering) -> Lowering:
        if op in _LOWERINGS and not override:
            raise ValueError(f"a TVM lowering for {op!r} is already registered "
                             "(pass override=True)")
        _LOWERINGS[op] = fn
        return fn
    return deco


def register_fusion(producer: str, consumer: str, *,
                    override: bool = False) -> Callable[[Lowering], Lowering]:
    """Decorator registering a lowering of a ``producer`` node together with its ``consumer``.

    It applies when the producer's single result is not a graph output and is used once,
    as the first operand of a ``consumer`` node with no other operand. It is called as
    ``fn(ctx, producer_node, consumer_node, *producer_operands)`` and returns the Relax
    expression of the consumer's result, or ``None`` to decline (each node is then lowered
    by its own lowering). The producer's result gets no Relax value.
    """
    def deco(fn: Lowering) -> Lowering:
        key = (producer, consumer)
        if key in _FUSIONS and not override:
            raise ValueError(f"a TVM fusion of {producer!r} into {consumer!r} is already "
                             "registered (pass override=True)")
        _FUSIONS[key] = fn
        return fn
    return deco


def has_lowering(op: str) -> bool:
    """Whether op ``op`` has a registered Relax lowering."""
    _ensure_builtin()
    return op in _LOWERINGS


class _LoadTime:
    """The load-time weights requested while lowering one module (module docstring)."""

    __slots__ = ("types", "builders")

    def __init__(self) -> None:
        self.types: dict[Hashable, relax.TensorType] = {}  # key -> type, in request order
        self.builders: dict[Hashable, LoadBuilder] = {}

    def param(self, key: Hashable) -> relax.Var:
        """A fresh parameter of an entry function for the weight ``key``."""
        return relax.Var(f"slimfx_w{list(self.types).index(key)}", self.types[key])


class LowerContext:
    """What a lowering function may use: the block builder, the target and constant helpers.

    Kernel choice reads the target from here (:attr:`target`, :meth:`has`), never from the
    ambient ``tvm.target.Target.current()``: ``lower_graph(g, target=t)`` lowers for ``t``
    whatever ``with`` block it runs in, and without a target the lowerings are the portable
    ones (plain Relax ops and TE computes, which any TVM target can build).

    Attributes:
        bb: the Relax block builder.
        target: the TVM target lowered for, or ``None`` (portable lowerings).
    """

    __slots__ = ("bb", "target", "_features", "_static", "_vars", "_load", "_params")

    def __init__(self, bb: relax.BlockBuilder, target: tvm.target.Target | None = None,
                 load: _LoadTime | None = None) -> None:
        self.bb = bb
        self.target = target
        self._features: dict[str, bool] = {}  # feature name -> whether the target has it
        self._vars: dict[str, tvm.tirx.Var] = {}  # symbol name -> its TIR variable
        self._load = load if load is not None else _LoadTime()  # shared by the module
        self._params: dict[Hashable, relax.Var] = {}  # this function's load-time weights
        # is_static answers, keyed by the Relax expression itself (TVM objects hash and
        # compare by identity of the underlying node, whatever Python wrapper holds them).
        self._static: dict[Any, bool] = {}

    @property
    def is_cpu(self) -> bool:
        """Whether the target is an LLVM CPU (where hand-scheduled TIR kernels run)."""
        return self.target is not None and self.target.kind.name == "llvm"

    def has(self, feature: str) -> bool:
        """Whether the target is an LLVM CPU with ``feature``, an LLVM feature name
        (``"avx2"``, ``"avx512vnni"``, ``"fma"``); ``False`` without a target."""
        known = self._features.get(feature)
        if known is None:
            from slimfx.backends.tvm.targets import target_has_feature

            known = self._features[feature] = target_has_feature(self.target, feature)
        return known

    def is_static(self, expr: relax.Expr) -> bool:
        """Whether ``expr`` depends on constants only (no graph input).

        TVM's ``FoldConstant`` evaluates such sub-expressions at build time with a generic
        CPU target, where hand-scheduled kernels using target intrinsics (VNNI, AVX2) do
        not compile: lowerings use their portable form for static operands.

        The walk over the bindings is iterative (a graph may be thousands of nodes deep,
        e.g. DenseNet's concat chains) and its answers are kept for later calls, so asking
        for every node of a graph costs time linear in its size.
        """
        memo = self._static
        stack: list[tuple[Any, bool]] = [(expr, False)]
        while stack:
            e, expanded = stack.pop()
            if e in memo:
                continue
            if isinstance(e, tvm.ir.expr.Constant | relax.ShapeExpr):
                memo[e] = True
                continue
            if isinstance(e, relax.Var):
                binding = self.bb.lookup_binding(e)
                deps = [] if binding is None else [binding]
            elif isinstance(e, relax.Call):
                deps = list(e.args)
            elif isinstance(e, relax.Tuple):
                deps = list(e.fields)
            elif isinstance(e, relax.TupleGetItem):
                deps = [e.tuple_value]
            else:
                memo[e] = False
                continue
            if isinstance(e, relax.Var) and not deps:
                memo[e] = False  # a function parameter: a graph input
            elif expanded:
                memo[e] = all(memo[d] for d in deps)
            else:
                pending = [d for d in deps if d not in memo]
                if any(memo[d] is False for d in deps if d in memo):
                    memo[e] = False  # one dynamic operand decides it
                elif not pending:
                    memo[e] = True
                else:
                    stack.append((e, True))
                    stack.extend((d, False) for d in pending)
        return memo[expr]

    def channels_last(self, expr: relax.Expr) -> relax.Expr | None:
        """The NHWC tensor a 4-D NCHW ``expr`` was permuted from, if it was (else None).

        Kernels that compute channels-last (the x86 int8 convolutions) return
        ``permute_dims(y, [0, 3, 1, 2])`` to match the IR's NCHW; a consumer that also
        works channels-last reads ``y`` instead and the permutation, left unused, is
        removed before the build. Nothing changes in value: only which copy is read.
        """
        if not isinstance(expr, relax.Var):
            return None
        binding = self.bb.lookup_binding(expr)
        if not isinstance(binding, relax.Call) or binding.op != tvm.ir.Op.get(
                "relax.permute_dims") or len(binding.args) != 1:
            return None
        axes = binding.attrs.axes
        if axes is None or [int(a) for a in axes] != [0, 3, 1, 2]:
            return None
        return binding.args[0]

    def emit(self, expr: relax.Expr) -> relax.Var:
        """Emits ``expr`` into the current dataflow block and returns its variable."""
        return self.bb.emit(expr)

    def load_time(self, key: Hashable, ty: relax.TensorType, build: LoadBuilder) -> relax.Var:
        """A tensor of type ``ty`` computed once, when the model is loaded (module docstring).

        Args:
            key: names the tensor: requests with equal keys (from any function of the
                module) get the same tensor, built by the first request's ``build``.
            ty: its Relax type (static shape).
            build: ``build(bb)`` emits the computation into the dataflow block of
                :data:`LOAD_FN` and returns the tensor's expression; it may use constants
                only (there are no inputs at load time).

        Returns:
            The variable to use in this function: one of its parameters.
        """
        var = self._params.get(key)
        if var is None:
            if key not in self._load.types:
                self._load.types[key] = ty
                self._load.builders[key] = build
            var = self._params[key] = self._load.param(key)
        return var

    def const(self, array: Any, dtype: str) -> relax.Expr:
        """A Relax constant from a numpy array / scalar; ``dtype`` is a TVM dtype string."""
        return relax.const(np.asarray(array, dtype=dtype), dtype)

    def scalar(self, value: float | int | bool, dtype: str) -> relax.Expr:
        """A 0-d constant; ``dtype`` may be an IR (``f32``) or a TVM (``float32``) dtype."""
        dtype = _TVM_DTYPES.get(dtype, dtype)
        return relax.const(np.asarray(value, dtype=dtype), dtype)

    @staticmethod
    def dtype_of(expr: relax.Expr) -> str:
        """The TVM dtype string of a tensor expression."""
        return str(expr.ty.dtype)

    @staticmethod
    def shape_of(expr: relax.Expr) -> tuple[int, ...]:
        """The static shape of a tensor expression.

        Raises:
            LoweringError: a dimension is symbolic (this lowering needs static shapes).
        """
        dims = expr.ty.shape
        if not all(isinstance(d, int | tvm.tirx.IntImm) for d in dims):
            shown = ", ".join(str(int(d) if isinstance(d, tvm.tirx.IntImm) else d) for d in dims)
            raise LoweringError(
                f"this lowering needs static shapes, the operand has shape [{shown}]; compile "
                "with shapes={input: concrete shape} (slimfx.compile) to specialise the "
                "symbols")
        return tuple(int(d) for d in dims)

    @staticmethod
    def is_static_shape(expr: relax.Expr) -> bool:
        """Whether every dimension of a tensor expression is static (an int)."""
        return all(isinstance(d, int | tvm.tirx.IntImm) for d in expr.ty.shape)

    @staticmethod
    def static_dim(expr: relax.Expr, axis: int) -> int:
        """Dim ``axis`` of a tensor expression, which must be static (others may be symbolic).

        Raises:
            LoweringError: that dimension is symbolic.
        """
        d = expr.ty.shape[axis]
        if not isinstance(d, int | tvm.tirx.IntImm):
            raise LoweringError(f"this lowering needs a static dim {axis}, the operand's is "
                                f"{d}; compile with shapes={{input: concrete shape}} "
                                "(slimfx.compile) to specialise the symbols")
        return int(d)

    @staticmethod
    def rank_of(expr: relax.Expr) -> int:
        """The rank of a tensor expression (its shape may be symbolic)."""
        return len(expr.ty.shape)

    def dim(self, d: Any) -> Any:
        """An IR dimension as a Relax shape entry: an ``int``, or a TIR expression."""
        if type(d) is int:
            return d
        return _prim_expr(d, self._vars)

    def relax_shape(self, dims: Sequence[Any]) -> list[Any]:
        """An IR shape as a Relax shape (see :meth:`dim`)."""
        return [self.dim(d) for d in dims]

    def same_dim(self, a: Any, b: Any) -> bool:
        """Whether two Relax shape entries are provably equal."""
        if isinstance(a, int | tvm.tirx.IntImm) and isinstance(b, int | tvm.tirx.IntImm):
            return int(a) == int(b)
        from tvm.sym import Analyzer

        return bool(Analyzer().can_prove_equal(a, b))

    def cast(self, expr: relax.Expr, dtype: str) -> relax.Expr:
        """``expr`` converted to ``dtype`` (IR or TVM name); unchanged when already there.

        Constants are converted here, in numpy, rather than by a Relax op.
        """
        dtype = _TVM_DTYPES.get(dtype, dtype)
        if self.dtype_of(expr) == dtype:
            return expr
        if isinstance(expr, tvm.ir.expr.Constant) and "bfloat" not in dtype + self.dtype_of(expr):
            return self.const(expr.value.numpy().astype(dtype), dtype)
        return self.emit(relax.op.astype(expr, dtype))

    def permute(self, expr: relax.Expr, axes: Sequence[int]) -> relax.Expr:
        """``permute_dims(expr, axes)``; a constant is transposed here, in numpy.

        Constant folding would compile one TVM kernel per transposed weight, which is slow
        for models with many layers (or unrolled RNN steps).
        """
        if isinstance(expr, tvm.ir.expr.Constant) and "bfloat" not in self.dtype_of(expr):
            data = expr.value.numpy()
            return self.const(np.ascontiguousarray(data.transpose(list(axes))), str(data.dtype))
        return self.emit(relax.op.permute_dims(expr, list(axes)))


def _ensure_builtin() -> None:
    # Importing the lowering modules registers the built-in lowerings.
    from slimfx.backends.tvm import (  # noqa: F401
        lower_elementwise,
        lower_int8,
        lower_nn,
        lower_opaque,
        lower_rnn,
        lower_shape,
    )


def _unsupported(graph: Graph) -> list[Node]:
    from slimfx.backends.tvm.lower_opaque import has_opaque_lowering

    return [n for n in graph.nodes if n.op.name not in _LOWERINGS
            or (n.op.name == "opaque" and not has_opaque_lowering(n))]


def lower_graph(graph: Graph, func_name: str = "main", *,
                more: Sequence[tuple[Graph, str]] = (),
                target: tvm.target.Target | Mapping[str, Any] | str | None = None
                ) -> tvm.IRModule:
    """Lowers ``graph`` to a Relax ``IRModule`` whose function ``func_name`` runs it.

    Args:
        graph: the graph.
        func_name: the name of its Relax function.
        more: further ``(graph, function name)`` pairs lowered into the same module (e.g.
            the same graph bound to other batch sizes); kernels they share are added once.
        target: the target the lowerings may specialise for (a ``tvm.target.Target``, a
            target name such as ``"x86"`` or a target dict): on an x86 CPU the int8
            convolutions and linears take the hand-scheduled VNNI / AVX2 kernels. ``None``
            (the default) gives the portable lowerings; the ambient
            ``tvm.target.Target.current()`` is not read.

    Raises:
        LoweringError: some nodes have no lowering (all are listed, with their
            source lines), or a lowering refused a node's attributes.
        SlimfxError: an unknown target.
    """
    _ensure_builtin()
    if target is not None and not isinstance(target, tvm.target.Target):
        from slimfx.backends.tvm.targets import resolve_target

        target = tvm.target.Target(resolve_target(target))
    bb = relax.BlockBuilder()
    load = _LoadTime()
    used: dict[str, dict[Hashable, relax.Var]] = {}
    for g, name in [(graph, func_name), *more]:
        _check_lowerable(g)
        used[name] = _lower_function(bb, g, name, target, load)
    mod = bb.get()
    return _add_load_fn(mod, used, load) if load.types else mod


def _add_load_fn(mod: tvm.IRModule, used: dict[str, dict[Hashable, relax.Var]],
                 load: _LoadTime) -> tvm.IRModule:
    """Every entry function takes every load-time weight (in request order) after its
    inputs, and :data:`LOAD_FN` computes them (module docstring)."""
    for name, params in used.items():
        gv = mod.get_global_var(name)
        f = mod[gv]
        inputs = list(f.params)[:len(f.params) - len(params)]
        extra = [params[k] if k in params else load.param(k) for k in load.types]
        mod.update_func(gv, relax.Function([*inputs, *extra], f.body, f.ret_ty,
                                           f.is_pure, f.attrs, f.span))
    bb = relax.BlockBuilder(mod)
    with bb.function(LOAD_FN, []):
        with bb.dataflow():
            outs = [load.builders[k](bb) for k in load.types]
            gv = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(gv)
    return bb.get()


def _check_lowerable(graph: Graph) -> None:
    qat = [n for n in graph.nodes if n.op.name in ("fake_quantize", "fold_bn", "conv2d_bn")]
    if qat:
        raise LoweringError(
            f"graph {graph.name!r} is prepared for quantization-aware training "
            f"({qat[0].describe()} is a {qat[0].op.name} node, a training op): call "
            "slimfx.convert(...) first, on the trained module or graph, and compile what it "
            "returns: slimfx.compile(slimfx.convert(module), target)")
    missing = _unsupported(graph)
    if missing:
        lines = "\n".join(f"  {n.describe()}" for n in missing)
        raise LoweringError(
            f"{len(missing)} node(s) of graph {graph.name!r} cannot be lowered to TVM:\n{lines}\n"
            "Rewrite them into built-in ops, run them with slimfx.to_torch, or register a "
            "lowering with slimfx.backends.tvm.register_lowering(op).")
    for v in [*graph.inputs, *graph.outputs]:
        to_tvm_dtype(v.dtype)


def _lower_function(bb: relax.BlockBuilder, graph: Graph, func_name: str,
                    target: tvm.target.Target | None,
                    load: _LoadTime) -> dict[Hashable, relax.Var]:
    """Lowers ``graph`` into the function ``func_name``; returns its load-time weights
    (its last parameters)."""
    ctx = LowerContext(bb, target, load)
    params = [relax.Var(_param_name(v), relax.TensorType(ctx.relax_shape(v.shape),
                                                         to_tvm_dtype(v.dtype)))
              for v in graph.inputs]
    env: dict[int, relax.Expr] = {id(v): p for v, p in zip(graph.inputs, params, strict=True)}
    try:
        _lower_body(ctx, bb, graph, func_name, params, env)
    except BaseException:
        # the function scope leaves its binding block open when its body raises, and TVM
        # then prints "BlockBuilder destroyed with remaining blocks!" on stderr: close it
        try:
            bb._end_block()
            bb.end_scope()
        except Exception:  # noqa: BLE001 - nothing was left open: keep the first error
            pass
        raise
    return ctx._params


def _lower_body(ctx: LowerContext, bb: relax.BlockBuilder, graph: Graph, func_name: str,
                params: list[relax.Var], env: dict[int, relax.Expr]) -> None:
    fused: set[int] = set()  # consumers already lowered with their producer
    with bb.function(func_name):  # the parameters are given at the end (load-time ones)
        with bb.dataflow():
            for node in graph.nodes:
                if id(node) in fused:
                    continue
                consumer = _fusable_consumer(graph, node)
                if consumer is not None and _lower_fused(ctx, node, consumer, env):
                    fused.add(id(consumer))
                    continue
                _lower_node(ctx, node, env)
            outs = [_lookup(ctx, env, v) for v in graph.outputs]
            result = outs[0] if len(outs) == 1 else relax.Tuple(outs)
            gv = bb.emit_output(result)
        bb.emit_func_output(gv, params=[*params, *ctx._params.values()])


def _prim_expr(e: Any, names: dict[str, Any]) -> Any:
    """A sympy dimension (``+ - * //`` over ints and symbols) as a TIR ``int64`` expression."""
    if e.is_Integer:
        return tvm.tirx.IntImm("int64", int(e))
    if e.is_Symbol:
        var = names.get(e.name)
        if var is None:
            var = names[e.name] = tvm.tirx.Var(e.name, "int64")
        return var
    if e.is_Add or e.is_Mul:
        args = [_prim_expr(a, names) for a in e.args]
        out = args[0]
        for a in args[1:]:
            out = out + a if e.is_Add else out * a
        return out
    if e.is_Pow and e.args[1].is_Integer and int(e.args[1]) > 0:
        base = _prim_expr(e.args[0], names)
        out = base
        for _ in range(int(e.args[1]) - 1):
            out = out * base
        return out
    if type(e).__name__ == "floor":
        num, den = e.args[0].as_numer_denom()
        return tvm.tirx.floordiv(_prim_expr(num, names), _prim_expr(den, names))
    raise LoweringError(f"dimension {e} has no TIR form (only + - * // over ints and "
                        "symbols)")


def _param_name(v: Value) -> str:
    return v.name.replace(".", "_")


def _lookup(ctx: LowerContext, env: dict[int, relax.Expr], v: Value) -> relax.Expr:
    expr = env.get(id(v))
    if expr is None:
        if v.const is None:
            raise LoweringError(f"value %{v.name} is used before it is defined; run "
                                "graph.verify() to find the broken edge")
        tensor = v.const.detach().cpu().contiguous()
        if v.dtype == "bf16":  # torch's numpy() has no bfloat16: reinterpret the bits
            import ml_dtypes

            data = tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            data = tensor.numpy()
        expr = ctx.const(data, to_tvm_dtype(v.dtype))
        env[id(v)] = expr
    return expr


def _fusable_consumer(graph: Graph, node: Node) -> Node | None:
    """The consumer :func:`register_fusion` may lower with ``node``, if any."""
    if len(node.outputs) != 1 or not any(key[0] == node.op.name for key in _FUSIONS):
        return None
    out = node.outputs[0]
    uses = out.uses()
    if len(uses) != 1 or any(out is v for v in graph.outputs):
        return None
    user = uses[0].node
    if (node.op.name, user.op.name) not in _FUSIONS or len(user.inputs) != 1 \
            or len(user.outputs) != 1:
        return None
    return user


def _lower_fused(ctx: LowerContext, node: Node, consumer: Node,
                 env: dict[int, relax.Expr]) -> bool:
    fn = _FUSIONS[(node.op.name, consumer.op.name)]
    args = [_lookup(ctx, env, v) for v in node.inputs]
    expr = _call(fn, node, ctx, node, consumer, *args)
    if expr is None:
        return False
    if not isinstance(expr, (relax.Var, tvm.ir.expr.Constant)):
        expr = ctx.emit(expr)
    _check_type(consumer, consumer.outputs[0], ctx, expr)
    env[id(consumer.outputs[0])] = expr
    return True


def _call(fn: Lowering, node: Node, *args: Any) -> Any:
    """``fn(*args)``, its errors turned into a :class:`LoweringError` naming ``node``."""
    try:
        return fn(*args)
    except LoweringError as e:
        raise LoweringError(f"{node.describe()}: {e}") from e
    except (tvm.error.InternalError, RuntimeError, ValueError, TypeError, IndexError) as e:
        raise LoweringError(
            f"{node.describe()}: the TVM lowering of {node.op.name!r} failed: {e}. "
            "Check the node's attributes against the op definition, or report this as a "
            "bug with the graph's text form.") from e


def _lower_node(ctx: LowerContext, node: Node, env: dict[int, relax.Expr]) -> None:
    fn = _LOWERINGS[node.op.name]
    args = [_lookup(ctx, env, v) for v in node.inputs]
    result = _call(fn, node, ctx, node, *args)
    results = list(result) if isinstance(result, (list, tuple)) else [result]
    if len(results) != len(node.outputs):
        raise LoweringError(f"{node.describe()}: the lowering returned {len(results)} results, "
                            f"the node has {len(node.outputs)}")
    for out, expr in zip(node.outputs, results, strict=True):
        if not isinstance(expr, (relax.Var, tvm.ir.expr.Constant)):
            expr = ctx.emit(expr)
        _check_type(node, out, ctx, expr)
        env[id(out)] = expr


def _check_type(node: Node, out: Value, ctx: LowerContext, expr: relax.Expr) -> None:
    dims, dtype = list(expr.ty.shape), ctx.dtype_of(expr)
    want_dims = ctx.relax_shape(out.shape)
    if (dtype != to_tvm_dtype(out.dtype) or len(dims) != len(want_dims)
            or not all(ctx.same_dim(a, b) for a, b in zip(dims, want_dims, strict=True))):
        shape = ", ".join(str(int(d) if isinstance(d, tvm.tirx.IntImm) else d) for d in dims)
        want = ", ".join(str(d) for d in out.shape)
        raise LoweringError(f"{node.describe()}: the lowering of {node.op.name!r} produced "
                            f"{dtype}[{shape}] for %{out.name}, the IR says "
                            f"{to_tvm_dtype(out.dtype)}[{want}]; the lowering is wrong for "
                            "these attributes")


def lowering_table() -> dict[str, Lowering]:
    """A copy of the registry (op name -> lowering function)."""
    _ensure_builtin()
    return dict(_LOWERINGS)


def unsupported_ops(ops: Sequence[str]) -> list[str]:
    """The names in ``ops`` that have no lowering."""
    _ensure_builtin()
    return [o for o in ops if o not in _LOWERINGS]
