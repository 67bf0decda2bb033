"""Report the project's import graph: modules in import cycles (lazy imports included).

`python scripts/import_graph.py` prints every strongly connected component of more than one
module and exits 1 if there is any. grimp (import-linter's graph library) reads every import
statement, including those inside functions, so a lazy import that closes a cycle is found too.
"""

from __future__ import annotations

import sys

import grimp

PACKAGES = ("de3bert", "baselines", "benchmarks")


def strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """Tarjan's algorithm over the module graph; components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.find_modules_directly_imported_by(v)):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph.modules):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    """Print the cycles (if any) and the edges between the project's packages."""
    graph = grimp.build_graph(*PACKAGES)
    cycles = strongly_connected(graph)
    print(f"{len(graph.modules)} modules, {sum(len(c) for c in cycles)} in import cycles")
    for comp in cycles:
        print("  cycle: " + ", ".join(comp))
    for a in PACKAGES:
        for b in PACKAGES:
            if a != b and graph.chain_exists(importer=a, imported=b, as_packages=True):
                print(f"  {a} → {b}")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
