"""The demo model: :class:`~slimfx.models.small.SmallCNN` trained on sklearn's digits.

``load_digits`` ships with scikit-learn (1,797 grey 8x8 images, no download).
Pixels are scaled to [0, 1]; a fixed, stratified split keeps 360 test images.
Training takes a few seconds on a laptop CPU with a fixed seed; the weights are
cached as safetensors (never pickle) under ``$SLIMFX_CACHE_DIR`` (default
``~/.cache/slimfx``), so later runs load them::

    model, data = pretrained_digits_cnn()
    acc = accuracy(model, data.x_test, data.y_test)
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from slimfx.models.small import SmallCNN

__all__ = ["DigitsData", "TrainConfig", "accuracy", "batches", "cache_dir",
           "load_digits_split", "predict", "pretrained_digits_cnn", "train_digits_cnn"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DigitsData:
    """The digits split: images ``[n, 1, 8, 8]`` float32 in [0, 1], labels ``[n]`` int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@dataclass(frozen=True)
class TrainConfig:
    """How the demo CNN is trained; part of the cache key, so any change retrains."""

    width: int = 16
    epochs: int = 8
    batch_size: int = 64
    lr: float = 1e-2
    seed: int = 0

    def key(self) -> str:
        """A short hash naming the cached weights."""
        return hashlib.sha1(repr(self).encode()).hexdigest()[:10]


def load_digits_split(test_size: int = 360, seed: int = 0) -> DigitsData:
    """The sklearn digits, split into train/test with a fixed seed (stratified).

    Raises:
        ImportError: scikit-learn is missing (``pip install scikit-learn``).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    ds = load_digits()
    x = torch.tensor(ds.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(ds.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(torch.arange(len(y)).numpy(), test_size=test_size,
                                           random_state=seed, stratify=y.numpy())
    it, ie = torch.as_tensor(idx_train), torch.as_tensor(idx_test)
    return DigitsData(x[it], y[it], x[ie], y[ie])


def train_digits_cnn(data: DigitsData, config: TrainConfig = TrainConfig()) -> SmallCNN:
    """Trains a fresh :class:`SmallCNN` on ``data.x_train`` (deterministic for a config)."""
    threads = torch.get_num_threads()
    # One thread: this tiny model trains several times faster than with a thread pool
    # (and many times faster on a loaded machine), and the result does not depend on
    # the host's core count.
    torch.set_num_threads(1)
    try:
        return _train(data, config)
    finally:
        torch.set_num_threads(threads)


def _train(data: DigitsData, config: TrainConfig) -> SmallCNN:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = SmallCNN(num_classes=10, in_channels=1, width=config.width)
        opt = torch.optim.Adam(model.parameters(), lr=config.lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=config.lr,
            total_steps=config.epochs * -(-len(data.y_train) // config.batch_size))
        gen = torch.Generator().manual_seed(config.seed)
        model.train()
        for epoch in range(config.epochs):
            perm = torch.randperm(len(data.y_train), generator=gen)
            total = 0.0
            for i in range(0, len(perm), config.batch_size):
                j = perm[i:i + config.batch_size]
                loss = F.cross_entropy(model(data.x_train[j]), data.y_train[j])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(j)
            logger.info("digits epoch %d: loss %.4f", epoch, total / len(perm))
    return model.eval()


def cache_dir() -> Path:
    """Where trained weights are cached: ``$SLIMFX_CACHE_DIR`` or ``~/.cache/slimfx``."""
    return Path(os.environ.get("SLIMFX_CACHE_DIR", Path.home() / ".cache" / "slimfx"))


def pretrained_digits_cnn(config: TrainConfig = TrainConfig(), *, retrain: bool = False,
                          directory: Path | None = None) -> tuple[SmallCNN, DigitsData]:
    """The trained digits CNN (eval mode) and its data split, from the cache when present.

    Args:
        config: the training recipe; its hash names the cache file.
        retrain: train even when cached weights exist (and overwrite them).
        directory: cache folder; :func:`cache_dir` by default.

    Returns:
        ``(model, data)``. ``model.cached`` is True when the weights were loaded.
    """
    from safetensors.torch import load_file, save_file

    data = load_digits_split(seed=config.seed)
    path = (directory or cache_dir()) / f"digits_cnn-{config.key()}.safetensors"
    if path.exists() and not retrain:
        model = SmallCNN(num_classes=10, in_channels=1, width=config.width)
        model.load_state_dict(load_file(str(path)))
        model.cached = True  # type: ignore[assignment]
        logger.info("loaded digits CNN from %s", path)
        return model.eval(), data
    model = train_digits_cnn(data, config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
              metadata={"config": repr(config)})
    tmp.replace(path)  # atomic: a parallel run never reads half a file
    model.cached = False  # type: ignore[assignment]
    logger.info("trained digits CNN, saved to %s", path)
    return model, data


def batches(x: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, int]]:
    """``x`` in batches of exactly ``batch_size`` rows, the last one zero-padded.

    Yields ``(batch, n_real)``: graphs have static shapes, so every batch must
    have the traced batch size; the padded rows are dropped by the caller.
    """
    for i in range(0, len(x), batch_size):
        b = x[i:i + batch_size]
        n = len(b)
        if n < batch_size:
            b = torch.cat([b, b.new_zeros((batch_size - n, *b.shape[1:]))])
        yield b, n


def predict(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
            batch_size: int = 32) -> torch.Tensor:
    """Logits of ``fn`` over ``x``, run in fixed-size batches (see :func:`batches`)."""
    outs = []
    with torch.no_grad():
        for b, n in batches(x, batch_size):
            y = fn(b)
            outs.append(torch.as_tensor(y if not isinstance(y, tuple | list) else y[0])[:n])
    return torch.cat(outs)


def accuracy(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
             batch_size: int = 32) -> float:
    """Top-1 accuracy of ``fn`` (model, compiled model, ...) on ``(x, y)``."""
    return float((predict(fn, x, batch_size).argmax(1) == y).float().mean())
