"""Reductions of length 1 rewritten as plain (spatial) blocks, before any schedule is applied.

A TIR reduction block ``with T.init(): y = init; y = combine(y, e)`` whose reduction axes
all have extent 1 computes exactly one step: ``y = combine(init, e)``. Such blocks come from
ordinary layers: ``linear`` with one input feature, a convolution with one input channel per
group and a 1x1 kernel, the 1x1 window of an (int8) average pool (a depthwise convolution by
ones), a mean over a dimension of size 1.

TVM 0.27 schedules them wrongly: dlight's ``normalize_prim_func`` (used by slimfx's CPU
schedule and by every dlight GPU rule) drops loops of extent 1, which leaves a block with an
``init`` and no reduction axis; ``reverse_compute_inline`` then accepts the block's epilogue
and applies it to both the init and the update, so ``linear(x) = x @ w + b`` became
``(b) + x @ w + b`` (the bias twice) and an int8 average pool over a 1x1 window gained its
requantization offset twice.

:func:`remove_unit_reductions` rewrites every such block as ``y = combine(init, e)`` without
an ``init``, its reduction axes turned into spatial axes of extent 1. The value stored is
the same expression the unscheduled code computes (one step from the reduction's identity),
so results do not change; inlining and scheduling such a block are then ordinary spatial
transformations. Blocks of another form (several buffers, a non-store body) are left alone.
"""

from __future__ import annotations

from typing import Any

__all__ = ["remove_unit_reductions", "rewrite_prim_func"]


def _unit_reduction(block: Any) -> bool:
    from tvm import tirx

    reduce = [iv for iv in block.iter_vars if iv.iter_type == tirx.IterVar.CommReduce]
    if block.init is None or not reduce:
        return False
    return all(isinstance(iv.dom.extent, tirx.IntImm) and int(iv.dom.extent) == 1
               for iv in reduce)


def _rewrite_block(block: Any) -> Any:
    """The block as ``y = combine(init, e)`` (module docstring), or unchanged."""
    import tvm
    import tvm_ffi
    from tvm import s_tir, tirx

    init, body = block.init, block.body
    if not (isinstance(init, tirx.BufferStore) and isinstance(body, tirx.BufferStore)
            and init.buffer.same_as(body.buffer)
            and tvm_ffi.structural_equal(init.indices, body.indices)):
        return block
    buf, indices, start = body.buffer, body.indices, init.value
    found = []

    def load(e: Any) -> Any:  # a buffer load is an ``ir.TensorLoad`` whose source is the buffer
        if e.source.same_as(buf) and tvm_ffi.structural_equal(e.indices, indices):
            found.append(e)
            return start
        return e

    value = tvm_ffi.structural_map(body.value, [(tvm.ir.expr.TensorLoad, load)])
    if not found:
        return block
    iters = [iv if iv.iter_type != tirx.IterVar.CommReduce
             else tirx.IterVar(iv.dom, iv.var, tirx.IterVar.DataPar) for iv in block.iter_vars]
    return s_tir.SBlock(iters, block.reads, block.writes, block.name_hint,
                        tirx.BufferStore(buf, value, indices), None, block.alloc_buffers,
                        block.match_buffers, block.annotations)


def rewrite_prim_func(func: Any) -> Any:
    """``func`` with its reductions of length 1 written as spatial blocks."""
    import tvm_ffi
    from tvm import s_tir

    def visit(block: Any) -> Any:
        return _rewrite_block(block) if _unit_reduction(block) else block

    return tvm_ffi.structural_map(func, [(s_tir.SBlock, visit)])


def remove_unit_reductions() -> Any:
    """A module pass applying :func:`rewrite_prim_func` to every unscheduled PrimFunc."""
    import tvm
    from tvm import tirx

    @tvm.transform.module_pass(opt_level=0, name="SlimfxRemoveUnitReductions")
    def _pass(mod: Any, _ctx: Any) -> Any:
        updates = {}
        for gv, func in mod.functions.items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            if func.attrs is not None and func.attrs.get("tirx.is_scheduled", False):
                continue
            new = rewrite_prim_func(func)
            if not new.same_as(func):
                updates[gv] = new
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return _pass
