"""What checkpointing every round costs a simulated study (what `fedcare simulate --resume`
continues from), side by side in one process.

Runs the heart-disease study's federated run (4 hospitals, logistic model, FedAvg, 30
rounds, every site evaluated every round) with and without a checkpoint folder,
alternating the two so both see the same machine load, and prints each side's median wall
time, the ratio, the median time of one checkpoint write (temporary file, fsync, rename,
folder fsync) and whether both runs end with the same model (they must: a checkpoint is
only written, never read, by an uninterrupted run).

    python benchmarks/sim_checkpoints.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from fedcare.algorithms.registry import build_strategy
from fedcare.core.records import TrainSpec
from fedcare.data.registry import load_dataset
from fedcare.models import build_model
from fedcare.sim import engine
from fedcare.sim.engine import FederatedSimulation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--strategy", default="fedavg")
    args = parser.parse_args()
    dataset = load_dataset("heart-disease")
    writes: list[float] = []
    save = engine.save_run_state

    def timed_save(*a, **k):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        out = save(*a, **k)
        writes.append(time.perf_counter() - t0)
        return out

    engine.save_run_state = timed_save  # type: ignore[assignment]

    def run(folder: Path | None) -> tuple[float, bytes]:
        sim = FederatedSimulation(
            module=build_model("logistic", dataset.input_shape, dataset.num_classes),
            dataset=dataset,
            strategy=build_strategy(args.strategy),
            spec=TrainSpec(optimizer="sgd", lr=0.02, epochs=1, batch_size=16),
            rounds=args.rounds,
            seed=0,
            eval_every=1,
            checkpoint_dir=folder,
        )
        t0 = time.perf_counter()
        result = sim.run()
        return time.perf_counter() - t0, result.final_params[0].tobytes()

    plain, saved, same = [], [], True
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:  # the study's disk, not /tmp
        run(None)  # warm-up
        for i in range(args.repeats):
            wall, model = run(None)
            plain.append(wall)
            wall_c, model_c = run(Path(tmp) / f"run{i}")
            saved.append(wall_c)
            same = same and model == model_c
    p, s = statistics.median(plain), statistics.median(saved)
    print(
        f"heart, {args.strategy}, {args.rounds} rounds, median of {args.repeats}: "
        f"without checkpoints {p:.3f} s, with a checkpoint every round {s:.3f} s "
        f"({s / p:.3f}x); one checkpoint write: median {statistics.median(writes) * 1e3:.2f} "
        f"ms over {len(writes)}; same final model: {same}"
    )


if __name__ == "__main__":
    main()
