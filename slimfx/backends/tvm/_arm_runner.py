"""Run exported Relax libraries and write their outputs as ``.npy`` files.

This script runs under the *aarch64* Python of the qemu environment (see
``arm_env.py``), so it imports nothing from slimfx: only ``tvm`` (runtime only,
``TVM_USE_RUNTIME_LIB=1``) and ``numpy``. Usage::

    python _arm_runner.py jobs.json

``jobs.json`` is a list of jobs ``{"lib": path, "entry": "main", "load_fn": name
or null, "inputs": [paths of .npy files], "out_dir": path}``. ``load_fn`` (the
library's load-time weights, see ``lower.py``) is called once after loading the
library and its results follow the inputs. Each job's outputs (the entry
function's result, nested tuples flattened depth first) are written to
``out_dir/out_<i>.npy`` and their count to ``out_dir/count.txt``. Arrays are
read with ``allow_pickle=False``: nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine


def _flatten(value, out):
    """The tensors of ``value`` (nested tuples flattened depth first) appended to ``out``."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "Array":
        for item in value:
            _flatten(item, out)
    else:
        out.append(value)


def run_job(job):
    lib = tvm.runtime.load_module(job["lib"])
    vm = VirtualMachine(lib, tvm.cpu())
    args = [tvm.runtime.tensor(np.load(p, allow_pickle=False)) for p in job["inputs"]]
    if job.get("load_fn"):
        _flatten(vm[job["load_fn"]](), args)
    outputs = []
    _flatten(vm[job.get("entry", "main")](*args), outputs)
    os.makedirs(job["out_dir"], exist_ok=True)
    for i, tensor in enumerate(outputs):
        np.save(os.path.join(job["out_dir"], f"out_{i}.npy"), tensor.numpy(),
                allow_pickle=False)
    with open(os.path.join(job["out_dir"], "count.txt"), "w") as f:
        f.write(str(len(outputs)))


def main(argv):
    with open(argv[1]) as f:
        jobs = json.load(f)
    for job in jobs:
        run_job(job)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
