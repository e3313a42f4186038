"""Result tables shared by every evaluator: CSV files, console tables and a JSON record.

Numbers are written with three decimals (``'%.3f'``) and NaN as an empty cell, the way the
official DAVIS evaluation writes its CSVs with pandas (``float_format="%.3f"``). Every file
is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from pdmtrack.io.files import atomic_write_text

Cell = str | int | float | None


@dataclass(frozen=True)
class Table:
    """A titled table: column names and rows of cells (str, int, float or None)."""

    title: str
    columns: list[str]
    rows: list[list[Cell]]

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(f"row {row!r} has {len(row)} cells for {len(self.columns)} columns")


def format_cell(value: Cell) -> str:
    """Text of one cell: floats as '%.3f', NaN and None as ''."""
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def table_csv(table: Table) -> str:
    """The CSV text of ``table`` (header line, then one line per row)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.columns)
    writer.writerows([format_cell(cell) for cell in row] for row in table.rows)
    return buffer.getvalue()


def write_csv(path: Path, table: Table) -> Path:
    """Write ``table`` as CSV to ``path`` atomically; return the path."""
    atomic_write_text(path, table_csv(table))
    return Path(path)


def render_table(table: Table) -> str:
    """``table`` as right-aligned text columns under a dashed title line."""
    cells = [[format_cell(cell) for cell in row] for row in table.rows]
    widths = [max([len(name)] + [len(row[i]) for row in cells]) for i, name in enumerate(table.columns)]
    lines = [f"{'-' * 10} {table.title} {'-' * 10}"]
    lines.append(" ".join(name.rjust(width) for name, width in zip(table.columns, widths)))
    lines.extend(" ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in cells)
    return "\n".join(lines)


def print_tables(tables: list[Table], stream: TextIO | None = None) -> None:
    """Print each table (see :func:`render_table`), separated by blank lines."""
    print("\n\n".join(render_table(table) for table in tables), file=stream or sys.stdout)


def json_ready(value: object) -> object:
    """``value`` with NumPy scalars/arrays made plain, paths as strings and NaN/inf as None."""
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, np.generic):
        return json_ready(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, payload: dict) -> Path:
    """Write ``payload`` as indented, strict JSON to ``path`` atomically; return the path."""
    text = json.dumps(json_ready(payload), indent=2, allow_nan=False) + "\n"
    atomic_write_text(path, text)
    return Path(path)


def write_report(out_dir: Path, stem: str, global_table: Table, detail_table: Table, payload: dict) -> list[Path]:
    """``<stem>_global.csv``, ``<stem>_details.csv`` and ``<stem>_report.json``; print the tables."""
    out_dir = Path(out_dir)
    paths = [
        write_csv(out_dir / f"{stem}_global.csv", global_table),
        write_csv(out_dir / f"{stem}_details.csv", detail_table),
        write_json(out_dir / f"{stem}_report.json", payload),
    ]
    print_tables([global_table, detail_table])
    return paths
