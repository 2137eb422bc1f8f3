"""Small survival tables split over sites, and their pooled frame, for the exactness tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedcare.stats.protocol import SiteTable


def survival_sites(
    sizes: list[int], *, seed: int = 0, tie_days: float = 0.0, censoring: float = 0.3
) -> dict[str, pd.DataFrame]:
    """Sites of patients with an age, a sex, a marker and an arm; the hazard rises with age
    and the marker. ``tie_days`` > 0 rounds times up to multiples of it (heavy ties within
    and across sites); 0 keeps (nearly) continuous times."""
    rng = np.random.default_rng(seed)
    frames = {}
    for i, n in enumerate(sizes):
        age = rng.normal(60 + 3 * i, 10, n)
        sex = rng.integers(0, 2, n).astype(float)
        marker = rng.normal(0.2 * i, 1.0, n)
        arm = rng.choice(["control", "drug", "surgery"], n)
        hazard = np.exp(0.03 * (age - 60) + 0.4 * marker - 0.3 * sex - 0.5 * (arm == "drug"))
        time = rng.exponential(365.0 / hazard)
        time = np.ceil(time / tie_days) * tie_days if tie_days else np.round(time, 3)
        event = (rng.random(n) >= censoring).astype(float)
        frames[f"site-{i}"] = pd.DataFrame(
            {
                "T": time,
                "E": event,
                "age": age,
                "sex": sex,
                "marker": marker,
                "arm": arm,
                "site": f"site-{i}",
            }
        )
    return frames


def tables_of(frames: dict[str, pd.DataFrame]) -> dict[str, SiteTable]:
    return {s: SiteTable(s, f, time="T", event="E", source=f"{s}.csv") for s, f in frames.items()}


def pooled(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames.values(), ignore_index=True)


def with_delayed_entry(frames: dict[str, pd.DataFrame], seed: int) -> dict[str, SiteTable]:
    """Half the patients enter follow-up late (left truncation): entry <= T."""
    rng = np.random.default_rng(seed)
    for frame in frames.values():
        late = rng.random(len(frame)) < 0.5
        frame["entry"] = np.where(late, np.floor(frame["T"] * rng.random(len(frame))), 0.0)
    return {
        s: SiteTable(s, f, "T", "E", entry="entry", source=f"{s}.csv") for s, f in frames.items()
    }
