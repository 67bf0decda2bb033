"""LayerwiseEncoder reproduces each BERT-family model's own forward pass; pooling is right."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AlbertConfig,
    AutoModel,
    BertConfig,
    DistilBertConfig,
    ElectraConfig,
    RobertaConfig,
)

from de3bert.backbone import LayerwiseEncoder
from de3bert.model import ClassifierHeads, pool

VOCAB, MAXPOS = 1000, 128


def _configs() -> dict[str, object]:
    common = dict(vocab_size=VOCAB, max_position_embeddings=MAXPOS, hidden_dropout_prob=0.1,
                  attention_probs_dropout_prob=0.1)
    return {
        "bert": BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                           intermediate_size=64, pad_token_id=0, **common),
        # RoBERTa: pad id 1, positions offset by padding_idx + 1
        "roberta": RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                 type_vocab_size=1, **{**common, "max_position_embeddings": MAXPOS + 2}),
        # ALBERT: factorised embeddings (16 -> 32) and 4 layers sharing 2 groups
        "albert": AlbertConfig(embedding_size=16, hidden_size=32, num_hidden_layers=4, num_hidden_groups=2,
                               num_attention_heads=4, intermediate_size=64, pad_token_id=0, **common),
        "distilbert": DistilBertConfig(vocab_size=VOCAB, max_position_embeddings=MAXPOS, dim=32, n_layers=3,
                                       n_heads=4, hidden_dim=64, pad_token_id=0, dropout=0.1,
                                       attention_dropout=0.1),
        # ELECTRA: embedding_size != hidden_size exercises embeddings_project
        "electra": ElectraConfig(embedding_size=16, hidden_size=32, num_hidden_layers=3,
                                 num_attention_heads=4, intermediate_size=64, pad_token_id=0, **common),
    }


def _batch(config, seed: int = 0) -> dict[str, torch.Tensor]:
    """Three sequences of different lengths, right-padded with the config's pad id."""
    g = torch.Generator().manual_seed(seed)
    pad = config.pad_token_id
    lengths = [11, 4, 7]
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, VOCAB, (n,), generator=g)
        mask[i, :n] = 1
    out = {"input_ids": ids, "attention_mask": mask}
    if config.model_type in ("bert", "albert", "electra"):
        tt = torch.zeros_like(ids)
        tt[0, 6:11] = 1
        out["token_type_ids"] = tt
    return out


def _layerwise(enc: LayerwiseEncoder, batch) -> torch.Tensor:
    hidden, mask = enc.embed(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    for i in range(enc.num_layers):
        hidden = enc.layer(i, hidden, mask)
    return hidden


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("kind", ["bert", "roberta", "albert", "distilbert", "electra"])
def test_layerwise_matches_library_forward(kind, attn):
    config = _configs()[kind]
    torch.manual_seed(0)
    model = AutoModel.from_config(config, attn_implementation=attn).eval()
    assert model.config._attn_implementation == attn
    enc = LayerwiseEncoder(model)
    assert enc.num_layers == config.num_hidden_layers if kind != "distilbert" else config.n_layers
    assert enc.hidden_size == 32
    batch = _batch(config)
    with torch.no_grad():
        ref = model(**batch).last_hidden_state
        ours = _layerwise(enc, batch)
    assert ours.shape == ref.shape
    # every position, padding included, equals the library's own output
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    # a padded row equals the same row run alone without padding (the mask is really applied)
    n = int(batch["attention_mask"][1].sum())
    alone = {k: v[1:2, :n] for k, v in batch.items()}
    with torch.no_grad():
        single = _layerwise(enc, alone)
    torch.testing.assert_close(ours[1:2, :n], single, atol=1e-5, rtol=0)


def test_layerwise_eager_equals_sdpa():
    config = _configs()["bert"]
    torch.manual_seed(0)
    eager = AutoModel.from_config(config, attn_implementation="eager").eval()
    sdpa = AutoModel.from_config(config, attn_implementation="sdpa").eval()
    sdpa.load_state_dict(eager.state_dict())
    batch = _batch(config)
    with torch.no_grad():
        a, b = _layerwise(LayerwiseEncoder(eager), batch), _layerwise(LayerwiseEncoder(sdpa), batch)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_mean_pooling_ignores_padding():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 5, 8, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = pool(hidden, mask, "mean")
    torch.testing.assert_close(out[0], hidden[0, :3].mean(0))
    torch.testing.assert_close(out[1], hidden[1].mean(0))
    # changing what sits at padded positions changes nothing
    noisy = hidden.clone()
    noisy[0, 3:] = 1e6
    torch.testing.assert_close(pool(noisy, mask, "mean"), out)


def test_cached_mean_pool_weights_follow_the_batch(tiny_encoder):
    """Weights cached in head state give the uncached mean, also after the engine drops rows."""
    heads = ClassifierHeads(tiny_encoder(), num_labels=2, pooling="mean").eval()
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(3, 5, 32, generator=g)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    state: dict = {}
    first = heads.pooled(1, hidden, mask, state)
    dense = heads.pooler(1)  # the pooler-like dense + tanh on the mean (equal head capacity)
    torch.testing.assert_close(first, dense(pool(hidden, mask, "mean")))
    assert state["mean_pool_weights"].shape == (3, 5, 1)
    keep = torch.tensor([0, 2])  # what live_batch does when sample 1 exits
    state = {k: v.index_select(0, keep) for k, v in state.items()}
    torch.testing.assert_close(heads.pooled(2, hidden[keep], mask[keep], state),
                               dense(pool(hidden[keep], mask[keep], "mean")))


def test_cls_pooling_uses_the_pooler(tiny_encoder):
    enc = tiny_encoder()
    assert enc.pooler is not None
    hidden = torch.randn(3, 6, 32)
    mask = torch.ones(3, 6, dtype=torch.long)
    out = pool(hidden, mask, "cls", enc.pooler)
    expected = torch.tanh(enc.encoder.pooler.dense(hidden[:, 0]))
    torch.testing.assert_close(out, expected)
    # no pooler: the first token itself
    torch.testing.assert_close(pool(hidden, mask, "cls", None), hidden[:, 0])
    with pytest.raises(ValueError, match="cls, mean"):
        pool(hidden, mask, "max")


@pytest.mark.parametrize("kind", ["bert", "roberta", "albert", "distilbert", "electra"])
def test_cls_heads_give_one_vector_per_sample(kind):
    """`cls` pooling through each family's pooler (or first token) gives [N, H] features."""
    config = _configs()[kind]
    torch.manual_seed(0)
    enc = LayerwiseEncoder(AutoModel.from_config(config)).eval()
    batch = _batch(config)
    for poolers in ("shared", "per_layer"):
        heads = ClassifierHeads(enc, num_labels=3, pooling="cls", poolers=poolers).eval()
        with torch.no_grad():
            hidden = _layerwise(enc, batch)
            feat = heads.pooled(enc.num_layers, hidden, batch["attention_mask"])
            logits = heads.forward_layer(enc.num_layers, hidden, batch["attention_mask"], {})["logits"]
        assert feat.shape == (3, 32)
        assert logits.shape == (3, 3)
        if kind == "albert":  # AlbertModel pools with tanh(Linear(first token))
            ref = torch.tanh(enc.encoder.pooler(hidden[:, 0]))
            torch.testing.assert_close(feat, ref)


@pytest.mark.parametrize("kind", ["bert", "roberta", "albert", "distilbert", "electra"])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_heads_without_module_calls_equal_the_modules(kind, pooling):
    """The heads run dense + tanh poolers and classifiers as `tanh(linear(x))` (fewer calls per
    layer); bitwise the same features and logits as calling the modules."""
    config = _configs()[kind]
    torch.manual_seed(1)
    enc = LayerwiseEncoder(AutoModel.from_config(config)).eval()
    batch = _batch(config)
    heads = ClassifierHeads(enc, num_labels=3, pooling=pooling, poolers="per_layer").eval()
    with torch.no_grad():
        hidden = _layerwise(enc, batch)
        mask = batch["attention_mask"]
        module = heads.pooler(2)
        ref = module(hidden) if heads.pooler_on_tokens else module(pool(hidden, mask, pooling))
        feat = heads.pooled(2, hidden, mask)
        assert torch.equal(feat, ref)
        assert torch.equal(heads.forward_layer(2, hidden, mask, {})["logits"], heads.classifiers[1](ref))
