"""Data-parallel epochs: two gloo CPU processes see each sample once per epoch, take
ceil(n / (N·B)) optimizer steps per epoch, and end with the weights of one process at batch N·B;
gradient accumulation and clipping do what their TrainConfig fields say."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

import de3bert.data as data_mod
from de3bert.train import TrainConfig, train

N_TRAIN, BATCH, EPOCHS, WORLD = 48, 4, 2, 2  # global batch 8: 6 optimizer steps per epoch
UNEVEN = 44


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory, tokenizer) -> str:
    """A tiny random BERT without dropout (dropout masks differ between process layouts)."""
    d = tmp_path_factory.mktemp("tiny-bert-nodrop")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=64, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return str(d)


def _cfg(backbone: str, out: Path | str, **kw) -> TrainConfig:
    base = dict(task="synthetic", recipe="weighted", backbone=backbone, pooling="mean", batch_size=BATCH,
                epochs=EPOCHS, train_limit=N_TRAIN, checkpoint_every=1000, max_seq_length=32, lr=1e-3,
                seed=5, warmup_ratio=0.0, out_dir=str(out), progress=False, precision="fp32",
                group_by_length=0)  # plain shuffling: 2 × B consecutive = one batch of 2B
    # fp32 pinned: `auto` is bf16 on CPUs with native bf16, whose rounding exceeds the 1e-5 bound
    return TrainConfig(**{**base, **kw})


class Spy:
    """Records every collated batch's sample indices and every optimizer step (no dropout)."""

    def __init__(self, mp: pytest.MonkeyPatch):
        self.batches: list[list[int]] = []
        self.steps: list[int] = []  # number of batches collated when each optimizer step ran
        self.grad_norms: list[float] = []
        collate, step = data_mod.collate, torch.optim.AdamW.step

        def spy_collate(items, pad_token_id=0):
            out = collate(items, pad_token_id)
            self.batches.append(out["index"].tolist())
            return out

        def spy_step(opt, *a, **k):
            grads = [p.grad.detach().flatten() for g in opt.param_groups for p in g["params"]
                     if p.grad is not None]
            self.grad_norms.append(float(torch.cat(grads).norm()))
            self.steps.append(len(self.batches))
            return step(opt, *a, **k)

        mp.setattr(data_mod, "collate", spy_collate)
        mp.setattr(torch.optim.AdamW, "step", spy_step)
        mp.setattr(torch.nn.Dropout, "forward", lambda self, x: x)


def _worker(rank: int, world: int, tmp: str, backbone: str) -> None:
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        with pytest.MonkeyPatch.context() as mp:
            spy = Spy(mp)
            model = train(_cfg(backbone, Path(tmp) / "run"))
        with pytest.MonkeyPatch.context() as mp:  # n = 44 is not a multiple of the global batch 8
            uneven = Spy(mp)
            train(_cfg(backbone, Path(tmp) / "uneven", train_limit=UNEVEN, epochs=1))
        torch.save({"batches": spy.batches, "steps": spy.steps, "uneven": uneven.batches,
                    "uneven_steps": uneven.steps,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}},
                   Path(tmp) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, backbone_dir) -> list[dict]:
    import torch.multiprocessing as mp

    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(WORLD, str(tmp), backbone_dir), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_two_processes_see_each_sample_once_per_epoch(two_process_run):
    steps_per_epoch = math.ceil(N_TRAIN / (WORLD * BATCH))
    for res in two_process_run:
        assert len(res["steps"]) == EPOCHS * steps_per_epoch, "optimizer steps"
        assert len(res["batches"]) == EPOCHS * steps_per_epoch  # one micro-batch per step and process
        assert all(len(b) == BATCH for b in res["batches"])
    seen = sum(len(b) for res in two_process_run for b in res["batches"])
    assert seen == EPOCHS * N_TRAIN, "samples seen over all processes"
    for e in range(EPOCHS):
        part = slice(e * steps_per_epoch, (e + 1) * steps_per_epoch)
        epoch = sorted(i for res in two_process_run for b in res["batches"][part] for i in b)
        assert epoch == list(range(N_TRAIN)), f"epoch {e} does not cover the set exactly once"


def test_uneven_last_global_batch_is_topped_up(two_process_run):
    """44 samples, global batch 8: ceil(44/8) = 6 steps; Accelerate's even_batches fills the last
    global batch with 4 samples from the epoch's start, so 48 are seen and every sample at least once."""
    steps = math.ceil(UNEVEN / (WORLD * BATCH))
    assert all(len(res["uneven_steps"]) == steps for res in two_process_run)
    seen = [i for res in two_process_run for b in res["uneven"] for i in b]
    assert len(seen) == steps * WORLD * BATCH == 48
    assert set(seen) == set(range(UNEVEN)) and len(seen) - len(set(seen)) == 48 - UNEVEN


def test_two_processes_equal_one_process_at_twice_the_batch(two_process_run, backbone_dir, tmp_path,
                                                            monkeypatch):
    rank0, rank1 = (r["state"] for r in two_process_run)
    assert _max_diff(rank0, rank1) == 0.0  # replicas stay identical
    spy = Spy(monkeypatch)
    single = train(_cfg(backbone_dir, tmp_path / "one", batch_size=WORLD * BATCH))
    assert len(spy.steps) == EPOCHS * math.ceil(N_TRAIN / (WORLD * BATCH))
    state = {k: v.detach() for k, v in single.state_dict().items()}
    diff = _max_diff(rank0, state)
    print(f"\n2 processes x batch {BATCH} vs 1 process x batch {WORLD * BATCH}: max |dw| = {diff:.3g}")
    assert diff < 1e-5
    moved = _max_diff(state, {k: v.detach() for k, v in
                              train(_cfg(backbone_dir, tmp_path / "e0", epochs=0.01)).state_dict().items()})
    assert moved > 1e-3  # the comparison is not between two untrained models


def test_gradient_accumulation_equals_the_larger_batch(backbone_dir, tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    accum = train(_cfg(backbone_dir, tmp_path / "acc", grad_accum_steps=2, epochs=1))
    assert len(spy.batches) == N_TRAIN // BATCH and spy.steps == list(range(2, N_TRAIN // BATCH + 1, 2))
    big = train(_cfg(backbone_dir, tmp_path / "big", batch_size=2 * BATCH, epochs=1))
    diff = _max_diff({k: v.detach() for k, v in accum.state_dict().items()},
                     {k: v.detach() for k, v in big.state_dict().items()})
    assert diff < 1e-5, diff


def test_gradient_accumulation_partial_last_group(backbone_dir, tmp_path, monkeypatch):
    """12 batches per epoch with 5 per step: steps after batches 5, 10 and 12 (the remainder)."""
    spy = Spy(monkeypatch)
    train(_cfg(backbone_dir, tmp_path / "acc5", grad_accum_steps=5, epochs=1))
    assert spy.steps == [5, 10, 12]


def test_gradient_clipping_bounds_the_norm(backbone_dir, tmp_path, monkeypatch):
    with monkeypatch.context() as mp:
        free = Spy(mp)
        train(_cfg(backbone_dir, tmp_path / "free", epochs=0.5, max_grad_norm=0.0))
    assert max(free.grad_norms) > 0.05  # unclipped gradients exceed the bound below
    clipped = Spy(monkeypatch)
    train(_cfg(backbone_dir, tmp_path / "clip", epochs=0.5, max_grad_norm=0.05))
    assert len(clipped.grad_norms) == len(free.grad_norms)
    assert max(clipped.grad_norms) <= 0.05 * (1 + 1e-4)
    assert clipped.grad_norms[0] == pytest.approx(0.05, rel=1e-4)


def test_config_documents_effective_batch_and_lr_convention():
    from de3bert.cli import field_docs

    docs = field_docs(TrainConfig)
    assert "effective" in docs["batch_size"] and "grad_accum_steps" in docs["batch_size"]
    assert "not scaled" in docs["lr"]
    assert "0 = off" in docs["max_grad_norm"]


def test_resume_with_accumulation_matches_uninterrupted(backbone_dir, tmp_path, monkeypatch):
    """Checkpoints fall on optimizer-step boundaries: a crash inside an accumulation group resumes
    after the last full step and ends with the uninterrupted run's weights."""
    import json

    import de3bert.recipes as recipes

    ref = train(_cfg(backbone_dir, tmp_path / "ref", grad_accum_steps=2, epochs=1, checkpoint_every=2))
    original, calls = recipes.weighted_ce, [0]

    def crash_at_7(*a, **k):
        calls[0] += 1
        if calls[0] == 7:  # micro-batch 7 = the first half of step 4; last checkpoint after step 2
            raise RuntimeError("killed")
        return original(*a, **k)

    cfg = _cfg(backbone_dir, tmp_path / "run", grad_accum_steps=2, epochs=1, checkpoint_every=2)
    with monkeypatch.context() as mp:
        mp.setattr(recipes, "weighted_ce", crash_at_7)
        with pytest.raises(RuntimeError, match="killed"):
            train(cfg)
    progress = json.loads((tmp_path / "run" / "checkpoint" / "progress.json").read_text())
    assert (progress["global_step"], progress["step_in_epoch"]) == (2, 4)
    resumed = train(cfg)
    assert _max_diff({k: v.detach() for k, v in ref.state_dict().items()},
                     {k: v.detach() for k, v in resumed.state_dict().items()}) < 1e-6
