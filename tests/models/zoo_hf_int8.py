"""Tiny ``transformers`` models for the int8 suites, with data to calibrate and test them on.

``int8_model(name)`` returns ``(model, example_inputs)`` like
:func:`tests.models.zoo_hf.hf_model`, for the names in ``INT8_MODELS``. Compile time grows
with the number of kernels, so the configs are smaller than the foundation's:

- transformers (BERT, DistilBERT, ViT, Wav2Vec2) have ONE layer (hidden 32, 4 heads);
  ``bert-eager`` is that BERT with eager attention, so that the attention products are
  ``matmul`` nodes (``qmatmul``, ``qmul`` and a float softmax after ptq-int8) rather than
  one float ``sdpa``; Swin, SegFormer, ConvNeXt and ResNet are the foundation's (1 block
  per stage, 2 stages);
- ``mobilenet-v2``: depth multiplier 0.5 and only the first 4 of the 16 inverted
  residual blocks (then a 1x1 conv to 64 channels), with ``output_stride=4`` so that the
  last block has a dilated (2) depthwise conv; a 32x32 image ends as an 8x8 map;
- ``efficientnet``: 2 stages (kernels 3 and 5, the second of 2 blocks, so a residual
  add) of width 0.5; its stride-2 block uses TF-style "valid" padding plus an explicit pad.

Random-init CNNs with BatchNorm get variance-preserving conv/linear weights and
identity BatchNorms (HF initialises with std 0.02, so activations would vanish after
a few blocks and int8 would quantize zeros). ``random_batch(inputs, seed)`` draws a
batch like ``inputs``: fresh normal floats (times ``scale``), fresh token ids below
the vocabulary size, the same attention masks. Import as
``from tests.models.zoo_hf_int8 import INT8_MODELS, int8_model, random_batch``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tests.models.zoo_hf import hf_model

__all__ = ["INT8_MODELS", "int8_model", "random_batch", "VOCAB"]

Inputs = dict[str, torch.Tensor]
VOCAB = 100  # vocabulary size of the text models of zoo_hf
INT8_MODELS: tuple[str, ...] = (
    "resnet", "mobilenet-v2", "convnext", "efficientnet", "swin", "vit", "segformer", "bert",
    "bert-eager", "distilbert", "wav2vec2",
)


_TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
             vocab_size=VOCAB, max_position_embeddings=64)


def _bert(t: Any) -> nn.Module:
    return t.BertModel(t.BertConfig(**_TEXT))


def _distilbert(t: Any) -> nn.Module:
    return t.DistilBertModel(t.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=1, n_heads=4,
                                                hidden_dim=64, max_position_embeddings=64))


def _vit(t: Any) -> nn.Module:
    return t.ViTModel(t.ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32,
                                  num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=64))


def _wav2vec2(t: Any) -> nn.Module:
    return t.Wav2Vec2Model(t.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=4, vocab_size=32))


def _mobilenet_v2(t: Any) -> nn.Module:
    from transformers.models.mobilenet_v2 import modeling_mobilenet_v2 as mv2

    cfg = t.MobileNetV2Config(num_channels=3, image_size=32, depth_multiplier=0.5, min_depth=8,
                              output_stride=4)
    model = t.MobileNetV2Model(cfg)
    model.layer = nn.ModuleList(model.layer[:4])
    last = model.layer[-1].reduce_1x1.convolution.out_channels
    model.conv_1x1 = mv2.MobileNetV2ConvLayer(cfg, in_channels=last, out_channels=64,
                                              kernel_size=1)
    return model


def _efficientnet(t: Any) -> nn.Module:
    cfg = t.EfficientNetConfig(num_channels=3, image_size=32, width_coefficient=0.5,
                               depth_coefficient=1.0, kernel_sizes=[3, 5], in_channels=[32, 16],
                               out_channels=[16, 24], strides=[1, 2], num_block_repeats=[1, 2],
                               expand_ratios=[1, 6], depthwise_padding=[1], hidden_dim=640)
    return t.EfficientNetModel(cfg)


_BUILDERS = {"bert": _bert, "bert-eager": _bert, "distilbert": _distilbert, "vit": _vit,
             "wav2vec2": _wav2vec2, "mobilenet-v2": _mobilenet_v2,
             "efficientnet": _efficientnet}


def _rescale_batchnorm_cnn(model: nn.Module) -> None:
    """Variance-preserving conv/linear weights and identity BatchNorms (in place)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
        for bn in bns:
            bn.reset_parameters()  # weight 1, bias 0, running mean 0, running var 1


def int8_model(name: str, *, seed: int = 0) -> tuple[nn.Module, Inputs]:
    """A tiny randomly initialised model of ``INT8_MODELS`` and its example inputs."""
    import transformers

    # zoo_hf's model (and in any case its example inputs: same names, shapes and masks)
    model, inputs = hf_model("bert" if name == "bert-eager" else name, seed=seed)
    if name in _BUILDERS:
        torch.manual_seed(seed)
        model = _BUILDERS[name](transformers).eval()
        if name in ("bert", "distilbert", "vit", "wav2vec2"):
            model.set_attn_implementation("sdpa")
        elif name == "bert-eager":
            model.set_attn_implementation("eager")
    _rescale_batchnorm_cnn(model)
    return model, inputs


def random_batch(inputs: Inputs, seed: int, scale: float = 1.0) -> Inputs:
    """A batch shaped like ``inputs``: normal floats times ``scale``, random token ids
    (``input_ids``), other integer tensors (attention masks) unchanged."""
    gen = torch.Generator().manual_seed(seed)
    out: Inputs = {}
    for key, t in inputs.items():
        if t.dtype.is_floating_point:
            out[key] = torch.randn(t.shape, generator=gen) * scale
        elif key == "input_ids":
            out[key] = torch.randint(0, VOCAB, t.shape, generator=gen)
        else:
            out[key] = t.clone()
    return out
