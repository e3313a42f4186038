"""The package's import graph at the level of its subpackages: modules per package, the
imports between packages (importer row, imported column), and the cycles among the modules
of each package. ``lint-imports`` checks the layers; this prints the picture.

    python tools/import_graph.py
"""

from __future__ import annotations

import itertools

import grimp

ROOT = "pdmtrack"


def package_of(module: str) -> str:
    """``pdmtrack.tracking.tracker`` -> ``tracking``; a top-level module is its own package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def main() -> None:
    graph = grimp.build_graph(ROOT)
    modules = sorted(m for m in graph.modules if m.startswith(ROOT))
    packages = sorted({package_of(m) for m in modules})
    print("modules per package:")
    for package in packages:
        print(f"  {package:<10} {sum(package_of(m) == package for m in modules)}")
    counts = {(a, b): 0 for a, b in itertools.product(packages, packages)}
    for importer in modules:
        for imported in graph.find_modules_directly_imported_by(importer):
            if imported.startswith(ROOT) and package_of(importer) != package_of(imported):
                counts[package_of(importer), package_of(imported)] += 1
    width = max(len(p) for p in packages)
    print("\nimports between packages (row imports column):")
    print(" " * (width + 2) + " ".join(f"{p[:6]:>6}" for p in packages))
    for row in packages:
        print(f"  {row:<{width}}" + " ".join(f"{counts[row, col] or '.':>6}" for col in packages))
    mutual = [(a, b) for a, b in itertools.combinations(packages, 2) if counts[a, b] and counts[b, a]]
    print(f"\npackage pairs importing each other: {len(mutual)} {mutual if mutual else ''}")
    in_cycles = [
        (a, b)
        for a, b in itertools.combinations(modules, 2)
        if a.rsplit(".", 1)[0] == b.rsplit(".", 1)[0] and graph.chain_exists(a, b) and graph.chain_exists(b, a)
    ]
    print(f"sibling module pairs in an import cycle: {len(in_cycles)} {in_cycles if in_cycles else ''}")


if __name__ == "__main__":
    main()
