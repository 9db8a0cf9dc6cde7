"""Counts the bad-input suite's cases by outcome: ``python -m tests.reliability.bad_input_counts``.

The suite is the ``tests/reliability`` files in :data:`SUITE`. A case is one collected pytest
item (a parametrized test counts once per parameter). Its outcome is read from the test's
source (no test is run): the named ``SlimfxError`` subclasses it expects through
``pytest.raises``, a warning (``pytest.warns`` / ``caplog``), the CLI's one line and exit
status 2, or else the right answer (the test checks a result). A test that expects several
outcomes (e.g. one error class per parameter) is listed under all of them joined by ``|``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import Counter
from pathlib import Path

__all__ = ["SUITE", "outcomes", "main"]

HERE = Path(__file__).parent
SUITE = ("test_bad_input_trace.py", "test_bad_input_ir.py", "test_bad_input_quant.py",
         "test_bad_input_prune.py", "test_bad_input_compiled.py", "test_bad_input_cli.py",
         "test_artifact_safety.py", "test_graph_file_security.py", "test_deep_graphs.py",
         "test_model_regressions.py", "test_bad_input_cli_commands.py")


def _expected(fn: ast.FunctionDef) -> str:
    raised: set[str] = set()
    warns = cli = False
    for node in ast.walk(fn):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "raises" and node.args:
                arg = node.args[0]
                names = arg.elts if isinstance(arg, ast.Tuple) else [arg]
                raised |= {ast.unparse(n).split(".")[-1] for n in names}
            warns |= node.func.attr == "warns"
        if isinstance(node, ast.Name) and node.id == "caplog":
            warns = True
        if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value == 2
                                                 for c in node.comparators):
            cli |= "returncode" in ast.unparse(node) or "code" in ast.unparse(node.left)
    kinds = sorted(raised) + (["warning"] if warns else []) + (["CLI exit 2"] if cli else [])
    return " | ".join(kinds) if kinds else "right answer"


def outcomes() -> Counter[str]:
    """``{outcome: number of collected cases}`` over :data:`SUITE`."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                          "-p", "no:cacheprovider", *(str(HERE / f) for f in SUITE)],
                         capture_output=True, text=True, check=False).stdout
    items = Counter(line.split("[")[0] for line in out.splitlines() if "::" in line)
    kinds: Counter[str] = Counter()
    for f in SUITE:
        tree = ast.parse((HERE / f).read_text())
        for fn in tree.body:
            if isinstance(fn, ast.FunctionDef) and fn.name.startswith("test_"):
                n = sum(v for k, v in items.items() if k.endswith(f"{f}::{fn.name}"))
                kinds[_expected(fn)] += n
    return kinds


def main() -> int:
    kinds = outcomes()
    width = max(len(k) for k in kinds)
    for kind, n in kinds.most_common():
        print(f"{kind.ljust(width)}  {n:4d}")
    print(f"{'total'.ljust(width)}  {sum(kinds.values()):4d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
