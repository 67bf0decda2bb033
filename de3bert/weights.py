"""Checksummed model weights: every `model.safetensors` the suite writes has a SHA-256 sidecar.

A flipped byte inside a weights file loads without complaint and serves wrong labels; a damaged
header fails deep inside safetensors with a raw traceback. So weights are written like the dev
records (`de3bert.record`): to a temp file, renamed into place, then a sidecar
`model.safetensors.sha256` (JSON: sha256, bytes) written atomically; every load verifies the file
against it first and raises `CorruptModel` naming the file, the expected and the actual hash.
Parameter counts come from the safetensors header alone, so reports never read weights.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from .record import atomic_write_text, sha256, writing

WEIGHTS = "model.safetensors"


class CorruptModel(ValueError):
    """A weights file that does not match its checksum, has none, or cannot be read."""


def sidecar(path: Path) -> Path:
    """The checksum file of a weights file."""
    return path.with_name(path.name + ".sha256")


def save_weights(model: nn.Module, path: str | Path, metadata: dict | None = None) -> str:
    """Write `model`'s weights to `path` and its checksum sidecar, each atomically; the hash."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with writing(path, tmp):  # the checksum goes first: a full disk never leaves weights without one
        save_model(model, str(tmp), metadata=metadata)
        digest = sha256(tmp)
        atomic_write_text(sidecar(path), json.dumps({"sha256": digest, "bytes": tmp.stat().st_size}))
        os.replace(tmp, path)
    return digest


def verify_weights(path: str | Path, expected: str | None = None) -> str:
    """Check `path` against `expected` (else its sidecar); the hash, or `CorruptModel`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file {path}")
    if expected is None:
        side = sidecar(path)
        try:
            expected = json.loads(side.read_text())["sha256"]
        except (OSError, ValueError, KeyError) as err:
            raise CorruptModel(f"{path}: no readable checksum ({side.name}: {err}); the file cannot be "
                               "verified: retrain or re-export it") from None
    actual = sha256(path)
    if actual != expected:
        raise CorruptModel(f"{path}: checksum mismatch (expected sha256 {expected}, got {actual}): "
                           "the file was modified or damaged")
    return actual


def load_weights(model: nn.Module, path: str | Path, expected: str | None = None) -> None:
    """Verify, then load `path` into `model`; an unreadable file is a `CorruptModel` too."""
    verify_weights(path, expected)
    try:
        load_model(model, str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CorruptModel(f"{path}: unreadable weights ({err})") from None


def parameter_count(path: str | Path, part: str = "") -> int:
    """Parameters stored in a safetensors file (names containing `part`), from its header
    only: 8 bytes of header length, then a JSON map of tensor name → shape (no weights read)."""
    with open(path, "rb") as fh:
        try:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        except (struct.error, ValueError) as err:
            raise CorruptModel(f"{path}: unreadable safetensors header ({err})") from None
    total = 0
    for name, info in header.items():
        if name != "__metadata__" and part in name:
            n = 1
            for dim in info["shape"]:
                n *= dim
            total += n
    return total
