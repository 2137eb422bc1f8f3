"""Reading one hospital's CSV or Parquet file: the one reader of the simulator and the site.

Exports from hospital systems differ in small ways that would otherwise turn into a list of
"missing column" errors: a semicolon, tab or pipe instead of a comma, spaces after the
delimiters or around the header names. The reader detects the delimiter from the header and
the lines below it, strips those spaces, and says what it did as a warning, so a file is
read the same way (and reported the same way) in simulation and at a deployed site.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fedcare.core.errors import DataValidationError
from fedcare.data.schema import ValidationIssue

DELIMITERS = (",", ";", "\t", "|")
_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
_SNIFF_BYTES = 64 * 1024
_SNIFF_LINES = 20
_PARQUET = (".parquet", ".pq")


@dataclass(frozen=True)
class TableFile:
    """A site's rows, and warnings about how they had to be read."""

    frame: pd.DataFrame
    warnings: list[ValidationIssue] = field(default_factory=list)


def delimiter_name(delimiter: str) -> str:
    return f"{_NAMES.get(delimiter, 'character')} ({delimiter!r})"


def detect_delimiter(text: str) -> str:
    """The delimiter that splits the header into the most columns and every line below it
    into as many (quotes respected); a comma when none splits the header at all."""
    lines = [line for line in text.splitlines() if line.strip()][:_SNIFF_LINES]
    if not lines:
        return ","
    best, best_width = ",", 1
    for delimiter in DELIMITERS:
        widths = [len(row) for row in csv.reader(lines, delimiter=delimiter)]
        # The last sniffed line may be cut mid-row by the byte limit: it does not vote.
        body = widths[1:-1] if len(widths) > 2 else widths[1:]
        consistent = all(w == widths[0] for w in body)
        if consistent and widths[0] > best_width:
            best, best_width = delimiter, widths[0]
    return best


def read_table_file(site: str, path: Path) -> TableFile:
    """One site's file; a missing, unsupported or unparsable file is a DataValidationError
    naming the site and the full path tried."""
    path = Path(path)
    shown = str(path.absolute())
    if not path.is_file():
        raise DataValidationError("file not found", site=site, file=shown)
    suffix = path.suffix.lower()
    if suffix not in (".csv", *_PARQUET):
        raise DataValidationError(
            "unsupported file type",
            site=site,
            file=str(path),
            expected=".csv or .parquet",
            found=path.suffix or "no extension",
        )
    warnings: list[ValidationIssue] = []
    try:
        if suffix == ".csv":
            frame, header = _read_csv(site, path, warnings)
        else:
            frame = pd.read_parquet(path)
            header = [str(c) for c in frame.columns]
    except Exception as exc:  # any parser failure is a data problem, reported in one line
        raise DataValidationError(
            f"cannot read the file ({type(exc).__name__}: {exc})", site=site, file=str(path)
        ) from exc
    frame = _strip_header(site, path, frame.reset_index(drop=True), header, warnings)
    return TableFile(frame, warnings)


def _read_csv(
    site: str, path: Path, warnings: list[ValidationIssue]
) -> tuple[pd.DataFrame, list[str]]:
    """The rows, and the header's names exactly as the file spells them."""
    with path.open("r", encoding="utf-8-sig", errors="replace", newline="") as handle:
        head = handle.read(_SNIFF_BYTES)
    delimiter = detect_delimiter(head)
    if delimiter != ",":
        warnings.append(
            ValidationIssue(
                "warning",
                f"read with the {delimiter_name(delimiter)} delimiter detected from the "
                "header, not a comma",
                site,
                str(path),
            )
        )
    lines = [line for line in head.splitlines() if line.strip()]
    header = next(csv.reader(lines[:1], delimiter=delimiter), [])
    # skipinitialspace: "61, yes" exports (a space after each delimiter) read as "61,yes".
    frame = pd.read_csv(path, sep=delimiter, skipinitialspace=True, encoding="utf-8-sig")
    return frame, header


def _strip_header(
    site: str,
    path: Path,
    frame: pd.DataFrame,
    header: list[str],
    warnings: list[ValidationIssue],
) -> pd.DataFrame:
    """Column names without surrounding spaces; a name that then appears twice is an error."""
    stripped = [str(c).strip() for c in frame.columns]
    twice = sorted({n for n in stripped if stripped.count(n) > 1})
    if twice:
        raise DataValidationError(
            "column names appear more than once",
            site=site,
            file=str(path),
            expected="each column name once (spaces around names are ignored)",
            found=str(twice),
        )
    padded = [repr(n) for n in header if n != n.strip()]
    if padded:
        warnings.append(
            ValidationIssue(
                "warning",
                f"spaces around column names were removed: {', '.join(padded[:6])}"
                + (f" and {len(padded) - 6} more" if len(padded) > 6 else ""),
                site,
                str(path),
            )
        )
    frame.columns = pd.Index(stripped)
    return frame
