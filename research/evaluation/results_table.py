"""Result rows (flat dicts) as files and as a printed table.

    paths = write_rows(rows, "out/results")     # out/results.json and out/results.csv
    print(format_table(rows))                    # aligned columns, floats to 4 significant digits

Rows may differ in keys; the CSV has the union of columns in first-seen order, blank
where a row lacks one. Files are written to a temporary name and renamed, so a reader
never sees half a table.
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Sequence

from research.atomic_files import write_text_atomically

def columns_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Union of the rows' keys, in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def write_rows(rows: Sequence[dict[str, Any]], stem: str, *, metadata: dict[str, Any] | None = None) -> dict[str, str]:
    """`stem`.json ({"metadata": ..., "rows": [...]}) and `stem`.csv; returns their paths."""
    directory = os.path.dirname(os.path.abspath(stem))
    os.makedirs(directory, exist_ok=True)
    paths = {"json": stem + ".json", "csv": stem + ".csv"}
    write_text_atomically(paths["json"], json.dumps({"metadata": metadata or {}, "rows": [_plain(r) for r in rows]},
                                                    indent=1, allow_nan=True) + "\n")
    columns = columns_of(rows)
    tmp = f"{paths['csv']}.tmp{os.getpid()}"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(_plain(r) for r in rows)
    os.replace(tmp, paths["csv"])
    return paths


def read_rows(path: str) -> list[dict[str, Any]]:
    """The rows of a JSON file written by `write_rows`."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)["rows"]


def format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.4g}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain-text table: a header, a rule, one line per row; numbers right-aligned."""
    columns = list(columns or columns_of(rows))
    cells = [[format_value(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(row.get(c), (int, float)) and not isinstance(row.get(c), bool)
                   for row in rows if row.get(c) is not None) for c in columns]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(c) for c in cells])


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if hasattr(value, "item") and not isinstance(value, (str, bytes)):
            value = value.item()  # numpy scalars
        out[key] = value
    return out
