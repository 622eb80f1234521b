"""Print the import graph between tuneloop's subpackages: its edges and the cycles among them.

Counts every import grimp sees, those inside functions included, since a lazy import is still a dependency.
`__main__` modules are entry points (`python -m tuneloop.train` runs the CLI), not library code: they are left
out, as the import-linter contracts ignore them. The closing notes of the architecture work quote this output
before and after; `lint-imports` checks the contracts.

    python scripts/import_graph.py            # edges (with how many module imports make each) and cycles
    python scripts/import_graph.py --json     # the same, machine-readable
"""

from __future__ import annotations

import argparse
import json
import signal
from collections import Counter

import grimp
import networkx


def subpackage(module: str) -> str:
    """`tuneloop.train.stage` -> `train`; top-level modules (`tuneloop.cli`) stand for themselves."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def package_edges(graph: grimp.ImportGraph) -> Counter[tuple[str, str]]:
    edges: Counter[tuple[str, str]] = Counter()
    for importer in graph.modules:
        if importer.endswith(".__main__"):
            continue
        for imported in graph.find_modules_directly_imported_by(importer):
            a, b = subpackage(importer), subpackage(imported)
            if a != b:
                edges[a, b] += 1
    return edges


def cycles(edges: Counter[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components with more than one subpackage: each is a knot of mutual imports."""
    g = networkx.DiGraph(list(edges))
    return sorted((sorted(c) for c in networkx.strongly_connected_components(g) if len(c) > 1), key=len, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends the output quietly, as for any Unix tool
    graph = grimp.build_graph("tuneloop")
    edges = package_edges(graph)
    knots = cycles(edges)
    if args.json:
        print(json.dumps({"edges": [[a, b, n] for (a, b), n in sorted(edges.items())], "cycles": knots}, indent=2))
        return
    print(f"{len(graph.modules)} modules, {len(edges)} edges between subpackages, {len(knots)} cycle(s)")
    for (a, b), n in sorted(edges.items()):
        back = " (both ways)" if (b, a) in edges else ""
        print(f"  {a:>10} -> {b:<10} {n:>3}{back}")
    for knot in knots:
        print(f"cycle of {len(knot)}: {' '.join(knot)}")


if __name__ == "__main__":
    main()
