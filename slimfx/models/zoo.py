"""The bundled model zoo: every model by name, with example inputs of a chosen size.

``get_model(name, batch_size=..., input_size=..., **options)`` returns
``(model, example_inputs)``: the model in eval mode with a deterministic random
init (``seed``), and a tuple of inputs it runs on. ``input_size`` is the image
side for vision models and the sequence length for sequence models; options
are the model's constructor arguments (``num_classes``, ``width``,
``width_mult``, ...), so tests build tiny variants of the real topologies::

    model, (x,) = get_model("resnet18", input_size=32, num_classes=10, width=8)

No pretrained weights: nothing is downloaded. The trained digits CNN lives in
:mod:`slimfx.models.digits`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slimfx.models.mobilenet import mobilenet_v2
from slimfx.models.resnet import resnet18, resnet50
from slimfx.models.small import LSTMClassifier, SmallCNN, TinyDenseNet, TransformerEncoder

__all__ = ["ZooEntry", "ZOO", "count_parameters", "get_model", "model_names",
           "randomize_batchnorm_"]

Inputs = tuple[torch.Tensor, ...]


def _image(channels: int) -> Callable[[int, int, torch.Generator], Inputs]:
    def make(batch: int, size: int, gen: torch.Generator) -> Inputs:
        return (torch.randn(batch, channels, size, size, generator=gen),)
    return make


def _sequence(batch: int, size: int, gen: torch.Generator, features: int) -> Inputs:
    return (torch.randn(batch, size, features, generator=gen),)


@dataclass(frozen=True)
class ZooEntry:
    """One model of the zoo.

    Attributes:
        name: the name ``get_model`` takes.
        factory: builds the model from keyword options.
        default_size: ``input_size`` when none is given (image side or sequence length).
        doc: one line for listings.
    """

    name: str
    factory: Callable[..., nn.Module]
    default_size: int
    doc: str

    def inputs(self, model: nn.Module, batch_size: int, size: int,
               gen: torch.Generator) -> Inputs:
        """Example inputs for ``model`` (built by this entry)."""
        if isinstance(model, LSTMClassifier):
            return _sequence(batch_size, size, gen, model.lstm.input_size)
        if isinstance(model, TransformerEncoder):
            vocab = model.tok.num_embeddings
            seq = model.pos.shape[0]
            return (torch.randint(0, vocab, (batch_size, seq), generator=gen),)
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        return _image(first.in_channels)(batch_size, size, gen)


def _transformer(seq_len: int | None = None, **options: Any) -> TransformerEncoder:
    return TransformerEncoder(seq_len=seq_len or 16, **options)


ZOO: dict[str, ZooEntry] = {e.name: e for e in (
    ZooEntry("resnet18", resnet18, 224, "ResNet-18 (torchvision layout), 11.69M params"),
    ZooEntry("resnet50", resnet50, 224, "ResNet-50 v1.5 (torchvision layout), 25.56M params"),
    ZooEntry("mobilenet_v2", mobilenet_v2, 224,
             "MobileNetV2: depthwise separable, inverted residuals, ReLU6; 3.50M params"),
    ZooEntry("densenet_tiny", TinyDenseNet, 32, "DenseNet-style concat blocks (small)"),
    ZooEntry("lstm", LSTMClassifier, 12, "2-layer LSTM classifier over [batch, seq, features]"),
    ZooEntry("transformer", _transformer, 16,
             "pre-LN transformer encoder: linear q/k/v + SDPA, LayerNorm, GELU FFN"),
    ZooEntry("small_cnn", SmallCNN, 8, "Conv-BN-ReLU CNN for 1x8x8 / 1x28x28 (demo model)"),
)}


def model_names() -> list[str]:
    """The names ``get_model`` accepts."""
    return list(ZOO)


def get_model(name: str, *, batch_size: int = 1, input_size: int | None = None, seed: int = 0,
              randomize_bn: bool = False, **options: Any) -> tuple[nn.Module, Inputs]:
    """A zoo model in eval mode and example inputs for it.

    Args:
        name: one of :func:`model_names`.
        batch_size: batch dimension of the example inputs.
        input_size: image side (vision) or sequence length (sequence models); the
            model's usual size when None.
        seed: seeds the weights and the inputs; the global RNG is left untouched.
        randomize_bn: give every BatchNorm random statistics and affine parameters
            (see :func:`randomize_batchnorm_`), so BN folding is not a near no-op.
        **options: constructor arguments of the model (``num_classes``, ``width``, ...).

    Raises:
        KeyError: unknown ``name``; the message lists the known ones.
    """
    entry = ZOO.get(name)
    if entry is None:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}")
    size = input_size or entry.default_size
    if name == "transformer":
        options.setdefault("seq_len", size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = entry.factory(**options).eval()
        if randomize_bn:
            randomize_batchnorm_(model, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    return model, entry.inputs(model, batch_size, size, gen)


def randomize_batchnorm_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Sets random running statistics and affine parameters on every BatchNorm of ``model``.

    Means ~ N(0, 0.1), variances ~ U(0.5, 1.5), weights ~ U(0.5, 1.5), biases ~
    N(0, 0.1): moderate values that keep deep networks numerically tame.
    Returns ``model`` (edited in place).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (what papers and torchvision report)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
