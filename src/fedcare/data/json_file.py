"""Reading a JSON state file (approvals, a site's model allow-list) within bounds.

Like the YAML settings files (:mod:`fedcare.data.yaml_config`): a file over its size bound
is refused with the size found, and nesting deeper than :data:`MAX_JSON_DEPTH` is refused
with the line before ``json`` recurses into it (a RecursionError would be a traceback).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fedcare.core.errors import ConfigError
from fedcare.data.yaml_config import read_limited

MAX_JSON_DEPTH = 64
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def read_json(path: Path, what: str, max_bytes: int) -> Any:
    """Parsed JSON of ``path``; a missing, oversized, too deep or invalid file is a
    ConfigError naming it (and the line, where there is one)."""
    text = read_limited(path, what, max_bytes)
    check_depth(text, f"{what} '{path}'")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{what} '{path}' is not valid JSON: {exc}") from None


def check_depth(text: str, source: str, max_depth: int = MAX_JSON_DEPTH) -> None:
    """ConfigError naming ``source`` and the line if brackets nest deeper than ``max_depth``
    (brackets inside strings do not count)."""
    depth = 0
    blanked = _STRING.sub(lambda m: " " * len(m.group()), text)  # keeps every offset
    for match in _BRACKET.finditer(blanked):
        depth += 1 if match.group() in "[{" else -1
        if depth > max_depth:
            line = text.count("\n", 0, match.start()) + 1
            raise ConfigError(
                f"{source}, line {line}: nested more than {max_depth} levels deep; this file "
                "needs far fewer"
            )
