import numpy as np
import pytest

from fedcare.algorithms.registry import build_strategy
from fedcare.core.errors import ConfigError
from fedcare.transforms.pipeline import (
    TOPK_RESIDUAL,
    UploadPipeline,
    check_combination,
    parse_stages,
)


def pipeline(*stages: dict) -> UploadPipeline:
    return UploadPipeline(parse_stages(list(stages)))


def test_clip_then_quantize_bounds_the_norm_and_counts_bytes():
    x = np.random.default_rng(0).normal(size=4096).astype(np.float32) * 10
    p = pipeline({"stage": "clip", "max_norm": 1.0}, {"stage": "quantize", "bits": 8})
    encoded, state = p.encode(x, {}, np.random.default_rng(1))
    decoded = p.decode(encoded)
    assert np.linalg.norm(decoded) <= 1.01
    assert x.nbytes / encoded.nbytes >= 3.9
    assert state == {}


def test_topk_keeps_its_residual_in_the_site_state():
    x = np.arange(1, 101, dtype=np.float32)
    p = pipeline({"stage": "topk", "fraction": 0.05})
    encoded, state = p.encode(x, {}, np.random.default_rng(0))
    assert np.count_nonzero(p.decode(encoded)) == 5
    np.testing.assert_array_equal(p.decode(encoded) + state[TOPK_RESIDUAL], x)
    encoded2, state2 = p.encode(x, state, np.random.default_rng(0))
    # Round two sends from this round's update plus what round one held back.
    expected = x + state[TOPK_RESIDUAL]
    np.testing.assert_array_equal(p.decode(encoded2) + state2[TOPK_RESIDUAL], expected)


def test_no_stage_sends_the_dense_vector():
    x = np.ones(10, np.float32)
    encoded, _ = UploadPipeline().encode(x, {}, np.random.default_rng(0))
    assert encoded.nbytes == 40
    np.testing.assert_array_equal(UploadPipeline.decode(encoded), x)


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([{"stage": "zip"}], "unknown stage 'zip'"),
        ([{"stage": "quantize", "bits": 3}], "bits must be one of"),
        ([{"stage": "topk"}], "fraction"),
        ([{"stage": "topk", "fraction": 0.1, "k": 3}], "unknown parameter"),
        ([{"stage": "quantize"}, {"stage": "topk", "fraction": 0.1}], "at most one compression"),
        ([{"stage": "quantize"}, {"stage": "clip", "max_norm": 1}], "must come last"),
        ([{"stage": "secure_aggregation"}], "privacy section"),
    ],
)
def test_bad_stages_are_refused_with_the_reason(stages, message):
    with pytest.raises(ConfigError, match=message):
        parse_stages(stages)


def test_robust_rules_and_compression_are_refused_over_masked_or_encrypted_updates():
    with pytest.raises(ConfigError, match="only ever sees the sum"):
        check_combination((), aggregator="median", secure="secure_aggregation")
    with pytest.raises(ConfigError, match="encrypt"):
        check_combination((), aggregator="krum", secure="encrypt")
    with pytest.raises(ConfigError, match="dense"):
        check_combination(parse_stages([{"stage": "topk", "fraction": 0.01}]), secure="encrypt")
    with pytest.raises(ConfigError, match="grid"):
        check_combination(parse_stages([{"stage": "quantize"}]), secure="secure_aggregation")
    check_combination(parse_stages([{"stage": "clip", "max_norm": 1}]), secure="encrypt")
    check_combination(parse_stages([{"stage": "topk", "fraction": 0.5}]), aggregator="median")


def test_strategies_take_upload_stages_from_their_params():
    strategy = build_strategy("fedavg", {"upload": [{"stage": "quantize", "bits": 4}]})
    assert strategy.upload.compresses
    with pytest.raises(ConfigError, match="cyclic"):
        build_strategy("cyclic", {"upload": [{"stage": "quantize"}]})


def test_wire_bytes_decode_to_what_the_site_decoded():
    from fedcare.transforms.pipeline import compression_stage, from_wire, to_wire

    x = np.random.default_rng(3).normal(size=3000).astype(np.float32)
    for raw in ([{"stage": "quantize", "bits": 4}], [{"stage": "topk", "fraction": 0.01}]):
        p = pipeline(*raw)
        encoded, _ = p.encode(x, {}, np.random.default_rng(0))
        wire = to_wire(encoded)
        assert len(wire) == encoded.nbytes
        stage = compression_stage(p.stages)
        np.testing.assert_array_equal(from_wire(wire, stage, x.size), p.decode(encoded))
        with pytest.raises(ValueError, match="bytes"):
            from_wire(wire[:-8], stage, x.size)
