"""Stage declarations and the one checker that derives every refusal from them."""

import pytest

from fedcare.core.errors import ConfigError
from fedcare.privacy.spec import DPSpec
from fedcare.transforms.declared import (
    COMPRESSION,
    Declared,
    aggregation_stage,
    algorithm_stage,
    check_declared,
    check_order,
)
from fedcare.transforms.pipeline import DECLARED
from fedcare.transforms.secure import SecureSpec

SECAGG = SecureSpec("secure_aggregation").declared
CKKS = SecureSpec("encrypt").declared
MEAN = aggregation_stage("mean")

# Worked example: a new upload stage declares what it keeps. signSGD-style compression
# sends one sign per coordinate and the site's own mean magnitude: the outputs of two
# sites are on different scales, so they are not linear and cannot be summed blind.
SIGNS = Declared(
    name="signs",
    title="sign compression",
    group=COMPRESSION,
    not_linear="each site scales its signs by its own mean magnitude, so two sites' codes "
    "cannot be added without decoding them one by one",
)


def test_a_new_stages_declared_property_refuses_what_it_cannot_run_under():
    check_declared([SIGNS, MEAN])  # on its own, or with a robust rule, it is fine
    check_declared([SIGNS, aggregation_stage("median")])
    with pytest.raises(ConfigError) as err:
        check_declared([SIGNS, SECAGG, MEAN], where="strategy 'fedavg'")
    assert str(err.value) == (
        "strategy 'fedavg': sign compression cannot run under secure_aggregation: each site "
        "scales its signs by its own mean magnitude, so two sites' codes cannot be added "
        "without decoding them one by one"
    )
    # Its group makes it exclusive with the built-in compression stages.
    with pytest.raises(
        ConfigError, match=r"at most one compression stage per pipeline, found \['signs', 'topk'\]"
    ):
        check_order([SIGNS, DECLARED["topk"]], where="upload")


def test_compression_must_come_last_and_alone():
    clip, quantize = DECLARED["clip"], DECLARED["quantize"]
    check_order([clip, quantize], where="upload")
    with pytest.raises(
        ConfigError, match="upload: the compression stage 'quantize' must come last"
    ):
        check_order([quantize, clip], where="upload")


def test_a_stage_that_must_see_each_update_cannot_follow_a_secure_sum():
    detector = Declared(
        name="outliers",
        title="outlier detection",
        at_coordinator=True,
        needs_each_update="outlier detection compares each update with the others, which "
        "{label} prevents ({hides} every update)",
    )
    check_declared([detector, MEAN])
    with pytest.raises(ConfigError, match=r"which CKKS encryption prevents \(encryption hides"):
        check_declared([detector, CKKS, MEAN])  # given first, it still runs at the coordinator


def test_dp_declares_where_its_noise_runs_and_what_it_needs():
    central, distributed = DPSpec(mode="central").declared, DPSpec(mode="distributed").declared
    assert central.at_coordinator and not distributed.at_coordinator
    check_declared([distributed, SECAGG, MEAN])
    with pytest.raises(ConfigError, match="the coordinator must see only the sum"):
        check_declared([distributed, MEAN])
    with pytest.raises(ConfigError, match="which SecAgg prevents"):
        check_declared([central, SECAGG, MEAN])
    with pytest.raises(ConfigError, match="robust rule 'krum' changes the sensitivity"):
        check_declared([DPSpec(mode="local").declared, aggregation_stage("krum")])


def test_an_algorithms_upload_names_what_cannot_cover_it():
    chain = [algorithm_stage("toy", "its sites send their raw models"), SECAGG, MEAN]
    with pytest.raises(ConfigError, match=r"^SecAgg does not apply to toy: its sites send"):
        check_declared(chain)
    check_declared([algorithm_stage("fedavg", None), SECAGG, MEAN])
