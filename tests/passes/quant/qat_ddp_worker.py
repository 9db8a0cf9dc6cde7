"""One replica of the DDP test (``test_qat_ddp.py``): trains prepared QAT graphs under
DistributedDataParallel (gloo, 127.0.0.1) on this rank's shard of each global batch.

Usage: ``python qat_ddp_worker.py RANK WORLD PORT WORKDIR`` (rendezvous on
127.0.0.1:PORT), or ``torchrun --nproc-per-node=2 qat_ddp_worker.py WORKDIR`` (any
rendezvous torchrun is given, e.g. ``--nnodes=2 --rdzv-backend=c10d
--rdzv-endpoint=HOST:29500``). Reads ``WORKDIR/case.pt`` (the graph files, batches and
learning rate); writes ``WORKDIR/rank{RANK}.pt``, the state dict of every trained
module. With ``WORLD`` 1 it trains without DDP on the whole batches, as two halves (the
graphs are traced for half a batch; the mean of the half means is the batch's mean
loss), and writes ``WORKDIR/single.pt``: the single-process reference.
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F


def train(graph_path: str, xs: torch.Tensor, ys: torch.Tensor, lr: float, rank: int,
          world: int) -> dict[str, torch.Tensor]:
    import slimfx
    from slimfx.ir.serialize import load_graph

    m = slimfx.to_torch(load_graph(graph_path))
    model = torch.nn.parallel.DistributedDataParallel(m) if world > 1 else m
    scales = [p for n, p in m.named_parameters() if "fq_" in n]
    rest = [p for n, p in m.named_parameters() if "fq_" not in n]
    opt = torch.optim.SGD([{"params": rest}, {"params": scales, "lr": lr * 1e-2}], lr=lr,
                          momentum=0.9)
    model.train()
    parts = 2  # the graph is traced for half a global batch
    for x, y in zip(xs, ys, strict=True):
        if world > 1:  # this rank's shard
            loss = F.cross_entropy(model(x.chunk(world)[rank]), y.chunk(world)[rank])
        else:  # the whole batch, in two halves: the mean of the half means is the mean
            loss = sum(F.cross_entropy(model(xc), yc)
                       for xc, yc in zip(x.chunk(parts), y.chunk(parts), strict=True)) / parts
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    state = {k: v.detach().clone() for k, v in m.state_dict().items()}
    state["__converted__"] = slimfx.to_torch(slimfx.convert(model))(xs[0].chunk(parts)[0])
    return state


def main() -> None:
    if len(sys.argv) == 2:  # under torchrun, which sets RANK, WORLD_SIZE, MASTER_ADDR/PORT
        rank, world, workdir = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), \
            Path(sys.argv[1])
    else:
        rank, world, workdir = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[4])
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[3])
    torch.set_num_threads(1)
    case = torch.load(workdir / "case.pt")
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=30))
    out = {name: train(path, case["x"], case["y"], case["lr"], rank, world)
           for name, path in case["graphs"].items()}
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    torch.save(out, workdir / (f"rank{rank}.pt" if world > 1 else "single.pt"))


if __name__ == "__main__":
    main()
