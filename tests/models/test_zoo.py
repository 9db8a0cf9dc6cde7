"""The bundled model zoo and the trained digits CNN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimfx.models import count_parameters, get_model, mobilenet_v2, model_names, resnet18, resnet50
from slimfx.models.digits import (
    TrainConfig,
    accuracy,
    batches,
    load_digits_split,
    predict,
    pretrained_digits_cnn,
)
from slimfx.models.mobilenet import InvertedResidual

# Tiny variants that keep each topology; (options, expected output shape at batch 2).
TINY = {
    "resnet18": (dict(input_size=32, num_classes=10, width=8), (2, 10)),
    "resnet50": (dict(input_size=32, num_classes=10, width=4), (2, 10)),
    "mobilenet_v2": (dict(input_size=32, num_classes=10, width_mult=0.25), (2, 10)),
    "densenet_tiny": (dict(input_size=16), (2, 10)),
    "lstm": (dict(input_size=5, num_features=6, num_classes=3), (2, 3)),
    "transformer": (dict(input_size=8, num_classes=3), (2, 3)),
    "small_cnn": (dict(input_size=28), (2, 10)),
}


def test_tiny_table_covers_the_zoo():
    assert sorted(TINY) == sorted(model_names())


@pytest.mark.parametrize("name", sorted(TINY))
def test_each_model_builds_and_runs_deterministically(name):
    options, shape = TINY[name]
    m1, x1 = get_model(name, batch_size=2, seed=3, **options)
    m2, x2 = get_model(name, batch_size=2, seed=3, **options)
    assert not m1.training
    with torch.no_grad():
        y1, y2 = m1(*x1), m2(*x2)
    assert tuple(y1.shape) == shape
    assert torch.isfinite(y1).all()
    assert torch.equal(y1, y2)  # same seed -> same weights and inputs
    m3, _ = get_model(name, batch_size=2, seed=4, **options)
    with torch.no_grad():
        assert not torch.equal(m3(*x1), y1)


def test_get_model_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    get_model("small_cnn")
    assert torch.equal(torch.rand(3), want)


def test_input_sizes_follow_the_model():
    _, (x,) = get_model("small_cnn", batch_size=4, input_size=8)
    assert x.shape == (4, 1, 8, 8)
    _, (x,) = get_model("resnet18", input_size=40, width=8, in_channels=1)
    assert x.shape == (1, 1, 40, 40)
    _, (ids,) = get_model("transformer", batch_size=3, input_size=10, vocab_size=7)
    assert ids.shape == (3, 10) and ids.dtype == torch.int64 and int(ids.max()) < 7
    _, (seq,) = get_model("lstm", batch_size=2, input_size=9)
    assert seq.shape == (2, 9, 16)


def test_unknown_model_names_the_known_ones():
    with pytest.raises(KeyError, match="resnet18"):
        get_model("resnet19")


@pytest.mark.parametrize("build,expected", [
    (resnet18, 11_689_512), (resnet50, 25_557_032), (mobilenet_v2, 3_504_872)])
def test_parameter_counts_match_torchvision(build, expected):
    assert count_parameters(build()) == expected


def test_architectures_have_the_published_structure():
    def count(m: nn.Module, kind: type) -> int:
        return sum(isinstance(x, kind) for x in m.modules())

    r18, r50 = resnet18(width=8), resnet50(width=8)
    assert count(r18, nn.Conv2d) == 20 and count(r18, nn.BatchNorm2d) == 20  # 17 + 3 downsample
    assert count(r50, nn.Conv2d) == 53
    mb = mobilenet_v2(width_mult=0.5)
    blocks = [b for b in mb.modules() if isinstance(b, InvertedResidual)]
    assert len(blocks) == 17 and sum(b.use_res_connect for b in blocks) == 10
    depthwise = [c for c in mb.modules() if isinstance(c, nn.Conv2d) and c.groups > 1]
    assert len(depthwise) == 17 and all(c.groups == c.in_channels for c in depthwise)
    assert count(mb, nn.ReLU6) == 35


def test_torchvision_state_dict_names():
    keys = set(resnet18().state_dict())
    assert {"conv1.weight", "bn1.running_var", "layer2.0.downsample.0.weight",
            "layer4.1.bn2.bias", "fc.weight"} <= keys
    keys = set(mobilenet_v2().state_dict())
    assert {"features.0.0.weight", "features.1.conv.0.0.weight", "features.18.1.weight",
            "classifier.1.weight"} <= keys


def test_randomize_bn_changes_outputs_but_not_weights():
    m1, (x,) = get_model("resnet18", input_size=32, width=8)
    m2, _ = get_model("resnet18", input_size=32, width=8, randomize_bn=True)
    assert torch.equal(m1.conv1.weight, m2.conv1.weight)
    assert not torch.equal(m1.bn1.running_var, m2.bn1.running_var)
    with torch.no_grad():
        assert not torch.allclose(m1(x), m2(x))


# ---------------------------------------------------------------- trace round trip
@pytest.mark.parametrize("name", [
    "small_cnn", "lstm",
    *(pytest.param(n, marks=pytest.mark.slow) for n in
      ("resnet18", "resnet50", "mobilenet_v2", "densenet_tiny", "transformer"))])
def test_zoo_models_trace_and_match_eager(name):
    slimfx = pytest.importorskip("slimfx")
    options, _ = TINY[name]
    model, x = get_model(name, batch_size=2, randomize_bn=True, **options)
    g = slimfx.trace(model, x)
    g2 = slimfx.Pipeline("fold-bn,fuse-activation,cleanup")(g)
    with torch.no_grad():
        want = model(*x)
        torch.testing.assert_close(slimfx.to_torch(g)(*x), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(slimfx.to_torch(g2)(*x), want, rtol=1e-4, atol=1e-4)
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) and name != "densenet_tiny":
        # every BN follows a conv here, so folding removes all of them
        assert not g2.find("batch_norm") and g.find("batch_norm")


# ---------------------------------------------------------------- digits
def test_digits_split_is_fixed_and_stratified():
    a, b = load_digits_split(), load_digits_split()
    assert a.x_test.shape == (360, 1, 8, 8) and len(a.y_train) == 1797 - 360
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    assert 0.0 <= float(a.x_train.min()) and float(a.x_train.max()) <= 1.0
    assert torch.bincount(a.y_test).min() >= 35  # every class is in the test split


def test_digits_cnn_trains_caches_as_safetensors_and_reloads(tmp_path):
    cfg = TrainConfig(width=8, epochs=3)
    model, data = pretrained_digits_cnn(cfg, directory=tmp_path)
    assert model.cached is False and not model.training
    files = list(tmp_path.iterdir())
    assert [f.suffix for f in files] == [".safetensors"] and cfg.key() in files[0].name
    acc = accuracy(model, data.x_test, data.y_test)
    assert acc > 0.9, acc
    again, _ = pretrained_digits_cnn(cfg, directory=tmp_path)
    assert again.cached is True
    for (k, v), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    assert accuracy(again, data.x_test, data.y_test) == acc


def test_batches_pad_to_a_fixed_size_and_predict_drops_the_padding():
    x = torch.arange(10.0).reshape(10, 1)
    got = list(batches(x, 4))
    assert [n for _, n in got] == [4, 4, 2] and all(b.shape == (4, 1) for b, _ in got)
    assert torch.equal(got[-1][0][2:], torch.zeros(2, 1))
    seen = []

    def fn(b: torch.Tensor) -> torch.Tensor:
        assert b.shape[0] == 4  # a static-shape graph only ever sees its batch size
        seen.append(b)
        return b * 2

    assert torch.equal(predict(fn, x, 4), x * 2)
