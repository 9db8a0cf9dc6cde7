"""Bundled models: a zoo of architectures with random init, and the trained digits CNN.

No torchvision needed and nothing downloaded. See :func:`get_model` and
:mod:`slimfx.models.digits`.
"""

from __future__ import annotations

from slimfx.models.mobilenet import MobileNetV2, mobilenet_v2
from slimfx.models.resnet import ResNet, resnet18, resnet50
from slimfx.models.small import LSTMClassifier, SmallCNN, TinyDenseNet, TransformerEncoder
from slimfx.models.zoo import ZOO, count_parameters, get_model, model_names, randomize_batchnorm_

__all__ = ["LSTMClassifier", "MobileNetV2", "ResNet", "SmallCNN", "TinyDenseNet",
           "TransformerEncoder", "ZOO", "count_parameters", "get_model", "mobilenet_v2",
           "model_names", "randomize_batchnorm_", "resnet18", "resnet50"]
