"""Graph files never run code: opaque targets resolve only allowlisted torch op overloads.

A graph file names the callables of its opaque nodes. Each test here crafts a file
whose target (or argument spec) would reach a dangerous callable if names were
resolved by walking attributes (``torch.os.system``, ``builtins.eval``, ...), with
those callables replaced by recorders, and checks that loading raises
ArtifactError naming the target and that nothing was called.
"""

from __future__ import annotations

import builtins
import json
import os
import pickle
import posix
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from slimfx.errors import ArtifactError, SlimfxError, UnsupportedOpError
from slimfx.ir import Graph, TensorType, load_graph, parse, save_graph
from slimfx.ir import opaque as opaque_mod
from slimfx.ir.serialize import FORMAT
from tests.passes.pass_helpers import run_graph

SPEC = json.dumps({"args": [{"$in": 0}], "kwargs": {}}, sort_keys=True)


def _graph(target: str = "aten.sin.default", spec: str = SPEC) -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType((2, 3)))
    w = g.add_constant(torch.ones(2, 3), "w")
    y = g.add("add", [x, w], name="y")
    op = g.create("opaque", [y], {"target": target, "spec": spec}, [TensorType((2, 3))],
                  name="op")
    g.set_outputs([op.output])
    return g


def _write(path: Path, graph: Graph) -> Path:
    """Writes ``graph`` the way save_graph does, for targets save_graph would also write."""
    meta = {"format": FORMAT, "graph": graph.format(locations=True, inline_limit=0),
            "output_names": "null"}
    save_file({k: v.const for k, v in graph.constants.items()}, str(path), metadata=meta)
    return path


MARK = "called-shell"  # in the arguments a hostile file passes to its target


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[str]]:
    """Replaces callables a hostile file could aim at by recorders; returns the call log.

    Functions the interpreter itself uses (exec for imports, eval) are spies that record
    calls carrying the hostile file's argument :data:`MARK` and pass the others on.
    """
    log: list[str] = []

    def recorder(name: str, original: Callable[..., Any] | None) -> Callable[..., Any]:
        def record(*args: Any, **kwargs: Any) -> Any:
            if original is not None and MARK not in repr((args, kwargs)):
                return original(*args, **kwargs)
            log.append(name)
            (tmp_path / f"called-{name}").write_text(repr(args)[:200])  # the sentinel
            return None
        return record

    for mod, attr, spy in [(os, "system", False), (posix, "system", False),
                           (os, "popen", False), (builtins, "eval", True),
                           (builtins, "exec", True), (torch, "load", False),
                           (pickle, "loads", False), (pickle, "load", False),
                           (pickle, "Unpickler", False), (torch._C, "_crash_if_csrc_asan", False)]:
        original = getattr(mod, attr) if spy else None
        monkeypatch.setattr(mod, attr, recorder(f"{mod.__name__}.{attr}", original))
    yield log
    assert not list(tmp_path.glob("called-*")), "a sentinel file was written"


HOSTILE_TARGETS = [
    "torch.os.system",
    "builtins.eval",
    "os.system",
    "os.popen",
    "torch.load",
    "torch._C._crash_if_csrc_asan",
    "torch.ops.aten.gather.default",  # a real op, but through attribute walking of torch
    "aten.__class__",
    "aten.gather.__call__",
    "aten.gather.default.__call__",
    "aten.gather._op",  # an attribute of the packet, not an overload
    "aten.name",  # an attribute of the namespace object
    "aten.save.default",  # writes a file
    "aten.from_file.default",  # reads a file
    "higher_order.cond",
    "method.__reduce_ex__",
    "method.apply_",  # calls a Python callable per element
    "operator.attrgetter",
    "user.builtins.eval",
    "",
]


@pytest.mark.parametrize("target", HOSTILE_TARGETS)
def test_hostile_target_is_refused_at_load_and_nothing_runs(
        target: str, calls: list[str], tmp_path: Path) -> None:
    spec = json.dumps({"args": [f"touch {tmp_path / MARK}"], "kwargs": {}})
    p = _write(tmp_path / "evil.safetensors", _graph(target, spec))
    with pytest.raises(ArtifactError, match=re.escape(repr(target))) as info:
        load_graph(p)
    assert "%op = opaque" in str(info.value)
    assert "allowlisted torch operator overload" in str(info.value)
    assert calls == []


@pytest.mark.parametrize("target", HOSTILE_TARGETS)
def test_hostile_target_in_parsed_text_does_not_resolve_when_run(
        target: str, calls: list[str], tmp_path: Path) -> None:
    spec = json.dumps({"args": [f"touch {tmp_path / MARK}"], "kwargs": {}})
    g = parse(_graph(target, spec).format())  # parse() itself never resolves targets
    with pytest.raises(UnsupportedOpError, match=re.escape(repr(target))):
        opaque_mod.resolve_target(target)
    with pytest.raises(SlimfxError, match=re.escape(repr(target))):
        run_graph(g, torch.zeros(2, 3))
    assert calls == []


@pytest.mark.parametrize("arg, why", [
    ({"$memory_format": "load"}, "bad argument"),  # was getattr(torch, ...)
    ({"$layout": "os"}, "bad argument"),
    ({"$dtype": "__class__"}, "bad argument"),
    ({"$in": 3}, "operand index 3 out of range for 1 operands"),
    ({"$in": -1}, "out of range"),
    ({"$pickle": "gASVAAAAAAAAAC4="}, "bad argument"),
])
def test_hostile_argument_spec_is_refused(arg: dict[str, Any], why: str, calls: list[str],
                                          tmp_path: Path) -> None:
    spec = json.dumps({"args": [{"$in": 0}, arg], "kwargs": {}})
    p = _write(tmp_path / "evil.safetensors", _graph("aten.sin.default", spec))
    with pytest.raises(ArtifactError, match=re.escape(why)):
        load_graph(p)
    assert calls == []


@pytest.mark.parametrize("spec, why", [
    ("not json", "spec is not valid JSON"),
    ("[" * 5000 + "]" * 5000, "spec is not valid JSON"),
    (json.dumps({"args": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
                 "kwargs": {}}), "nested deeper than 32"),
    (json.dumps({"args": 1, "kwargs": {}}), 'spec must be {"args"'),
])
def test_malformed_spec_is_an_artifact_error(spec: str, why: str, tmp_path: Path) -> None:
    p = _write(tmp_path / "bad.safetensors", _graph("aten.sin.default", spec))
    with pytest.raises(ArtifactError, match=re.escape(why)):
        load_graph(p)


def test_allowlisted_overload_loads_and_runs_without_pickle(calls: list[str],
                                                            tmp_path: Path) -> None:
    g = _graph("aten.sin.default")
    g.constants["w"].mask = torch.tensor([[True, False, True]] * 2)
    save_graph(g, tmp_path / "ok.safetensors")
    h = load_graph(tmp_path / "ok.safetensors")
    assert str(h) == str(g)
    x = torch.randn(2, 3)
    torch.testing.assert_close(run_graph(h, x), torch.sin(x + 1))
    assert calls == []  # no pickle, torch.load, eval or import on the load path


def test_traced_callable_runs_in_process_but_not_from_a_file(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(opaque_mod, "_TRACED", {})
    monkeypatch.setattr(opaque_mod, "_USER", {})
    name = opaque_mod.target_name(lambda t: t * 3)  # what the frontend does when tracing
    assert name.startswith("user.")
    g = _graph(name)
    torch.testing.assert_close(run_graph(g, torch.ones(2, 3)), torch.full((2, 3), 6.0))
    save_graph(g, tmp_path / "traced.safetensors")
    with pytest.raises(ArtifactError, match=re.escape(repr(name))):
        load_graph(tmp_path / "traced.safetensors")


def test_user_registered_target_is_trusted_from_a_file(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    monkeypatch.setattr(opaque_mod, "_USER", {})
    p = _write(tmp_path / "user.safetensors", _graph("mylib.triple"))
    with pytest.raises(ArtifactError, match="'mylib.triple'"):
        load_graph(p)
    opaque_mod.register_target("mylib.triple", lambda t: t * 3)
    h = load_graph(p)
    torch.testing.assert_close(run_graph(h, torch.ones(2, 3)), torch.full((2, 3), 6.0))


_LOAD_PATH = [Path(opaque_mod.__file__).parent / f for f in
              ("core.py", "opaque.py", "parser.py", "serialize.py", "types.py", "verifier.py",
               "ops.py")]


@pytest.mark.parametrize("path", _LOAD_PATH, ids=lambda p: p.name)
def test_load_path_has_no_pickle_eval_or_import(path: Path) -> None:
    code = path.read_text()
    for pattern in (r"import pickle|pickle\.\w", r"torch\.load\(", r"\beval\(", r"\bexec\(",
                    r"importlib", r"__import__", r"getattr\(torch,"):
        assert not re.search(pattern, code), f"{path.name} contains {pattern}"
