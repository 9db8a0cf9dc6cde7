"""``prune-channels hidden=True``: the hidden (residual-stream) dimension of transformer
encoders as one dependency group (embeddings, q/k/v/out projections, LayerNorms, FFN,
pooler), on tiny random-init ``transformers`` encoders, slimfx's TransformerEncoder and an
IR encoder without norms (where the pruned graph must equal the original exactly)."""

from __future__ import annotations

import pytest
import torch

import slimfx
from slimfx.ir import Graph
from slimfx.passes.pipeline import Pipeline
from slimfx.passes.prune import (
    PruneChannels,
    analyze_channels,
    apply_channel_plan,
    count_params,
    finetune,
    plan_channel_pruning,
    prune_channels,
)
from slimfx.passes.prune.importance import get_scorer, unit_importance
from tests.passes.prune.prune_nets import Net, prune_and_check, run


def _bert(hidden: int = 64, vocab: int = 64):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=2 * hidden,
                                  max_position_embeddings=16)
    torch.manual_seed(0)
    ids = torch.randint(0, vocab, (2, 8))
    return slimfx.trace(transformers.BertModel(cfg).eval(), (ids,)), ids


def _stream(deps, hidden: int):
    return [g for g in deps.groups if len(g.atoms) == hidden and g.width == 1
            and any("word_embeddings" in m for m in g.members)]


def test_bert_hidden_dim_is_one_group_and_prunes_to_a_third() -> None:
    g, ids = _bert()
    (blocked,) = _stream(analyze_channels(g), 64)
    assert not blocked.prunable and "normalizes over the channels" in blocked.excluded
    deps = analyze_channels(g, hidden=True)
    (stream,) = _stream(deps, 64)
    assert len(stream.prunable) == 64 and not stream.excluded
    members = " ".join(stream.members)
    for part in ("position_embeddings[embed]", "token_type_embeddings[embed]",
                 "layer.0.attention.self.query[in]", "layer.1.attention.output.dense[out]",
                 "layer.1.intermediate.dense[in]", "layer.1.output.dense[out]",
                 "embeddings.LayerNorm", "layer.1.output.LayerNorm", "pooler.dense[in]"):
        assert part in members, part
    assert deps.filled == ("encoder.layer.1.output.LayerNorm",)  # last_hidden_state

    heads_ffn = prune_channels(g, 0.5, scope="uniform")
    pruned = prune_channels(g, 0.5, scope="uniform", hidden=True)
    assert count_params(heads_ffn) / count_params(g) > 0.55  # heads and FFN only
    assert 0.25 <= count_params(pruned) / count_params(g) <= 0.33
    c = pruned.constants
    assert c["embeddings.word_embeddings.weight"].type.shape == (64, 32)
    assert c["encoder.layer.0.attention.self.query.weight"].type.shape == (32, 32)  # 2 heads
    assert c["encoder.layer.1.output.LayerNorm.weight"].type.shape == (32,)
    assert c["encoder.layer.0.intermediate.dense.weight"].type.shape == (64, 32)
    assert c["pooler.dense.weight"].type.shape == (64, 32)  # its output is a graph output

    with torch.no_grad():
        ref, out = slimfx.to_torch(g)(ids), slimfx.to_torch(pruned)(ids)
    assert [o.shape for o in out] == [o.shape for o in ref]  # outputs keep their width
    plan = plan_channel_pruning(g, 0.5, scope="uniform", hidden=True)
    keep = plan.deps.kept_positions("encoder.layer.1.output.LayerNorm", plan.pruned)
    assert keep is not None and len(keep) == 32
    gone = sorted(set(range(64)) - set(keep))
    assert torch.equal(out[0][..., gone], torch.zeros(2, 8, 32))
    assert out[0][..., keep].abs().min() > 0


def test_bert_hidden_pruning_recovers_by_distillation() -> None:
    """LayerNorm statistics change with the hidden width: the pruned BERT is approximate;
    a short distillation from the unpruned model brings its pooled output back."""
    g, _ = _bert(hidden=32, vocab=48)
    torch.manual_seed(1)
    batches = [torch.randint(0, 48, (2, 8)) for _ in range(8)]
    teacher = slimfx.to_torch(g)
    with torch.no_grad():
        data = [((x,), teacher(x)[1]) for x in batches]
    pruned = prune_channels(g, 0.5, hidden=True)

    def err(graph) -> float:
        m = slimfx.to_torch(graph)
        with torch.no_grad():
            return sum(float(torch.nn.functional.mse_loss(m(*x)[1], y)) for x, y in data)

    before = err(pruned)
    finetune(pruned, data, 15, optimizer="adam", lr=3e-3, progress=False,
             loss_fn=lambda out, y: torch.nn.functional.mse_loss(out[1], y))
    after = err(pruned)
    assert after < 0.3 * before, (before, after)


@pytest.mark.parametrize("kind", ["distilbert", "roberta"])
def test_other_encoders_prune_the_hidden_dim(kind: str) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    ids = torch.randint(0, 64, (2, 8))
    if kind == "distilbert":
        model = transformers.DistilBertModel(transformers.DistilBertConfig(
            vocab_size=64, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
            max_position_embeddings=16))
    else:
        model = transformers.RobertaModel(transformers.RobertaConfig(
            vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, max_position_embeddings=20))
    g = slimfx.trace(model.eval(), (ids,))
    pruned = prune_channels(g, 0.5, scope="uniform", hidden=True)
    assert 0.25 <= count_params(pruned) / count_params(g) <= 0.33
    with torch.no_grad():
        out = slimfx.to_torch(pruned)(ids)
    out = out if isinstance(out, tuple) else (out,)
    assert out[0].shape == (2, 8, 64) and torch.isfinite(out[0]).all()


def test_slimfx_transformer_encoder_hidden_dim() -> None:
    from slimfx.models.zoo import get_model

    model, inputs = get_model("transformer", batch_size=2)
    g = slimfx.trace(model.eval(), inputs)
    assert count_params(prune_channels(g, 0.5, scope="uniform")) / count_params(g) > 0.55
    pruned = Pipeline.parse("prune-channels{ratio=0.5,scope=uniform,hidden=true}")(g)
    pruned.verify()
    assert count_params(pruned) / count_params(g) <= 0.33
    ln = pruned.find("layer_norm")
    assert ln and all(tuple(n.attrs["normalized_shape"]) == (16,) for n in ln)
    with torch.no_grad():
        out = slimfx.to_torch(pruned)(*inputs)
    assert out.shape == model(*inputs).shape and torch.isfinite(out).all()


def _norm_free_encoder(zero: list[int] | None = None, e: int = 16, heads: int = 2) -> Graph:
    """An encoder without norms: linear embedding, attention + FFN residual blocks, the stream
    as graph output. ``zero``: hidden channels made exactly zero everywhere (rows and biases
    of the layers that write the stream, input columns of the layers that read it); then the
    last head of every block and the upper half of every FFN are zeroed too, so that every
    unit a 50% uniform pruning removes has zero importance."""
    n = Net(3)
    b, t, hd = 2, 5, e // heads
    writers, readers, qkv, outs, ffn_in, ffn_out = [], [], [], [], [], []

    def linear(v, out, *into):
        y = n.linear(v, out)
        for lst in into:
            lst.append(y.producer)
        return y

    x = linear(n.input(b, t, 6), e, writers)
    for _ in range(2):
        q, k, v = (n.op("permute", [n.op("reshape", [linear(x, e, readers, qkv)],
                                         shape=[b, t, heads, hd])], dims=[0, 2, 1, 3])
                   for _ in range(3))
        a = n.op("reshape", [n.op("permute", [n.op("sdpa", [q, k, v])], dims=[0, 2, 1, 3])],
                 shape=[b, t, e])
        x = n.add(x, linear(a, e, writers, outs))
        x = n.add(x, linear(n.op("gelu", [linear(x, 2 * e, readers, ffn_in)]), e, writers,
                            ffn_out))
    g = n.done(x)
    if zero:
        def fill(nodes, idx, axis, bias):
            for node in nodes:
                node.inputs[1].const = node.inputs[1].const.index_fill(axis, idx, 0.0)
                if bias:
                    node.inputs[2].const = node.inputs[2].const.index_fill(0, idx, 0.0)

        fill(writers, torch.tensor(zero), 0, True)
        fill(readers, torch.tensor(zero), 1, False)
        head = torch.arange(e - hd, e)
        fill(qkv, head, 0, True)
        fill(outs, head, 1, False)
        half = torch.arange(e, 2 * e)
        fill(ffn_in, half, 0, True)
        fill(ffn_out, half, 1, False)
    return g


def test_norm_free_stream_is_exact_when_the_pruned_channels_are_zero() -> None:
    zero = [0, 3, 4, 7, 9, 10, 13, 14]
    g = _norm_free_encoder(zero)
    x = torch.randn(2, 5, 6)
    ref = run(g, x)
    assert torch.equal(ref[..., zero], torch.zeros(2, 5, 8))  # the construction holds
    deps = analyze_channels(g, hidden=True)
    assert deps.filled == (g.outputs[0].name,)
    scores = unit_importance(g, deps, get_scorer("l1"))
    plan = plan_channel_pruning(g, 0.5, scope="uniform", hidden=True)
    assert plan.pruned and all(scores[a] == 0.0 for a in plan.pruned)
    stream = deps.roots(g.outputs[0].name)
    assert {stream[i] for i in zero} <= plan.pruned
    pruned = apply_channel_plan(g, plan)
    pruned.verify()
    assert pruned.outputs[0].type.shape == (2, 5, 16)
    assert pruned.find("linear")[0].inputs[1].type.shape == (8, 6)
    assert count_params(pruned) < 0.4 * count_params(g)
    torch.testing.assert_close(run(pruned, x), ref, rtol=1e-5, atol=1e-6)
    # and for any weights: the pruned graph equals the masked one (zeros at the output)
    prune_and_check(_norm_free_encoder(), 0.5, x, scope="uniform", hidden=True)


def test_hidden_option_and_its_limits() -> None:
    assert PruneChannels(hidden=True).hidden
    n = Net()
    x = n.linear(n.input(2, 3, 6), 12)
    w = n.g.add_constant(torch.ones(3, 12), "ln.weight")
    y = n.op("layer_norm", [x, w], normalized_shape=[3, 12], eps=1e-5)
    g = n.done(n.linear(y, 3))
    assert "normalizes over 2 axes" in analyze_channels(g, hidden=True).groups[0].excluded
    n = Net()
    x = n.linear(n.input(2, 6), 12)
    logits = n.linear(n.op("relu", [x]), 4)
    g = n.done(logits)
    deps = analyze_channels(g, hidden=True)
    assert deps.filled == ()  # a classifier's logits are not a stream: never pruned
    assert "graph output" in deps.groups[-1].excluded
