"""Small hospital tables for the user-data tests: age, smoker, ward -> outcome."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedcare.data.schema import TabularSchema

SCHEMA_DICT = {
    "target": {"column": "outcome", "positive": ["yes"], "negative": ["no"]},
    "features": [
        {"name": "age", "type": "numeric", "min": 0, "max": 120},
        {"name": "smoker", "type": "binary"},
        {"name": "ward", "type": "categorical", "categories": ["cardio", "icu", "onco"]},
        {"name": "bmi", "type": "numeric", "required": False},
    ],
}


def site_frame(seed: int, n: int, wards: tuple[str, ...] = ("icu", "cardio")) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.integers(20, 90, n)
    bmi = rng.normal(26, 4, n).round(1)
    bmi[rng.random(n) < 0.2] = np.nan  # an optional column with gaps
    return pd.DataFrame(
        {
            "age": age,
            "smoker": rng.choice(["yes", "no"], n),
            "ward": rng.choice(list(wards), n),
            "bmi": bmi,
            "outcome": np.where(age + rng.normal(0, 10, n) > 55, "yes", "no"),
        }
    )


def write_csv(folder: Path, site: str, frame: pd.DataFrame) -> Path:
    path = folder / f"{site}.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def schema() -> TabularSchema:
    return TabularSchema.parse(SCHEMA_DICT)
