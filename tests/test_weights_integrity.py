"""Checksummed models (issue 27): damage is detected on every load, named, and never served.

Each test damages a real saved model the way the issue did (4,000 bytes flipped inside the
weights; bytes 10–30 of the header) and checks the loader refuses it with the file and both
hashes named, and that training moves a damaged final model aside and trains again.
"""

from __future__ import annotations

import json

import pytest
import torch

from de3bert.model import MultiExitModel, build_model
from de3bert.train import TrainConfig, train
from de3bert.weights import CorruptModel, parameter_count, sidecar


def _flip(path, start: int, count: int) -> None:
    data = bytearray(path.read_bytes())
    for i in range(start, start + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny-random", "weighted", 2, "mean")
    model.save(tmp_path / "m")
    return model, tmp_path / "m"


def test_a_saved_model_has_a_checksum_and_loads_back(saved):
    model, folder = saved
    weights = folder / "model.safetensors"
    side = json.loads(sidecar(weights).read_text())
    assert side["bytes"] == weights.stat().st_size and len(side["sha256"]) == 64
    back = MultiExitModel.load(folder)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values(),
                                                  strict=True))
    assert parameter_count(weights) == sum(p.numel() for p in model.parameters())
    assert parameter_count(weights, "heads.") == sum(p.numel() for p in model.heads.parameters())


@pytest.mark.parametrize("start, count", [(None, 4000), (10, 21)])
def test_damaged_weights_are_refused_with_file_and_hashes_named(saved, start, count):
    _, folder = saved
    weights = folder / "model.safetensors"
    expected = json.loads(sidecar(weights).read_text())["sha256"]
    _flip(weights, weights.stat().st_size // 2 if start is None else start, count)
    with pytest.raises(CorruptModel) as err:
        MultiExitModel.load(folder)
    text = str(err.value)
    assert str(weights) in text and expected in text and "got " in text


def test_a_hub_folder_carries_the_hash_in_its_config(saved, tmp_path):
    from de3bert.hub import from_pretrained

    model, _ = saved
    folder = model.save_pretrained(tmp_path / "hub", task="sst2")
    section = json.loads((folder / "config.json").read_text())["early_exit"]
    sidecar(folder / "model.safetensors").unlink()  # the config's hash alone verifies it
    from_pretrained(folder)
    _flip(folder / "model.safetensors", 5000, 4000)
    with pytest.raises(CorruptModel, match=section["weights_sha256"]):
        from_pretrained(folder)


def test_training_moves_a_damaged_final_model_aside_and_trains_again(tmp_path, capsys):
    cfg = TrainConfig(task="synthetic", recipe="weighted", backbone="tiny-random", epochs=0.2,
                      train_limit=64, precision="fp32", progress=False, out_dir=str(tmp_path / "run"))
    first = train(cfg)
    weights = tmp_path / "run" / "final" / "model.safetensors"
    _flip(weights, weights.stat().st_size // 2, 4000)
    again = train(cfg)
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and "moved to final.corrupt-" in err
    kept = list((tmp_path / "run").glob("final.corrupt-*"))
    assert len(kept) == 1 and (kept[0] / "model.safetensors").is_file()  # never deleted
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values(),
                                                  strict=True))  # the same seed: the same model


@pytest.mark.parametrize("damage", ["truncated", "empty", "no sidecar", "sidecar garbage"])
def test_truncated_empty_or_unverifiable_weights_are_refused(saved, damage):
    """The issue's goals: truncation, a zero-length file and a missing sidecar are never loaded."""
    _, folder = saved
    weights = folder / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    elif damage == "empty":
        weights.write_bytes(b"")
    elif damage == "no sidecar":
        sidecar(weights).unlink()
    else:
        sidecar(weights).write_text("{not json")
    with pytest.raises(CorruptModel, match=str(weights)):
        MultiExitModel.load(folder)


def test_a_full_disk_names_the_file_and_leaves_the_old_version_intact(saved, monkeypatch):
    """ENOSPC while saving: the error names the weights file, the temp file is gone and the
    previous weights and sidecar still verify."""
    import errno

    import de3bert.weights as weights_mod
    from de3bert.weights import verify_weights

    model, folder = saved
    weights = folder / "model.safetensors"
    before = verify_weights(weights)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(weights_mod, "save_model", full)
    with pytest.raises(OSError) as err:
        model.save(folder)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(weights)
    assert not list(folder.glob("*.tmp")) and verify_weights(weights) == before


@pytest.mark.parametrize("old", [False, True], ids=["new file", "over an old version"])
def test_a_full_disk_at_the_checksum_leaves_no_unverifiable_weights(saved, tmp_path, monkeypatch, old):
    """ENOSPC while writing the sidecar (the weights already written): no weights file without
    its checksum is left behind (the run would move it aside as corrupt, using more of the full
    disk); an old version and its sidecar still verify."""
    import errno

    import de3bert.weights as weights_mod
    from de3bert.weights import save_weights, verify_weights

    model, folder = saved
    target = folder / "model.safetensors" if old else tmp_path / "new" / "model.safetensors"
    target.parent.mkdir(exist_ok=True)
    before = verify_weights(target) if old else None
    torch.nn.init.normal_(model.heads.classifiers[0].weight)  # a different model: a different hash

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(weights_mod, "atomic_write_text", full)
    with pytest.raises(OSError):
        save_weights(model, target)
    assert not list(target.parent.glob("*.tmp"))
    if old:
        assert verify_weights(target) == before
    else:
        assert not target.exists()


def test_a_full_disk_at_a_records_sidecar_leaves_the_old_record_valid(tmp_path, monkeypatch):
    """ENOSPC while writing a record's sidecar: the previous record still loads (before the fix,
    the new tensors replaced it and the old sidecar no longer matched)."""
    import errno

    import de3bert.record as record_mod
    from de3bert.record import load_record, save_record

    path = tmp_path / "r.safetensors"
    save_record({"logits": torch.zeros(2, 3)}, path)

    def full(p, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(p))

    monkeypatch.setattr(record_mod, "atomic_write_text", full)
    with pytest.raises(OSError):
        save_record({"logits": torch.ones(2, 3)}, path)
    assert torch.equal(load_record(path)["logits"], torch.zeros(2, 3))
    assert not list(tmp_path.glob("*.tmp"))


def test_a_checkpoint_on_a_full_disk_is_one_disk_full_error_and_leaves_no_temp(tmp_path, monkeypatch):
    """On a real full tmpfs, torch.save fails with `RuntimeError: [enforce fail at
    inline_container.cc] unexpected pos` (no errno): the run must still say "disk full" naming the
    checkpoint, and free the half-written temp folder."""
    import collections
    import errno
    import shutil

    import de3bert.train as train_mod

    def torn(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 24000 vs 23892")

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(train_mod.torch, "save", torn)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(50_000_000, 50_000_000, 0))
    accelerator = type("A", (), {"is_main_process": True, "unwrap_model": staticmethod(lambda m: m)})()
    model = build_model("tiny-random", "single", 2, "mean")
    with pytest.raises(OSError) as err:
        train_mod._save_checkpoint(tmp_path, model, None, None, {"step": 1}, accelerator)
    assert err.value.errno == errno.ENOSPC and "checkpoint" in err.value.filename
    assert not (tmp_path / "checkpoint.tmp").exists()
