"""``logystera sql``: one query against the store, printed as a table, CSV, JSON Lines or raw lines.

``raw`` prints the values of a one-column result, one per line, as they are: the alert page's reproduce
commands use it to write a span of stored signal envelopes back out as a JSON Lines file for ``replay``.
"""

from __future__ import annotations

import csv
import json
from datetime import datetime
from typing import Any, TextIO

from schemas.errors import UsageError
from sinks.clickhouse import Store


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        # The store keeps UTC; clickhouse-connect hands back naive datetimes. Print them like the records do.
        return f"{value:%Y-%m-%dT%H:%M:%S}.{value.microsecond // 1000:03d}Z"
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _cell(value: Any) -> str:
    value = _plain(value)
    if value is None:
        return "NULL"
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def run_sql(store: Store, query: str, output_format: str, out: TextIO) -> int:
    """Run ``query`` and write its result to ``out``; 0 on success."""
    result = store.query(query)
    names = list(result.column_names)
    if not names and query.lstrip().upper().startswith(("SELECT", "WITH")):
        # chDB reports no column names for an empty result; ask the store for the result's shape.
        names = [row[0] for row in store.query(f"DESCRIBE ({query})").result_rows]
    rows = result.result_rows
    if output_format == "raw":
        if len(names) != 1:
            raise UsageError(f"--format raw prints one column; the query returns {len(names)}")
        for (value,) in rows:
            out.write(_cell(value) + "\n")
    elif output_format == "json":
        for row in rows:
            out.write(json.dumps({name: _plain(value) for name, value in zip(names, row, strict=True)},
                                 ensure_ascii=False, default=str) + "\n")
    elif output_format == "csv":
        writer = csv.writer(out)
        writer.writerow(names)
        writer.writerows([[_cell(value) for value in row] for row in rows])
    else:
        cells = [[_cell(value) for value in row] for row in rows]
        widths = [max([len(name), *(len(row[i]) for row in cells)]) for i, name in enumerate(names)]
        out.write("  ".join(name.ljust(width) for name, width in zip(names, widths, strict=True)).rstrip() + "\n")
        out.write("  ".join("-" * width for width in widths) + "\n")
        for row in cells:
            out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n")
        out.write(f"({len(rows)} row{'s' if len(rows) != 1 else ''})\n")
    return 0
