"""The per-layer record: every signal of one full-depth pass, saved once, replayed many times.

Stored as safetensors plus a JSON sidecar with a SHA-256 of the tensor file, so a truncated or
corrupted record is detected and rebuilt instead of being used.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class CorruptRecord(RuntimeError):
    """A record whose file does not match its checksum (or cannot be read)."""


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks (records can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: a write that fails with less free space than this on its filesystem failed for lack of space
#: (torch.save's writer says only "unexpected pos", with no errno, when a tmpfs fills up)
FULL_BELOW = 1 << 20


def out_of_space(err: BaseException, where: Path) -> bool:
    """Whether `err`, raised while writing into folder `where`, means the disk is full."""
    if getattr(err, "errno", None) == errno.ENOSPC or "No space left" in str(err):
        return True
    try:
        return shutil.disk_usage(where).free < FULL_BELOW
    except OSError:
        return False


@contextlib.contextmanager
def writing(path: Path, tmp: Path):
    """Around one atomic write (`tmp` a file or a folder): a full disk (ENOSPC, as safetensors'
    writer words it, or any failure with the disk nearly full) becomes `OSError(ENOSPC, ..., path)`
    naming the target, and the partial temp is removed so the space is free again; the previous
    version of `path` is untouched."""
    try:
        yield
    except Exception as err:
        full = out_of_space(err, tmp.parent)  # before the temp is removed and frees the space
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        if full:
            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from err
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file and rename, so a killed run never leaves a half-written file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with writing(path, tmp):
        tmp.write_text(text)
        os.replace(tmp, path)


def save_record(record: dict[str, torch.Tensor], path: str | Path, meta: dict | None = None) -> None:
    """Write `path` (.safetensors) and `path`.json, each atomically: tensors to a temp file, the
    sidecar, then the rename (so no interruption leaves a record that passes a stale sidecar)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with writing(path, tmp):  # the sidecar first: a full disk leaves the old pair or the new, valid
        save_file({k: v.contiguous() for k, v in record.items()}, str(tmp))
        side = {"sha256": sha256(tmp), "bytes": tmp.stat().st_size, "meta": meta or {}}
        atomic_write_text(path.with_name(path.name + ".json"), json.dumps(side, indent=2, sort_keys=True))
        os.replace(tmp, path)


def load_record(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a record after checking its checksum; raise `CorruptRecord` if it does not match."""
    path = Path(path)
    side_path = path.with_name(path.name + ".json")
    if not path.is_file() or not side_path.is_file():
        raise FileNotFoundError(f"no complete record at {path}")
    try:
        side = json.loads(side_path.read_text())
    except json.JSONDecodeError as err:
        raise CorruptRecord(f"{side_path}: unreadable sidecar ({err})") from err
    if path.stat().st_size != side.get("bytes") or sha256(path) != side.get("sha256"):
        raise CorruptRecord(f"{path}: checksum mismatch (truncated or modified)")
    return load_file(str(path))


def record_meta(path: str | Path) -> dict:
    """The metadata saved with a record (task, recipe, seed, mean dev length, seconds)."""
    path = Path(path)
    return json.loads(path.with_name(path.name + ".json").read_text()).get("meta", {})
