"""Pruning (DESIGN.md §5): unstructured magnitude pruning and structured channel pruning.

- :mod:`.dependency`: channel dependency groups over the IR (``analyze_channels``);
- :mod:`.prune_channels`: ``prune-channels`` and the python API ``prune_channels``;
- :mod:`.latency`: latency-aware channel counts (``prune-channels{latency_target=0.5}``);
- :mod:`.magnitude`: ``prune-magnitude`` (masks in ``Value.mask``), sparse export;
- :mod:`.schedule`: the gradual polynomial sparsity schedule (Zhu & Gupta 2017);
- :mod:`.finetune`: fine-tuning through the torch backend, masks kept applied;
- :mod:`.report`: parameter / MAC counts and sparsity tables.
"""

from __future__ import annotations

from slimfx.passes.prune.dependency import (
    ChannelDependencyAnalysis,
    ChannelDeps,
    ChannelGroup,
    analyze_channels,
)
from slimfx.passes.prune.finetune import FinetuneResult, finetune
from slimfx.passes.prune.latency import (
    GroupLatency,
    LatencyReport,
    plan_for_latency,
    prune_for_latency,
)
from slimfx.passes.prune.magnitude import (
    PruneMagnitude,
    SparseExport,
    export_sparse,
    load_sparse,
    magnitude_masks,
    magnitude_prune,
)
from slimfx.passes.prune.prune_channels import (
    ChannelPlan,
    PruneChannels,
    apply_channel_plan,
    mask_channel_plan,
    plan_channel_pruning,
    prune_channels,
)
from slimfx.passes.prune.report import (
    count_macs,
    count_nonzero,
    count_params,
    layer_channels,
    layer_sparsity,
    plot_channels,
    plot_sparsity,
    sparsity_table,
)
from slimfx.passes.prune.schedule import PolynomialSchedule

__all__ = [
    "ChannelDependencyAnalysis",
    "ChannelDeps",
    "ChannelGroup",
    "ChannelPlan",
    "FinetuneResult",
    "GroupLatency",
    "LatencyReport",
    "PolynomialSchedule",
    "PruneChannels",
    "PruneMagnitude",
    "SparseExport",
    "analyze_channels",
    "apply_channel_plan",
    "count_macs",
    "count_nonzero",
    "count_params",
    "export_sparse",
    "finetune",
    "layer_channels",
    "layer_sparsity",
    "load_sparse",
    "magnitude_masks",
    "magnitude_prune",
    "mask_channel_plan",
    "plan_channel_pruning",
    "plan_for_latency",
    "plot_channels",
    "plot_sparsity",
    "prune_channels",
    "prune_for_latency",
    "sparsity_table",
]
