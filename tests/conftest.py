"""Shared fixtures: offline hub, a tiny random encoder, the synthetic loader, real GLUE rows.

Every test runs offline: HF_HUB_OFFLINE is set at import time and any network socket connection
attempt (IPv4/IPv6) or DNS lookup of a remote name raises and fails the test that made it, even if
the caller swallowed the error.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import ipaddress  # noqa: E402
import socket  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# tiny models gain nothing from intra-op threads, and on a shared 2-core machine spinning OpenMP
# workers make runtimes erratic
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parent.parent
_NETWORK_ATTEMPTS: list[str] = []


def _blocked(kind: str):
    original = getattr(socket.socket, kind)

    def guard(self, address, *args, **kwargs):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _NETWORK_ATTEMPTS.append(f"{kind}({address!r})")
            raise OSError(f"network access is forbidden in tests: {kind} to {address!r}")
        return original(self, address, *args, **kwargs)

    return guard


_LOCAL_NAMES = {None, "", "localhost", "localhost.localdomain"}


def _blocked_lookup(original):
    """DNS lookups of remote names are network traffic too (and may succeed where connect fails)."""

    def guard(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        try:
            ipaddress.ip_address(str(name).split("%")[0])
            numeric = True
        except ValueError:
            numeric = False
        if name not in _LOCAL_NAMES and not numeric:
            _NETWORK_ATTEMPTS.append(f"getaddrinfo({host!r})")
            raise OSError(f"network access is forbidden in tests: DNS lookup of {host!r}")
        return original(host, *args, **kwargs)

    return guard


@pytest.fixture(scope="session", autouse=True)
def no_network():
    """Make every IPv4/IPv6 socket connection and remote DNS lookup fail for the whole session."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _blocked("connect"))
        mp.setattr(socket.socket, "connect_ex", _blocked("connect_ex"))
        mp.setattr(socket, "getaddrinfo", _blocked_lookup(socket.getaddrinfo))
        yield


@pytest.fixture(autouse=True)
def fail_on_network_attempt(no_network):
    """Fail a test that tried to connect anywhere, even if the code under test caught the error."""
    _NETWORK_ATTEMPTS.clear()
    yield
    attempts = list(_NETWORK_ATTEMPTS)
    _NETWORK_ATTEMPTS.clear()
    if attempts:
        pytest.fail(f"test attempted network access: {attempts}")


@pytest.fixture(scope="session")
def tokenizer():
    from de3bert.backbone import load_tokenizer

    return load_tokenizer("embedded")


TINY_BERT = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                 intermediate_size=64)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, tokenizer):
    """`tiny_bert_dir(name, **config)`: a seeded tiny random BERT saved with `save_pretrained`
    next to the embedded tokenizer's files (a local backbone directory for training tests)."""
    from transformers import BertConfig, BertModel

    def make(name: str, **config) -> str:
        d = tmp_path_factory.mktemp(name)
        torch.manual_seed(0)
        cfg = BertConfig(**{**TINY_BERT, "vocab_size": tokenizer.vocab_size, **config})
        BertModel(cfg).save_pretrained(d)
        tokenizer.save_pretrained(d)
        return str(d)

    return make


@pytest.fixture(scope="session")
def tiny_encoder():
    """Factory: a fresh LayerwiseEncoder over a random 4-layer BERT (hidden 32), seeded."""
    from transformers import BertConfig, BertModel

    from de3bert.backbone import LayerwiseEncoder

    def make(seed: int = 0, attn_implementation: str = "sdpa", **overrides) -> LayerwiseEncoder:
        torch.manual_seed(seed)
        config = BertConfig(**{**TINY_BERT, **overrides}, attn_implementation=attn_implementation)
        return LayerwiseEncoder(BertModel(config))

    return make


@pytest.fixture(scope="session")
def synthetic_dataset(tokenizer):
    from de3bert.data import EncodedDataset, get_task, load_examples

    examples = load_examples(get_task("synthetic"), "dev")[:64]
    return EncodedDataset(examples, tokenizer, max_seq_length=64, regression=False)


@pytest.fixture(scope="session")
def synthetic_loader(synthetic_dataset, tokenizer):
    """Factory: a loader over the first 64 synthetic dev examples, in order."""
    from de3bert.data import make_loader

    def make(batch_size: int, shuffle: bool = False):
        return make_loader(synthetic_dataset, batch_size, shuffle=shuffle,
                           pad_token_id=tokenizer.pad_token_id or 0)

    return make


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """The local GLUE copy (`de3bert.data.resolve_data_dir`: $GLUE_DIR, else `glue_data/` in the
    checkout, which `scripts/setup.sh` links); skip when there is none."""
    from de3bert.data import resolve_data_dir

    found = resolve_data_dir()
    if not found or not Path(found).is_dir():
        pytest.skip("real GLUE rows not available: set GLUE_DIR or link a glue_data/ folder into "
                    "the checkout")
    return Path(found).resolve()
