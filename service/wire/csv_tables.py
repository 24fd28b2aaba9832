"""Rows of JSON objects as one CSV table, nested values flattened into columns.

A nested object's entries become columns named by their path joined with ``.`` (``step_size.min``), a
list's items by their index (``lr.0``); the columns are every row's, in the order they first appear. A
missing or null value is an empty cell.
"""

import csv
import io
from collections.abc import Iterable, Mapping
from typing import Any


def _flat(value: Any, prefix: str, into: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flat(item, f"{prefix}.{key}" if prefix else str(key), into)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _flat(item, f"{prefix}.{index}", into)
    else:
        into[prefix] = value


def csv_table(rows: Iterable[Mapping[str, Any]]) -> bytes:
    """The rows as CSV (RFC 4180: CRLF line ends, a header row), UTF-8."""
    flat_rows = []
    columns: dict[str, None] = {}
    for row in rows:
        flat: dict[str, Any] = {}
        _flat(row, "", flat)
        columns.update(dict.fromkeys(flat))
        flat_rows.append(flat)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(columns), lineterminator="\r\n")
    writer.writeheader()
    writer.writerows({key: ("" if value is None else value) for key, value in flat.items()} for flat in flat_rows)
    return text.getvalue().encode()
