"""Early-exit models as artefacts: Hugging Face-style folders, `predict`, the exported program.

One smoke-sized run folder (DE³ on tiny-random, the smoke profile's training settings, synthetic
task) is built once with the runner's own pieces; every test reads it. The MiniLM checks use the
embedded backbone on real MRPC dev rows.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.artefacts import export_from_run
from benchmarks.cli import main
from benchmarks.profiles import Profile
from benchmarks.runner import FULL, Runner
from de3bert.data import EncodedDataset, get_task, load_examples, make_loader
from de3bert.engine import record_signals, replay_predictions
from de3bert.export import ExitProgram, export_program, load_program, run_program, save_program
from de3bert.hub import from_pretrained, load_policy, push_to_hub
from de3bert.model import MultiExitModel
from de3bert.policy import predictions
from de3bert.predict import load_predictor
from de3bert.registry import get_method
from de3bert.speedup import layer_speedup, layer_speedups, operating_point, refine_grid

TARGETS = (1.5, 2.0)
NO_ONNX = not all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))


def operating_knobs(policy, record, targets=TARGETS) -> dict[float, tuple[float, float]]:
    """The runner's rule: per target, the knob whose layer speed-up is the smallest ≥ target."""
    grid = refine_grid(policy, record, policy.grid(), list(targets))
    speedups = layer_speedups(policy.replay(record, grid), policy.num_layers)
    return {t: (grid[i], speedups[i]) for t in targets for i in [operating_point(speedups, t)]}


def _rows(model, policy, record, points, task: str) -> list[dict]:
    """results.jsonl rows as the runner writes them: the full model and one row per knob."""
    spec, L, n = get_task(task), model.num_layers, record["labels"].numel()
    full = replay_predictions(record, torch.full((1, n), L))[0]
    from de3bert.metrics import glue_metrics

    rows = [{"task": task, "method": FULL, "seed": 0, "recipe": "single", "knob": {"name": "none"},
             "metric": glue_metrics(spec.metrics, full, record["labels"]), "operating_point": None,
             "group_size": 1}]
    for knob in sorted({k for k, _ in points.values()}):
        exits = policy.replay(record, [knob])
        preds = replay_predictions(record, exits)[0]
        targets = [t for t, (k, _) in points.items() if k == knob]
        rows.append({"task": task, "method": "de3", "seed": 0, "recipe": "de3",
                     "knob": {"name": "tau", "value": knob},
                     "metric": glue_metrics(spec.metrics, preds, record["labels"]),
                     "speedup_layers": layer_speedup(exits[0], L), "speedup_flops": None,
                     "speedup_wallclock": None, "mean_exit_layer": float(exits.float().mean()),
                     "operating_point": targets, "n_samples": n})
    for r in rows[1:]:
        r["group_size"] = len(rows) - 1  # the de3 group (results.jsonl's completeness marker)
    return rows


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> dict:
    """A run folder with the layout `de3bert run` writes, for DE³ only (about 10 s)."""
    out = tmp_path_factory.mktemp("run") / "smoke"
    profile = Profile.load("smoke")
    profile.methods = ["de3"]
    runner = Runner(profile, out, progress=False)
    model = runner.trained_model("synthetic", "de3", 0)
    ds, tok = runner.dev_set("synthetic", 0)
    record = runner.record("synthetic", "de3", 0, model, ds, tok)
    policy = get_method("de3").make_policy(2, model.num_layers)
    points = operating_knobs(policy, record)
    rows = _rows(model, policy, record, points, "synthetic")
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder = export_from_run(out, "synthetic", "de3", 2.0, out.parent / "exported")
    examples = load_examples(get_task("synthetic"), "dev", None, profile.dev_limit, 0)
    return {"run": out, "folder": folder, "model": model, "record": record, "policy": policy,
            "points": points, "dataset": ds, "tokenizer": tok, "examples": examples}


def _signals(model, batch) -> list[dict]:
    with torch.inference_mode():
        return model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))


def test_round_trip_gives_identical_signals(smoke_run, tmp_path):
    model, ds = smoke_run["model"], smoke_run["dataset"]
    loaded = MultiExitModel.from_pretrained(smoke_run["folder"])
    batch = next(iter(make_loader(ds, 32, shuffle=False)))
    for a, b in zip(_signals(model, batch), _signals(loaded, batch), strict=True):
        assert a.keys() == b.keys() == {"logits", "proto_dist"}
        for k in a:
            assert torch.equal(a[k], b[k]), k
    again = loaded.save_pretrained(tmp_path / "again", method="de3", task="synthetic",
                                   tokenizer=smoke_run["tokenizer"])
    assert {p.name for p in again.iterdir()} >= {"config.json", "model.safetensors", "README.md",
                                                  "tokenizer.json", "tokenizer_config.json"}
    config = json.loads((smoke_run["folder"] / "config.json").read_text())
    section = config["early_exit"]
    assert config["model_type"] == "bert" and config["num_hidden_layers"] == 4
    assert config["id2label"] == {"0": "0", "1": "1"} and section["task"] == "synthetic"
    assert section["recipe"] == "de3" and section["method"] == "de3" and section["pooling"] == "cls"
    assert section["policy"] == {"name": "edr", "options": {"lam": 1.0, "indicator": "edr"}}
    points = smoke_run["points"]
    assert section["operating_points"] == {"1.5": points[1.5][0], "2": points[2.0][0]}
    assert section["default_target"] == "2" and section["train_config"]["epochs"] == 3


def test_model_card_has_task_training_per_layer_metrics_and_tradeoff(smoke_run):
    card = (smoke_run["folder"] / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: de3bert\n") and "- early-exit" in card
    assert "# de3 early-exit model for synthetic" in card
    assert "| lr | `0.001` |" in card and "| epochs | `3` |" in card and "| pooling | `cls` |" in card
    assert "## Per-layer dev metrics (128 dev samples)" in card
    per_layer = [line for line in card.splitlines() if line[:4] in {"| 1 ", "| 2 ", "| 3 ", "| 4 "}]
    assert len(per_layer) == 4
    table = card.split("## Trade-off at the operating points (dev set)")[1]
    assert "| full model |" in table
    for target, (knob, speedup) in smoke_run["points"].items():
        assert f"| {target:g}× | {knob:.8g} |" in table and f"{speedup:.2f}" in table


def test_export_errors_name_the_valid_values_and_write_nothing(smoke_run, tmp_path, capsys):
    run, out = str(smoke_run["run"]), str(tmp_path / "never")
    cases = {("--method", "nope"): "unknown method 'nope'; valid methods:",
             ("--task", "nope"): "unknown task 'nope'; valid tasks:",
             ("--target", "3"): "target 3 has no operating point for de3 on synthetic (seed 0); "
                                "valid targets: 1.5, 2",
             ("--run", str(tmp_path / "missing")): "does not exist",
             ("--seed", "7"): "seed 7 not in the run"}
    for (flag, value), message in cases.items():
        args = {"--run": run, "--task": "synthetic", "--method": "de3", "--target": "2", "--out": out}
        args[flag] = value
        assert main(["export", *[x for kv in args.items() for x in kv]]) == 2
        assert message in capsys.readouterr().err
    assert not Path(out).exists()
    assert load_policy(smoke_run["folder"])[1] == smoke_run["points"][2.0][0]
    with pytest.raises(ValueError, match="valid targets: 1.5, 2"):
        load_policy(smoke_run["folder"], target=4.0)
    with pytest.raises(ValueError, match="runs on recipe 'weighted'"):
        load_policy(smoke_run["folder"], method="pabee", knob=2)
    with pytest.raises(ValueError, match="runs on recipe 'weighted'"):
        smoke_run["model"].save_pretrained(tmp_path / "wrong", method="pabee")
    assert load_policy(smoke_run["folder"], method="de3-dr", knob=0.4)[1] == 0.4


def test_predict_fields_and_exit_layers_equal_replay(smoke_run):
    predictor = load_predictor(smoke_run["folder"])
    texts = [e.texts[0] for e in smoke_run["examples"]]
    rows = predictor.predict(texts, batch_size=16)
    assert [r["text"] for r in rows] == texts
    assert all(set(r) == {"text", "label", "score", "exit_layer"} and r["label"] in ("0", "1")
               and 0.5 <= r["score"] <= 1.0 for r in rows)
    knob = smoke_run["points"][2.0][0]
    # a fresh record over the same texts, read back through the folder's own model and tokenizer
    ds = EncodedDataset(smoke_run["examples"], predictor.tokenizer, predictor.max_length, False)
    record = record_signals(predictor.model, make_loader(ds, 64, shuffle=False), progress=False)
    exits = smoke_run["policy"].replay(record, [knob])
    assert [r["exit_layer"] for r in rows] == exits[0].tolist()
    assert [int(r["label"]) for r in rows] == replay_predictions(record, exits)[0].tolist()
    assert len(set(exits[0].tolist())) > 1  # the operating point really exits at several depths


def test_predict_cli_arguments_stdin_and_file(smoke_run, tmp_path, capsys, monkeypatch):
    folder = str(smoke_run["folder"])
    assert main(["predict", "--model", folder, "good good movie", "bad plot"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["good good movie", "bad plot"]
    assert all(1 <= r["exit_layer"] <= 4 for r in rows)
    # issue 27: one row per input line, in order; empty and undecodable lines get error rows
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"good\n\nbad bad\n \n\xff\xfe x\n")))
    assert main(["predict", "--model", folder, "--target", "1.5"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r.get("text", r.get("error")) for r in rows] == [
        "good", "empty input", "bad bad", "empty input", "not UTF-8 (invalid start byte at byte 0)"]
    assert [r.get("line") for r in rows] == [None, 2, None, 4, 5]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"good\n\n")))
    assert main(["predict", "--model", folder, "--strict"]) == 2
    assert capsys.readouterr().err.strip() == "error: input line 2: empty input"
    path = tmp_path / "in.txt"
    path.write_text("good\nbad\nthe cast\n")
    assert main(["predict", "--model", folder, "--file", str(path)]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 3 and "predict" in captured.err  # the progress bar
    assert main(["predict", "--model", folder, "--target", "3", "x"]) == 2
    assert "valid targets: 1.5, 2" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path / "none"), "x"]) == 2
    assert "does not exist" in capsys.readouterr().err


def _agreement(program, dataset, record, policy, knob) -> tuple[int, int, set]:
    """(exit layers equal to replay, predictions equal to replay, exit layers seen) over every sample."""
    exits = policy.replay(record, [knob])
    preds = replay_predictions(record, exits)[0]
    same_exit = same_pred = 0
    seen = set()
    for i in range(len(dataset)):
        item = dataset[i]
        inputs = {"input_ids": torch.tensor([item["input_ids"]])}
        if "token_type_ids" in item:
            inputs["token_type_ids"] = torch.tensor([item["token_type_ids"]])
        logits, layer = run_program(program, inputs)
        seen.add(layer)
        same_exit += layer == int(exits[0, i])
        same_pred += int(predictions(logits)) == int(preds[i])
    return same_exit, same_pred, seen


def test_exported_program_equals_replay_on_every_smoke_dev_sample(smoke_run, tmp_path):
    model = from_pretrained(smoke_run["folder"])
    policy, knob = load_policy(smoke_run["folder"], target=2.0)
    program = export_program(model, policy, knob, smoke_run["tokenizer"], max_length=64)
    assert "torch.ops.higher_order.cond" in str(program.graph_module.code)
    loaded = load_program(save_program(program, tmp_path / "program.pt2"))
    ds, record = smoke_run["dataset"], smoke_run["record"]
    same_exit, same_pred, seen = _agreement(loaded, ds, record, policy, knob)
    assert (same_exit, same_pred) == (len(ds), len(ds)) and len(ds) == 128
    assert len(seen) > 1
    with pytest.raises(ValueError, match="oracle"):
        ExitProgram(model, get_method("oracle").make_policy(2, 4), 1)


@pytest.mark.skipif(NO_ONNX, reason="optional ONNX test: pip install -e '.[export]'")
def test_onnx_export_equals_replay_when_onnxruntime_is_installed(smoke_run, tmp_path):
    import onnxruntime as ort

    from de3bert.export import export_onnx

    model = from_pretrained(smoke_run["folder"])
    policy, knob = load_policy(smoke_run["folder"], target=2.0)
    path = export_onnx(model, policy, knob, smoke_run["tokenizer"], tmp_path / "model.onnx", max_length=64)
    session = ort.InferenceSession(str(path))

    def program(input_ids, token_type_ids):
        logits, layer = session.run(None, {"input_ids": input_ids.numpy(),
                                           "token_type_ids": token_type_ids.numpy()})
        return torch.from_numpy(logits), torch.tensor(layer)

    ds = smoke_run["dataset"]
    same_exit, same_pred, _ = _agreement(program, ds, smoke_run["record"], policy, knob)
    assert (same_exit, same_pred) == (len(ds), len(ds))


@pytest.mark.e2e
def test_exported_minilm_program_equals_replay_on_real_mrpc_dev_rows(glue_dir, tokenizer):
    """Embedded MiniLM, DE³ heads with class prototypes from 64 MRPC train rows (no training), 48 dev rows."""
    from de3bert.model import build_model

    torch.manual_seed(0)
    task = get_task("mrpc")
    model = build_model("embedded", "de3", 2, "mean").eval()
    train = EncodedDataset(load_examples(task, "train", glue_dir, 64, 0), tokenizer, 64, False)
    model.heads.recompute(model, make_loader(train, 32, shuffle=False))
    dev = EncodedDataset(load_examples(task, "dev", glue_dir, 48, 0), tokenizer, 64, False)
    record = record_signals(model, make_loader(dev, 16, shuffle=False), progress=False)
    policy = get_method("de3").make_policy(2, model.num_layers)
    knob, speedup = operating_knobs(policy, record, (2.0,))[2.0]
    assert speedup >= 2.0
    program = export_program(model, policy, knob, tokenizer, max_length=64).module()
    same_exit, same_pred, seen = _agreement(program, dev, record, policy, knob)
    assert (same_exit, same_pred) == (len(dev), len(dev)) and len(seen) > 1


def test_push_to_hub_offline_up_to_the_upload(smoke_run, monkeypatch, tmp_path):
    import huggingface_hub

    calls = []

    class Info:
        commit_url = "https://huggingface.co/someone/tiny-de3/commit/abc"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, **kw: calls.append(("create_repo", kw)))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder",
                        lambda self, **kw: calls.append(("upload_folder", kw)) or Info())
    url = push_to_hub(smoke_run["folder"], "someone/tiny-de3", private=True)
    assert url == Info.commit_url
    assert calls[0] == ("create_repo", {"repo_id": "someone/tiny-de3", "private": True, "exist_ok": True,
                                        "repo_type": "model"})
    assert calls[1][0] == "upload_folder" and calls[1][1]["folder_path"] == str(smoke_run["folder"])
    assert calls[1][1]["repo_id"] == "someone/tiny-de3"
    with pytest.raises(FileNotFoundError, match="not an early-exit model folder"):
        push_to_hub(tmp_path, "someone/empty")
    assert len(calls) == 2
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a reachable Hub repo"):
        from_pretrained("someone/not-cached-anywhere")
