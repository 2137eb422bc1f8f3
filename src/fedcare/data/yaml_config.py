"""Reading a YAML settings file (study config, data schema) with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fedcare.core.errors import ConfigError


def read_yaml(path: Path | str, what: str) -> Any:
    """Parsed YAML of ``path``; a missing file or bad YAML is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path.absolute()}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
