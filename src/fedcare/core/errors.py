"""Typed errors whose messages an engineer at a hospital can act on.

Every error names what it is about (file, site, column, field), what was expected and
what was found. Input checks raise these; they never ``assert``.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass


class FedcareError(Exception):
    """Base class of every error fedcare raises on purpose."""


class ConfigError(FedcareError):
    """A study or job configuration is invalid (unknown key, bad value, illegal combination)."""


@dataclass(eq=False, repr=False)
class DataValidationError(FedcareError):
    """A site's data does not match the declared schema.

    The message always carries the site, the file, the column and the problem, so the
    person at that hospital can fix it without seeing anyone else's data.
    """

    problem: str
    _: KW_ONLY
    site: str | None = None
    file: str | None = None
    column: str | None = None
    expected: str | None = None
    found: str | None = None

    def __post_init__(self) -> None:
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.site is not None:
            where.append(f"site '{self.site}'")
        if self.file is not None:
            where.append(f"file '{self.file}'")
        if self.column is not None:
            where.append(f"column '{self.column}'")
        text = (", ".join(where) + ": " if where else "") + self.problem
        if self.expected is not None:
            text += f" (expected {self.expected}"
            text += f", found {self.found})" if self.found is not None else ")"
        elif self.found is not None:
            text += f" (found {self.found})"
        return text


class LayoutMismatchError(FedcareError):
    """A parameter vector or state dict does not fit the model's layout."""


class TrainingDivergedError(FedcareError):
    """Local training produced non-finite parameters (learning rate or penalty too large)."""


class UpdateRejectedError(FedcareError):
    """A site's update failed validation before it could touch the aggregate."""


class ProtocolError(FedcareError):
    """A protocol message arrived in a state that does not accept it."""


class PrivacyBudgetExceededError(FedcareError):
    """A step would spend more privacy than the site's remaining budget allows."""
