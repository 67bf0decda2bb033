"""FLOPs per exit depth: FlopCounterMode equals the analytic count, and fvcore agrees (MACs × 2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from de3bert.backbone import LayerwiseEncoder
from de3bert.flops import count_components, depth_flops
from de3bert.recipes import get_recipe
from de3bert.speedup import flops_speedup

H, I, L, C = 32, 64, 3, 2


def layer_flops(n: int) -> int:
    """One BERT layer, FLOPs = 2·MACs: Q, K, V, O projections 8nH², scores and mixing 4n²H, FFN 4nHI."""
    return 8 * n * H * H + 4 * n * n * H + 4 * n * H * I


HEAD = 2 * H * H + 2 * H * C  # one off-ramp: dense H→H (+ tanh) and Linear(H, C)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=1000, hidden_size=H, num_hidden_layers=L, num_attention_heads=4,
                     intermediate_size=I, attn_implementation="eager")
    enc = LayerwiseEncoder(BertModel(cfg))
    return get_recipe("weighted").build(enc, {"num_labels": C, "pooling": "mean"}).eval()


@pytest.mark.parametrize("n", [7, 20, 64])
def test_counter_equals_analytic_count(model, n):
    emb, layers, heads = count_components(model, n)
    assert emb == 0  # embedding lookups and LayerNorm are not matrix products
    assert layers == [layer_flops(n)] * L
    assert heads == [HEAD] * L  # mean pooling + the pooler-like dense H→H + one Linear(H, C)


def test_quadratic_fit_is_exact_at_unseen_lengths(model):
    f = depth_flops(model)
    lengths = np.array([5, 33, 100])
    emb, lay, hd = f.per_sample(lengths)
    np.testing.assert_allclose(lay, np.array([[layer_flops(n) for n in lengths]] * L), rtol=1e-9)
    np.testing.assert_allclose(hd, HEAD, rtol=1e-9)
    cum = f.cumulative(lengths)
    np.testing.assert_allclose(cum[0], lay[0] + hd[0], rtol=1e-9)
    # everyone exiting at layer 1 of 3: the plain model pays L layers + one head
    sp, _ = flops_speedup(np.ones(3, dtype=int), lengths, f, f)
    expected = sum(L * layer_flops(n) + HEAD for n in lengths) / sum(layer_flops(n) + HEAD
                                                                      for n in lengths)
    assert sp == pytest.approx(expected, rel=1e-9)


def test_sdpa_model_is_refused(model):
    cfg = BertConfig(vocab_size=1000, hidden_size=H, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=I, attn_implementation="sdpa")
    meta = {"num_labels": C, "pooling": "mean"}
    sdpa = get_recipe("weighted").build(LayerwiseEncoder(BertModel(cfg)), meta)
    with pytest.raises(ValueError, match="eager"):
        count_components(sdpa, 8)


def test_fvcore_agrees_within_one_percent(model):
    fvcore = pytest.importorskip("fvcore.nn")

    class OneLayer(torch.nn.Module):
        def __init__(self, enc):
            super().__init__()
            self.enc = enc

        def forward(self, hidden):
            return self.enc.layer(0, hidden, None)

    n = 24
    hidden = torch.randn(1, n, H)
    analysis = fvcore.FlopCountAnalysis(OneLayer(model.encoder).eval(), (hidden,))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    # fvcore also prices LayerNorm (5 per element); FlopCounterMode, like the protocol, counts
    # matrix products only, so compare the same set of operators
    by_op = analysis.by_operator()
    assert set(by_op) <= {"linear", "matmul", "layer_norm"}
    fv = 2 * (by_op["linear"] + by_op["matmul"])  # fvcore counts multiply-accumulates
    assert fv == pytest.approx(layer_flops(n), rel=0.01)


def test_de3_heads_count_projection_classifier_and_distances():
    """DE³'s exit head at one layer: pooler-like dense 2HH + classifier 2HC + projection 2Hd +
    distances 3Cd (cdist has a registered formula), whatever the sequence length (mean pooling is
    not a matrix product); layer L has no prototypical network (default)."""
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=1000, hidden_size=H, num_hidden_layers=L, num_attention_heads=4,
                     intermediate_size=I, attn_implementation="eager")
    meta = {"num_labels": C, "pooling": "mean"}
    de3 = get_recipe("de3").build(LayerwiseEncoder(BertModel(cfg)), meta).eval()
    for n in (5, 40):
        _, _, heads = count_components(de3, n)
        assert heads == [HEAD + 2 * H * H + 3 * C * H] * (L - 1) + [HEAD]


class _Logits(torch.nn.Module):
    """The full multi-exit forward with a tuple of tensors as output (fvcore traces with jit)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids, attn):
        return tuple(s["logits"] for s in self.model(ids, attn))


def _fvcore_flops(model, ids, attn) -> int:
    """fvcore's matrix-product MACs × 2 for the whole forward (LayerNorm is left out, as above)."""
    fvcore = pytest.importorskip("fvcore.nn")
    analysis = fvcore.FlopCountAnalysis(_Logits(model).eval(), (ids, attn))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    by_op = analysis.by_operator()
    assert set(by_op) <= {"linear", "matmul", "layer_norm"}, by_op
    return 2 * (by_op["linear"] + by_op["matmul"])


def test_fvcore_full_forward_with_padding_mask(model):
    """A padded batch of two (the second row masked after 12 of 20 tokens): fvcore, FlopCounterMode
    and the analytic count agree on the padded width; the short row alone costs its own length,
    which is what the quadratic fit charges it."""
    from torch.utils.flop_counter import FlopCounterMode

    n, m = 20, 12
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 1000, (2, n), generator=g)
    attn = torch.ones(2, n, dtype=torch.long)
    attn[1, m:] = 0
    padded = 2 * L * (layer_flops(n) + 2 * H * H + 2 * H * C)  # + the shared pooler's dense H→H
    assert _fvcore_flops(model, ids, attn) == padded
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        _Logits(model)(ids, attn)
    assert counter.get_total_flops() == padded
    alone = _fvcore_flops(model, ids[1:, :m], attn[1:, :m])
    assert alone == L * (layer_flops(m) + 2 * H * H + 2 * H * C)
    fitted = depth_flops(model).cumulative(np.array([m]))[-1, 0]
    assert fitted == pytest.approx(alone, rel=1e-9)
