"""UCI Heart Disease across four hospitals, prepared exactly as FLamby's Fed-Heart-Disease.

Protocol (Ogier du Terrail et al., NeurIPS 2022): drop columns slope, ca and thal; drop
rows with any missing value (740 rows remain); train/test membership from
``flamby_split.csv``; one-hot ``cp`` and ``restecg`` with the first level dropped, levels
taken over all sites; label = num > 0; z-score every feature with each site's own train
mean and standard deviation. Per-site train/test: 199/104, 172/89, 30/16, 85/45.

FLamby computes the standard deviation with ``torch.std`` (unbiased, n - 1) and divides by
``std + 1e-9``; we use the same n - 1 and map a zero std to 1, which gives the same 0 for
Switzerland's constant ``chol`` without the epsilon touching every other column.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
import pandas as pd

from fedcare.core.errors import ConfigError, DataValidationError
from fedcare.data.base import FederatedDataset, SiteData, one_class_sites
from fedcare.data.files import data_folder

SITES = ("cleveland", "hungarian", "switzerland", "va")
SITE_DESCRIPTIONS = {
    "cleveland": "Cleveland Clinic Foundation",
    "hungarian": "Hungarian Institute of Cardiology, Budapest",
    "switzerland": "University Hospitals Zurich and Basel",
    "va": "V.A. Medical Center, Long Beach",
}
RAW_COLUMNS = [
    "age",
    "sex",
    "cp",
    "trestbps",
    "chol",
    "fbs",
    "restecg",
    "thalach",
    "exang",
    "oldpeak",
    "slope",
    "ca",
    "thal",
    "num",
]
DROPPED_COLUMNS = ("slope", "ca", "thal")
NUMERIC = ("age", "sex", "trestbps", "chol", "fbs", "thalach", "exang", "oldpeak")
ONE_HOT = {"cp": (1, 2, 3, 4), "restecg": (0, 1, 2)}
FEATURES = [*NUMERIC, "cp_2", "cp_3", "cp_4", "restecg_1", "restecg_2"]
ATTRIBUTION = (
    "UCI Heart Disease (CC BY 4.0). Principal investigators: Andras Janosi, M.D. (Hungarian "
    "Institute of Cardiology, Budapest); William Steinbrunn, M.D. (University Hospital, "
    "Zurich); Matthias Pfisterer, M.D. (University Hospital, Basel); Robert Detrano, M.D., "
    "Ph.D. (V.A. Medical Center, Long Beach and Cleveland Clinic Foundation). Split: FLamby "
    "Fed-Heart-Disease."
)


def _read_site(site: str) -> pd.DataFrame:
    text = (
        data_folder("heart-disease").joinpath(f"processed.{site}.data").read_text(encoding="utf-8")
    )
    frame = pd.read_csv(io.StringIO(text), header=None, names=RAW_COLUMNS, na_values="?")
    frame["row"] = np.arange(len(frame))
    return frame


def _split_labels() -> pd.DataFrame:
    text = data_folder("heart-disease").joinpath("flamby_split.csv").read_text(encoding="utf-8")
    return pd.read_csv(io.StringIO(text))


def _site_split(split: pd.DataFrame, site: str, num_rows: int) -> np.ndarray:
    """train/test/dropped for each line of the site's file, checked to cover every line once."""
    rows = split[split["center"] == site]
    if sorted(rows["row"].tolist()) != list(range(num_rows)):
        raise DataValidationError(
            "flamby_split.csv must list every row of the site's file exactly once",
            site=site,
            file="flamby_split.csv",
            column="row",
            expected=f"rows 0..{num_rows - 1}",
            found=f"{len(rows)} entries",
        )
    unknown = sorted(set(rows["split"]) - {"train", "test", "dropped"})
    if unknown:
        raise DataValidationError(
            "unknown split value",
            site=site,
            file="flamby_split.csv",
            column="split",
            expected="train, test or dropped",
            found=str(unknown),
        )
    return rows.set_index("row")["split"].reindex(range(num_rows)).to_numpy()


def _check_levels(site: str, frame: pd.DataFrame) -> None:
    """A level outside the declared ones would silently encode as the dropped first level."""
    for name, levels in ONE_HOT.items():
        unknown = sorted(set(frame[name].dropna().tolist()) - set(levels))
        if unknown:
            raise DataValidationError(
                "unexpected category",
                site=site,
                file=f"processed.{site}.data",
                column=name,
                expected=f"one of {list(levels)}",
                found=str(unknown[:5]),
            )


def _encode(frame: pd.DataFrame) -> np.ndarray:
    columns = [frame[c].to_numpy(dtype=np.float64) for c in NUMERIC]
    for name, levels in ONE_HOT.items():
        values = frame[name].to_numpy(dtype=np.float64)
        columns += [(values == level).astype(np.float64) for level in levels[1:]]
    return np.stack(columns, axis=1)


def _site_zscore(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0, ddof=1)  # unbiased, as torch.std in FLamby
    # A constant column (Switzerland records chol = 0 for everyone) becomes 0, not NaN.
    std[~(std > 0)] = 1.0
    return (x_train - mean) / std, (x_test - mean) / std


def load_heart_disease(normalisation: Literal["site", "none"] = "site") -> FederatedDataset:
    """The four-hospital heart study with FLamby's split and preprocessing."""
    if normalisation not in ("site", "none"):
        raise ConfigError(
            f"heart-disease: unknown normalisation {normalisation!r}; expected 'site' or 'none'"
        )
    split = _split_labels()
    sites = []
    for site in SITES:
        frame = _read_site(site).drop(columns=list(DROPPED_COLUMNS))
        frame["split"] = _site_split(split, site, len(frame))
        complete = ~frame[[c for c in RAW_COLUMNS if c not in DROPPED_COLUMNS]].isna().any(axis=1)
        # FLamby's "dropped" rows are exactly the rows with a missing value: check, don't trust.
        mismatch = complete != (frame["split"] != "dropped")
        if mismatch.any():
            raise DataValidationError(
                "rows with missing values and rows marked 'dropped' differ",
                site=site,
                file="flamby_split.csv",
                found=f"rows {frame.loc[mismatch, 'row'].tolist()[:5]}",
            )
        kept = frame[complete]
        _check_levels(site, kept)
        train, test = kept[kept["split"] == "train"], kept[kept["split"] == "test"]
        x_train, x_test = _encode(train), _encode(test)
        if normalisation == "site":
            x_train, x_test = _site_zscore(x_train, x_test)
        sites.append(
            SiteData(
                name=site,
                x_train=x_train.astype(np.float32),
                y_train=(train["num"].to_numpy() > 0).astype(np.int64),
                x_test=x_test.astype(np.float32),
                y_test=(test["num"].to_numpy() > 0).astype(np.int64),
            )
        )
    class_names = ["no disease", "disease"]
    return FederatedDataset(
        name="heart-disease",
        sites=sites,
        task="binary",
        num_classes=2,
        input_shape=(len(FEATURES),),
        feature_names=list(FEATURES),
        class_names=class_names,
        description=(
            "Coronary artery disease (angiographic narrowing > 50%) from 13 clinical features, "
            "four hospitals: " + "; ".join(f"{k}: {v}" for k, v in SITE_DESCRIPTIONS.items())
        ),
        source=ATTRIBUTION,
        # Switzerland's training rows are all "disease": a warning, as for a user's table.
        extra={"license": "CC BY 4.0", "warnings": one_class_sites(sites, class_names)},
    )
