"""Studies that ship with fedcare; ``heart.yaml`` is the main job (``fedcare demo``)."""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

from fedcare.study.config import StudyConfig, parse_config


def preset_raw(name: str) -> dict[str, Any]:
    text = resources.files(__package__).joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    if not isinstance(raw, dict):
        raise ValueError(f"preset '{name}' is not a mapping")
    return raw


def heart_demo_config(seeds: list[int] | None = None, rounds: int | None = None) -> StudyConfig:
    """The embedded heart-disease study, optionally with other seeds or rounds."""
    raw = preset_raw("heart")
    if seeds is not None:
        raw["seeds"] = seeds
    if rounds is not None:
        raw["rounds"] = rounds
    return parse_config(raw, source="preset heart.yaml")
