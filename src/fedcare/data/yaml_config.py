"""Reading a YAML settings file (study config, data schema) with errors that name the file.

A settings file is small and shallow, so anything else is refused before it is parsed into
objects: a file over :data:`MAX_YAML_BYTES` (a 50 MB file would keep the parser busy for
minutes), nesting deeper than :data:`MAX_YAML_DEPTH` (deep nesting exhausts the
constructor's recursion), and aliases that expand to more than :data:`MAX_YAML_NODES`
values (a "billion laughs" file is tiny on disk and huge once walked). The structure is
checked on the parser's event stream, which is flat: nothing recurses before the check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fedcare.core.errors import ConfigError

MAX_YAML_BYTES = 1 << 20  # 1 MiB: a study with every option and a long schema is < 50 KiB
MAX_YAML_DEPTH = 32  # the deepest study key (epsilon_sweep.strategy.params.dp...) is ~6
MAX_YAML_NODES = 1_000_000  # values after aliases are expanded

# libyaml when installed (several times faster); the pure-Python classes otherwise.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_OPEN = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSE = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def read_limited(path: Path, what: str, max_bytes: int) -> str:
    """The UTF-8 text of ``path``; a missing, oversized or non-UTF-8 file is a ConfigError.

    At most ``max_bytes + 1`` bytes are read, so a growing or endless file (a pipe, a
    device) is refused as quickly as a large one.
    """
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path.absolute()}")
    try:
        with path.open("rb") as fh:
            data = fh.read(max_bytes + 1)
        size = max(path.stat().st_size, len(data))
    except OSError as exc:
        raise ConfigError(f"{what} '{path}' cannot be read: {exc}") from exc
    if len(data) > max_bytes:
        raise ConfigError(
            f"{what} '{path}' is {_size(size)}; the most a {what} may be is "
            f"{_size(max_bytes)} (is it the right file?)"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{what} '{path}', line {line}: not UTF-8 text (byte {data[exc.start]:#04x} at "
            f"offset {exc.start}); save the file as UTF-8"
        ) from None


def check_structure(text: str, source: str) -> None:
    """Refuse YAML nested deeper than MAX_YAML_DEPTH or expanding to more than
    MAX_YAML_NODES values, naming ``source`` and the line; bad YAML is a ConfigError too."""
    depth, nodes = 0, 0
    opened: list[tuple[str | None, int]] = []  # (anchor, values before the collection)
    sizes: dict[str, int] = {}  # values under each anchor, what an alias to it expands to
    try:
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, _OPEN):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    raise ConfigError(
                        f"{source}, line {_line(event)}: nested more than "
                        f"{MAX_YAML_DEPTH} levels deep; a settings file needs far fewer"
                    )
                opened.append((event.anchor, nodes))
                nodes += 1
            elif isinstance(event, _CLOSE):
                depth -= 1
                anchor, before = opened.pop()
                if anchor is not None:
                    sizes[anchor] = nodes - before
            elif isinstance(event, yaml.ScalarEvent):
                nodes += 1
                if event.anchor is not None:
                    sizes[event.anchor] = 1
            elif isinstance(event, yaml.AliasEvent):
                nodes += sizes.get(event.anchor or "", 1)
            if nodes > MAX_YAML_NODES:
                raise ConfigError(
                    f"{source}, line {_line(event)}: more than {MAX_YAML_NODES:,} "
                    "values once its aliases (*name) are expanded; a settings file needs far "
                    "fewer"
                )
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {_named(exc, source)}") from exc


def read_yaml(path: Path | str, what: str, max_bytes: int = MAX_YAML_BYTES) -> Any:
    """Parsed YAML of ``path``; a missing, oversized, too deeply nested or invalid file is
    a ConfigError naming it (and the line, where there is one)."""
    path = Path(path)
    text = read_limited(path, what, max_bytes)
    check_structure(text, str(path))
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_named(exc, str(path))}") from exc


def _line(event: Any) -> int:
    mark = event.start_mark
    return int(mark.line) + 1 if mark is not None else 0


def _named(exc: yaml.YAMLError, source: str) -> str:
    """The parser's message with the file's name where it says '<unicode string>'."""
    return str(exc).replace('"<unicode string>"', f"'{source}'")


def _size(count: int) -> str:
    if count < 1 << 10:
        return f"{count} bytes"
    if count < 1 << 20:
        return f"{count / (1 << 10):.1f} KiB ({count:,} bytes)"
    return f"{count / (1 << 20):.1f} MiB ({count:,} bytes)"
