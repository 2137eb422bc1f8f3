"""What a federated dataset is: one train/test pair per site, never pooled by default."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import DataValidationError

Task = Literal["binary", "multiclass", "survival"]
"""``survival``: ``y_*`` is the event indicator (1 = event observed, 0 = censored) and
``time_*`` the follow-up time of each row; a model outputs one risk score per row, so a
survival dataset declares ``num_classes = 2`` (one output) with classes censored/event."""


@dataclass
class SiteData:
    """One site's local data. ``x_*`` float32 with shape (n, *input_shape); ``y_*`` int64 labels.

    Survival data adds ``time_*`` (float64, finite, >= 0, one per row) and ``y_*`` is then
    the 0/1 event indicator; both splits carry times or neither does.
    """

    name: str
    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int64]
    x_test: npt.NDArray[np.float32]
    y_test: npt.NDArray[np.int64]
    time_train: npt.NDArray[np.float64] | None = None
    time_test: npt.NDArray[np.float64] | None = None

    @property
    def is_survival(self) -> bool:
        return self.time_train is not None

    def __post_init__(self) -> None:
        if (self.time_train is None) != (self.time_test is None):
            raise DataValidationError(
                "survival times are given for one split only",
                site=self.name,
                expected="time_train and time_test both, or neither",
                found="time_train" if self.time_train is not None else "time_test",
            )
        for split in ("train", "test"):
            x = getattr(self, f"x_{split}")
            y = getattr(self, f"y_{split}")
            time = getattr(self, f"time_{split}")
            if time is not None:
                _check_survival(self.name, split, y, time)
            if x.dtype != np.float32:
                raise DataValidationError(
                    f"{split} features must be float32", site=self.name, found=str(x.dtype)
                )
            if y.dtype != np.int64:
                raise DataValidationError(
                    f"{split} labels must be int64", site=self.name, found=str(y.dtype)
                )
            if x.shape[0] != y.shape[0]:
                raise DataValidationError(
                    f"{split} features and labels differ in length",
                    site=self.name,
                    expected=f"{x.shape[0]} labels",
                    found=str(y.shape[0]),
                )

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.x_test.shape[0])


@dataclass
class FederatedDataset:
    """Sites sharing one feature space and one label space."""

    name: str
    sites: list[SiteData]
    task: Task
    num_classes: int
    input_shape: tuple[int, ...]
    feature_names: list[str] | None = None
    class_names: list[str] | None = None
    description: str = ""
    source: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.sites:
            raise DataValidationError(f"dataset '{self.name}' has no sites")
        names = [s.name for s in self.sites]
        if len(set(names)) != len(names):
            raise DataValidationError(f"dataset '{self.name}' has duplicate site names: {names}")
        for site in self.sites:
            if site.is_survival != (self.task == "survival"):
                raise DataValidationError(
                    f"dataset '{self.name}' is a {self.task} task",
                    site=site.name,
                    expected="survival times" if self.task == "survival" else "no survival times",
                    found="none" if not site.is_survival else "survival times",
                )
            if tuple(site.x_train.shape[1:]) != self.input_shape:
                raise DataValidationError(
                    "train features have the wrong shape",
                    site=site.name,
                    expected=str(self.input_shape),
                    found=str(tuple(site.x_train.shape[1:])),
                )

    @property
    def site_names(self) -> list[str]:
        return [s.name for s in self.sites]

    def site(self, name: str) -> SiteData:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(f"dataset '{self.name}' has no site '{name}'; sites: {self.site_names}")

    def pooled(self, name: str = "pooled") -> SiteData:
        """All sites' rows in one table: the centralised upper reference, never a federated path."""
        survival = self.task == "survival"
        return SiteData(
            name=name,
            x_train=np.concatenate([s.x_train for s in self.sites]),
            y_train=np.concatenate([s.y_train for s in self.sites]),
            x_test=np.concatenate([s.x_test for s in self.sites]),
            y_test=np.concatenate([s.y_test for s in self.sites]),
            time_train=_concat_times([s.time_train for s in self.sites]) if survival else None,
            time_test=_concat_times([s.time_test for s in self.sites]) if survival else None,
        )


def _concat_times(
    times: Sequence[npt.NDArray[np.float64] | None],
) -> npt.NDArray[np.float64]:
    return np.concatenate([t for t in times if t is not None])


def _check_survival(
    site: str, split: str, event: npt.NDArray[np.int64], time: npt.NDArray[np.float64]
) -> None:
    """Times a Cox loss or C-index can use: one per row, finite, not negative; events 0/1."""
    if time.dtype != np.float64:
        raise DataValidationError(
            f"{split} survival times must be float64", site=site, found=str(time.dtype)
        )
    if time.shape != event.shape:
        raise DataValidationError(
            f"{split} survival times and event indicators differ in shape",
            site=site,
            expected=str(event.shape),
            found=str(time.shape),
        )
    bad = np.flatnonzero(~(np.isfinite(time) & (time >= 0)))
    if bad.size:
        raise DataValidationError(
            f"{split} survival times must be finite and not negative",
            site=site,
            expected="time >= 0",
            found=f"{float(time[bad[0]])} at row {int(bad[0])} ({bad.size} row(s))",
        )
    odd = np.flatnonzero((event != 0) & (event != 1))
    if odd.size:
        raise DataValidationError(
            f"{split} event indicators must be 0 (censored) or 1 (event)",
            site=site,
            expected="0 or 1",
            found=f"{int(event[odd[0]])} at row {int(odd[0])} ({odd.size} row(s))",
        )


ONE_CLASS_CONSEQUENCE = (
    "training goes on: its local-only baseline learns to predict that class, it still sends "
    "federated updates (which pull the shared model toward that class), and its own AUC is "
    "undefined wherever its test rows are one class too"
)


def one_class_problem(
    train_labels: npt.NDArray[np.int64], class_names: Sequence[str] | None
) -> str | None:
    """The warning for training labels that are all one class, else None."""
    present = np.unique(train_labels)
    if present.size != 1:
        return None
    label = int(present[0])
    name = class_names[label] if class_names and label < len(class_names) else str(label)
    return (
        f"all {train_labels.size} training rows are one class ('{name}'); {ONE_CLASS_CONSEQUENCE}"
    )


def one_class_sites(sites: Sequence[SiteData], class_names: Sequence[str] | None) -> list[str]:
    """A warning per site whose training labels are all one class (shipped or user data)."""
    problems = {s.name: one_class_problem(s.y_train, class_names) for s in sites}
    return [f"site '{name}': {problem}" for name, problem in problems.items() if problem]
