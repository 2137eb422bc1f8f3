"""How fast hostile settings files are refused (issue #11, item 8): a 50 MB study YAML,
20,000-deep nesting, a billion-laughs alias bomb, and a 1 MiB study at the bound (the
slowest file that is still read). Prints the median of ``--repeats`` runs of each.

    python benchmarks/config_limits.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fedcare.core.errors import ConfigError
from fedcare.data.yaml_config import MAX_YAML_BYTES, read_yaml
from fedcare.study.config import load_config


def files(folder: Path) -> dict[str, Path]:
    out = {
        "50 MB YAML": "categories: [" + ", ".join(["cardiology"] * 4_600_000) + "]\n",
        "20,000-deep nesting": "a: " + "{b: " * 20_000 + "1" + "}" * 20_000 + "\n",
        "alias bomb (10^9 values)": "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 9)),
    }
    # The slowest file still read: a study at the bound, all values (a long seeds list).
    head = "name: big\ndataset: {name: heart-disease}\nmodel: {name: logistic}\n"
    head += "strategies: [{name: fedavg}]\nseeds: ["
    seeds, size, n = [], len(head) + 2, 0
    while size + len(str(n)) + 2 <= MAX_YAML_BYTES:
        seeds.append(str(n))
        size += len(str(n)) + 2
        n += 1
    out["1 MiB study (at the bound, read)"] = head + ", ".join(seeds) + "]\n"
    paths = {}
    for i, (name, text) in enumerate(out.items()):
        paths[name] = folder / f"f{i}.yaml"
        paths[name].write_text(text)
    return paths


def timed(action: Callable[[], object]) -> tuple[float, str]:
    start = time.perf_counter()
    try:
        action()
        outcome = "read"
    except ConfigError as exc:
        outcome = "refused: " + str(exc).rsplit("yaml", 1)[-1].lstrip("':, ")[:70]
    return time.perf_counter() - start, outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in files(Path(tmp)).items():
            load: Callable[[], object] = (
                (lambda p=path: load_config(p))
                if "study" in name
                else (lambda p=path: read_yaml(p, "config file"))
            )
            runs = [timed(load) for _ in range(args.repeats)]
            median = statistics.median(t for t, _ in runs)
            size = path.stat().st_size
            print(f"{name:34s} {size / 1e6:7.2f} MB  median {median * 1e3:8.1f} ms  {runs[0][1]}")


if __name__ == "__main__":
    main()
