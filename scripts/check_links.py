"""Check the documentation's links and that nothing points outside the repository.

`python scripts/check_links.py` checks, over the repository's files (git's tracked and untracked,
not ignored, files when git is available; else a walk), leaving out `.venv`, `runs`, `.git` and
`docs/default_run` (a reference run's generated tables):

- every relative Markdown link (`[text](target)`, `![alt](target)`, `[ref]: target`) in a `*.md`
  file resolves to an existing file or folder (anchors and external URLs are not checked);
- no `*.md`, `*.py`, `*.toml`, `*.yaml`/`*.yml` or `*.sh` file contains a path that escapes the
  repository: the strings `../shared`, `shared/spec/` or `/work/`, or a Markdown link whose target
  resolves outside the repository root (e.g. `../x` from a file at the root).

Each violation is printed as `path:line: message`; exit 1 if there is any. Runs in CI next to
`scripts/check_structure.py`.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXCLUDED = (".venv", "runs", ".git", "docs/default_run")
#: folders never scanned by the fallback walk (caches and build outputs that git ignores)
WALK_SKIP = {".venv", "runs", ".git", "__pycache__", ".pytest_cache", ".ruff_cache", ".benchmarks",
             "node_modules"}
SUFFIXES = {".md", ".py", ".toml", ".yaml", ".yml", ".sh"}
#: strings that name a place outside this checkout
ESCAPING = ("../shared", "shared/spec/", "/work/")
#: files allowed to name one of those strings, and which: `run_all.sh` looks for a local GLUE copy
#: next to the checkout at run time (a runtime default for `GLUE_DIR`, not a document reference)
RUNTIME_DEFAULTS = {"scripts/setup.sh": ("../shared/glue_data",)}
#: this checker names those strings itself
SELF = "scripts/check_links.py"
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
EXTERNAL = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//|#)")


def _excluded(rel: str) -> bool:
    """Whether a repository-relative path lies in an excluded folder."""
    return any(rel == e or rel.startswith(e + "/") for e in EXCLUDED) or Path(rel).suffix not in SUFFIXES


def _git_files(root: Path) -> list[str] | None:
    """Tracked and untracked-but-not-ignored files (relative paths), or None without git."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=root, capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [p for p in out.decode().split("\0") if p]


def _walk_files(root: Path) -> Iterator[str]:
    """Every file under `root` outside the skipped folders (the fallback when git is absent)."""
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if path.is_file() and not any(p in WALK_SKIP or p.endswith(".egg-info") for p in parts[:-1]):
            yield "/".join(parts)


def files_to_check(root: Path = REPO) -> list[str]:
    """The repository-relative paths of every file with a checked suffix, exclusions applied."""
    listed = _git_files(root)
    names = listed if listed is not None else list(_walk_files(root))
    return sorted(n for n in set(names) if not _excluded(n) and (root / n).is_file())


def markdown_targets(text: str) -> Iterator[tuple[int, str]]:
    """(line number, link target) of every Markdown link outside code blocks and inline code."""
    in_fence = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        bare = INLINE_CODE.sub("", line)
        for match in LINK.finditer(bare):
            yield number, match.group(1)
        ref = REF_LINK.match(bare)
        if ref:
            yield number, ref.group(1)


def link_problem(root: Path, source: str, target: str) -> str | None:
    """Why a link target from file `source` is wrong (outside the repository, or missing), or None."""
    if EXTERNAL.match(target):
        return None
    path = target.split("#", 1)[0].split("?", 1)[0]
    if not path:
        return None
    base = root if path.startswith("/") else (root / source).parent
    resolved = (base / path.lstrip("/")).resolve() if not path.startswith("/") else Path(path).resolve()
    if resolved != root.resolve() and root.resolve() not in resolved.parents:
        return f"link target {target!r} points outside the repository"
    if not resolved.exists():
        return f"link target {target!r} does not exist"
    return None


def escaping_strings(source: str, text: str) -> Iterator[tuple[int, str]]:
    """(line number, message) for every string in `text` that names a place outside the repository."""
    allowed = RUNTIME_DEFAULTS.get(source, ())
    for number, line in enumerate(text.splitlines(), 1):
        rest = line
        for ok in allowed:
            rest = rest.replace(ok, "")
        found = [needle for needle in ESCAPING if needle in rest]
        if found:
            names = ", ".join(repr(n) for n in found)
            yield number, f"refers to a path outside the repository ({names}): {line.strip()[:100]}"


def check_file(root: Path, source: str) -> list[str]:
    """Every violation in one file, as `path:line: message`."""
    try:
        text = (root / source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return [f"{source}:1: cannot be read ({err})"]
    problems = [] if source == SELF else [f"{source}:{n}: {msg}" for n, msg in escaping_strings(source, text)]
    if source.endswith(".md"):
        for number, target in markdown_targets(text):
            msg = link_problem(root, source, target)
            if msg:
                problems.append(f"{source}:{number}: {msg}")
    return problems


def main(root: Path = REPO) -> int:
    """Check every file; print the violations; 0 when there is none, else 1."""
    problems = [p for source in files_to_check(root) for p in check_file(root, source)]
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} link/path problem(s)", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
