"""The training-throughput changes keep training correct: length-grouped batches, a shared first
stage (two-stage's stage 1 is the `single` run, trained once), loss read-back every LOG_EVERY steps."""

from __future__ import annotations

import json

import pytest
import torch

from de3bert import recipes
from de3bert import train as train_mod
from de3bert.data import length_grouped_batches
from de3bert.registry import RECIPES
from de3bert.train import TrainConfig, config_hash, first_stage_config, train


@pytest.fixture(scope="module")
def backbone_dir(tiny_bert_dir) -> str:
    """A tiny random BERT next to the embedded tokenizer's files."""
    return tiny_bert_dir("tiny-bert-speed", num_hidden_layers=3)


def _cfg(backbone: str, out, **kw) -> TrainConfig:
    base = dict(task="synthetic", recipe="two-stage", backbone=backbone, pooling="mean", batch_size=16,
                epochs=1, train_limit=64, checkpoint_every=1000, max_seq_length=32, lr=1e-3, seed=3,
                out_dir=str(out), progress=False)
    return TrainConfig(**{**base, **kw})


def _padding(batches, lengths) -> int:
    return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)


def test_length_grouped_batches_cover_once_pad_less_and_are_seeded():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 120, (1000,), generator=gen).tolist()
    a = length_grouped_batches(lengths, 32, seed=1, megabatch=50)
    assert sorted(i for b in a for i in b) == list(range(1000))  # every example once per epoch
    assert a == length_grouped_batches(lengths, 32, seed=1, megabatch=50)  # seeded
    assert a != length_grouped_batches(lengths, 32, seed=2, megabatch=50)
    perm = torch.randperm(1000, generator=gen).tolist()
    random_batches = [perm[i:i + 32] for i in range(0, 1000, 32)]
    assert _padding(a, lengths) < 0.1 * _padding(random_batches, lengths)
    # batch order is shuffled: not sorted by length across the epoch
    firsts = [lengths[b[0]] for b in a]
    assert firsts != sorted(firsts, reverse=True)


def test_two_stage_reuses_the_single_run_as_its_first_stage(backbone_dir, tmp_path, monkeypatch):
    single_dir = tmp_path / "single"
    single = train(_cfg(backbone_dir, single_dir, recipe="single"))
    cfg = _cfg(backbone_dir, tmp_path / "two", first_stage_dir=str(single_dir))
    shared = first_stage_config(cfg)
    assert shared.recipe == "single" and config_hash(shared) == config_hash(
        _cfg(backbone_dir, single_dir, recipe="single"))
    losses = []
    original = recipes.task_loss
    monkeypatch.setattr(recipes, "task_loss", lambda *a: losses.append(1) or original(*a))
    two = train(cfg)
    steps = 64 // 16
    assert len(losses) == steps * 2  # stage 2 only (two off-ramps per step); stage 1 was not redone
    for k, v in single.encoder.state_dict().items():  # stage 2 freezes the encoder: it is single's
        assert torch.equal(v, two.encoder.state_dict()[k]), k
    assert torch.equal(two.heads.classifiers[-1].weight, single.heads.classifiers[-1].weight)
    meta = json.loads((tmp_path / "two" / "final" / "multiexit.json").read_text())
    assert meta["first_stage"]["config_hash"] == config_hash(shared)


def test_two_stage_without_a_shared_dir_trains_its_own_first_stage(backbone_dir, tmp_path):
    cfg = _cfg(backbone_dir, tmp_path / "two")
    train(cfg)
    assert (tmp_path / "two" / "first_stage" / "final" / "multiexit.json").is_file()
    assert (tmp_path / "two" / "final" / "multiexit.json").is_file()


def test_non_finite_loss_stops_before_any_checkpoint_holds_it(backbone_dir, tmp_path, monkeypatch):
    calls = [0]
    original = recipes.weighted_ce

    def poisoned(*a, **k):
        calls[0] += 1
        loss = original(*a, **k)
        return loss * float("nan") if calls[0] == 2 else loss

    monkeypatch.setattr(recipes, "weighted_ce", poisoned)
    cfg = _cfg(backbone_dir, tmp_path / "nan", recipe="weighted", checkpoint_every=3, epochs=2)
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        train(cfg)
    assert calls[0] == 3  # read back before the step-3 checkpoint, not LOG_EVERY steps later
    assert not (tmp_path / "nan" / "checkpoint").exists()
    assert not (tmp_path / "nan" / "final").exists()
    assert train_mod.LOG_EVERY > 3


@pytest.mark.parametrize("recipe", sorted(RECIPES.names()))
def test_every_recipe_trains_under_bf16_autocast(backbone_dir, tmp_path, recipe):
    """`precision: bf16` (autocast) works for every recipe: fp32 weights that moved, finite."""
    cfg = _cfg(backbone_dir, tmp_path / recipe, recipe=recipe, precision="bf16", epochs=0.5)
    model = train(cfg)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert json.loads((tmp_path / recipe / "train_config.json").read_text())["precision"] == "bf16"


def test_unknown_precision_fails_before_work(backbone_dir, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown precision 'half'; valid: auto, fp32, bf16, fp16, fp64"):
        train(_cfg(backbone_dir, tmp_path / "p", precision="half"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="precision fp16 needs a CUDA GPU"):
        train(_cfg(backbone_dir, tmp_path / "p", precision="fp16"))
    assert not (tmp_path / "p").exists()
