"""Which model code a site agrees to import: its allow-list of model import paths.

A plan names its model by a built-in name (``logistic``, ``mlp``, ``cnn``: fedcare's own
code, always allowed) or by an import path ``package.module:Class``. Importing a module
runs its code at the hospital, so a site imports only the paths its owner listed in
``allowed-models.json`` in its state folder (``fedcare site allow-model PATH --state DIR``).
The check reads the plan's text only: nothing is imported before it passes, and a plan
that needs a module not on the list is refused with the module, the list and the command
that adds it. The plan shown for approval says which module the site would import.

The file is re-read on every question (the owner edits it from another terminal) and
rewritten atomically under a file lock, like the approvals file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcare.core.errors import ConfigError
from fedcare.core.storage import write_bytes_atomic
from fedcare.data.json_file import read_json

ALLOW_FILE = "allowed-models.json"
MAX_ALLOW_BYTES = 1 << 20
_FORMAT_VERSION = 1
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ErrorReport code: the plan's model would import a module this site does not allow.
MODEL_NOT_ALLOWED = "model_not_allowed"


class ModelNotAllowedError(ConfigError):
    """A plan's model would import a module that is not on the site's allow-list."""


def model_lines(models: Iterable[str], allow: ModelAllowList | None) -> list[str]:
    """A line per model saying how the site would build it (built in, or which module it
    imports); ModelNotAllowedError for the first module off the list. ``allow=None``: a site
    without an allow-list, which builds fedcare's own models only. Imports nothing."""
    if allow is not None:
        return allow.check_all(models)
    lines = []
    for model in models:
        module = import_module_of(model)
        if module is not None:
            raise ModelNotAllowedError(
                f"model '{model}' would import module '{module}'; this site keeps no model "
                "allow-list, so it builds fedcare's built-in models only"
            )
        lines.append(f"model '{model}' (built into fedcare)")
    return lines


def import_module_of(model: str) -> str | None:
    """The module a plan's ``model`` name would import; None for a built-in name.

    An import path must be ``package.module:Class`` (Python identifiers); anything else with
    a ``:`` is a ConfigError, so a malformed path is never handed to ``importlib``.
    """
    if ":" not in model:
        return None
    module, _, attr = model.partition(":")
    if not _DOTTED.match(module) or not _NAME.match(attr):
        raise ConfigError(
            f"model '{model}': an import path is 'package.module:ClassName' (Python "
            "identifiers separated by dots, then ':' and the class)"
        )
    return module


def plan_models(plan: Mapping[str, Any]) -> list[str]:
    """Model names in a job plan or in every run of a study plan, in order, without repeats."""
    found = plan.get("runs")
    runs: list[Any] = found if isinstance(found, list) else [plan]
    names: list[str] = []
    for run in runs:
        model = run.get("model") if isinstance(run, Mapping) else None
        name = model.get("name") if isinstance(model, Mapping) else model
        if isinstance(name, str) and name not in names:
            names.append(name)
    return names


@dataclass(frozen=True)
class ModelAllowList:
    """The import paths this site agrees to import, in ``path`` (a JSON file)."""

    path: Path

    @classmethod
    def in_folder(cls, state: Path) -> ModelAllowList:
        return cls(Path(state) / ALLOW_FILE)

    @property
    def add_command(self) -> str:
        return f"fedcare site allow-model PATH --state {self.path.parent}"

    def entries(self) -> dict[str, dict[str, str]]:
        """Allowed import paths with who allowed each and when."""
        if not self.path.exists():
            return {}
        data = read_json(self.path, "model allow-list", MAX_ALLOW_BYTES)
        version = data.get("version") if isinstance(data, dict) else None
        models = data.get("models") if isinstance(data, dict) else None
        if version != _FORMAT_VERSION or not isinstance(models, dict):
            raise ConfigError(
                f"model allow-list '{self.path}' is not a version-{_FORMAT_VERSION} fedcare "
                'allow-list ({"version": 1, "models": {PATH: {by, time}}})'
            )
        return {str(k): dict(v) if isinstance(v, dict) else {} for k, v in models.items()}

    def check(self, model: str) -> str:
        """How the site may build ``model`` (a line for the log), or ModelNotAllowedError naming
        the module, the list and the command that adds it. Imports nothing."""
        module = import_module_of(model)
        if module is None:
            return f"model '{model}' (built into fedcare)"
        entries = self.entries()
        if model in entries:
            by = entries[model].get("by", "?")
            return f"model '{model}': this site would import module '{module}' (allowed by {by})"
        listed = ", ".join(sorted(entries)) or "empty: only fedcare's built-in models"
        raise ModelNotAllowedError(
            f"model '{model}' would import module '{module}', which is not on this site's "
            f"model allow-list ({self.path}: {listed}); if the hospital trusts that code, add "
            f"it with: fedcare site allow-model {model} --state {self.path.parent}"
        )

    def check_all(self, models: Iterable[str]) -> list[str]:
        """:meth:`check` for each model; the first refusal is raised."""
        return [self.check(model) for model in models]

    def describe(self, model: str) -> str:
        """What approving ``model`` means at this site: built in, or which module it imports
        and whether the allow-list lets it (never raises for a listed-or-not module)."""
        try:
            return self.check(model)
        except ModelNotAllowedError:
            module = import_module_of(model)
            return (
                f"model '{model}': would import module '{module}', NOT on this site's allow-list "
                f"(refused; to allow it: fedcare site allow-model {model} --state "
                f"{self.path.parent})"
            )

    def allow(self, model: str, by: str) -> None:
        """Add ``model`` (an import path) to the list."""
        if import_module_of(model) is None:
            raise ConfigError(
                f"'{model}' is a built-in model name (always allowed); the allow-list holds "
                "import paths 'package.module:ClassName'"
            )
        if not by.strip():
            raise ConfigError("allowing a model must name who allows it (--by)")
        with self._edit() as models:
            models[model] = {"by": by, "time": dt.datetime.now(dt.UTC).isoformat()}

    def disallow(self, model: str) -> bool:
        """Remove ``model`` from the list; returns whether it was there."""
        with self._edit() as models:
            return models.pop(model, None) is not None

    @contextlib.contextmanager
    def _edit(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write under an exclusive lock, then replace the file atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            models: dict[str, Any] = self.entries()
            yield models
            payload = {"version": _FORMAT_VERSION, "models": models}
            text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
            write_bytes_atomic(self.path, text.encode())
