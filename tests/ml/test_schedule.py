import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from fedcare.core.records import TrainSpec
from fedcare.ml.schedule import PAD, batch_schedule


@given(st.integers(1, 60), st.integers(1, 16), st.integers(1, 3))
def test_each_epoch_visits_every_row_exactly_once(n, batch, epochs):
    spec = TrainSpec(epochs=epochs, batch_size=batch)
    sched = batch_schedule(n, spec, np.random.default_rng(0))
    assert sched.shape[0] == spec.steps_for(n)
    per_epoch = sched.shape[0] // epochs
    for e in range(epochs):
        rows = sched[e * per_epoch : (e + 1) * per_epoch].ravel()
        assert sorted(rows[rows != PAD].tolist()) == list(range(n))


def test_step_mode_cycles_through_fresh_epochs():
    sched = batch_schedule(
        10, TrainSpec(epochs=None, steps=7, batch_size=4), np.random.default_rng(0)
    )
    assert sched.shape == (7, 4)
    # 3 batches per epoch: 4 + 4 + 2 (padded).
    assert (sched[2] == PAD).sum() == 2


def test_full_batch_uses_every_row_each_step():
    sched = batch_schedule(
        9, TrainSpec(epochs=None, steps=2, batch_size=None), np.random.default_rng(0)
    )
    assert sched.shape == (2, 9)
