"""Vertically partitioned data: the same patients, different facts at different parties.

Two generators, both seeded and deterministic:

* :func:`vertical_heart` splits the shipped UCI heart rows (all 740 complete rows of the four
  hospitals, unstandardised, FLamby split kept) by *columns* between a clinic (age, sex, chest
  pain, resting blood pressure and the label) and a laboratory (cholesterol, fasting sugar,
  resting ECG, exercise test), or three parties (laboratory: cholesterol and fasting sugar;
  cardiology: resting ECG and exercise test). Each patient carries one national patient
  number, which every party writes in its own format (``MRN-01234567``, ``0123-4567 ``,
  ``mrn 0123 4567``); :data:`HEART_ID_RULES` (strip, digits only) maps all of them to the
  same key. A fraction ``overlap`` of the patients is held by every party; each other patient
  is held by a random non-empty proper subset of the parties, so every party has patients
  the others lack. Every party's table is in its own random row order. The joined rows of
  the shared patients (:attr:`VerticalStudy.reference`) are the centralised reference a
  vertical model must reproduce.
* :class:`SyntheticIdentifiers` streams millions of identifiers per party with a chosen
  number of shared ones, in batches, in O(batch) memory: identifiers are an affine bijection
  of an index space, so uniqueness and the overlap hold by construction, not by a set.
"""

from __future__ import annotations

import functools
import math
import pathlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fedcare.core.errors import ConfigError
from fedcare.data.heart import FEATURES, load_heart_disease

LABEL = "disease"
SPLIT = "split"
# Declared normalisation of the heart study's identifiers, in the keys linkage rules take.
HEART_ID_RULES: dict[str, bool | str] = {"strip": True, "case": "keep", "digits_only": True}

_CLINIC = ["age", "sex", "cp_2", "cp_3", "cp_4", "trestbps"]
_LAB_TWO = ["chol", "fbs", "restecg_1", "restecg_2", "thalach", "exang", "oldpeak"]
_LAB_THREE = ["chol", "fbs"]
_CARDIOLOGY = ["restecg_1", "restecg_2", "thalach", "exang", "oldpeak"]


@dataclass(frozen=True)
class PartyTable:
    """One party's table: an identifier column, its feature columns, the label if it has it."""

    name: str
    frame: pd.DataFrame
    id_column: str
    features: tuple[str, ...]
    label: str | None = None

    @property
    def num_rows(self) -> int:
        return len(self.frame)


@dataclass(frozen=True)
class VerticalStudy:
    """The parties' tables (label party first) and the joined reference rows."""

    parties: tuple[PartyTable, ...]
    reference: pd.DataFrame
    seed: int
    overlap: float
    id_rules: dict[str, bool | str] = field(default_factory=lambda: dict(HEART_ID_RULES))

    @property
    def label_party(self) -> PartyTable:
        return self.parties[0]

    def party(self, name: str) -> PartyTable:
        for table in self.parties:
            if table.name == name:
                return table
        raise ConfigError(
            f"vertical study: no party {name!r}; parties are {[p.name for p in self.parties]}"
        )


def _heart_rows() -> pd.DataFrame:
    """All 740 complete heart rows, unstandardised, with label and FLamby split (a copy)."""
    return _read_heart_rows().copy()


@functools.cache
def _read_heart_rows() -> pd.DataFrame:
    heart = load_heart_disease(normalisation="none")
    frames = []
    for site in heart.sites:
        for split, x, y in (
            ("train", site.x_train, site.y_train),
            ("test", site.x_test, site.y_test),
        ):
            part = pd.DataFrame(x.astype(np.float64), columns=FEATURES)
            part[LABEL] = y
            part[SPLIT] = split
            frames.append(part)
    return pd.concat(frames, ignore_index=True)


def _membership(
    num_patients: int, num_parties: int, overlap: float, rng: np.random.Generator
) -> np.ndarray:
    """Boolean (patients, parties): shared patients everywhere, the rest a proper subset each."""
    held = np.zeros((num_patients, num_parties), dtype=bool)
    order = rng.permutation(num_patients)
    num_shared = round(overlap * num_patients)
    held[order[:num_shared]] = True
    # Non-empty proper subsets of the parties, as bit masks 1 .. 2^k - 2.
    subsets = np.arange(1, 2**num_parties - 1)
    masks = rng.choice(subsets, size=num_patients - num_shared)
    for party in range(num_parties):
        held[order[num_shared:], party] = (masks >> party) & 1 == 1
    return held


def _formats(numbers: np.ndarray, style: str, rng: np.random.Generator) -> list[str]:
    digits = [f"{n:08d}" for n in numbers]
    if style == "clinic":
        return [f"MRN-{d}" for d in digits]
    if style == "laboratory":  # grouped, with stray trailing blanks from a spreadsheet export
        blanks = rng.integers(0, 3, size=len(digits))
        return [f"{d[:4]}-{d[4:]}" + " " * int(b) for d, b in zip(digits, blanks, strict=True)]
    return [f"mrn {d[:4]} {d[4:]}" for d in digits]


def vertical_heart(parties: int = 2, overlap: float = 0.7, seed: int = 0) -> VerticalStudy:
    """The heart rows split by columns between 2 or 3 parties; see the module docstring."""
    if parties not in (2, 3):
        raise ConfigError(f"vertical heart study: parties must be 2 or 3, found {parties!r}")
    if not 0.0 < overlap <= 1.0:
        raise ConfigError(
            f"vertical heart study: overlap must be a fraction in (0, 1], found {overlap!r}"
        )
    rng = np.random.default_rng(seed)
    rows = _heart_rows()
    # One 8-digit national number per patient, unique, the same at every party.
    numbers = rng.choice(np.arange(1_000_000, 100_000_000), size=len(rows), replace=False)
    held = _membership(len(rows), parties, overlap, rng)
    layout: list[tuple[str, str, list[str], bool]] = [("clinic", "mrn", _CLINIC, True)]
    if parties == 2:
        layout.append(("laboratory", "patient_ref", _LAB_TWO, False))
    else:
        layout += [
            ("laboratory", "patient_ref", _LAB_THREE, False),
            ("cardiology", "subject", _CARDIOLOGY, False),
        ]
    tables = []
    for index, (name, id_column, columns, has_label) in enumerate(layout):
        mine = rng.permutation(np.flatnonzero(held[:, index]))  # the party's own row order
        frame = pd.DataFrame({id_column: _formats(numbers[mine], name, rng)})
        for column in columns:
            frame[column] = rows[column].to_numpy()[mine]
        if has_label:
            frame[LABEL] = rows[LABEL].to_numpy()[mine]
            frame[SPLIT] = rows[SPLIT].to_numpy()[mine]
        tables.append(
            PartyTable(
                name=name,
                frame=frame,
                id_column=id_column,
                features=tuple(columns),
                label=LABEL if has_label else None,
            )
        )
    shared = np.flatnonzero(held.all(axis=1))
    reference = rows.iloc[shared].copy()
    reference.insert(0, "patient", [f"{n:08d}" for n in numbers[shared]])
    reference = reference.sort_values("patient", ignore_index=True)
    ordered = ["patient", *_CLINIC, *(_LAB_TWO if parties == 2 else _LAB_THREE + _CARDIOLOGY)]
    reference = reference[[*ordered, LABEL, SPLIT]]
    return VerticalStudy(parties=tuple(tables), reference=reference, seed=seed, overlap=overlap)


def write_tables(study: VerticalStudy, folder: str) -> dict[str, str]:
    """Write each party's table as ``<folder>/<party>.csv``; returns party -> path."""
    out = pathlib.Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for table in study.parties:
        path = out / f"{table.name}.csv"
        table.frame.to_csv(path, index=False)
        paths[table.name] = str(path)
    return paths


class SyntheticIdentifiers:
    """Identifiers for ``sizes[p]`` patients per party, ``shared`` of them at every party.

    Index space: ``0 .. shared-1`` are the shared patients, then each party's own block.
    Party p's row r holds index ``perm_p(r)`` (an affine bijection of its rows, so every
    party has its own order), and an index i is written ``P`` + 13 digits of
    ``(a * i + b) mod 2**40``, a bijection because ``a`` is odd: unique by construction.
    """

    _MODULUS_BITS = 40

    def __init__(self, sizes: Sequence[int], shared: int, seed: int = 0) -> None:
        if len(sizes) < 2:
            raise ConfigError(f"synthetic identifiers: need at least 2 parties, found {len(sizes)}")
        for p, size in enumerate(sizes):
            if size < 1:
                raise ConfigError(
                    f"synthetic identifiers: party {p} size must be >= 1, found {size}"
                )
            if not 0 <= shared <= size:
                raise ConfigError(
                    f"synthetic identifiers: shared must be between 0 and party {p}'s size "
                    f"{size}, found {shared}"
                )
        total = shared + sum(s - shared for s in sizes)
        if total >= 2**self._MODULUS_BITS:
            raise ConfigError(f"synthetic identifiers: at most 2^40 patients, found {total}")
        self.sizes = tuple(int(s) for s in sizes)
        self.shared = int(shared)
        rng = np.random.default_rng(seed)
        self._a = int(rng.integers(1, 2**39)) * 2 + 1
        self._b = int(rng.integers(0, 2**self._MODULUS_BITS))
        self._orders = [self._coprime_affine(size, rng) for size in self.sizes]
        starts = np.cumsum([0, *(s - shared for s in self.sizes)])
        self._block_start = [shared + int(x) for x in starts[:-1]]

    @staticmethod
    def _coprime_affine(size: int, rng: np.random.Generator) -> tuple[int, int]:
        while True:
            c = int(rng.integers(1, max(size, 2)))
            if math.gcd(c, size) == 1:
                return c, int(rng.integers(0, size))

    def indices(self, party: int, start: int, stop: int) -> np.ndarray:
        """Patient indices of party ``party``'s rows ``start .. stop-1``."""
        c, d = self._orders[party]
        rows = np.arange(start, stop, dtype=np.int64)
        position = (c * rows + d) % self.sizes[party]
        own = position >= self.shared
        position[own] += self._block_start[party] - self.shared
        return position

    def identifiers(self, indices: np.ndarray) -> list[str]:
        mask = np.uint64(2**self._MODULUS_BITS - 1)
        # uint64 wraps mod 2^64, so masking gives the product mod 2^40 exactly.
        values = (indices.astype(np.uint64) * np.uint64(self._a) + np.uint64(self._b)) & mask
        return [f"P{v:013d}" for v in values.tolist()]

    def batches(self, party: int, batch_size: int = 100_000) -> Iterator[list[str]]:
        """Party ``party``'s identifiers in its row order, ``batch_size`` at a time."""
        if not 0 <= party < len(self.sizes):
            raise ConfigError(f"synthetic identifiers: no party {party}; have {len(self.sizes)}")
        for start in range(0, self.sizes[party], batch_size):
            stop = min(start + batch_size, self.sizes[party])
            yield self.identifiers(self.indices(party, start, stop))

    def shared_identifiers(self) -> set[str]:
        """The identifiers every party holds (for tests on small sizes)."""
        return set(self.identifiers(np.arange(self.shared, dtype=np.int64)))
