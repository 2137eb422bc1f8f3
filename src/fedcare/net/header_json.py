"""A message header's JSON text -> a dict, bounded before and while it is parsed.

Headers come from peers, so nothing in one may make the receiver recurse, allocate or
compute without bound: the text's size and its nesting depth are checked before
``json.loads`` runs (the depth by one vectorised pass over the bytes, outside string
literals), numbers are parsed by hooks that refuse what no protocol field can hold
(integers outside 64 bits, non-finite floats, NaN and Infinity) and strings must be
valid Unicode (a lone surrogate escape cannot be hashed or written). Every refusal is a
:class:`~fedcare.core.errors.ProtocolError` that names the message and the problem.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from fedcare.core.errors import ProtocolError
from fedcare.runtime.envelope import INT_MAX, INT_MIN, MAX_HEADER_DEPTH

_MAX_INT_DIGITS = 20
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")

_STEP = np.zeros(256, dtype=np.int8)  # +1 for an opening bracket, -1 for a closing one
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1


class _RefusedError(ValueError):
    """A number the hooks refuse (json re-raises ValueError with its position)."""


def json_depth(text: str, block: int = 1 << 16) -> int:
    """Deepest nesting of arrays and objects in ``text``, ignoring brackets inside strings.

    Array operations over blocks of ``block`` bytes, carrying the state between blocks
    (depth, inside a string or not, trailing backslashes): a megabyte of brackets costs
    milliseconds, a few hundred kilobytes of memory and no recursion. A quote delimits a
    string unless an odd run of backslashes precedes it.
    """
    data = text.encode("utf-8", "surrogatepass")
    depth = deepest = inside = trailing = 0
    for start in range(0, len(data), block):
        raw = np.frombuffer(data, dtype=np.uint8, count=min(block, len(data) - start), offset=start)
        index = np.arange(raw.size, dtype=np.int32)
        # Index of the last non-backslash at or before each byte (-1 - trailing before it).
        last_plain = np.maximum.accumulate(np.where(raw != ord("\\"), index, -1 - trailing))
        before = np.empty(raw.size, dtype=np.int32)  # backslashes just before each byte
        before[0] = trailing
        before[1:] = index[:-1] - last_plain[:-1]
        quotes = (raw == ord('"')) & (before % 2 == 0)
        parity = (np.cumsum(quotes, dtype=np.int32) + inside) % 2
        levels = np.cumsum(_STEP[raw] * (parity == 0), dtype=np.int32) + depth
        deepest = max(deepest, int(levels.max()))
        depth, inside = int(levels[-1]), int(parity[-1])
        trailing = int(index[-1] - last_plain[-1])
    return deepest


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise _RefusedError(f"integer of {len(text)} digits is outside 64 bits")
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        raise _RefusedError(f"integer {value} is outside 64 bits")
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _RefusedError(f"number {text[:40]} is not a finite float")
    return value


def _parse_constant(name: str) -> float:
    raise _RefusedError(f"non-finite number {name} is not allowed in a header")


def decode_header(
    text: str, kind: str, max_bytes: int, max_depth: int = MAX_HEADER_DEPTH
) -> dict[str, Any]:
    """Parse a header received in message ``kind``; ProtocolError for anything malformed."""
    where = f"message '{kind}': header"
    if len(text) > max_bytes:  # every character is at least one byte
        raise ProtocolError(f"{where} of {len(text)} characters exceeds the limit of {max_bytes}")
    depth = json_depth(text)
    if depth > max_depth:
        raise ProtocolError(
            f"{where} is nested {depth} levels deep; at most {max_depth} are allowed"
        )
    try:
        value = json.loads(
            text or "{}",
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
        )
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ProtocolError(f"{where} must be a JSON object, found {type(value).__name__}")
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ProtocolError(f"{where} holds a string that is not valid Unicode: {exc}") from exc
    return value
