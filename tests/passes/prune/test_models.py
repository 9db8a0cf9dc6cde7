"""Channel pruning on traced models: the zoo (ResNet-18/50, MobileNetV2, DenseNet-style,
transformer) and tiny random-init ``transformers`` models (BERT heads + FFN, ViT, ConvNeXt)."""

from __future__ import annotations

import importlib

import pytest
import torch

from slimfx.passes.prune import analyze_channels, count_macs, count_params
from tests.passes.prune.prune_nets import prune_and_check


def _trace(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]):
    frontends = importlib.import_module("slimfx.frontends")
    if not hasattr(frontends, "trace"):
        pytest.skip("slimfx.trace (frontend) is not available yet")
    model.eval()
    return frontends.trace(model, inputs)


SLOW = pytest.mark.slow
ZOO = [
    pytest.param("resnet18", dict(input_size=16, num_classes=10, width=8), (0.2, 0.35),
                 id="resnet18"),
    pytest.param("resnet50", dict(input_size=16, num_classes=10, width=8), (0.2, 0.35),
                 id="resnet50", marks=SLOW),
    pytest.param("mobilenet_v2", dict(input_size=16, num_classes=10, width_mult=0.25),
                 (0.2, 0.4), id="mobilenet_v2", marks=SLOW),
    pytest.param("densenet_tiny", dict(input_size=16), (0.2, 0.35), id="densenet_tiny"),
    pytest.param("transformer", {}, (0.45, 0.55), id="transformer"),
]


@pytest.mark.parametrize(("name", "options", "mac_share"), ZOO)
def test_zoo_models(name, options, mac_share) -> None:
    zoo = importlib.import_module("slimfx.models.zoo")
    model, inputs = zoo.get_model(name, batch_size=2, **options)
    g = _trace(model, inputs)
    pruned, _ = prune_and_check(g, 0.5, inputs[0], scope="uniform")
    share = count_macs(pruned) / count_macs(g)
    assert mac_share[0] <= share <= mac_share[1]
    assert count_params(pruned) < 0.7 * count_params(g)


def _heads_and_ffn(g, heads: int, head_dim: int, ffn: int, layers: int, hidden: int) -> None:
    deps = analyze_channels(g)
    head_groups = [grp for grp in deps.groups if grp.width == head_dim and grp.prunable]
    ffn_groups = [grp for grp in deps.groups if len(grp.atoms) == ffn and grp.prunable]
    assert len(head_groups) == layers and all(len(grp.atoms) == heads for grp in head_groups)
    assert len(ffn_groups) == layers
    stream = [grp for grp in deps.groups if len(grp.atoms) == hidden and grp.width == 1]
    assert stream and not any(grp.prunable for grp in stream)  # residual stream: layer norms
    assert all(grp.excluded for grp in stream)


def test_bert_prunes_heads_and_ffn() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=32)
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (2, 8))
    g = _trace(transformers.BertModel(cfg), (ids,))
    _heads_and_ffn(g, heads=4, head_dim=8, ffn=64, layers=2, hidden=32)
    pruned, _ = prune_and_check(g, 0.5, ids, scope="uniform")
    q = [n for n in pruned.find("linear") if n.inputs[1].name.endswith("query.weight")]
    assert q and all(n.inputs[1].type.shape == (16, 32) for n in q)  # 2 of 4 heads kept
    assert count_macs(pruned) / count_macs(g) == pytest.approx(0.5, abs=0.05)


def test_vit_prunes_heads_and_mlp() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32,
                                 num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    g = _trace(transformers.ViTModel(cfg, add_pooling_layer=False), (x,))
    _heads_and_ffn(g, heads=4, head_dim=8, ffn=64, layers=2, hidden=32)
    pruned, _ = prune_and_check(g, 0.5, x, scope="uniform")
    assert count_params(pruned) < 0.7 * count_params(g)


def test_convnext_prunes_the_inverted_bottleneck() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ConvNextConfig(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1],
                                      num_stages=2, image_size=32)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    g = _trace(transformers.ConvNextModel(cfg), (x,))
    deps = analyze_channels(g)
    # the 4x expansion of each block is prunable; the stage width is tied to layer norms
    assert sorted(len(grp.atoms) for grp in deps.prunable_groups) == [32, 64]
    pruned, _ = prune_and_check(g, 0.5, x, scope="uniform")
    assert count_macs(pruned) < 0.8 * count_macs(g)
