"""Early-exit models as Hugging Face-style folders: config.json, model.safetensors, tokenizer, card.

`config.json` is the backbone's own config (so `AutoConfig.from_pretrained(folder)` reads it) plus
`id2label`/`label2id` and an `early_exit` section: recipe, head options, pooling, method, policy
options, the knob chosen per target speed-up and the training settings. The weights are the whole
`MultiExitModel` state dict in safetensors; `README.md` is a generated model card. A folder loads
back with `from_pretrained` (a local path or a Hub id) and uploads with `push_to_hub`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .weights import WEIGHTS, load_weights, save_weights

# typed as nn.Module: importing MultiExitModel here would close a cycle (model delegates to hub)
MultiExitModel = torch.nn.Module

SECTION = "early_exit"
FORMAT_VERSION = 1
CARD_TRAIN_KEYS = ("task", "recipe", "backbone", "pooling", "max_seq_length", "batch_size", "lr",
                   "weight_decay", "warmup_ratio", "epochs", "train_limit", "seed", "head_options")


def label_names(num_labels: int, task: str | None) -> list[str]:
    """Class names in class order: the task's label strings, else the class ids as strings."""
    from .data import get_task

    if num_labels == 1:
        return ["score"]
    spec = get_task(task) if task else None
    if spec is not None and len(spec.labels) == num_labels:
        return list(spec.labels)
    return [str(i) for i in range(num_labels)]


def early_exit_section(model: MultiExitModel, method: str | None, operating_points: list[dict],
                       target: float | None, task: str | None) -> dict:
    """The `early_exit` block of config.json: everything needed to rebuild the model and its exits."""
    from .data import TASKS
    from .registry import get_method

    meta = {k: v for k, v in model.meta.items() if k != "train_config"}
    # how many texts an input has: the folder must serve without the task being registered
    texts = len(TASKS[task].text_fields) if task in TASKS else None
    section = {"format_version": FORMAT_VERSION, "task": task, "texts": texts,
               "num_layers": model.num_layers,
               "recipe": meta["recipe"], "pooling": meta["pooling"], "model_meta": meta,
               "train_config": model.meta.get("train_config", {}), "method": method,
               "policy": None, "knob": None, "operating_points": {}, "default_target": None}
    if method:
        m = get_method(method)
        if m.recipe != meta["recipe"]:
            raise ValueError(f"method {method!r} runs on recipe {m.recipe!r}; this model was trained "
                             f"with recipe {meta['recipe']!r}")
        section["policy"] = {"name": m.policy.name, "options": m.options}
        section["knob"] = {"name": m.policy.knob.name, "faster": m.policy.knob.faster}
        section["operating_points"] = {f"{float(p['target']):g}": p["knob"] for p in operating_points}
        if target is not None:
            key = f"{float(target):g}"
            if key not in section["operating_points"]:
                raise ValueError(f"target {target:g} has no operating point; valid targets: "
                                 f"{', '.join(section['operating_points']) or 'none'}")
            section["default_target"] = key
        elif section["operating_points"]:
            section["default_target"] = next(iter(section["operating_points"]))
    return section


def save_pretrained(model: MultiExitModel, directory: str | Path, *, method: str | None = None,
                    operating_points: list[dict] | None = None, target: float | None = None,
                    task: str | None = None, tokenizer=None, card: dict | None = None) -> Path:
    """Write a folder that `from_pretrained` and `de3bert predict` load without the training run."""
    # operating_points: one dict per target speed-up with `target`, `knob` and (for the card)
    # `metric`, `speedup_layers`, `speedup_flops`, `speedup_wallclock`, `mean_exit_layer`;
    # card may add `per_layer` (dev metrics per layer), `full_model` (its metrics) and `n_dev`.
    from .backbone import load_tokenizer

    d = Path(directory)
    points = list(operating_points or [])
    task = task or model.meta.get("train_config", {}).get("task")
    section = early_exit_section(model, method, points, target, task)
    names = label_names(model.meta["num_labels"], task)
    config = model.encoder.config.to_dict()
    config.update({"architectures": ["MultiExitModel"], "id2label": dict(enumerate(names)),
                   "label2id": {n: i for i, n in enumerate(names)}, SECTION: section})
    d.mkdir(parents=True, exist_ok=True)
    section["weights_sha256"] = save_weights(model, d / WEIGHTS, metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    tok = tokenizer if tokenizer is not None else load_tokenizer(model.meta["backbone"])
    tok.save_pretrained(str(d))
    (d / "README.md").write_text(model_card(config, points, card or {}))
    return d


def read_config(directory: str | Path) -> dict:
    """config.json of a saved folder; a clear error when the folder or its early-exit block is missing."""
    d = Path(directory)
    path = d / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{d} is not an early-exit model folder: no config.json "
                                "(write one with MultiExitModel.save_pretrained or `de3bert export`)")
    config = json.loads(path.read_text())
    if SECTION not in config:
        raise ValueError(f"{path} has no {SECTION!r} section: a plain backbone, not an early-exit model")
    return config


def resolve_folder(name_or_path: str | Path) -> Path:
    """A local folder as is; anything else is a Hub repo id, downloaded (or read from the cache)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    text = str(name_or_path)
    if os.path.isabs(text) or text.startswith((".", "~")) or text.count("/") > 1 or not text.strip():
        raise FileNotFoundError(f"model folder {text!r} does not exist")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=text))
    except Exception as err:  # offline, unknown repo, no permission: one clear message
        raise FileNotFoundError(f"{text!r} is neither a local folder nor a reachable Hub repo "
                                f"(offline={os.environ.get('HF_HUB_OFFLINE', '0')}): {err}") from err


def from_pretrained(name_or_path: str | Path, attn_implementation: str | None = None) -> MultiExitModel:
    """Rebuild a saved model: backbone from config.json (no download), heads from the recipe, weights."""
    from transformers import AutoModel
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from .backbone import LayerwiseEncoder
    from .registry import get_recipe

    d = resolve_folder(name_or_path)
    config = read_config(d)
    section = config.pop(SECTION)
    for key in ("architectures", "transformers_version"):
        config.pop(key, None)
    backbone_config = CONFIG_MAPPING[config["model_type"]].from_dict(config)
    meta = dict(section["model_meta"])
    attn = attn_implementation or meta.get("attn_implementation", "sdpa")
    encoder = LayerwiseEncoder(AutoModel.from_config(backbone_config, attn_implementation=attn))
    model = get_recipe(section["recipe"]).build(encoder, meta)
    if section.get("train_config"):
        model.meta["train_config"] = section["train_config"]
    # the hash travels in config.json (a Hub folder may lack the sidecar); the sidecar otherwise
    load_weights(model, d / WEIGHTS, section.get("weights_sha256"))
    model.eval()
    return model


def load_policy(directory: str | Path, target: float | None = None, knob: float | None = None,
                method: str | None = None):
    """(policy, knob) of a saved folder: the knob at `target` (default: the saved one) or `knob`."""
    from .registry import get_method

    config = read_config(directory)
    section = config[SECTION]
    name = method or section.get("method")
    if not name:
        raise ValueError(f"{directory} was saved without a method; pass --method and --knob")
    m = get_method(name)
    if m.recipe != section["recipe"]:
        raise ValueError(f"method {name!r} runs on recipe {m.recipe!r}; {directory} holds a "
                         f"{section['recipe']!r} model")
    policy = m.make_policy(section["model_meta"]["num_labels"], section["num_layers"])
    if knob is None:
        points = section.get("operating_points", {}) if name == section.get("method") else {}
        key = f"{float(target):g}" if target is not None else section.get("default_target")
        if key is None:
            raise ValueError(f"{directory} has no saved operating point for {name}; pass --knob")
        if key not in points:
            raise ValueError(f"target {key} has no operating point in {directory}; valid targets: "
                             f"{', '.join(points) or 'none (pass --knob)'}")
        knob = points[key]
    policy.knob.validate([knob])
    return policy, float(knob)


def per_layer_metrics(record: dict[str, torch.Tensor], task: str) -> list[dict]:
    """Dev metrics of every layer's own exit (all samples leaving at that layer), from a record."""
    from .data import get_task
    from .metrics import glue_metrics
    from .policy import predictions

    spec = get_task(task)
    preds = predictions(record["logits"])
    return [glue_metrics(spec.metrics, preds[m], record["labels"]) for m in range(preds.shape[0])]


def _fmt(value, digits: int = 2) -> str:
    """A table cell: numbers rounded, missing values as an en dash."""
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _tradeoff_table(points: list[dict], metrics: list[str], full: dict | None) -> list[str]:
    """Markdown rows: one per operating point (and the full model), metrics and the three speed-ups."""
    head = ["target", "knob", *metrics, "layer speed-up", "FLOPs speed-up", "wall-clock (b=1)",
            "mean exit layer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if full:
        lines.append("| full model | – | " + " | ".join(_fmt(full.get(k)) for k in metrics)
                     + " | 1.00 | 1.00 | 1.00 | – |")
    for p in points:
        m = p.get("metric", {})
        cells = [f"{float(p['target']):g}×", f"{p['knob']:.8g}", *(_fmt(m.get(k)) for k in metrics),
                 _fmt(p.get("speedup_layers")), _fmt(p.get("speedup_flops")),
                 _fmt(p.get("speedup_wallclock")), _fmt(p.get("mean_exit_layer"))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _card_header(config: dict) -> list[str]:
    """YAML front matter the Hub reads (library, tags, dataset, pipeline)."""
    section = config[SECTION]
    task = section.get("task") or "unknown"
    tags = ["early-exit", "multi-exit", section["recipe"], section["method"]]
    lines = ["---", "library_name: de3bert", "pipeline_tag: text-classification", "tags:"]
    lines += [f"- {t}" for t in dict.fromkeys(tags) if t]
    from .data import TASKS

    if task in TASKS and TASKS[task].hub_config:  # only tasks that come from the GLUE Hub dataset
        lines += ["datasets:", "- nyu-mll/glue"]
    return [*lines, "---", ""]


def model_card(config: dict, points: list[dict], card: dict) -> str:
    """README.md: task, how the model was trained, per-layer dev metrics and the trade-off table."""
    from .data import get_task

    section = config[SECTION]
    task = section.get("task")
    metrics = list(get_task(task).metrics) if task else []
    train = section.get("train_config", {})
    method = section.get("method") or "(none: pick a policy at load time)"
    lines = [*_card_header(config), f"# {section['recipe']} early-exit model for {task or 'a task'}", "",
             f"A {section['num_layers']}-layer `{config.get('model_type')}` encoder with an exit head after "
             f"every layer (recipe `{section['recipe']}`, pooling `{section['pooling']}`), exited by "
             f"method `{method}`. Labels: {', '.join(config['id2label'].values())}.", "",
             "## Training", "", "| setting | value |", "|---|---|"]
    train = {**train, "pooling": section["pooling"]}  # the resolved pooling, not the empty default
    lines += [f"| {k} | `{train[k]}` |" for k in CARD_TRAIN_KEYS if k in train]
    if section["policy"]:
        lines += ["", "## Exit policy", "",
                  f"Policy `{section['policy']['name']}` (options `{section['policy']['options']}`), knob "
                  f"`{section['knob']['name']}` ({section['knob']['faster']} is faster); chosen knob per "
                  f"target layer speed-up: `{section['operating_points']}` (default target "
                  f"{section['default_target']}×)."]
    if card.get("per_layer"):
        n = f" ({card['n_dev']} dev samples)" if card.get("n_dev") else ""
        lines += ["", f"## Per-layer dev metrics{n}", "", "| layer | " + " | ".join(metrics) + " |",
                  "|---|" + "---|" * len(metrics)]
        lines += [f"| {i} | " + " | ".join(_fmt(m.get(k)) for k in metrics) + " |"
                  for i, m in enumerate(card["per_layer"], start=1)]
    if points:
        lines += ["", "## Trade-off at the operating points (dev set)", "",
                  *_tradeoff_table(points, metrics, card.get("full_model"))]
    lines += ["", "## Use", "", "```python", "from de3bert.model import MultiExitModel",
              "model = MultiExitModel.from_pretrained(\"<this folder or repo id>\")", "```", "",
              "```bash", "de3bert predict --model <this folder> \"a sentence to classify\"", "```", ""]
    return "\n".join(lines)


def push_to_hub(directory: str | Path, repo_id: str, token: str | None = None, private: bool = False,
                commit_message: str = "Upload early-exit model") -> str:
    """Create (or reuse) the Hub repo and upload the folder; returns the commit URL."""
    from huggingface_hub import HfApi

    read_config(directory)  # refuse to upload something that is not a saved model folder
    api = HfApi(token=token)
    api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(folder_path=str(directory), repo_id=repo_id, repo_type="model",
                             commit_message=commit_message)
    return str(getattr(info, "commit_url", info))
