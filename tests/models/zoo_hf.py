"""Tiny Hugging Face ``transformers`` models with random init, for test suites.

``hf_model(name)`` returns ``(model, example_inputs)`` where ``example_inputs`` is
a dict of keyword tensors (pass it to ``slimfx.trace`` as is, and call the eager
model with ``model(**inputs)``; a graph built from it takes the values in order:
``to_torch(g)(*inputs.values())``). Configs are tiny (hidden 32, 2 layers, 32x32
images, sequences of 8-16) so a whole suite runs in seconds. Nothing is
downloaded. ``HF_MODELS`` lists the names. Import as ``from tests.models.zoo_hf import hf_model``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["HF_MODELS", "hf_model"]

Inputs = dict[str, torch.Tensor]
_SEQ = 12
_BATCH = 2
_TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             vocab_size=100, max_position_embeddings=64)


def _text_inputs(gen: torch.Generator, vocab: int = 100, mask: bool = True) -> Inputs:
    ids = torch.randint(0, vocab, (_BATCH, _SEQ), generator=gen)
    out = {"input_ids": ids}
    if mask:
        m = torch.ones(_BATCH, _SEQ, dtype=torch.int64)
        m[1, -3:] = 0  # some padding, so the mask matters
        out["attention_mask"] = m
    return out


def _image_inputs(gen: torch.Generator, size: int = 32, channels: int = 3) -> Inputs:
    return {"pixel_values": torch.randn(_BATCH, channels, size, size, generator=gen)}


def _bert(t: Any, g: torch.Generator) -> tuple[torch.nn.Module, Inputs]:
    return t.BertModel(t.BertConfig(**_TEXT)), _text_inputs(g)


def _distilbert(t: Any, g: torch.Generator) -> tuple[torch.nn.Module, Inputs]:
    cfg = t.DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                             max_position_embeddings=64)
    return t.DistilBertModel(cfg), _text_inputs(g)


def _albert(t: Any, g: torch.Generator) -> tuple[torch.nn.Module, Inputs]:
    cfg = t.AlbertConfig(embedding_size=16, **_TEXT)
    return t.AlbertModel(cfg), _text_inputs(g)


def _roberta(t: Any, g: torch.Generator) -> tuple[torch.nn.Module, Inputs]:
    cfg = t.RobertaConfig(pad_token_id=1, **_TEXT)
    return t.RobertaModel(cfg), _text_inputs(g)


def _gpt2(t: Any, g: torch.Generator) -> tuple[torch.nn.Module, Inputs]:
    cfg = t.GPT2Config(vocab_size=100, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                       bos_token_id=0, eos_token_id=0, use_cache=False)
    return t.GPT2Model(cfg), _text_inputs(g)


def _llama(t: Any, g: torch.Generator) -> tuple[torch.nn.Module, Inputs]:
    cfg = t.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                        use_cache=False)
    return t.LlamaModel(cfg), _text_inputs(g)


def _t5(t: Any, g: torch.Generator) -> tuple[torch.nn.Module, Inputs]:
    cfg = t.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                     use_cache=False)
    return t.T5EncoderModel(cfg), _text_inputs(g)


_VIT = dict(image_size=32, patch_size=8, num_channels=3, **{k: v for k, v in _TEXT.items()
                                                           if k not in ("vocab_size",
                                                                        "max_position_embeddings")})


def _vit(t: Any, g: torch.Generator) -> tuple[torch.nn.Module, Inputs]:
    return t.ViTModel(t.ViTConfig(**_VIT)), _image_inputs(g)


def _deit(t: Any, g: torch.Generator) -> tuple[torch.nn.Module, Inputs]:
    return t.DeiTModel(t.DeiTConfig(**_VIT)), _image_inputs(g)


def _swin(t: Any, g: torch.Generator) -> tuple[torch.nn.Module, Inputs]:
    cfg = t.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                       window_size=4)
    return t.SwinModel(cfg), _image_inputs(g)


def _convnext(t: Any, g: torch.Generator) -> tuple[torch.nn.Module, Inputs]:
    cfg = t.ConvNextConfig(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2,
                           image_size=32)
    return t.ConvNextModel(cfg), _image_inputs(g)


def _resnet(t: Any, g: torch.Generator) -> tuple[torch.nn.Module, Inputs]:
    cfg = t.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                         layer_type="basic")
    return t.ResNetModel(cfg), _image_inputs(g)


def _mobilenet_v2(t: Any, g: torch.Generator) -> tuple[torch.nn.Module, Inputs]:
    cfg = t.MobileNetV2Config(num_channels=3, image_size=32, depth_multiplier=0.25,
                              min_depth=4)
    return t.MobileNetV2Model(cfg), _image_inputs(g)


def _efficientnet(t: Any, g: torch.Generator) -> tuple[torch.nn.Module, Inputs]:
    cfg = t.EfficientNetConfig(num_channels=3, image_size=32, width_coefficient=0.25,
                               depth_coefficient=0.25, hidden_dim=320)
    return t.EfficientNetModel(cfg), _image_inputs(g)


def _segformer(t: Any, g: torch.Generator) -> tuple[torch.nn.Module, Inputs]:
    cfg = t.SegformerConfig(num_channels=3, num_encoder_blocks=2, depths=[1, 1],
                            sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3],
                            strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
                            decoder_hidden_size=32)
    return t.SegformerForSemanticSegmentation(cfg), _image_inputs(g)


def _wav2vec2(t: Any, g: torch.Generator) -> tuple[torch.nn.Module, Inputs]:
    cfg = t.Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 2),
                           conv_kernel=(10, 3), num_conv_pos_embeddings=8,
                           num_conv_pos_embedding_groups=4, vocab_size=32)
    return t.Wav2Vec2Model(cfg), {"input_values": torch.randn(_BATCH, 400, generator=g)}


_BUILDERS: dict[str, Callable[[Any, torch.Generator], tuple[torch.nn.Module, Inputs]]] = {
    "bert": _bert, "distilbert": _distilbert, "albert": _albert, "roberta": _roberta,
    "gpt2": _gpt2, "llama": _llama, "t5-encoder": _t5, "vit": _vit, "deit": _deit,
    "swin": _swin, "convnext": _convnext, "resnet": _resnet, "mobilenet-v2": _mobilenet_v2,
    "efficientnet": _efficientnet, "segformer": _segformer, "wav2vec2": _wav2vec2,
}
HF_MODELS: tuple[str, ...] = tuple(_BUILDERS)


def hf_model(name: str, *, seed: int = 0,
             attn_implementation: str = "sdpa") -> tuple[torch.nn.Module, Inputs]:
    """A tiny randomly initialised model and its example inputs (a dict of tensors)."""
    import transformers

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model, inputs = _BUILDERS[name](transformers, gen)
    if hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation(attn_implementation)
        except (ValueError, ImportError):
            pass  # models without attention (CNNs) or without this implementation
    return model.eval(), inputs
