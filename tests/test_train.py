"""Training: the final model is saved once, an interrupted run resumes to the same weights, and the
two-stage recipe's second stage leaves the backbone and the final classifier alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

import de3bert.recipes as recipes
import de3bert.train as train_mod
from de3bert.backbone import LayerwiseEncoder
from de3bert.model import MultiExitModel, build_model
from de3bert.registry import all_methods
from de3bert.train import TrainConfig, seed_everything, train

STEPS_PER_EPOCH = 4  # train_limit 64 / batch 16


class Crash(RuntimeError):
    """The injected failure."""


@pytest.fixture(scope="module")
def backbone_dir(tiny_bert_dir) -> str:
    """A tiny random BERT next to the embedded tokenizer's files."""
    return tiny_bert_dir("tiny-bert", num_hidden_layers=4)


def _cfg(backbone: str, out: Path, **kw) -> TrainConfig:
    base = dict(task="synthetic", recipe="weighted", backbone=backbone, pooling="mean", batch_size=16,
                epochs=1, train_limit=64, checkpoint_every=2, max_seq_length=32, lr=1e-3, seed=7,
                out_dir=str(out), progress=False)
    return TrainConfig(**{**base, **kw})


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_weights(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    bad = [k for k in a if not torch.allclose(a[k].float(), b[k].float(), atol=atol, rtol=0)]
    assert not bad, f"weights differ: {bad[:5]}"


def _count_calls(monkeypatch, module, name: str, fail_at: int | None = None) -> list[int]:
    """Wrap `module.name`: count calls, raise Crash at call number `fail_at` (1-based)."""
    original = getattr(module, name)
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if fail_at is not None and calls[0] == fail_at:
            raise Crash(f"injected failure at call {calls[0]}")
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def test_final_model_saved_and_not_retrained(backbone_dir, tmp_path, monkeypatch):
    cfg = _cfg(backbone_dir, tmp_path / "run")
    calls = _count_calls(monkeypatch, recipes, "weighted_ce")
    model = train(cfg)
    assert calls[0] == STEPS_PER_EPOCH
    out = tmp_path / "run"
    assert (out / "final" / "multiexit.json").is_file()
    assert (out / "final" / "model.safetensors").is_file()
    assert not (out / "checkpoint").exists()  # removed once the final model is written
    assert json.loads((out / "train_config.json").read_text())["recipe"] == "weighted"
    meta = json.loads((out / "final" / "multiexit.json").read_text())
    assert meta["recipe"] == "weighted" and meta["num_labels"] == 2 and meta["pooling"] == "mean"
    assert meta["train_config"]["seed"] == 7
    first = _state(model)

    # a second call loads the saved model: no data, no model building, no step
    def forbidden(*a, **k):
        raise AssertionError("a finished run was retrained")

    monkeypatch.setattr(train_mod, "load_examples", forbidden)
    monkeypatch.setattr(train_mod, "build_model", forbidden)
    again = train(cfg)
    assert calls[0] == STEPS_PER_EPOCH
    assert isinstance(again, MultiExitModel) and not again.training
    _assert_same_weights(first, _state(again), atol=0)


def test_training_changes_weights_and_is_seeded(backbone_dir, tmp_path):
    a = train(_cfg(backbone_dir, tmp_path / "a", epochs=0.5))
    b = train(_cfg(backbone_dir, tmp_path / "b", epochs=0.5))
    _assert_same_weights(_state(a), _state(b), atol=0)
    seed_everything(7)
    init = build_model(backbone_dir, "weighted", 2, "mean")
    moved = [k for k, v in _state(init).items() if not torch.equal(v, _state(a)[k])]
    assert any(k.startswith("encoder.") for k in moved) and any(k.startswith("heads.") for k in moved)


def test_resume_after_failure_matches_uninterrupted(backbone_dir, tmp_path, monkeypatch):
    total = 2 * STEPS_PER_EPOCH  # two epochs: the resumed run crosses an epoch boundary
    reference = _state(train(_cfg(backbone_dir, tmp_path / "ref", epochs=2, checkpoint_every=3)))

    cfg = _cfg(backbone_dir, tmp_path / "run", epochs=2, checkpoint_every=3)
    with monkeypatch.context() as mp:
        _count_calls(mp, recipes, "weighted_ce", fail_at=5)  # the 5th step fails; checkpoint at 3
        with pytest.raises(Crash):
            train(cfg)
    progress = json.loads((tmp_path / "run" / "checkpoint" / "progress.json").read_text())
    assert progress["global_step"] == 3 and progress["stage"] == 0 and progress["step_in_epoch"] == 3
    assert not (tmp_path / "run" / "final").exists()

    calls = _count_calls(monkeypatch, recipes, "weighted_ce")
    resumed = train(cfg)
    assert calls[0] == total - 3  # resumed from step 3, not from scratch
    _assert_same_weights(reference, _state(resumed))


def test_de3_training_tracks_and_saves_prototypes(backbone_dir, tmp_path, monkeypatch):
    from de3bert.prototypes import PrototypeHeads

    updates = []
    original = PrototypeHeads.ema_update

    def spy(self, z_per_layer, labels):
        updates.append(len(z_per_layer))
        return original(self, z_per_layer, labels)

    monkeypatch.setattr(PrototypeHeads, "ema_update", spy)
    model = train(_cfg(backbone_dir, tmp_path / "de3", recipe="de3", epochs=0.5,
                       head_options='{"recompute_prototypes": true}'))  # the option (default: EMA)
    assert updates == [3, 3]  # one EMA update per optimizer step, over layers 1..L−1 (default)
    assert model.heads.proto_set[:-1].all() and not model.heads.proto_set[-1].any()
    ema = model.heads.prototypes.clone()
    loaded = MultiExitModel.load(tmp_path / "de3" / "final")
    assert torch.equal(loaded.heads.prototypes, ema)
    assert loaded.meta["recompute_prototypes"] is True
    # recompute_prototypes: the saved prototypes are already the exact class means of the train set
    from de3bert.data import EncodedDataset, get_task, load_examples, make_loader

    ds = EncodedDataset(load_examples(get_task("synthetic"), "train", limit=64, seed=7),
                        train_mod.load_tokenizer(backbone_dir), 32, False)
    loaded.heads.recompute(loaded, make_loader(ds, 16, shuffle=False))
    torch.testing.assert_close(loaded.heads.prototypes, ema, atol=1e-5, rtol=1e-5)


def _two_stage_cfg(backbone_dir, out):
    # `cls` pooling: every off-ramp has its own copy of the pooler
    return _cfg(backbone_dir, out, recipe="two-stage", pooling="cls", checkpoint_every=3)


def test_two_stage_second_stage_freezes_backbone_and_final_classifier(backbone_dir, tmp_path,
                                                                        monkeypatch):
    snapshots = []
    original = train_mod._save_checkpoint

    def spy(out, model, optimizer, scheduler, progress, accelerator):
        if progress["stage"] == 1 and progress["global_step"] == 0:  # the end of stage 1
            snapshots.append(_state(accelerator.unwrap_model(model)))
        return original(out, model, optimizer, scheduler, progress, accelerator)

    monkeypatch.setattr(train_mod, "_save_checkpoint", spy)
    final = _state(train(_two_stage_cfg(backbone_dir, tmp_path / "run")))
    assert len(snapshots) == 1
    after1 = snapshots[0]
    seed_everything(7)
    init = _state(build_model(backbone_dir, "two-stage", 2, "cls"))
    last = 3  # 0-based index of layer L = 4

    def part(state, prefix):
        return {k: v for k, v in state.items() if k.startswith(prefix)}

    frozen2 = ["encoder.", f"heads.classifiers.{last}.", f"heads.poolers.{last}."]
    ramps = [f"heads.classifiers.{j}." for j in range(last)] + [f"heads.poolers.{j}." for j in range(last)]
    for prefix in frozen2:
        assert part(final, prefix), prefix
        _assert_same_weights(part(after1, prefix), part(final, prefix), atol=0)  # stage 2: unchanged
    for prefix in ramps:
        _assert_same_weights(part(init, prefix), part(after1, prefix), atol=0)  # stage 1: unchanged
    # stage 1 trained the backbone and the final classifier; stage 2 trained every off-ramp
    assert not torch.equal(init["encoder.encoder.encoder.layer.0.attention.self.query.weight"],
                           after1["encoder.encoder.encoder.layer.0.attention.self.query.weight"])
    final_w = f"heads.classifiers.{last}.weight"
    assert not torch.equal(init[final_w], after1[final_w])
    for j in range(last):
        ramp_w = f"heads.classifiers.{j}.weight"
        assert not torch.equal(after1[ramp_w], final[ramp_w])
        assert not torch.equal(after1[f"heads.poolers.{j}.dense.weight"],
                               final[f"heads.poolers.{j}.dense.weight"])


def test_two_stage_resume_between_stages(backbone_dir, tmp_path, monkeypatch):
    """A failure at the first step of stage 2 resumes stage 2 from scratch with a fresh optimizer
    and schedule, and ends with the weights of an uninterrupted run."""
    reference = _state(train(_two_stage_cfg(backbone_dir, tmp_path / "ref")))
    cfg = _two_stage_cfg(backbone_dir, tmp_path / "run")
    with monkeypatch.context() as mp:
        # stage 1 calls task_loss once per step; the next call is the first step of stage 2
        _count_calls(mp, recipes, "task_loss", fail_at=STEPS_PER_EPOCH + 1)
        with pytest.raises(Crash):
            train(cfg)
    progress = json.loads((tmp_path / "run" / "checkpoint" / "progress.json").read_text())
    assert progress["stage"] == 1 and progress["global_step"] == 0
    calls = _count_calls(monkeypatch, recipes, "task_loss")
    resumed = train(cfg)
    assert calls[0] == STEPS_PER_EPOCH * 3  # stage 2 only: three off-ramp losses per step
    _assert_same_weights(reference, _state(resumed))


@pytest.mark.parametrize("recipe", sorted({m.recipe for m in all_methods().values()}))
def test_every_recipe_runs_under_bf16_autocast(recipe):
    """`accelerate launch --mixed_precision bf16` runs the forward under autocast: every recipe's
    heads must cope with bf16 products next to float32 state (a lerp of mixed dtypes once failed)."""
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                     intermediate_size=64)
    r = recipes.get_recipe(recipe)
    model = r.build(LayerwiseEncoder(BertModel(cfg)), {"backbone": "t", "num_labels": 2, "pooling": "mean"})
    ids, attn = torch.randint(1, 100, (4, 9)), torch.ones(4, 9, dtype=torch.long)
    attn[1, 6:] = 0
    labels = torch.tensor([0, 1, 0, 1])
    for stage in r.stages():
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = stage.loss(model, model(ids, attn), labels, 0)
        assert torch.isfinite(loss)
        loss.backward()
    model.eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        signals = model(ids, attn)
    assert all(torch.isfinite(s["logits"].float()).all() for s in signals)


def test_regression_exits_start_at_the_training_label_mean(backbone_dir, tmp_path, glue_dir):
    """At a zero bias the weighted recipe collapsed to near-constant STS-B outputs (README)."""
    cfg = _cfg(backbone_dir, tmp_path / "m", task="stsb", data_dir=str(glue_dir))
    run = train_mod._setup(cfg, None, train_mod.config_fingerprint(cfg))
    mean = sum(run.ds.labels) / len(run.ds.labels)
    assert 1.0 < mean < 4.0  # STS-B scores are 0..5
    biases = torch.cat([lin.bias for lin in run.model.heads.output_layers()])
    assert biases.shape == (4,) and torch.allclose(biases, torch.full_like(biases, mean))
    zero = _cfg(backbone_dir, tmp_path / "z", task="stsb", data_dir=str(glue_dir), regression_bias="zero")
    run = train_mod._setup(zero, None, train_mod.config_fingerprint(zero))
    assert torch.cat([lin.bias for lin in run.model.heads.output_layers()]).abs().max() < 0.5


def test_regression_bias_is_hashed_for_regression_only(backbone_dir, tmp_path, glue_dir):
    def h(**kw):
        return train_mod.config_hash(_cfg(backbone_dir, tmp_path, data_dir=str(glue_dir), **kw))

    assert h(task="stsb") != h(task="stsb", regression_bias="zero")
    assert h(task="mrpc") == h(task="mrpc", regression_bias="zero")  # classification models keep their hash
    with pytest.raises(ValueError, match="regression_bias must be one of label_mean, zero, got 'mean'"):
        train(_cfg(backbone_dir, tmp_path / "bad", task="stsb", regression_bias="mean"))
