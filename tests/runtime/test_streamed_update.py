"""Updates taken chunk by chunk: the same checks and the same model as whole updates.

The transport hands the coordinator each update's chunks as they arrive; nothing is
reassembled. These tests feed the machine's streamed path the way the transport does
(``StreamingLoopback``) and hold it to the whole-message path bit for bit.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fedcare.algorithms.aggregate import StreamingMean
from fedcare.core.errors import ProtocolError, UpdateRejectedError
from fedcare.core.records import ClientUpdate
from fedcare.rounds import MeanAggregator
from fedcare.runtime.messages import UpdateMessage, vector_digest
from fedcare.runtime.streamed_update import (
    FoldedMean,
    MemoryChunks,
    UpdateIntake,
    WholeUpdate,
    fold_mean,
    segments_of,
)
from fedcare.runtime.validation import validate_update
from tests.conftest import make_sites
from tests.runtime.test_protocol_study import Loopback, deploy, heart_plan


def stream(vector: np.ndarray, segments: list[tuple[str, int]], chunk: int) -> UpdateIntake:
    """What the transport does: the vector in order, ``chunk`` values at a time."""
    intake = UpdateIntake(segments, MemoryChunks(vector.size))
    for start in range(0, vector.size, chunk):
        intake.write(start, vector[start : start + chunk])
    intake.close()
    return intake


class StreamingLoopback(Loopback):
    """A loopback whose updates reach the coordinator chunk by chunk, never whole."""

    chunk = 5

    def step(self) -> None:
        direction, name, env = self.queue[0]
        if direction != "coordinator" or env.kind != UpdateMessage.KIND:
            return super().step()
        self.queue.popleft()
        segments = segments_of(env.header, env.vector.size)
        intake = stream(env.vector, segments, self.chunk)
        head = replace(env, vector=None).from_peer(name)
        self._to_sites(self.coordinator.handle_streamed(head, intake, self.now))


@pytest.fixture(scope="module")
def toy():
    return make_sites([40, 24, 12, 30], num_features=5, test_rows=12, seed=1)


def final_model(toy, plan, folder, loopback: type[Loopback]) -> np.ndarray:
    built = deploy(toy, plan, folder)
    net = loopback(built.coordinator, built.sites)  # the same machines, delivered either way
    for name in net.sites:
        net.connect(name)
    net.run()
    assert net.coordinator.round == plan.rounds
    return net.coordinator.final_params.copy()


@pytest.mark.parametrize("strategy", ["fedavg", "scaffold", "fedadam"])
def test_streamed_updates_reach_the_same_model_as_whole_ones_bit_for_bit(toy, tmp_path, strategy):
    plan = heart_plan(toy, strategy, rounds=2)
    whole = final_model(toy, plan, tmp_path / "whole", Loopback)
    streamed = final_model(toy, plan, tmp_path / "streamed", StreamingLoopback)
    np.testing.assert_array_equal(streamed, whole)


def test_the_intake_hashes_and_measures_the_bytes_as_sent():
    rng = np.random.default_rng(0)
    vector = rng.normal(size=23).astype(np.float32)
    intake = stream(vector, [("delta", 15), ("control", 8)], chunk=4)
    assert intake.digest == vector_digest(vector)
    assert intake.squares["delta"] == pytest.approx(float(np.sum(vector[:15].astype(float) ** 2)))
    assert intake.squares["control"] == pytest.approx(float(np.sum(vector[15:].astype(float) ** 2)))
    np.testing.assert_array_equal(intake.read("control", 2, 6), vector[17:21])


def test_a_non_finite_value_is_refused_with_the_words_a_whole_update_gets():
    delta = np.ones(12, np.float32)
    delta[9] = np.inf
    msg = UpdateMessage("run", 0, 0, delta, {}, 1.0, 3, sender="north")
    intake = stream(delta, [("delta", 12)], chunk=5)
    with pytest.raises(UpdateRejectedError) as whole:
        validate_update(msg, 12)
    with pytest.raises(UpdateRejectedError) as streamed:
        validate_update(msg, 12, streamed=intake)
    assert str(streamed.value) == str(whole.value)
    assert "delta has a non-finite value (inf) at index 9" in str(streamed.value)


def test_chunks_out_of_order_or_past_the_end_are_refused():
    intake = UpdateIntake([("delta", 6)], MemoryChunks(6))
    with pytest.raises(ProtocolError, match="expected float32 values from 0"):
        intake.write(3, np.zeros(3, np.float32))
    intake.write(0, np.zeros(4, np.float32))
    with pytest.raises(ProtocolError, match="overruns its 6 values"):
        intake.write(4, np.zeros(3, np.float32))
    with pytest.raises(ProtocolError, match="ended after 4 of 6 values"):
        intake.close()


@pytest.mark.parametrize("block", [1, 7, 1000])
def test_the_fold_is_streaming_mean_bit_for_bit_in_any_block_size(block):
    rng = np.random.default_rng(block)
    mean = StreamingMean(50)
    updates = []
    for _ in range(5):
        delta = (rng.normal(size=50) * 10.0 ** rng.integers(-6, 6)).astype(np.float32)
        control = rng.normal(size=50).astype(np.float32)
        weight = float(rng.integers(1, 300)) / 7
        mean.add(delta, weight, {"control": control})
        updates.append((WholeUpdate({"delta": delta, "control": control}), weight))
    expected, folded = mean.result(), fold_mean(50, updates, {"control": 50}, block)
    np.testing.assert_array_equal(folded.delta, expected.delta)
    np.testing.assert_array_equal(folded.extras["control"], expected.extras["control"])
    assert (folded.total_weight, folded.count) == (expected.total_weight, expected.count)


def test_only_segments_that_tile_the_vector_stream_the_rest_go_to_the_whole_parser():
    assert segments_of({"segments": [["delta", 4], ["control", 4]]}, 8) == [
        ("delta", 4),
        ("control", 4),
    ]
    for bad in ([["delta", 4]], [["delta", -1], ["x", 9]], [["delta", 4], ["delta", 4]], "x"):
        assert segments_of({"segments": bad}, 8) is None


def test_the_folded_mean_is_the_round_cores_mean_by_add_sink_or_merge():
    rng = np.random.default_rng(3)
    updates = [ClientUpdate(rng.normal(size=9).astype(np.float32), float(w)) for w in (3, 1, 7, 2)]
    core, folded, other = MeanAggregator(9), FoldedMean(9, {}), FoldedMean(9, {})
    for k, update in enumerate(updates):
        core.add(update, k)
    folded.add(updates[0], 0)
    sink = folded.open(1, updates[1].weight)
    for start in range(0, 9, 4):
        sink.add_chunk(start, updates[1].delta[start : start + 4])
    sink.commit()
    other.add(updates[2], 2)
    other.add(updates[3], 3)
    folded.merge(other)
    np.testing.assert_array_equal(folded.result().aggregate.delta, core.result().aggregate.delta)
