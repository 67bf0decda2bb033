"""`results.jsonl`: the one reader and writer of a run's rows.

A row is one (task, method, knob value, seed) evaluation; rows are written per (task, method,
seed) group by an atomic rewrite (temp file + rename), and each row carries `group_size`, the
number of rows of its group. On load, unreadable lines and incomplete groups are dropped (after
keeping a copy of the damaged file), so a corrupted or truncated file is rebuilt by the re-run,
never silently used.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from tqdm.auto import tqdm

from de3bert.record import atomic_write_text

FULL = "full-model"  # the method name of the plain fine-tune's one row per (task, seed)


def group_key(row: dict) -> tuple:
    """(task, method, seed): the unit a run writes and resumes."""
    return row["task"], row["method"], row["seed"]


def parse_lines(raw: bytes) -> tuple[list[dict], int]:
    """Rows of a results file and the number of unreadable lines."""
    rows, bad = [], 0
    for line in raw.splitlines():  # bytes: a garbage line may not even be UTF-8
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
            _ = row["task"], row["method"], row["seed"], row["group_size"]
            rows.append(row)
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            bad += 1
    return rows, bad


def read_rows(path: str | Path) -> list[dict]:
    """Every complete row of a results file (for reports and checks; never rewrites it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no results file at {path}")
    rows, _ = parse_lines(path.read_bytes())
    sizes = Counter(group_key(r) for r in rows)
    return [r for r in rows if sizes[group_key(r)] == r["group_size"]]


class Results:
    """A run's results file: read once, repaired if damaged, updated per group atomically."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = []
        if path.is_file():
            self._load()

    def _load(self) -> None:
        rows, bad = parse_lines(self.path.read_bytes())
        sizes = Counter(group_key(r) for r in rows)
        self.rows = [r for r in rows if sizes[group_key(r)] == r["group_size"]]
        dropped = len(rows) - len(self.rows)
        if bad or dropped:
            backup = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
            backup.write_bytes(self.path.read_bytes())
            tqdm.write(f"[runner] {self.path}: {bad} unreadable line(s), {dropped} row(s) of incomplete "
                       f"groups; copy kept at {backup}; those groups will be recomputed")
            self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.rows))

    def done(self, task: str, method: str, seed: int, key: str | None = None) -> bool:
        """Whether the group (task, method, seed) is complete and was made with config `key`.

        A group made with another configuration is not done; it stays in the file (a failing run
        loses nothing) until `add_group` replaces it atomically with the recomputed one."""
        rows = [r for r in self.rows if group_key(r) == (task, method, seed)]
        if not rows:
            return False
        if key is None or all(r.get("group_hash") == key for r in rows):
            return True
        tqdm.write(f"[runner] {task} × {method} (seed {seed}) was made with another configuration; "
                   "recomputing it")
        return False

    def add_group(self, rows: list[dict]) -> None:
        """Write one complete group (replacing an older version of it) by an atomic rewrite."""
        keys = {group_key(r) for r in rows}
        for r in rows:
            r["group_size"] = len(rows)
        self.rows = [r for r in self.rows if group_key(r) not in keys] + rows
        self._write()


def check_one_configuration(rows: list[dict]) -> None:
    """Refuse rows of two configurations in one table: per (task, seed) every row must come from
    the same full model, and rows of one recipe from the same trained model (a re-run with other
    settings that has not finished yet leaves both)."""
    seen: dict[tuple, set] = {}
    for r in rows:
        if "config_hash" not in r:
            continue  # rows written before config keys existed
        seen.setdefault((r["task"], r["seed"], "full"), set()).add(r.get("full_config_hash"))
        seen.setdefault((r["task"], r["seed"], r["recipe"]), set()).add(r["config_hash"])
    mixed = sorted(f"{t} seed {s} ({what})" for (t, s, what), h in seen.items() if len(h) > 1)
    if mixed:
        raise ValueError("results mix rows made with two configurations: " + ", ".join(mixed)
                         + "; rerun the profile to finish recomputing them")
