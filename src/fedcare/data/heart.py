"""UCI Heart Disease across four hospitals, prepared exactly as FLamby's Fed-Heart-Disease.

Protocol (Ogier du Terrail et al., NeurIPS 2022): drop columns slope, ca and thal; drop
rows with any missing value (740 rows remain); train/test membership from
``flamby_split.csv``; one-hot ``cp`` and ``restecg`` with the first level dropped, levels
taken over all sites; label = num > 0; z-score every feature with each site's own train
mean and standard deviation. Per-site train/test: 199/104, 172/89, 30/16, 85/45.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
import pandas as pd

from fedcare.core.errors import DataValidationError
from fedcare.data.base import FederatedDataset, SiteData
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


def _encode(frame: pd.DataFrame) -> np.ndarray:
    columns = [frame[c].to_numpy(dtype=np.float64) for c in NUMERIC]
    for name, levels in ONE_HOT.items():
        values = frame[name].to_numpy()
        columns += [(values == level).astype(np.float64) for level in levels[1:]]
    return np.stack(columns, axis=1)


def load_heart_disease(normalisation: Literal["site", "none"] = "site") -> FederatedDataset:
    """The four-hospital heart study with FLamby's split and preprocessing."""
    if normalisation not in ("site", "none"):
        raise DataValidationError(
            "unknown normalisation",
            column="normalisation",
            expected="'site' or 'none'",
            found=repr(normalisation),
        )
    split = _split_labels()
    sites = []
    for site in SITES:
        frame = _read_site(site).drop(columns=list(DROPPED_COLUMNS))
        labels = split[split["center"] == site].set_index("row")["split"]
        if len(labels) != len(frame):
            raise DataValidationError(
                "flamby_split.csv does not cover every row",
                site=site,
                file="flamby_split.csv",
                expected=f"{len(frame)} rows",
                found=str(len(labels)),
            )
        frame["split"] = labels.reindex(frame["row"]).to_numpy()
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
        train, test = kept[kept["split"] == "train"], kept[kept["split"] == "test"]
        x_train, x_test = _encode(train), _encode(test)
        if normalisation == "site":
            mean = x_train.mean(axis=0)
            std = x_train.std(axis=0)
            # A constant column (Switzerland records chol = 0 for everyone) becomes 0, not NaN.
            std[std == 0] = 1.0
            x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
        sites.append(
            SiteData(
                name=site,
                x_train=x_train.astype(np.float32),
                y_train=(train["num"].to_numpy() > 0).astype(np.int64),
                x_test=x_test.astype(np.float32),
                y_test=(test["num"].to_numpy() > 0).astype(np.int64),
            )
        )
    return FederatedDataset(
        name="heart-disease",
        sites=sites,
        task="binary",
        num_classes=2,
        input_shape=(len(FEATURES),),
        feature_names=list(FEATURES),
        class_names=["no disease", "disease"],
        description=(
            "Coronary artery disease (angiographic narrowing > 50%) from 13 clinical features, "
            "four hospitals: " + "; ".join(f"{k}: {v}" for k, v in SITE_DESCRIPTIONS.items())
        ),
        source=ATTRIBUTION,
        extra={"license": "CC BY 4.0"},
    )
