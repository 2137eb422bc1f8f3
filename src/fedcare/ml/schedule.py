"""Which rows each local step uses: seeded, shared by the batched and sequential trainers.

Both trainers read the same schedule, so they see the same batches in the same order and
reach the same model; the schedule depends only on (run seed, round, site), never on
how sites happen to be grouped.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fedcare.core.records import TrainSpec

PAD = -1


def batch_schedule(
    num_samples: int, spec: TrainSpec, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """Row indices per step, shape (steps, batch); short batches are padded with -1.

    Epoch mode shuffles once per epoch and keeps the last partial batch (like a DataLoader
    with drop_last=False). Step mode keeps cycling through fresh epochs until it has
    ``spec.steps`` batches.
    """
    if num_samples <= 0:
        return np.zeros((0, 1), dtype=np.int64)
    batch = num_samples if spec.batch_size is None else min(spec.batch_size, num_samples)
    per_epoch = -(-num_samples // batch)
    total_steps = spec.steps_for(num_samples)
    epochs_needed = -(-total_steps // per_epoch)
    padded = np.full((epochs_needed, per_epoch * batch), PAD, dtype=np.int64)
    for e in range(epochs_needed):
        padded[e, :num_samples] = rng.permutation(num_samples)
    # Each epoch is reshaped separately so a partial batch never mixes two epochs.
    steps = padded.reshape(epochs_needed * per_epoch, batch)
    return steps[:total_steps]


def stack_schedules(
    schedules: list[npt.NDArray[np.int64]], offsets: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """Stack per-site schedules into (K, max_steps, max_batch) global row indices, -1 padded."""
    k = len(schedules)
    max_steps = max((s.shape[0] for s in schedules), default=0)
    max_batch = max((s.shape[1] for s in schedules), default=1)
    out = np.full((k, max_steps, max_batch), PAD, dtype=np.int64)
    for i, (sched, offset) in enumerate(zip(schedules, offsets, strict=True)):
        rows = sched.shape[0]
        if rows:
            out[i, :rows, : sched.shape[1]] = np.where(sched >= 0, sched + offset, PAD)
    return out
