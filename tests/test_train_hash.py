"""Trained models are keyed by a hash of everything that determines them: a changed setting in an
existing out_dir retrains (or stops naming the fields), an unchanged one is reused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import de3bert.recipes as recipes
import de3bert.train as train_mod
from de3bert.train import TrainConfig, train


def config_hash(cfg: TrainConfig) -> str:
    return train_mod.config_hash(cfg)


def config_fingerprint(cfg: TrainConfig) -> dict:
    return train_mod.config_fingerprint(cfg)


@pytest.fixture(scope="module")
def backbone_dir(tiny_bert_dir) -> str:
    """A tiny random BERT next to the embedded tokenizer's files."""
    return tiny_bert_dir("tiny-bert-hash", num_hidden_layers=2)


def _cfg(backbone: str, out: Path, **kw) -> TrainConfig:
    base = dict(task="synthetic", recipe="weighted", backbone=backbone, pooling="mean", batch_size=16,
                epochs=1, train_limit=32, checkpoint_every=1, max_seq_length=32, lr=1e-3, seed=1,
                out_dir=str(out), progress=False)
    return TrainConfig(**{**base, **kw})


def _steps(monkeypatch) -> list[int]:
    calls = [0]
    original = recipes.weighted_ce

    def counting(*a, **k):
        calls[0] += 1
        return original(*a, **k)

    monkeypatch.setattr(recipes, "weighted_ce", counting)
    return calls


def test_changed_settings_retrain(backbone_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(_cfg(backbone_dir, out, lr=1e-3, seed=1, epochs=0.25))
    calls = _steps(monkeypatch)
    new = _cfg(backbone_dir, out, lr=5e-2, seed=99, epochs=3)
    model = train(new)
    assert calls[0] == 3 * 2  # three epochs of 32 / 16: retrained, not the old 0.25-epoch model
    tc = model.meta["train_config"]
    assert (tc["lr"], tc["seed"], tc["epochs"]) == (5e-2, 99, 3)
    saved = json.loads((out / "final" / "config_hash.json").read_text())
    assert saved["hash"] == config_hash(new) and saved["fingerprint"]["lr"] == 5e-2
    again = train(new)  # same config: reused, no step
    assert calls[0] == 6 and again.meta["train_config"]["seed"] == 99


def test_on_config_change_error_names_the_fields(backbone_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(_cfg(backbone_dir, out, epochs=0.5))
    calls = _steps(monkeypatch)
    with pytest.raises(ValueError, match="another config") as err:
        train(_cfg(backbone_dir, out, lr=5e-2, seed=99, epochs=3, on_config_change="error"))
    msg = str(err.value)
    assert "lr: 0.001 → 0.05" in msg and "seed: 1 → 99" in msg and "epochs: 0.5 → 3.0" in msg
    assert "batch_size" not in msg and calls[0] == 0
    with pytest.raises(ValueError, match="on_config_change"):
        train(_cfg(backbone_dir, out, on_config_change="sometimes"))


def test_stale_checkpoint_of_another_config_is_not_resumed(backbone_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        def crash(*a, **k):
            raise RuntimeError("killed")

        original = train_mod._after_step
        seen = [0]

        def after(*a, **k):
            seen[0] += 1
            if seen[0] == 2:
                crash()
            return original(*a, **k)

        mp.setattr(train_mod, "_after_step", after)
        with pytest.raises(RuntimeError, match="killed"):
            train(_cfg(backbone_dir, out, epochs=2))  # checkpoint after step 1 of config A
    assert json.loads((out / "checkpoint" / "progress.json").read_text())["global_step"] == 1
    calls = _steps(monkeypatch)
    train(_cfg(backbone_dir, out, epochs=2, lr=2e-3))  # config B: from scratch, all 4 steps
    assert calls[0] == 4


def test_fingerprint_covers_model_inputs_only(backbone_dir, tmp_path):
    base = _cfg(backbone_dir, tmp_path / "a")
    h = config_hash(base)
    same = [dict(out_dir=str(tmp_path / "b"), progress=True, checkpoint_every=7, on_config_change="error"),
            dict(epochs=1.0), dict(head_options='{ }'), dict(pooling="mean")]
    for kw in same:
        assert config_hash(_cfg(backbone_dir, tmp_path / "a", **kw)) == h, kw
    for kw in [dict(lr=2e-3), dict(seed=2), dict(batch_size=8), dict(max_grad_norm=1.0),
               dict(grad_accum_steps=2), dict(head_options='{"beta": 0.5}'), dict(recipe="single"),
               dict(train_limit=16), dict(max_seq_length=64), dict(pooling="cls")]:
        assert config_hash(_cfg(backbone_dir, tmp_path / "a", **kw)) != h, kw
    fp = config_fingerprint(base)
    assert set(fp) >= {"backbone", "backbone_sha256", "recipe", "head_options", "data_source", "data_sha256"}
    assert not {"out_dir", "progress", "checkpoint_every", "on_config_change"} & set(fp)


def test_fingerprint_changes_with_backbone_weights_and_data_files(backbone_dir, tmp_path, glue_dir):
    copy = tmp_path / "bb"
    shutil.copytree(backbone_dir, copy)
    cfg = _cfg(str(copy), tmp_path / "o")
    before = config_fingerprint(cfg)["backbone_sha256"]
    with open(copy / "config.json", "a") as fh:
        fh.write("\n")
    assert config_fingerprint(cfg)["backbone_sha256"] != before
    data = tmp_path / "glue"
    (data / "RTE").mkdir(parents=True)
    shutil.copy(glue_dir / "RTE" / "train.tsv", data / "RTE" / "train.tsv")
    rte = _cfg(backbone_dir, tmp_path / "o", task="rte", data_dir=str(data))
    fp = config_fingerprint(rte)
    assert fp["data_source"] == str((data / "RTE" / "train.tsv").resolve())
    lines = (data / "RTE" / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    (data / "RTE" / "train.tsv").write_text("".join(lines[:-1]), encoding="utf-8")  # one row fewer
    assert config_fingerprint(rte)["data_sha256"] != fp["data_sha256"]
    # MNLI's mismatched dev split trains the MNLI model: same key
    mnli = tmp_path / "mnli"
    (mnli / "MNLI").mkdir(parents=True)
    (mnli / "MNLI" / "train.tsv").write_text("sentence1\tsentence2\tgold_label\na\tb\tneutral\n")
    assert (config_hash(_cfg(backbone_dir, tmp_path / "o", task="mnli", data_dir=str(mnli)))
            == config_hash(_cfg(backbone_dir, tmp_path / "o", task="mnli-mm", data_dir=str(mnli))))
