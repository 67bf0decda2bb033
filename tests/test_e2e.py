"""End-to-end checks on the packaged all-MiniLM-L6-v2 backbone and real GLUE rows (a few, small)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModel

from benchmarks.cli import main
from de3bert.backbone import LayerwiseEncoder, default_pooling, embedded_backbone_path, load_tokenizer

pytestmark = pytest.mark.e2e


def test_embedded_backbone_runs_layer_by_layer_like_the_library():
    path = embedded_backbone_path()
    ref = AutoModel.from_pretrained(path).eval()
    enc = LayerwiseEncoder(ref).eval()
    tok = load_tokenizer("embedded:all-MiniLM-L6-v2")
    batch = tok(["A man is playing a guitar.", "Short."], padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = ref(**batch).last_hidden_state
        hidden, mask = enc.embed(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        for i in range(enc.num_layers):
            hidden = enc.layer(i, hidden, mask)
    assert enc.num_layers == 6 and enc.hidden_size == 384
    assert default_pooling("embedded:all-MiniLM-L6-v2") == "mean"
    valid = batch["attention_mask"].bool()
    torch.testing.assert_close(hidden[valid], expected[valid], atol=1e-5, rtol=1e-4)


def test_eval_on_real_rte_replay_agrees_with_live(glue_dir, tmp_path, capsys):
    """Train PABEE's recipe briefly on 64 RTE rows, sweep patience on dev, and run one live pass."""
    out = tmp_path / "rte-weighted"
    code = main(["eval", "--task", "RTE", "--method", "pabee", "--data-dir", str(glue_dir),
                 "--train-limit", "64", "--epochs", "1", "--batch-size", "16", "--max-seq-length", "64",
                 "--out-dir", str(out), "--no-progress", "--live", "2"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "pabee on rte (277 dev samples, 6 layers)" in text
    assert "replay agrees: True" in text
    rows = [line.split() for line in text.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4, 5]  # patience 1..L-1
    speedups = [float(r[2]) for r in rows]
    assert speedups == sorted(speedups, reverse=True) and speedups[-1] >= 1.0
    meta = json.loads((out / "final" / "multiexit.json").read_text())
    assert meta["recipe"] == "weighted" and meta["pooling"] == "mean"


def test_every_method_live_equals_replay_on_minilm_and_real_rte(glue_dir):
    """Every registered method on the packaged MiniLM (sharpened random heads, one per recipe) and
    40 real RTE dev pairs: live (batch 8 and 1) exits and predicts exactly as replay at two knobs."""
    from de3bert import engine
    from de3bert.data import EncodedDataset, get_task, load_examples, make_loader
    from de3bert.model import build_model
    from de3bert.registry import all_methods

    task, tok = get_task("rte"), load_tokenizer("embedded")
    ds = EncodedDataset(load_examples(task, "dev", glue_dir, limit=40, seed=0), tok, 128, False)
    models = {}
    for name, method in all_methods().items():
        if method.recipe not in models:
            torch.manual_seed(0)
            model = build_model("embedded", method.recipe, 2, "mean").eval()
            with torch.no_grad():
                for mod_name, mod in model.heads.named_modules():
                    if isinstance(mod, torch.nn.Linear) and "classifier" in mod_name:
                        mod.weight.mul_(30.0)
            if hasattr(model.heads, "prototypes"):
                model.heads.recompute(model, make_loader(ds, 8, False))
            models[method.recipe] = (model, engine.record_signals(model, make_loader(ds, 16, False),
                                                                  progress=False))
        model, record = models[method.recipe]
        policy = method.make_policy(2, model.num_layers)
        grid = sorted(policy.grid())
        for knob in dict.fromkeys([grid[len(grid) // 2], grid[(3 * len(grid)) // 4]]):
            replayed = policy.replay(record, [knob])[0]
            for size in (8, 1):
                live = engine.run_live(model, policy, knob, make_loader(ds, size, False))
                assert live.exit_layers.tolist() == replayed.tolist(), (name, knob, size)
                preds = engine.replay_predictions(record, replayed[None])[0]
                assert live.predictions.tolist() == preds.tolist(), (name, knob, size)
