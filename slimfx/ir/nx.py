"""A networkx view of a graph, for analyses (dependency groups, dominators, cycles).

Nodes of the networkx graph are IR nodes (key: the node's name) plus one node
per graph input and constant (key: the value's name). Each edge carries the
Value it stands for and the operand index it feeds.
"""

from __future__ import annotations

from typing import Any

from slimfx.ir.core import Graph

__all__ = ["to_networkx"]


def to_networkx(graph: Graph) -> Any:
    """Returns a ``networkx.MultiDiGraph`` with ``kind``/``node``/``value`` node data."""
    import networkx as nx

    g = nx.MultiDiGraph(name=graph.name)
    for v in graph.inputs:
        g.add_node(v.name, kind="input", value=v)
    for v in graph.constants.values():
        g.add_node(v.name, kind="constant", value=v)
    for n in graph.nodes:
        g.add_node(n.name, kind="node", node=n, op=n.op.name)
        for i, v in enumerate(n.inputs):
            src = v.producer.name if v.producer is not None else v.name
            g.add_edge(src, n.name, value=v, index=i)
    for i, v in enumerate(graph.outputs):
        key = f"<output {i}>"
        g.add_node(key, kind="output", value=v)
        g.add_edge(v.producer.name if v.producer is not None else v.name, key, value=v, index=i)
    return g
