"""The slimfx IR: typed dataflow graphs (static or symbolic shapes) with a text form.

See DESIGN.md §2. Importing this package registers the built-in ops.
"""

from __future__ import annotations

from slimfx.ir import opset as _opset  # noqa: F401  (registers built-in ops)
from slimfx.ir import opset_quant as _opset_quant  # noqa: F401  (quantization ops)
from slimfx.ir.core import Graph, Node, Source, Use, Value
from slimfx.ir.dot import to_dot
from slimfx.ir.ops import AttrDef, Attrs, OpDef, Trait, all_ops, get_op, has_op, register_op
from slimfx.ir.parser import parse
from slimfx.ir.printer import format_graph, format_node
from slimfx.ir.serialize import load_graph, save_graph
from slimfx.ir.symbolic import Dim, SymbolRange, bind_shapes, symbol
from slimfx.ir.types import QParams, TensorType
from slimfx.ir.verifier import verify

__all__ = [
    "AttrDef",
    "Attrs",
    "Dim",
    "Graph",
    "Node",
    "OpDef",
    "QParams",
    "Source",
    "SymbolRange",
    "TensorType",
    "Trait",
    "Use",
    "Value",
    "all_ops",
    "bind_shapes",
    "format_graph",
    "format_node",
    "get_op",
    "load_graph",
    "has_op",
    "parse",
    "register_op",
    "save_graph",
    "symbol",
    "to_dot",
    "verify",
]
