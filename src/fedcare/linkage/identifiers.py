"""A party's PSI input: its identifier column, streamed from a table and keyed-hashed.

Raw identifiers are read ``batch_size`` rows at a time (CSV through pandas, Parquet through
pyarrow) and only their 32-byte keyed hashes are kept, in the party's row order, so ten
million identifiers take 320 MB, not a list of Python strings. Every input problem is
found here, before any message is sent: a missing file or identifier column, an empty
table, an identifier that normalises to nothing, two rows with the same key.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow.parquet as pq

from fedcare.core.errors import DataValidationError
from fedcare.linkage.group import ELEMENT_BYTES
from fedcare.linkage.normalise import IdentifierRules, check_secret, keyed_hashes

DEFAULT_BATCH = 65_536


@dataclass(frozen=True)
class KeyedIdentifiers:
    """One party's keyed hashes, shape (rows, 32) uint8, row i = the table's data row i."""

    party: str
    keys: npt.NDArray[np.uint8]
    file: str | None = None
    column: str | None = None

    @property
    def num_rows(self) -> int:
        return int(self.keys.shape[0])


def _prefix_u64(keys: npt.NDArray[np.uint8], start: int) -> npt.NDArray[np.uint64]:
    return np.ascontiguousarray(keys[:, start : start + 8]).view(">u8").ravel()


def _first_duplicate(keys: npt.NDArray[np.uint8]) -> tuple[int, int] | None:
    """Rows (ascending) of one pair of equal keys, or None; sorts on the first 16 bytes."""
    if len(keys) < 2:
        return None
    high, low = _prefix_u64(keys, 0), _prefix_u64(keys, 8)
    order = np.lexsort((low, high))
    same = (high[order][1:] == high[order][:-1]) & (low[order][1:] == low[order][:-1])
    for at in np.flatnonzero(same):
        a, b = sorted((int(order[at]), int(order[at + 1])))
        if np.array_equal(keys[a], keys[b]):  # 128 equal bits: confirm the full 256
            return a, b
    return None


def keyed_identifiers(
    batches: Iterable[Sequence[str]],
    rules: IdentifierRules,
    secret: bytes,
    *,
    party: str,
    file: str | None = None,
    column: str = "id",
) -> KeyedIdentifiers:
    """Normalise and keyed-hash a stream of identifier batches into a party's PSI input."""
    check_secret(secret)
    parts: list[npt.NDArray[np.uint8]] = []
    rows = 0
    for batch in batches:
        hashed = keyed_hashes(
            batch, rules, secret, party=party, file=file, column=column, first_row=rows
        )
        parts.append(np.frombuffer(b"".join(hashed), dtype=np.uint8).reshape(-1, ELEMENT_BYTES))
        rows += len(hashed)
    if rows == 0:
        raise DataValidationError(
            "no identifiers to link",
            site=party,
            file=file,
            column=column,
            expected="at least one row",
            found="an empty table",
        )
    keys = np.concatenate(parts)
    duplicate = _first_duplicate(keys)
    if duplicate is not None:
        a, b = duplicate
        raise DataValidationError(
            f"data rows {a + 1} and {b + 1} have the same identifier after normalisation",
            site=party,
            file=file,
            column=column,
            expected="one row per patient",
            found="a duplicate identifier",
        )
    return KeyedIdentifiers(party=party, keys=keys, file=file, column=column)


def _missing_column(
    party: str, path: pathlib.Path, column: str, columns: list[str]
) -> DataValidationError:
    return DataValidationError(
        "the declared identifier column is not in the table",
        site=party,
        file=str(path),
        column=column,
        expected=f"a column named {column!r}",
        found=f"columns {columns[:20]}",
    )


def read_identifier_batches(
    path: str | pathlib.Path, column: str, *, party: str, batch_size: int = DEFAULT_BATCH
) -> Iterator[list[str]]:
    """The identifier column of a CSV or Parquet table, ``batch_size`` rows at a time, as text."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataValidationError(
            "identifier table not found",
            site=party,
            file=str(path),
            expected="a CSV or Parquet file",
        )
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        table = pq.ParquetFile(path)
        names = table.schema_arrow.names
        if column not in names:
            raise _missing_column(party, path, column, list(names))
        for record_batch in table.iter_batches(batch_size=batch_size, columns=[column]):
            values = record_batch.column(0).to_pylist()
            yield ["" if v is None else str(v) for v in values]
        return
    if suffix != ".csv":
        raise DataValidationError(
            "unsupported identifier table format",
            site=party,
            file=str(path),
            expected=".csv or .parquet",
            found=suffix or "no suffix",
        )
    header = list(pd.read_csv(path, nrows=0).columns)
    if column not in header:
        raise _missing_column(party, path, column, header)
    # Identifiers are text: dtype=str keeps leading zeros, keep_default_na keeps "NA" a value.
    reader = pd.read_csv(
        path, usecols=[column], dtype=str, keep_default_na=False, chunksize=batch_size
    )
    for chunk in reader:
        yield chunk[column].tolist()


def read_keyed_identifiers(
    path: str | pathlib.Path,
    column: str,
    rules: IdentifierRules,
    secret: bytes,
    *,
    party: str,
    batch_size: int = DEFAULT_BATCH,
) -> KeyedIdentifiers:
    """A party's PSI input straight from its table file."""
    batches = read_identifier_batches(path, column, party=party, batch_size=batch_size)
    return keyed_identifiers(batches, rules, secret, party=party, file=str(path), column=column)
