"""``fedcare datasets describe``: a dataset's facts as readable lines and tables.

Scalars print as ``key: value``; a list of values as one comma-separated line; a list of
records (the sites, with their rows and class counts) as a table; a mapping as indented
lines. Nothing is printed as a Python repr.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

_HEADERS = {
    "name": "site",
    "train": "train rows",
    "test": "test rows",
    "label_counts_train": "train rows by class",
    "label_counts_test": "test rows by class",
    "label_share_train": "train share by class",
}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_cell(v)}" for k, v in value.items())
    if isinstance(value, Sequence) and not isinstance(value, str):
        return " / ".join(_cell(v) for v in value)
    return str(value)


def _label(key: str) -> str:
    return key.replace("_", " ")


def _records_table(key: str, rows: Sequence[Mapping[str, Any]], classes: Any) -> Table:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    by_class = f" (by class: {_cell(classes)})" if classes else ""
    table = Table(title=f"{_label(key)}{by_class}", title_justify="left")
    for column in columns:
        text = all(isinstance(row.get(column), str) for row in rows)
        table.add_column(_HEADERS.get(column, _label(column)), justify="left" if text else "right")
    for row in rows:
        table.add_row(*(escape(_cell(row.get(column))) for column in columns))
    return table


def _is_records(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def print_description(console: Console, info: Mapping[str, Any]) -> None:
    """Print ``describe_dataset``'s facts: lines first, then each list of records as a table."""
    tables = []
    for key, value in info.items():
        if _is_records(value):
            tables.append(_records_table(key, value, info.get("classes")))
        elif isinstance(value, Mapping):
            console.print(f"[bold]{escape(_label(key))}[/]:", highlight=False)
            for sub, item in value.items():
                console.print(f"  {escape(str(sub))}: {escape(_cell(item))}", highlight=False)
        elif isinstance(value, list):
            console.print(
                f"[bold]{escape(_label(key))}[/]: {escape(', '.join(map(_cell, value)))}",
                highlight=False,
            )
        else:
            console.print(
                f"[bold]{escape(_label(key))}[/]: {escape(_cell(value))}", highlight=False
            )
    for table in tables:
        console.print(table)
