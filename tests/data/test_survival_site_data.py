"""Survival rows in a SiteData: follow-up time per row, event indicator as the label."""

import numpy as np
import pytest

from fedcare.core.errors import DataValidationError
from fedcare.data.base import FederatedDataset, SiteData


def survival_site(name="a", time_train=(5.0, 0.0, 12.5), event_train=(1, 0, 1)) -> SiteData:
    n = len(time_train)
    return SiteData(
        name=name,
        x_train=np.zeros((n, 2), np.float32),
        y_train=np.array(event_train, np.int64),
        x_test=np.zeros((1, 2), np.float32),
        y_test=np.array([0], np.int64),
        time_train=np.array(time_train, np.float64),
        time_test=np.array([3.0]),
    )


def survival_dataset(*sites: SiteData) -> FederatedDataset:
    return FederatedDataset(
        name="demo", sites=list(sites), task="survival", num_classes=2, input_shape=(2,)
    )


def test_a_survival_site_keeps_times_and_pooling_keeps_them_with_their_rows():
    ds = survival_dataset(survival_site("a"), survival_site("b", (7.0,), (0,)))
    pooled = ds.pooled()
    assert pooled.is_survival
    np.testing.assert_array_equal(pooled.time_train, [5.0, 0.0, 12.5, 7.0])
    np.testing.assert_array_equal(pooled.y_train, [1, 0, 1, 0])
    np.testing.assert_array_equal(pooled.time_test, [3.0, 3.0])


def test_negative_or_missing_times_are_refused_naming_site_and_row():
    with pytest.raises(DataValidationError, match=r"site 'a'.*train.*not negative.*-1.0 at row 1"):
        survival_site(time_train=(5.0, -1.0, 2.0))
    with pytest.raises(DataValidationError, match=r"finite.*nan at row 2"):
        survival_site(time_train=(5.0, 1.0, np.nan))


def test_events_other_than_zero_or_one_are_refused():
    with pytest.raises(DataValidationError, match=r"0 \(censored\) or 1 \(event\).*2 at row 0"):
        survival_site(event_train=(2, 0, 1))


def test_times_for_one_split_only_or_of_the_wrong_length_are_refused():
    site = survival_site()
    with pytest.raises(DataValidationError, match="one split only"):
        SiteData("a", site.x_train, site.y_train, site.x_test, site.y_test, site.time_train)
    with pytest.raises(DataValidationError, match="differ in shape"):
        SiteData(
            "a", site.x_train, site.y_train, site.x_test, site.y_test,
            site.time_train[:2], site.time_test,
        )  # fmt: skip


def test_a_survival_dataset_needs_times_at_every_site_and_a_classifier_none():
    plain = SiteData(
        "b", np.zeros((1, 2), np.float32), np.array([1]), np.zeros((1, 2), np.float32),
        np.array([0]),
    )  # fmt: skip
    assert not plain.is_survival
    with pytest.raises(DataValidationError, match=r"site 'b'.*survival task.*found none"):
        survival_dataset(survival_site(), plain)
    with pytest.raises(DataValidationError, match=r"binary task.*expected no survival times"):
        FederatedDataset(
            name="demo", sites=[survival_site()], task="binary", num_classes=2, input_shape=(2,)
        )
