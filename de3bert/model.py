"""MultiExitModel = a layer-by-layer encoder + exit heads that turn each layer into named signals.

Heads are the only method-specific part of a model; a recipe builds them. Every head emits at
least `logits` per layer; methods add their own signals (`proto_dist`, `lte`, ...). Policies read
signals, never the model.
"""

from __future__ import annotations

import copy
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel

from .backbone import LayerwiseEncoder, load_encoder
from .options import options_dict
from .registry import get_recipe
from .weights import WEIGHTS, load_weights, save_weights

Signals = dict[str, torch.Tensor]


def mean_pool_weights(attention_mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`[N, T, 1]`: 1/(number of real tokens) on real tokens, 0 on padding."""
    m = attention_mask.unsqueeze(-1).to(dtype)
    return m / m.sum(1, keepdim=True).clamp_min(1.0)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str,
         pooler: nn.Module | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
    """`cls`: first token through `pooler` (if any); `mean`: mean over non-padding tokens.

    `weights` (from `mean_pool_weights`) saves recomputing them from the mask at every layer.
    """
    if mode == "mean":
        w = weights if weights is not None else mean_pool_weights(attention_mask, hidden.dtype)
        return (hidden * w).sum(1)
    if mode == "cls":
        return pooler(hidden) if pooler is not None else hidden[:, 0]
    raise ValueError(f"unknown pooling {mode!r}; valid: cls, mean")


#: head-state keys that `cached_in_state` made: values derived from the batch's own inputs (the
#: attention mask), which the serving engine drops when it merges batches padded to other lengths
#: (the merged batch remakes them) instead of carrying them like real state (Past-Future's sums)
CACHE_KEYS: set[str] = set()


def cached_in_state(state: dict, key: str, make) -> torch.Tensor:
    """`state[key]`, made by `make()` at the first layer of a batch and reused by the others. Head
    state is batch-first, so the live engine drops exited rows from cached tensors too."""
    if key not in state:
        CACHE_KEYS.add(key)
        state[key] = make()
    return state[key]


def cached_pool_weights(state: dict | None, attention_mask: torch.Tensor) -> torch.Tensor | None:
    """Mean-pooling weights cached in head `state`; None without a state."""
    if state is None:
        return None
    return cached_in_state(state, "mean_pool_weights", lambda: mean_pool_weights(attention_mask))


class ExitHeads(nn.Module, ABC):
    """Everything a recipe attaches to the encoder. Emits per-layer signals for a batch.

    `state` is a dict of batch-first tensors that a head may carry across layers (Past-Future
    keeps the past layers' features); the live engine drops exited rows from it.
    """

    def init_state(self, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
        """Batch-first tensors a head carries across the layers of one pass (none by default)."""
        return {}

    def after_step(self, signals: list[Signals], labels: torch.Tensor, accelerator=None) -> None:  # noqa: B027
        """Hook after each optimizer step (DE³ moves its prototypes here); nothing by default."""

    train_depth: int | None = None
    """Training runs layers 1..train_depth only (None: every layer); a k-layer model (static-kl)
    then costs k layers per step. Recording and inference always run every layer."""

    def train_hidden(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """In training, what layer `layer + 1` and this layer's head receive (Past-Future's
        gradient blocking); the states themselves by default."""
        return hidden

    def output_layers(self) -> list[nn.Linear]:
        """The linear layers whose outputs are the logits (one per exit); a regression training
        starts their bias at the label mean (`TrainConfig.regression_bias`). None by default."""
        return []

    def drop(self, x: torch.Tensor) -> torch.Tensor:
        """`self.dropout` in training; the identity otherwise, without a module call per layer."""
        return self.dropout(x) if self.training else x

    @abstractmethod
    def forward_layer(self, layer: int, hidden: torch.Tensor, attention_mask: torch.Tensor,
                      state: dict[str, torch.Tensor]) -> Signals:
        """Signals of 1-based `layer` from its hidden states; may update `state` in place."""


def dense_of_tanh_pooler(module: nn.Module) -> nn.Linear | None:
    """The dense layer of a dense + tanh pooler (ours, or BERT's `BertPooler` on the first token),
    so heads run it as `tanh(linear(x))` without three module calls per layer; None otherwise."""
    if isinstance(module, nn.Sequential) and len(module) == 2 and isinstance(module[1], nn.Tanh):
        return module[0] if isinstance(module[0], nn.Linear) else None
    dense, act = getattr(module, "dense", None), getattr(module, "activation", None)
    return dense if isinstance(dense, nn.Linear) and isinstance(act, nn.Tanh) else None


def linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)` without the module call (its hooks and dispatch cost more than the matmul at batch 1)."""
    return F.linear(x, layer.weight, layer.bias)


def pooler_like(hidden: int) -> nn.Module:
    """A pooler-shaped off-ramp transform (dense H→H + tanh), randomly initialised."""
    return nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh())


class ClassifierHeads(ExitHeads):
    """Per layer: a pooler-like transform (dense H→H + tanh), dropout, a linear classifier
    (PABEE, DeeBERT, PCEE, max-prob, fixed-exit, static-kl, DE³).

    Every off-ramp has the capacity its original has on BERT, whatever the pooling:
    `poolers = shared` is one transform for every layer, `per_layer` one per layer (DeeBERT's and
    BERxiT's off-ramps). With `pooling = cls` and a backbone pooler the transform *is* that pooler
    (shared: the backbone's own, fine-tuned; per layer: a copy each, as DeeBERT initialises its
    off-ramps from the pre-trained pooler); with `mean` pooling (or a backbone without a pooler)
    it is a new randomly initialised dense + tanh applied to the pooled vector.
    """

    def __init__(self, encoder: LayerwiseEncoder, num_labels: int, pooling: str,
                 poolers: str = "shared", dropout: float = 0.1):
        super().__init__()
        if poolers not in ("shared", "per_layer"):
            raise ValueError(f"unknown poolers {poolers!r}; valid: shared, per_layer")
        self.pooling, self.num_layers = pooling, encoder.num_layers
        base = encoder.pooler if pooling == "cls" else None
        hidden = encoder.hidden_size
        if poolers == "per_layer":
            make = (lambda: copy.deepcopy(base)) if base is not None else (lambda: pooler_like(hidden))
            self.poolers = nn.ModuleList(make() for _ in range(self.num_layers))
        else:
            self.poolers = None
            # the backbone's pooler sits in a list so it is not registered twice
            self.shared_pooler = pooler_like(hidden) if base is None else None
            self._shared = [base if base is not None else self.shared_pooler]
        # under `cls` a pooler module takes the token states; otherwise the pooled vector
        self.pooler_on_tokens = base is not None
        self.dropout = nn.Dropout(dropout)
        self.classifiers = nn.ModuleList(nn.Linear(hidden, num_labels) for _ in range(self.num_layers))
        # each layer's dense + tanh pooler resolved once (a plain list: not registered twice), so
        # `pooled` does no type checks per layer; None where the pooler is another module
        self._pooler_dense = [dense_of_tanh_pooler(self.pooler(i + 1)) for i in range(self.num_layers)]

    def output_layers(self) -> list[nn.Linear]:
        """Every exit's classifier."""
        return list(self.classifiers)

    def pooler(self, layer: int) -> nn.Module:
        """The pooler-like transform of 1-based `layer` (shared or its own)."""
        return self.poolers[layer - 1] if self.poolers is not None else self._shared[0]

    def pooled(self, layer: int, hidden: torch.Tensor, attention_mask: torch.Tensor,
               state: dict | None = None) -> torch.Tensor:
        """Layer `layer`'s pooled feature `[N, H]`; `state` (optional) caches mean-pooling weights."""
        dense = self._pooler_dense[layer - 1]
        return self.pool_with(self.pooler(layer), dense, hidden, attention_mask, state)

    def pool_with(self, module: nn.Module, dense: nn.Linear | None, hidden: torch.Tensor,
                  attention_mask: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        """The pooled feature through pooler `module` (`dense`: its dense layer if dense + tanh)."""
        if self.pooler_on_tokens:
            return torch.tanh(linear(dense, hidden[:, 0])) if dense is not None else pool(
                hidden, attention_mask, "cls", module)
        if self.pooling == "mean":
            v = pool(hidden, attention_mask, "mean", weights=cached_pool_weights(state, attention_mask))
        else:
            v = pool(hidden, attention_mask, self.pooling)
        return torch.tanh(linear(dense, v)) if dense is not None else module(v)

    def classify(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """Layer `layer`'s logits from its pooled feature (dropout in training)."""
        return linear(self.classifiers[layer - 1], self.drop(h))

    def forward_layer(self, layer, hidden, attention_mask, state):
        return {"logits": self.classify(layer, self.pooled(layer, hidden, attention_mask, state))}


class LayerPass:
    """What one layer-by-layer pass over a batch carries between layers; `keep` drops rows."""

    def __init__(self, model: MultiExitModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 token_type_ids: torch.Tensor | None):
        self.encoder = model.encoder
        self.hidden, self.mask = model.encoder.embed(input_ids, attention_mask, token_type_ids)
        self.attention_mask = attention_mask
        self.head_state = model.heads.init_state(input_ids.shape[0], input_ids.device)

    def keep(self, rows: torch.Tensor) -> None:
        """Continue with batch rows `rows` only (hidden states, masks and head state alike)."""
        rows = rows.to(self.hidden.device)
        self.hidden = self.hidden.index_select(0, rows)
        self.attention_mask = self.attention_mask.index_select(0, rows)
        self.mask = self.encoder.select(self.mask, rows)
        self.head_state = {k: v.index_select(0, rows) for k, v in self.head_state.items()}


class MultiExitModel(nn.Module):
    """The encoder run layer by layer with exit heads after every layer.

    `meta` holds what is needed to rebuild the model from a directory (backbone, recipe,
    number of labels, head options); `save`/`load` round-trip the weights with safetensors.
    """

    def __init__(self, encoder: LayerwiseEncoder, heads: ExitHeads, meta: dict):
        super().__init__()
        self.encoder, self.heads, self.meta = encoder, heads, dict(meta)

    @property
    def num_layers(self) -> int:
        """Transformer layers (= exits) of the encoder."""
        return self.encoder.num_layers

    def layer_pass(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   token_type_ids: torch.Tensor | None = None,
                   heads: str | int = "all", start: LayerPass | None = None,
                   ) -> Iterator[tuple[int, Signals | None, LayerPass]]:
        """The one layer loop: embeddings, then each layer, yielding `(layer, signals, pass)`.

        `heads`: `all` runs every exit head, `last` only the final one (the plain model), `none`
        none (the caller runs them, e.g. to time or count them apart), an int k the heads of
        layers k..L (live inference under a rule that cannot exit below k). Between layers the caller
        may drop finished rows with `pass.keep(rows)` (live early exit). `start`: a pass whose
        embeddings were already computed (to count or time them apart). In training, heads may
        transform each layer's states before their use (`train_hidden`) and stop the pass early
        (`train_depth`); recording and inference always run every layer.
        """
        p = start if start is not None else LayerPass(self, input_ids, attention_mask, token_type_ids)
        train = self.training
        first = _first_head_layer(heads, self.num_layers)
        for i in range((self.heads.train_depth or self.num_layers) if train else self.num_layers):
            layer = i + 1
            hidden = self.encoder.layer(i, p.hidden, p.mask)
            p.hidden = self.heads.train_hidden(layer, hidden) if train else hidden
            yield layer, (self.heads.forward_layer(layer, p.hidden, p.attention_mask, p.head_state)
                          if layer >= first else None), p

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, **_) -> list[Signals]:
        """Full-depth pass (training, recording): the signals of every layer, in order (in training
        up to the heads' `train_depth`)."""
        return [sig for _, sig, _ in self.layer_pass(input_ids, attention_mask, token_type_ids)]

    # ---- persistence -------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """The suite's own folder (weights, encoder config, multiexit.json); Hub: `save_pretrained`."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_weights(self, d / WEIGHTS)  # + its SHA-256 sidecar, verified on every load
        self.encoder.config.save_pretrained(d / "encoder")
        (d / "multiexit.json").write_text(json.dumps(self.meta, indent=2, sort_keys=True))

    @classmethod
    def load(cls, directory: str | Path, attn_implementation: str | None = None,
             weights: bool = True) -> MultiExitModel:
        """Rebuild from `save` output: encoder from its saved config (no download), then weights
        (`weights=False`: the architecture only, e.g. to count parameters without reading them).

        `attn_implementation="eager"` gives a copy whose attention FLOP counters can see.
        """
        d = Path(directory)
        meta = json.loads((d / "multiexit.json").read_text())
        config = AutoConfig.from_pretrained(d / "encoder")
        attn = attn_implementation or meta.get("attn_implementation", "sdpa")
        encoder = LayerwiseEncoder(AutoModel.from_config(config, attn_implementation=attn))
        model = get_recipe(meta["recipe"]).build(encoder, meta)
        if weights:
            load_weights(model, d / WEIGHTS)
        model.eval()
        return model

    def save_pretrained(self, directory: str | Path, **options) -> Path:
        """A Hugging Face-style folder (config.json, safetensors, tokenizer, model card); see `hub`."""
        from .hub import save_pretrained

        return save_pretrained(self, directory, **options)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path,
                        attn_implementation: str | None = None) -> MultiExitModel:
        """Load a `save_pretrained` folder or a Hub repo id; see `hub.from_pretrained`."""
        from .hub import from_pretrained

        return from_pretrained(name_or_path, attn_implementation)


def _first_head_layer(heads: str | int, num_layers: int) -> int:
    """The first layer whose head `layer_pass` runs for its `heads` argument."""
    if isinstance(heads, int):
        return heads
    named = {"all": 1, "last": num_layers, "none": num_layers + 1}
    if heads not in named:
        raise ValueError(f"unknown heads {heads!r}; valid: all, last, none, or a layer number")
    return named[heads]


def build_model(backbone: str, recipe: str, num_labels: int, pooling: str,
                attn_implementation: str = "sdpa", **head_options) -> MultiExitModel:
    """Load `backbone` with AutoModel and attach the heads of `recipe`; unknown options fail."""
    rec = get_recipe(recipe)
    opts = rec.parse_options(head_options)  # before loading anything: a typo fails fast
    encoder = LayerwiseEncoder(load_encoder(backbone, attn_implementation))
    meta = {"backbone": backbone, "recipe": recipe, "num_labels": num_labels, "pooling": pooling,
            "attn_implementation": attn_implementation, **options_dict(opts)}
    return rec.build(encoder, meta)
