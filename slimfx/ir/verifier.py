"""The IR's invariants, checked by :func:`verify`.

- every operand is defined earlier (graph input, constant or an earlier result);
- use-def chains match the operand lists exactly;
- operand counts and attributes follow the op definition;
- result types equal what the op's type inference gives;
- constants hold tensors of their declared type; names are unique;
- per-channel quantization parameters have one entry per channel;
- shape symbols are declared in ``graph.symbols`` with valid ranges
  (``0 <= min <= max``), and every symbol a type or a ``dims`` attribute uses is
  declared; constants and per-channel quantized axes are static.
"""

from __future__ import annotations

from slimfx.errors import VerifyError
from slimfx.ir.core import Graph, Node, Value
from slimfx.ir.symbolic import SymbolRange, check_symbol_name, dim_symbols, format_dim
from slimfx.ir.types import TensorType

__all__ = ["verify", "verify_node"]


def _fail(node: Node | None, msg: str) -> VerifyError:
    where = f"{node.describe()}: " if node is not None else ""
    return VerifyError(f"verify: {where}{msg}")


def _check_qparams(v: Value, node: Node | None) -> None:
    qp = v.qparams
    if qp is None or qp.axis is None:
        return
    if not (v.type.rank > 0 and -v.type.rank <= qp.axis < v.type.rank):
        raise _fail(node, f"%{v.name}: quantization axis {qp.axis} out of range for {v.type}")
    n = v.type.shape[qp.axis]
    if type(n) is not int:
        raise _fail(node, f"%{v.name}: quantization axis {qp.axis} of {v.type} is symbolic "
                          f"({format_dim(n)}); per-channel axes must be static")
    if len(qp.scale) != n:
        raise _fail(node, f"%{v.name}: {len(qp.scale)} per-channel scales for {n} channels")


def verify(graph: Graph) -> None:
    """Raises VerifyError naming the first node that breaks an invariant."""
    defined: set[int] = set()
    names: set[str] = set()
    _check_symbol_table(graph)

    def define(v: Value, node: Node | None) -> None:
        if v.name in names:
            raise _fail(node, f"the name %{v.name} is defined twice")
        names.add(v.name)
        defined.add(id(v))
        if not v.type.is_static:
            _check_symbols(graph, v, node)
        _check_qparams(v, node)

    for v in graph.inputs:
        if v.producer is not None or v.const is not None:
            raise _fail(None, f"graph input %{v.name} has a producer or a constant")
        define(v, None)
    for key, v in graph.constants.items():
        if v.const is None:
            raise _fail(None, f"constant %{v.name} holds no tensor")
        if key != v.name:
            raise _fail(None, f"constant %{v.name} is registered as {key!r}")
        if TensorType.of(v.const) != v.type:
            raise _fail(None, f"constant %{v.name} is typed {v.type} but holds "
                              f"{TensorType.of(v.const)}")
        if v.mask is not None and tuple(v.mask.shape) != v.type.shape:
            raise _fail(None, f"constant %{v.name}: mask shape {tuple(v.mask.shape)} != {v.type}")
        define(v, None)

    count = 0
    for node in graph.nodes:
        count += 1
        if node.graph is not graph:
            raise _fail(node, "node does not belong to this graph")
        for i, v in enumerate(node.inputs):
            if id(v) not in defined:
                raise _fail(node, f"operand {i} %{v.name} is not defined before use")
        verify_node(node)
        _check_attr_symbols(graph, node)
        for o in node.outputs:
            define(o, node)
    if count != len(graph):
        raise _fail(None, f"node count {len(graph)} does not match the node list ({count})")

    for v in graph.values():
        for use in v._uses.values():
            n = use.node
            if n.graph is not graph or use.index >= len(n.inputs) or n.inputs[use.index] is not v:
                raise _fail(n if n.graph is graph else None,
                            f"stale use of %{v.name} at operand {use.index}")
    for v in graph.outputs:
        if id(v) not in defined:
            raise _fail(None, f"graph output %{v.name} is not defined")
    if graph.output_names is not None and len(graph.output_names) != len(graph.outputs):
        raise _fail(None, "output_names and outputs differ in length")


def _check_symbol_table(graph: Graph) -> None:
    for name, rng in graph.symbols.items():
        problem = check_symbol_name(name)
        if problem is None and not isinstance(rng, SymbolRange):
            problem = f"range {rng!r} is not a SymbolRange"
        if problem is None:
            problem = rng.problem()
        if problem:
            raise _fail(None, f"symbol {name}: {problem}")


def _undeclared(graph: Graph, dims: tuple) -> list[str]:
    used: set[str] = set()
    for d in dims:
        if type(d) is not int:
            used |= dim_symbols(d)
    return sorted(used - set(graph.symbols))


def _check_symbols(graph: Graph, v: Value, node: Node | None) -> None:
    if v.const is not None:
        raise _fail(node, f"constant %{v.name} has a symbolic type {v.type}")
    missing = _undeclared(graph, v.type.shape)
    if missing:
        raise _fail(node, f"%{v.name}: type {v.type} uses undeclared symbol(s) "
                          f"{', '.join(missing)}; declare them with graph.add_symbol()")


def _check_attr_symbols(graph: Graph, node: Node) -> None:
    for a in node.op.attrs:
        value = node.attrs.get(a.name)
        if a.kind == "dims" and isinstance(value, tuple):
            missing = _undeclared(graph, value)
            if missing:
                shown = ",".join(format_dim(d) for d in value)
                raise _fail(node, f"attribute {a.name}=[{shown}] uses undeclared symbol(s) "
                                  f"{', '.join(missing)}; declare them with graph.add_symbol()")


_INFER_ERRORS = (ValueError, IndexError, KeyError, TypeError, ArithmeticError, AttributeError,
                 RuntimeError)


def verify_node(node: Node) -> None:
    """Checks one node against its op: operand count, use records, attributes, result types.

    Raises:
        VerifyError: names the node, its op and what is wrong (for result types,
            both the recorded and the inferred ones).
    """
    op = node.op
    n_in = len(node.inputs)
    if n_in < op.min_operands or n_in > op.max_operands:
        raise _fail(node, f"{n_in} operands, but {op.name} takes {list(op.operands)}")
    for i, v in enumerate(node.inputs):
        if v._uses.get((id(node), i)) is None:
            raise _fail(node, f"operand {i} %{v.name} misses its use record")
    try:
        normalized = op.make_attrs(dict(node.attrs))
    except (TypeError, ValueError, OverflowError) as e:
        raise _fail(node, str(e)) from e
    if normalized != node.attrs:
        raise _fail(node, f"attributes {dict(node.attrs)} are not normalized")
    if op.num_results >= 0 and len(node.outputs) != op.num_results:
        raise _fail(node, f"{len(node.outputs)} results, {op.name} has {op.num_results}")
    if op.infer is not None:
        try:
            expected = op.infer([v.type for v in node.inputs], node.attrs)
        except _INFER_ERRORS as e:
            raise _fail(node, f"type inference failed: {type(e).__name__}: {e}") from e
        got = [o.type for o in node.outputs]
        if expected != got:
            raise _fail(node, "result types " + ", ".join(map(str, got))
                        + " differ from inferred " + ", ".join(map(str, expected)))
    for i, o in enumerate(node.outputs):
        if o.producer is not node or o.index != i:
            raise _fail(node, f"result %{o.name} does not point back at its node")
        _check_qparams(o, node)
