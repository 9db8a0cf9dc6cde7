"""Small models that each exercise one structure of the IR and its passes.

- :class:`SmallCNN`: Conv-BN-ReLU stack for 1x8x8 (sklearn digits) or 1x28x28
  (MNIST-sized) inputs; the demo and benchmark model;
- :class:`TinyDenseNet`: DenseNet-style blocks whose layers concatenate their
  input with their output (channel offsets for pruning, ``cat`` for int8);
- :class:`LSTMClassifier`: a 2-layer LSTM over a sequence, linear head on the
  last step (dynamic int8);
- :class:`TransformerEncoder`: pre-LayerNorm encoder layers with attention
  written as linear q/k/v + ``F.scaled_dot_product_attention`` (no
  ``nn.MultiheadAttention``), GELU feed-forward, mean pooling, linear head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LSTMClassifier", "SelfAttention", "SmallCNN", "TinyDenseNet", "TransformerEncoder",
           "TransformerLayer"]


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """Three Conv-BN-ReLU layers, a 2x2 max pool, global average pool and a linear head.

    Works for any input of at least 2x2 pixels (8x8 digits, 28x28 MNIST).

    Args:
        num_classes: outputs of the head.
        in_channels: channels of the input image.
        width: channels of the first conv (the others have ``2*width``, ``4*width``).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        self.block1 = _conv_bn_relu(in_channels, width)
        self.block2 = _conv_bn_relu(width, 2 * width)
        self.pool = nn.MaxPool2d(2)
        self.block3 = _conv_bn_relu(2 * width, 4 * width)
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.block2(self.block1(x)))
        x = self.block3(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.head(x)


class _DenseLayer(nn.Module):
    """BN-ReLU-conv3x3 producing ``growth`` channels, concatenated after its input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(F.relu(self.norm(x)))], dim=1)


class _Transition(nn.Module):
    """BN-ReLU-conv1x1 halving the channels, then a 2x2 average pool."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(F.relu(self.norm(x))))


class TinyDenseNet(nn.Module):
    """A small DenseNet: stem conv, dense blocks joined by transitions, BN-ReLU-pool-linear.

    Args:
        num_classes: outputs of the head.
        in_channels: channels of the input image.
        growth: channels each dense layer adds.
        block_layers: dense layers per block; a transition follows every block but the last.
        stem: channels of the stem conv.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, growth: int = 8,
                 block_layers: tuple[int, ...] = (3, 3), stem: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, stem, 3, padding=1, bias=False)
        layers: list[nn.Module] = []
        c = stem
        for i, n in enumerate(block_layers):
            for _ in range(n):
                layers.append(_DenseLayer(c, growth))
                c += growth
            if i != len(block_layers) - 1:
                layers.append(_Transition(c, c // 2))
                c //= 2
        self.features = nn.Sequential(*layers)
        self.norm = nn.BatchNorm2d(c)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.features(self.stem(x))))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class LSTMClassifier(nn.Module):
    """``nn.LSTM`` (batch first) over ``[batch, seq, features]``; a linear head on the last step.

    Args:
        num_features: features per time step (``input_size`` of ``nn.LSTM``).
        hidden_size: LSTM hidden size.
        num_layers: stacked LSTM layers.
        num_classes: outputs of the head.
    """

    def __init__(self, num_features: int = 16, hidden_size: int = 32, num_layers: int = 2,
                 num_classes: int = 4) -> None:
        super().__init__()
        self.lstm = nn.LSTM(num_features, hidden_size, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


class SelfAttention(nn.Module):
    """Multi-head self-attention from linear q/k/v projections and SDPA."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"SelfAttention: dim={dim} is not a multiple of heads={heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [b, s, d] -> [b, heads, s, head_dim]; written without reading x.shape so that
        # symbolic tracing sees static reshapes only.
        def split(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        return self.out(y.transpose(1, 2).flatten(2))


class TransformerLayer(nn.Module):
    """Pre-LayerNorm encoder layer: ``x + attn(ln1(x))``, then ``x + ffn(ln2(x))`` (GELU)."""

    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn)
        self.fc2 = nn.Linear(ffn, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TransformerEncoder(nn.Module):
    """Token + learned position embeddings, encoder layers, final LayerNorm, mean pool, head.

    Args:
        vocab_size: number of token ids.
        seq_len: length of the input sequences (learned positions, as in ViT).
        dim: model width.
        heads: attention heads.
        ffn: hidden size of the feed-forward block.
        layers: encoder layers.
        num_classes: outputs of the head.
    """

    def __init__(self, vocab_size: int = 100, seq_len: int = 16, dim: int = 32, heads: int = 4,
                 ffn: int = 64, layers: int = 2, num_classes: int = 4) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.randn(seq_len, dim) * 0.02)
        self.layers = nn.ModuleList(TransformerLayer(dim, heads, ffn) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids) + self.pos
        for layer in self.layers:
            x = layer(x)
        return self.head(self.ln(x).mean(dim=1))
