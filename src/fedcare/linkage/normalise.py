"""Identifier normalisation and the per-study keyed hash every PSI input goes through first.

Parties write the same patient number differently (``MRN-0012345``, ``0012-345 ``); the
study declares rules that map them to one key, and every party applies the same rules.
The normalised key is then hashed with HMAC-SHA256 under a per-study secret shared by the
parties (never by the coordinator): the PSI's group elements are derived from that hash, so
even a party's blinded elements cannot be tested against a dictionary of identifiers by
anyone who lacks the study secret, and keys from one study are useless in another.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Literal

from fedcare.core.errors import ConfigError, DataValidationError

_NOT_DIGIT = re.compile(r"\D")
_CASES = ("keep", "lower", "upper")
MIN_SECRET_BYTES = 16


@dataclass(frozen=True)
class IdentifierRules:
    """How an identifier becomes a key, applied in this order.

    strip: drop leading and trailing whitespace. case: keep, lower or upper. digits_only:
    keep only the digits 0-9 (``MRN-001 2345`` -> ``0012345``). remove: characters deleted
    everywhere (e.g. ``"-/ "``). strip_leading_zeros: ``0012345`` -> ``12345``.
    """

    strip: bool = True
    case: Literal["keep", "lower", "upper"] = "keep"
    digits_only: bool = False
    remove: str = ""
    strip_leading_zeros: bool = False

    def __post_init__(self) -> None:
        if self.case not in _CASES:
            raise ConfigError(
                f"identifier rules: case must be one of {list(_CASES)}, found {self.case!r}"
            )

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, object], where: str = "identifier rules"
    ) -> IdentifierRules:
        """Rules from a config mapping; an unknown key is an error naming it."""
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(known)}")
        for name in ("strip", "digits_only", "strip_leading_zeros"):
            if name in values and not isinstance(values[name], bool):
                raise ConfigError(f"{where}: {name} must be true or false, found {values[name]!r}")
        if "remove" in values and not isinstance(values["remove"], str):
            raise ConfigError(
                f"{where}: remove must be a string of characters, found {values['remove']!r}"
            )
        return cls(**values)  # type: ignore[arg-type]

    def apply(self, value: str) -> str:
        if self.strip:
            value = value.strip()
        if self.case == "lower":
            value = value.lower()
        elif self.case == "upper":
            value = value.upper()
        if self.digits_only:
            value = _NOT_DIGIT.sub("", value)
        if self.remove:
            value = value.translate({ord(c): None for c in self.remove})
        if self.strip_leading_zeros:
            value = value.lstrip("0")
        return value


def check_secret(secret: bytes) -> bytes:
    if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
        found = f"{len(secret)} bytes" if isinstance(secret, bytes) else type(secret).__name__
        raise ConfigError(
            f"study secret for record linkage: expected at least {MIN_SECRET_BYTES} random "
            f"bytes, found {found}"
        )
    return secret


def keyed_hashes(
    values: Sequence[str],
    rules: IdentifierRules,
    secret: bytes,
    *,
    party: str,
    file: str | None,
    column: str,
    first_row: int = 0,
) -> list[bytes]:
    """HMAC-SHA256(secret, normalised identifier) of each value, 32 bytes each.

    An identifier that is missing or empty after normalisation is an error naming the
    party, file, column and (1-based) data row; the value itself is not echoed, since an
    identifier is personal data and error messages end up in logs.
    """
    out = []
    for offset, value in enumerate(values):
        key = rules.apply(value) if isinstance(value, str) else ""
        if not key:
            raise DataValidationError(
                f"data row {first_row + offset + 1} has no identifier after normalisation",
                site=party,
                file=file,
                column=column,
                expected="a non-empty identifier in every row",
                found="an empty or missing value"
                if not value
                else "only characters the rules remove",
            )
        out.append(hmac.digest(secret, key.encode("utf-8"), "sha256"))
    return out
