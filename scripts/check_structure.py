"""Check the code-shape rules of DEVELOPERS.md: every function ≤ 60 lines, every public module,
class and function of the three packages with a docstring.

`python scripts/check_structure.py` lists each violation as `path:line name: reason` and exits 1
if there is any. Runs in CI next to ruff and the import contracts.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGES = ("de3bert", "baselines", "benchmarks")
MAX_LINES = 60
#: methods that implement a documented interface (ExitPolicy, Recipe, ExitHeads, nn.Module):
#: the base class's docstring says why, so an override needs none of its own
OVERRIDES = {"grid", "step", "score", "init_state", "replay", "heads", "stages", "build",
             "after_training", "after_step", "forward_layer", "forward", "drop", "run"}


def _public(name: str) -> bool:
    return not name.startswith("_")


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    if not ast.get_docstring(tree):
        out.append(f"{path}:1 module: no docstring")
    scopes = [(tree, True)]
    while scopes:
        node, public_scope = scopes.pop()
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            public = public_scope and _public(child.name)
            if not isinstance(child, ast.ClassDef):
                length = child.end_lineno - child.lineno + 1
                if length > MAX_LINES:
                    out.append(f"{path}:{child.lineno} {child.name}: {length} lines > {MAX_LINES}")
            overrides = (isinstance(node, ast.ClassDef) and not isinstance(child, ast.ClassDef)
                         and (child.name in OVERRIDES or child.name.startswith("__")))
            if public and not overrides and not ast.get_docstring(child):
                out.append(f"{path}:{child.lineno} {child.name}: public, no docstring")
            scopes.append((child, public and isinstance(child, ast.ClassDef)))
    return out


def main() -> int:
    """Print every violation; exit 1 if any."""
    root = Path(__file__).resolve().parent.parent
    found = [v for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py")) for v in _violations(p)]
    for v in found:
        print(v)
    print(f"{len(found)} structure violation(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
